"""The state log in a list: for tests and the single-process API (same contract as Kafka's)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from ess.core.reader import RawRecord

__all__ = ["InMemoryStateLog"]


class _Shared:
    """The records and the wake-up of one in-memory log, shared by every handle on it."""

    def __init__(self, values: Sequence[bytes]) -> None:
        self.values = list(values)
        self.appended = asyncio.Condition()


class InMemoryStateLog:
    """A state log in a list: for tests and the single-process API.

    :meth:`handle` opens another handle on the same log, as a second process opens the same
    topic (a restarted reader, a second writer). :meth:`follow` wakes on every append; while
    the log is idle it still reports an answer (``on_fetch``) every ``idle_report_sec``, as a
    broker answers empty fetches, so that readers do not take an idle log for a lost one.
    """

    def __init__(self, values: Sequence[bytes] = (), *, idle_report_sec: float = 0.2) -> None:
        self._shared = _Shared(values)
        self.idle_report_sec = idle_report_sec

    def handle(self) -> InMemoryStateLog:
        """Another handle on this same log."""
        other = InMemoryStateLog(idle_report_sec=self.idle_report_sec)
        other._shared = self._shared
        return other

    async def start(self) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def read(self, from_offset: int = 0) -> list[RawRecord]:
        values = self._shared.values
        start = max(from_offset, 0)
        return [RawRecord(offset, values[offset]) for offset in range(start, len(values))]

    async def append(self, value: bytes) -> int:
        shared = self._shared
        async with shared.appended:
            shared.values.append(value)
            shared.appended.notify_all()
            return len(shared.values) - 1

    async def end_offset(self) -> int:
        return len(self._shared.values)

    async def follow(
        self,
        from_offset: int = 0,
        *,
        on_fetch: Callable[[], None] | None = None,
        on_end: Callable[[int], None] | None = None,
    ) -> AsyncIterator[list[RawRecord]]:
        shared = self._shared
        position = max(from_offset, 0)
        while True:
            async with shared.appended:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.idle_report_sec):
                        while len(shared.values) <= position:
                            await shared.appended.wait()
            # The batch and the end are taken together (no await between them), as one
            # fetch response carries both.
            values = shared.values
            end = len(values)
            batch = [RawRecord(offset, values[offset]) for offset in range(position, end)]
            if on_fetch is not None:
                on_fetch()
            if on_end is not None:
                on_end(end)
            if batch:
                position = end
                yield batch

    async def __aenter__(self) -> InMemoryStateLog:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

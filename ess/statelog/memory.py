"""The state log in a list: for tests and the single-process API (same contract as Kafka's)."""

from __future__ import annotations

from collections.abc import Sequence

from ess.core.reader import RawRecord

__all__ = ["InMemoryStateLog"]


class InMemoryStateLog:
    """A state log in a list: for tests and the single-process API."""

    def __init__(self, values: Sequence[bytes] = ()) -> None:
        self._values = list(values)

    async def read(self, from_offset: int = 0) -> list[RawRecord]:
        return [
            RawRecord(offset, value)
            for offset, value in enumerate(self._values)
            if offset >= from_offset
        ]

    async def append(self, value: bytes) -> int:
        self._values.append(value)
        return len(self._values) - 1

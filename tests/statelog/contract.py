"""The :class:`~ess.statelog.StateLog` contract, once, for every adapter.

A test module subclasses :class:`StateLogContract` and provides two fixtures: ``opener``
(each call opens a new, unstarted handle on one log, empty at first: the same log a second
process or a restarted one would open) and ``scope`` (the log's name, which seals are bound
to). What the roles rely on is here: offsets in append order from 0, reading from an offset,
the end offset, following that wakes on append, resuming with a new handle, one total order
for two writers (the command processor's fencing reads it), and the verifying reader folding
authentic entries and refusing the rest whichever adapter holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from ess.core.attestation import SigningKey
from ess.core.signing import generate_private_key
from ess.statelog import LogBroken, RawRecord, StateLog, StateLogReader
from tests.statelog_support import LogBuilder, trust, values_of

#: Opens a new handle on the log under test (not started).
Opener = Callable[[], StateLog]

#: How long a follower may take to see what was appended (Kafka needs a fetch or two).
FOLLOW_TIMEOUT_SEC = 20.0


@contextlib.asynccontextmanager
async def opened(opener: Opener) -> AsyncIterator[StateLog]:
    """A started handle, stopped on leaving."""
    log = opener()
    await log.start()
    try:
        yield log
    finally:
        await log.stop()


class _Follower:
    """Follows a log in a task, collecting every record it is given."""

    def __init__(self, log: StateLog, from_offset: int = 0) -> None:
        self.records: list[RawRecord] = []
        self.fetches = 0
        #: Every end reported (``on_end``), in order.
        self.ends: list[int] = []
        #: Per yielded batch: (the offset after its last record, the end reported before it).
        self.batch_ends: list[tuple[int, int | None]] = []
        self._changed = asyncio.Event()
        self._log = log
        self._from = from_offset
        self._task = asyncio.create_task(self._run())

    def _fetched(self) -> None:
        self.fetches += 1
        self._changed.set()

    def _ended(self, end: int) -> None:
        self.ends.append(end)
        self._changed.set()

    async def _run(self) -> None:
        async for batch in self._log.follow(self._from, on_fetch=self._fetched, on_end=self._ended):
            self.batch_ends.append((batch[-1].offset + 1, self.ends[-1] if self.ends else None))
            self.records.extend(batch)
            self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds (woken by the follower, no polling sleep)."""
        async with asyncio.timeout(FOLLOW_TIMEOUT_SEC):
            while not done():
                self._changed.clear()
                if self._task.done():
                    self._task.result()  # raises what stopped the follower
                    raise AssertionError("follow() ended")
                await self._changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class StateLogContract:
    """What every state-log adapter guarantees. Needs ``opener`` and ``scope`` fixtures."""

    async def test_offsets_start_at_zero_and_grow_by_one_per_append(self, opener: Opener) -> None:
        async with opened(opener) as log:
            assert await log.end_offset() == 0
            assert await log.read() == []
            offsets = [await log.append(value) for value in (b"a", b"b", b"c")]
            assert offsets == [0, 1, 2]
            assert await log.read() == [RawRecord(0, b"a"), RawRecord(1, b"b"), RawRecord(2, b"c")]
            assert await log.end_offset() == 3

    async def test_read_from_an_offset_returns_only_the_rest(self, opener: Opener) -> None:
        async with opened(opener) as log:
            for value in (b"a", b"b", b"c", b"d"):
                await log.append(value)
            assert await log.read(2) == [RawRecord(2, b"c"), RawRecord(3, b"d")]
            assert await log.read(4) == []

    async def test_follow_wakes_on_append_and_yields_each_record_once_in_order(
        self, opener: Opener
    ) -> None:
        async with opened(opener) as log:
            await log.append(b"before-0")
            await log.append(b"before-1")
            follower = _Follower(log)
            try:
                await follower.until(lambda: len(follower.records) >= 2)
                for number in range(3):
                    await log.append(f"after-{number}".encode())
                    wanted = 3 + number
                    await follower.until(lambda wanted=wanted: len(follower.records) >= wanted)
            finally:
                await follower.close()
        assert follower.records == [
            RawRecord(0, b"before-0"),
            RawRecord(1, b"before-1"),
            RawRecord(2, b"after-0"),
            RawRecord(3, b"after-1"),
            RawRecord(4, b"after-2"),
        ]

    async def test_follow_reports_answers_while_the_log_is_idle(self, opener: Opener) -> None:
        async with opened(opener) as log:
            follower = _Follower(log)
            try:
                await follower.until(lambda: follower.fetches >= 2)
            finally:
                await follower.close()
        assert follower.records == []
        # An idle answer still says where the log ends: a reader at 0 is caught up.
        assert follower.ends
        assert set(follower.ends) == {0}

    async def test_follow_reports_the_end_with_each_answer(self, opener: Opener) -> None:
        # How a long-running reader knows it has caught up (and its lag) without asking.
        async with opened(opener) as log:
            for value in (b"a", b"b", b"c"):
                await log.append(value)
            follower = _Follower(log)
            try:
                await follower.until(lambda: len(follower.records) >= 3)
                # The answer that delivered the records said where the log ended: there.
                assert follower.ends[-1] == 3
                await log.append(b"d")
                await follower.until(lambda: len(follower.records) >= 4)
                assert follower.ends[-1] == 4
            finally:
                await follower.close()
        # Each batch was announced (on_end, before it was yielded) with an end covering it,
        # and the ends never went back.
        for after_batch, reported in follower.batch_ends:
            assert reported is not None
            assert reported >= after_batch
        assert follower.ends == sorted(follower.ends)
        assert follower.fetches >= len(follower.ends)

    async def test_a_new_handle_resumes_from_an_offset(self, opener: Opener) -> None:
        async with opened(opener) as first:
            for value in (b"a", b"b", b"c", b"d"):
                await first.append(value)
        async with opened(opener) as second:
            assert await second.end_offset() == 4
            assert await second.read(2) == [RawRecord(2, b"c"), RawRecord(3, b"d")]
            follower = _Follower(second, from_offset=3)
            try:
                await follower.until(lambda: len(follower.records) >= 1)
                assert await second.append(b"e") == 4
                await follower.until(lambda: len(follower.records) >= 2)
            finally:
                await follower.close()
        assert follower.records == [RawRecord(3, b"d"), RawRecord(4, b"e")]

    async def test_two_writers_interleaving_share_one_total_order(self, opener: Opener) -> None:
        async with opened(opener) as one, opened(opener) as two:

            async def write(log: StateLog, name: str) -> list[tuple[int, bytes]]:
                written = []
                for number in range(5):
                    value = f"{name}-{number}".encode()
                    written.append((await log.append(value), value))
                return written

            by_one, by_two = await asyncio.gather(write(one, "one"), write(two, "two"))
            seen_by_one, seen_by_two = await one.read(), await two.read()
            assert await one.end_offset() == await two.end_offset() == 10
        assert seen_by_one == seen_by_two
        assert [record.offset for record in seen_by_one] == list(range(10))
        # Each writer's offsets are where its records are, in the order it appended them.
        for written in (by_one, by_two):
            assert [seen_by_one[offset].value for offset, _ in written] == [
                value for _, value in written
            ]
            assert [offset for offset, _ in written] == sorted(offset for offset, _ in written)

    async def test_verifying_reader_folds_a_signed_chain(self, opener: Opener, scope: str) -> None:
        builder = LogBuilder(scope)
        builder.trip("trip-1")
        builder.trip("trip-2")
        builder.reset()
        async with opened(opener) as log:
            for value in builder.values:
                await log.append(value)
            reader = StateLogReader(trust(scope), name="contract")
            report = reader.feed(await log.read())
        assert [item.offset for item in report.applied] == [0, 1, 2]
        assert reader.trusted
        assert reader.folded.state == builder.state
        assert reader.folded.next_offset == 3

    @pytest.mark.parametrize("kind", ["forged", "unsigned"])
    async def test_verifying_reader_refuses_a_record_the_processor_did_not_sign(
        self, opener: Opener, scope: str, kind: str
    ) -> None:
        builder = LogBuilder(scope)
        builder.trip("trip-1")
        if kind == "forged":
            forger = LogBuilder(scope, key=SigningKey(generate_private_key()))
            forger.trip("forged-trip")
            intruder = forger.values[0]
        else:
            intruder = values_of([builder.entries[0].model_copy(update={"seq": 1})])[0]
        async with opened(opener) as log:
            await log.append(builder.values[0])
            await log.append(intruder)
            reader = StateLogReader(trust(scope), name="contract")
            report = reader.feed(await log.read())
        assert [item.offset for item in report.applied] == [0]
        assert [item.offset for item in report.foreign] == [1]
        assert not reader.trusted
        assert reader.folded.state == builder.state

    async def test_verifying_reader_raises_log_broken_on_a_seq_gap(
        self, opener: Opener, scope: str
    ) -> None:
        builder = LogBuilder(scope)
        for number in range(3):
            builder.trip(f"trip-{number}")
        async with opened(opener) as log:
            await log.append(builder.values[0])
            await log.append(builder.values[2])
            records = await log.read()
        reader = StateLogReader(trust(scope), name="contract")
        with pytest.raises(LogBroken):
            reader.feed(records)

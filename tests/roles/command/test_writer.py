"""The command processor's single-writer discipline on the in-memory state log: catch-up,
resume, fencing and retried sends, with no broker (the same code runs over Kafka)."""

from __future__ import annotations

import uuid

import pytest

from ess.core import EssState, decide
from ess.core.reader import LogBroken
from ess.roles.command.errors import FencedError
from ess.roles.command.writer import Fed, StateWriter
from ess.statelog import InMemoryStateLog, RawRecord, StateLogReader
from schemas import ReasonCode, StateEntry, TripCommand
from tests.statelog_support import PROCESSOR, T0, LogBuilder, policy, trust


def next_trip(state: EssState) -> StateEntry:
    """What the processor would append for a fresh trip against ``state``."""
    command = TripCommand(
        command_id=f"trip-{uuid.uuid4().hex[:8]}",
        reason=ReasonCode.DAILY_LOSS,
        detail="test",
        source="detector:test",
        ts=T0,
    )
    [entry] = decide(state, command, now=T0, policy=policy())
    return entry


class Recorder:
    """Collects what the writer reports after each fold."""

    def __init__(self) -> None:
        self.fed: list[Fed] = []

    def __call__(self, fed: Fed) -> None:
        self.fed.append(fed)

    @property
    def foreign(self) -> int:
        return sum(item.foreign for item in self.fed)

    @property
    def own_copies(self) -> int:
        return sum(item.own_copies for item in self.fed)


def writer_on(log: InMemoryStateLog, recorder: Recorder | None = None) -> StateWriter:
    return StateWriter(log.handle(), key=PROCESSOR, trust=trust(), on_fed=recorder or Recorder())


def fold_all(values: list[RawRecord]) -> StateLogReader:
    """What an independent reader makes of the whole log."""
    reader = StateLogReader(trust(), name="test")
    reader.feed(values)
    return reader


async def test_appended_entries_land_in_order_and_verify_for_any_reader() -> None:
    log = InMemoryStateLog()
    writer = writer_on(log)
    first, at_first = await writer.append(next_trip(writer.state))
    second, at_second = await writer.append(next_trip(writer.state))

    assert (at_first, at_second) == (0, 1)
    assert [first.seq, second.seq] == [0, 1]
    reader = fold_all(await log.read())
    assert reader.folded.state == writer.state
    assert reader.folded.head == writer.folded.head
    assert reader.trusted


async def test_a_restarted_writer_catches_up_and_continues_the_chain() -> None:
    builder = LogBuilder()
    builder.trip("before-restart-1")
    builder.trip("before-restart-2")
    log = InMemoryStateLog(builder.values)
    writer = writer_on(log)

    adopted = await writer.catch_up()
    entry, offset = await writer.append(next_trip(writer.state))

    assert [item.offset for item in adopted] == [0, 1]
    assert writer.state.last_seq == 2
    assert (entry.seq, offset) == (2, 2)
    reader = fold_all(await log.read())
    assert reader.folded.state == writer.state
    assert reader.folded.next_offset == 3


async def test_an_entry_another_writer_appended_fences_before_the_next_decision() -> None:
    log = InMemoryStateLog()
    ours, theirs = writer_on(log), writer_on(log)
    await theirs.append(next_trip(theirs.state))

    with pytest.raises(FencedError, match="1 authentic entries appeared that we did not write"):
        await ours.absorb_tail()
    # What fenced us is folded in: a restart would see the same, and nothing was appended.
    assert ours.folded.next_offset == 1
    assert await log.end_offset() == 1


async def test_an_entry_that_lands_behind_another_writers_fences_the_writer() -> None:
    log = InMemoryStateLog()
    ours, theirs = writer_on(log), writer_on(log)
    await theirs.append(next_trip(theirs.state))

    with pytest.raises(FencedError, match="landed at offset 1 behind another writer's"):
        await ours.append(next_trip(ours.state))


async def test_an_idle_tail_neither_fences_nor_reads() -> None:
    log = InMemoryStateLog()
    writer = writer_on(log)
    await writer.append(next_trip(writer.state))
    await writer.absorb_tail()
    assert writer.folded.next_offset == 1


class RetriedSend(InMemoryStateLog):
    """A log whose producer resent every entry once (its first answer was lost): each value
    lands twice, and the second offset is the one reported."""

    async def append(self, value: bytes) -> int:
        await super().append(value)
        return await super().append(value)


async def test_a_retried_send_leaves_a_copy_that_is_skipped_not_a_fence() -> None:
    recorder = Recorder()
    log = RetriedSend()
    writer = StateWriter(log, key=PROCESSOR, trust=trust(), on_fed=recorder)

    entry, offset = await writer.append(next_trip(writer.state))

    assert (entry.seq, offset) == (0, 1)
    assert recorder.own_copies == 1
    assert writer.folded.next_offset == 2
    assert writer.state.last_seq == 0
    assert fold_all(await log.read()).folded.state == writer.state


async def test_foreign_records_are_folded_and_reported_not_a_fence() -> None:
    recorder = Recorder()
    log = InMemoryStateLog()
    writer = writer_on(log, recorder)
    await writer.append(next_trip(writer.state))
    await log.handle().append(b'{"not": "an entry"}')

    await writer.absorb_tail()

    assert recorder.foreign == 1
    assert not writer.folded.trusted
    entry, offset = await writer.append(next_trip(writer.state))
    assert (entry.seq, offset) == (1, 2)


async def test_a_log_that_cannot_be_folded_is_refused_at_catch_up() -> None:
    builder = LogBuilder()
    for number in range(3):
        builder.trip(f"trip-{number}")
    log = InMemoryStateLog([builder.values[0], builder.values[2]])  # seq 1 is missing

    with pytest.raises(LogBroken):
        await writer_on(log).catch_up()


async def test_a_tail_that_cannot_be_folded_fences_the_writer() -> None:
    builder = LogBuilder()
    for number in range(3):
        builder.trip(f"trip-{number}")
    log = InMemoryStateLog([builder.values[0]])
    writer = writer_on(log)
    await writer.catch_up()
    await log.handle().append(builder.values[2])  # seq 2 after seq 0: a broken chain

    with pytest.raises(FencedError, match="cannot be folded"):
        await writer.absorb_tail()

"""The command processor against a real broker: decide, append, commit, fence, dead-letter.

Most tests assign the command partition directly (``join_group=False``): a group join costs
~3 s on the embedded broker and the group is not what they test. The crash test runs
``python -m ess.roles.command.processor`` twice, in its real group, as production does; the restart
test's second run joins the group too.

Every entry the processor writes is sealed with :data:`tests.statelog_support.PROCESSOR`;
the tests read the log back the way every reader does (:func:`ess.core.reader.fold_records`).
The issue-12 findings about the processor have their own file,
``test_processor_issue12.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ess.chaos.crash_child import CRASH_MESSAGE
from ess.clock import Clock, ManualClock, SystemClock
from ess.core import ResetPolicy
from ess.core.attestation import seal_problem
from ess.core.ids import derive_id
from ess.core.reader import RawRecord, digest, fold_records, seal_entry
from ess.core.signing import generate_private_key, sign_reset, write_key_pair
from ess.kafka.clients import consumer, producer, read_to_end
from ess.roles.command.metrics import ProcessorMetrics
from ess.roles.command.processor import (
    SOURCE,
    CommandProcessor,
    FencedError,
    ProcessorError,
    StartupRefused,
    default_group_id,
)
from ess.statelog import STATE_KEY, Folded, KafkaStateLog, LoggedEntry, fold_log
from schemas import (
    ActivatedEntry,
    CommandOutcome,
    DeadLetter,
    ReasonCode,
    ResetCommand,
    ResetEntry,
    SecurityEvent,
    TopicRegistry,
    TripCommand,
    TripRecordedEntry,
    decode,
    encode,
    topic_registry,
)
from tests.helpers import eventually
from tests.statelog_support import ALICE, BOB, PROCESSOR, LogBuilder, policy, trust, values_of

pytestmark = pytest.mark.integration

#: Bound for anything that should take milliseconds; a group join takes ~3 s on Tansu, and a
#: join after a member was SIGKILLed waits for that member's 6 s session to expire.
WAIT = 20.0
T0 = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)

MALLORY = generate_private_key()

#: The activation ``(seq, command id)`` a reset is signed for.
Activation = tuple[int | None, str | None]


def a_trip(command_id: str, ts: datetime = T0) -> TripCommand:
    return TripCommand(
        command_id=command_id,
        reason=ReasonCode.MANUAL,
        detail=f"test {command_id}",
        source="operator:test",
        ts=ts,
    )


def a_reset(
    command_id: str,
    key: Ed25519PrivateKey,
    *,
    activation: Activation,
    operator: str = "alice",
    nonce: str | None = None,
    ts: datetime = T0,
) -> ResetCommand:
    """A reset signed by ``key`` for the activation ``(seq, command id)``."""
    seq, activation_id = activation
    return sign_reset(
        key,
        command_id=command_id,
        operator=operator,
        ts=ts,
        nonce=nonce or f"n-{command_id}",
        activation_seq=seq,
        activation_command_id=activation_id,
    )


@pytest.fixture
async def send(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Sender]:
    sender = producer(kafka_bootstrap, read_to_end_safe=True)
    await sender.start()
    try:
        yield Sender(sender, registry.commands.name)
    finally:
        await sender.stop()


class Sender:
    """Writes commands (or raw bytes) to ess.commands; returns each record's offset."""

    def __init__(self, sender: AIOKafkaProducer, topic: str) -> None:
        self._sender = sender
        self._topic = topic

    async def __call__(self, command: TripCommand | ResetCommand | bytes) -> int:
        value = command if isinstance(command, bytes) else encode(command)
        metadata = await self._sender.send_and_wait(self._topic, value, key=b"ess")
        return int(metadata.offset)


def new_processor(
    bootstrap: str,
    registry: TopicRegistry,
    group_id: str,
    *,
    reset_policy: ResetPolicy | None = None,
    clock: Clock | None = None,
    join_group: bool = False,
    beat_interval: float = 0.5,
    metrics: ProcessorMetrics | None = None,
) -> CommandProcessor:
    """A processor signing with :data:`PROCESSOR`, trusting the test keys."""
    return CommandProcessor(
        bootstrap,
        registry,
        reset_policy=reset_policy or policy(),
        clock=clock or ManualClock(T0),
        signing_key=PROCESSOR,
        trust=trust(registry.state.name),
        group_id=group_id,
        join_group=join_group,
        beat_interval=beat_interval,
        metrics=metrics,
    )


@pytest.fixture
def make_processor(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> Callable[..., CommandProcessor]:
    def make(*, group_id: str | None = None, **options: object) -> CommandProcessor:
        return new_processor(
            kafka_bootstrap,
            registry,
            group_id or unique_group,
            **options,  # type: ignore[arg-type]
        )

    return make


@asynccontextmanager
async def running(processor: CommandProcessor) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``processor`` until the block ends; the block starts once it owns the partition.
    A processor that fails makes the block fail (its error propagates on exit)."""
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: processor.owns_commands or task.done(), timeout=WAIT)
        if task.done():
            task.result()
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def raw_log(bootstrap: str, registry: TopicRegistry) -> list[RawRecord]:
    return await KafkaStateLog(bootstrap, registry.state.name).read()


async def folded_log(bootstrap: str, registry: TopicRegistry) -> Folded:
    """``ess.state`` as every reader folds it (verified against the test keys)."""
    folded, _ = fold_records(await raw_log(bootstrap, registry), trust(registry.state.name))
    return folded


async def log_of(bootstrap: str, registry: TopicRegistry) -> list[LoggedEntry]:
    """The entries of ``ess.state`` that verify and were applied, in order."""
    records = await raw_log(bootstrap, registry)
    return list(fold_records(records, trust(registry.state.name))[1].applied)


async def wait_for_log(bootstrap: str, registry: TopicRegistry, count: int) -> list[LoggedEntry]:
    async def enough() -> list[LoggedEntry]:
        logged = await log_of(bootstrap, registry)
        assert len(logged) >= count, f"{len(logged)} of {count} entries"
        return logged

    return await eventually(enough, timeout=WAIT)


def summary(logged: list[LoggedEntry]) -> list[tuple[int, str, str, int | None]]:
    return [(i.entry.seq, i.entry.kind, i.entry.command_id, i.entry.command_offset) for i in logged]


async def committed(bootstrap: str, group: str, topic: str) -> int | None:
    reader = consumer(bootstrap, group_id=group)
    await reader.start()
    try:
        offset: int | None = await reader.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await reader.stop()


async def outcomes_of(bootstrap: str, registry: TopicRegistry) -> list[CommandOutcome]:
    """Every record on ``<prefix>.outcomes``; each must carry the processor's valid seal."""
    outcomes = []
    for record in await read_to_end(bootstrap, registry.outcomes.name, timeout=WAIT):
        assert record.value is not None
        document = orjson.loads(record.value)
        problem = seal_problem(
            document, trust(registry.state.name).processor_keys, scope=registry.outcomes.name
        )
        assert problem is None, f"outcome at offset {record.offset}: {problem}"
        outcome = decode(CommandOutcome, record.value)
        assert record.key == outcome.command_id.encode()
        outcomes.append(outcome)
    return outcomes


async def security_events(bootstrap: str, registry: TopicRegistry) -> list[SecurityEvent]:
    return [
        decode(SecurityEvent, r.value)
        for r in await read_to_end(bootstrap, registry.security.name, timeout=WAIT)
    ]


async def produce_raw(bootstrap: str, topic: str, *values: bytes) -> list[int]:
    """Append ``values`` to ``topic`` as someone other than the processor would."""
    writer = producer(bootstrap, read_to_end_safe=True)
    await writer.start()
    try:
        return [
            int((await writer.send_and_wait(topic, value, key=STATE_KEY)).offset)
            for value in values
        ]
    finally:
        await writer.stop()


# --------------------------------------------------------------------------- trips


async def test_trips_activate_then_record_and_a_duplicate_appends_nothing(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    unique_group: str,
) -> None:
    processor = make_processor()
    async with running(processor):
        await send(a_trip("trip-1"))
        await send(a_trip("trip-2"))
        await send(a_trip("trip-1"))  # the same command again (a retrying producer)
        await send(a_trip("trip-3"))
        logged = await wait_for_log(kafka_bootstrap, registry, 3)
        await eventually(lambda: processor.next_command_offset == 4, timeout=WAIT)

    assert summary(logged) == [
        (0, "activated", "trip-1", 0),
        (1, "trip_recorded", "trip-2", 1),
        (2, "trip_recorded", "trip-3", 3),
    ]
    activated = logged[0].entry
    assert isinstance(activated, ActivatedEntry)
    assert activated.reason is ReasonCode.MANUAL
    assert activated.ts == T0  # stamped by the injected clock
    # Sealed by the processor and chained: each entry names its predecessor's digest.
    assert [i.entry.signer for i in logged] == [PROCESSOR.key_id] * 3
    assert [i.entry.prev for i in logged] == [None, logged[0].digest, logged[1].digest]
    assert processor.state.active
    assert processor.state == fold_log(logged).state
    assert processor.folded.head == logged[-1].digest
    assert (processor.stats.commands_seen, processor.stats.entries_appended) == (4, 3)
    assert processor.stats.duplicates == 1
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 4


# --------------------------------------------------------------------------- poison commands


async def test_poison_commands_are_dead_lettered_and_recorded_as_manual_stops(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    naive = encode(a_trip("naive")).replace(b'00Z"', b'00"')
    assert naive != encode(a_trip("naive"))
    unknown_kind = b'{"command_id":"x","kind":"halt","ts":"2026-11-22T10:15:00+00:00"}'
    poison = [b"{not json", unknown_kind, naive, b"\xff\xfe\x00binary"]
    processor = make_processor()
    async with running(processor):
        offsets = [await send(value) for value in poison]
        good = await send(a_trip("after-the-poison"))
        logged = await wait_for_log(kafka_bootstrap, registry, 5)

    # A command nobody can read is a stop request nobody can read: each one stops trading.
    undecodable = [derive_id("undecodable-command", registry.commands.name, o) for o in offsets]
    assert summary(logged) == [
        (0, "activated", undecodable[0], offsets[0]),
        (1, "trip_recorded", undecodable[1], offsets[1]),
        (2, "trip_recorded", undecodable[2], offsets[2]),
        (3, "trip_recorded", undecodable[3], offsets[3]),
        (4, "trip_recorded", "after-the-poison", good),
    ]
    stops = [i.entry for i in logged[:4]]
    assert all(isinstance(e, ActivatedEntry | TripRecordedEntry) for e in stops)
    assert {(e.reason, e.source) for e in stops} == {(ReasonCode.MANUAL, SOURCE)}  # type: ignore[union-attr]
    assert f"offset {offsets[1]}" in stops[1].detail  # type: ignore[union-attr]
    assert "'halt'" in stops[1].detail  # type: ignore[union-attr]

    letters: list[DeadLetter] = [
        decode(DeadLetter, r.value)
        for r in await read_to_end(kafka_bootstrap, registry.deadletter.name, timeout=WAIT)
    ]
    assert [(d.source_topic, d.partition, d.offset) for d in letters] == [
        (registry.commands.name, 0, offset) for offset in offsets
    ]
    assert "Invalid JSON" in letters[0].error
    assert "'halt'" in letters[1].error
    assert "timezone" in letters[2].error
    assert letters[0].raw == "{not json"
    assert letters[0].raw_encoding == "utf-8"
    assert letters[3].raw_encoding == "base64"
    assert [d.ts for d in letters] == [T0] * 4
    assert processor.stats.dead_lettered == 4
    assert processor.stats.undecodable == 4
    assert processor.stats.entries_appended == 5

    outcomes = await outcomes_of(kafka_bootstrap, registry)
    assert [(o.command_offset, o.command_id, o.command_kind, o.outcome) for o in outcomes] == [
        *((o, i, "undecodable", "applied") for o, i in zip(offsets, undecodable, strict=True)),
        (good, "after-the-poison", "trip", "applied"),
    ]


# --------------------------------------------------------------------------- resets


async def test_resets_signed_forged_unknown_expired_and_replayed(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    first: Activation = (0, "trip-1")
    processor = make_processor()
    async with running(processor):
        await send(a_trip("trip-1"))
        # alice's name, wrong key
        await send(a_reset("forged", MALLORY, operator="alice", activation=first))
        await send(a_reset("unknown", MALLORY, operator="mallory", activation=first))
        await send(a_reset("expired", ALICE, ts=T0 - timedelta(minutes=10), activation=first))
        await send(a_reset("valid", ALICE, nonce="n-1", activation=first))
        await send(a_trip("trip-2"))
        # A new id, a burnt nonce, and bound to the activation that is current now.
        await send(a_reset("replayed", ALICE, nonce="n-1", activation=(5, "trip-2")))
        logged = await wait_for_log(kafka_bootstrap, registry, 7)

    assert [(i.entry.kind, getattr(i.entry, "why", None)) for i in logged] == [
        ("activated", None),
        ("reset_rejected", "bad_signature"),
        ("reset_rejected", "unknown_operator"),
        ("reset_rejected", "expired"),
        ("reset", None),
        ("activated", None),
        ("reset_rejected", "nonce_reused"),
    ]
    assert [i.entry.seq for i in logged] == list(range(7))
    reset = logged[4].entry
    assert isinstance(reset, ResetEntry)
    # The reset carries alice's signed command: every reader re-verifies it.
    assert [c.command_id for c in reset.authorizations] == ["valid"]
    assert processor.state.active
    assert processor.state.epoch == 1
    assert processor.state == fold_log(logged).state

    events = await security_events(kafka_bootstrap, registry)
    assert [(e.event_id, e.kind, e.source) for e in events] == [
        (derive_id(SOURCE, "unauthorized_access", command_id), "unauthorized_access", SOURCE)
        for command_id in ("forged", "unknown")
    ]
    assert "'alice'" in events[0].detail
    assert "bad_signature" in events[0].detail
    assert "'mallory'" in events[1].detail
    assert "unknown_operator" in events[1].detail
    forged_signature = a_reset("forged", MALLORY, operator="alice", activation=first).signature
    assert all(forged_signature not in e.detail for e in events)
    assert processor.stats.security_events == 2


async def test_reset_with_quorum_two_needs_two_distinct_operators(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    first: Activation = (0, "trip-1")
    processor = make_processor(reset_policy=policy(quorum=2))
    async with running(processor):
        await send(a_trip("trip-1"))
        await send(a_reset("alice-approves", ALICE, operator="alice", activation=first))
        await send(a_reset("bob-approves", BOB, operator="bob", activation=first))
        logged = await wait_for_log(kafka_bootstrap, registry, 3)

    assert summary(logged) == [
        (0, "activated", "trip-1", 0),
        (1, "reset_approval", "alice-approves", 1),
        (2, "reset", "bob-approves", 2),
    ]
    assert getattr(logged[1].entry, "approvals", None) == ("alice",)
    reset = logged[2].entry
    assert isinstance(reset, ResetEntry)
    assert reset.operators == ("alice", "bob")
    assert [(c.operator, c.command_id) for c in reset.authorizations] == [
        ("alice", "alice-approves"),
        ("bob", "bob-approves"),
    ]
    assert not processor.state.active
    assert not (await folded_log(kafka_bootstrap, registry)).state.active


# --------------------------------------------------------------------------- foreign records


async def test_an_unsigned_record_in_the_state_log_is_acknowledged_not_a_fence(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    unique_group: str,
) -> None:
    processor = make_processor()
    async with running(processor) as task:
        await send(a_trip("trip-1"))
        await wait_for_log(kafka_bootstrap, registry, 1)
        # Someone else writes to ess.state: a valid-looking next entry, unsigned.
        forged = TripRecordedEntry(
            seq=1, command_id="intruder", ts=T0, reason="manual", source="operator:x"
        )
        [foreign_offset] = await produce_raw(
            kafka_bootstrap, registry.state.name, *values_of([forged])
        )
        ack = derive_id("state-log-foreign", registry.state.name, foreign_offset)
        await eventually(lambda: ("trip", ack) in processor.state.applied, timeout=WAIT)
        await send(a_trip("trip-2"))
        logged = await wait_for_log(kafka_bootstrap, registry, 3)
        await eventually(lambda: processor.next_command_offset == 2, timeout=WAIT)
        assert not task.done()

    # Not applied, never a fence: acknowledged by an unauthorized_access trip, then business
    # as usual.
    assert summary(logged) == [
        (0, "activated", "trip-1", 0),
        (1, "trip_recorded", ack, None),
        (2, "trip_recorded", "trip-2", 1),
    ]
    assert [i.offset for i in logged] == [0, 2, 3]
    acknowledgement = logged[1].entry
    assert isinstance(acknowledgement, TripRecordedEntry)
    assert acknowledgement.reason is ReasonCode.UNAUTHORIZED_ACCESS
    assert acknowledgement.source == SOURCE
    assert acknowledgement.trigger is not None
    assert (acknowledgement.trigger.topic, acknowledgement.trigger.offset) == (
        registry.state.name,
        foreign_offset,
    )
    assert "unsigned" in acknowledgement.detail
    readers = await folded_log(kafka_bootstrap, registry)
    assert readers.trusted
    assert readers.foreign == 1
    assert readers.state == processor.state
    assert processor.folded.trusted
    assert processor.stats.acknowledgements == 1
    assert "intruder" not in {command_id for _, command_id in processor.state.applied}
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 2


@pytest.mark.parametrize(
    "beat_interval",
    [
        # The idle check runs once at start, then not for a minute: the next command finds it.
        pytest.param(60.0, id="found-by-the-next-command"),
        # The idle check runs all the time and usually finds it while trip-2 is being fetched;
        # the fetched command must not be processed after that (it was, before the fix).
        pytest.param(0.01, id="found-while-idle"),
    ],
)
async def test_an_authentic_entry_it_did_not_write_fences_the_processor(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    unique_group: str,
    beat_interval: float,
) -> None:
    processor = make_processor(beat_interval=beat_interval)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await send(a_trip("trip-1"))
        await wait_for_log(kafka_bootstrap, registry, 1)
        # A second processor with the same key: its entry verifies and continues the chain.
        [record] = await raw_log(kafka_bootstrap, registry)
        other = LogBuilder(registry.state.name)
        other.state, other.head = processor.state, digest(record.value or b"")
        other.trip("intruder", reason=ReasonCode.MANUAL)
        await other.write(kafka_bootstrap, registry.state.name)
        await send(a_trip("trip-2"))
        with pytest.raises(FencedError, match="1 authentic entries appeared that we did not"):
            await asyncio.wait_for(task, WAIT)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    logged = await log_of(kafka_bootstrap, registry)
    assert summary(logged) == [
        (0, "activated", "trip-1", 0),
        (1, "trip_recorded", "intruder", None),
    ]
    assert len(await raw_log(kafka_bootstrap, registry)) == 2  # nothing after the other's
    assert processor.stats.entries_appended == 1
    # The fenced command was not committed: the rightful owner will process it.
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 1
    assert [o.command_id for o in await outcomes_of(kafka_bootstrap, registry)] == ["trip-1"]


async def test_an_append_that_landed_but_failed_stops_without_a_false_fence(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = make_processor(beat_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await send(a_trip("trip-1"))
        await wait_for_log(kafka_bootstrap, registry, 1)
        # The broker writes the next entry but the client reports a failure (a timeout after
        # the broker applied the request). The next entry is the idle check's acknowledgement
        # of a foreign record, a path that tolerates Kafka errors.
        append = processor._log.append  # the one way to fake this answer

        async def lands_but_fails(value: bytes) -> int:
            await append(value)
            raise KafkaTimeoutError()

        monkeypatch.setattr(processor._log, "append", lands_but_fails)
        forged = TripRecordedEntry(seq=1, command_id="x", ts=T0, reason="manual", source="x")
        await produce_raw(kafka_bootstrap, registry.state.name, *values_of([forged]))
        # Not FencedError (exit 3, "a second writer exists"): it was our own entry.
        with pytest.raises(ProcessorError, match="whether it landed is unknown") as failed:
            await asyncio.wait_for(task, WAIT)
        assert not isinstance(failed.value, FencedError)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # A restart adopts the entry that landed: no second acknowledgement, no fence.
    monkeypatch.undo()
    restarted = make_processor()
    async with running(restarted):
        await send(a_trip("trip-2"))
        logged = await wait_for_log(kafka_bootstrap, registry, 3)
    ack = derive_id("state-log-foreign", registry.state.name, 1)
    assert summary(logged) == [
        (0, "activated", "trip-1", 0),
        (1, "trip_recorded", ack, None),
        (2, "trip_recorded", "trip-2", 1),
    ]
    assert restarted.stats.acknowledgements == 0
    assert (await folded_log(kafka_bootstrap, registry)).trusted


async def test_two_processors_writing_one_log_leave_exactly_one_standing(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    unique_group: str,
) -> None:
    # Two groups: both consume every command, as with a processor started by mistake. Their
    # clocks differ, as two hosts' do: with identical clocks they would write byte-identical
    # entries, which every reader takes for one entry and its copy.
    first = make_processor(group_id=f"{unique_group}-a", clock=ManualClock(T0))
    second = make_processor(
        group_id=f"{unique_group}-b", clock=ManualClock(T0 + timedelta(milliseconds=1))
    )
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(p.run(s)) for p, s in zip((first, second), stops, strict=True)]
    try:
        await eventually(lambda: first.owns_commands and second.owns_commands, timeout=WAIT)
        await send(a_trip("trip-1"))
        done, _ = await asyncio.wait(tasks, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "one of the two writers must be fenced"
        (fenced,) = done
        with pytest.raises(FencedError):
            fenced.result()
        standing = first if fenced is tasks[1] else second
        await send(a_trip("trip-2"))  # the survivor goes on
        await wait_for_log(kafka_bootstrap, registry, 2)
        assert not any(task.done() for task in tasks if task is not fenced)
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait(tasks, timeout=WAIT)

    logged = await log_of(kafka_bootstrap, registry)
    # Whoever appended first wins; a racing second entry (same seq) is skipped by every reader.
    assert [(i.entry.seq, i.entry.command_id) for i in logged] == [(0, "trip-1"), (1, "trip-2")]
    assert fold_log(logged).state.active
    assert standing.state == fold_log(logged).state


# --------------------------------------------------------------------------- starting


async def test_garbage_in_the_state_log_is_acknowledged_at_start(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    # An unsigned entry and bytes that are not an entry at all: neither is applied, neither
    # stops the processor (that would let anyone who can write ess.state stop ESS's writer).
    unsigned = ActivatedEntry(seq=0, command_id="t", ts=T0, reason="manual", source="x")
    await produce_raw(kafka_bootstrap, registry.state.name, *values_of([unsigned]), b"\x00garb{")

    processor = make_processor()
    async with running(processor):
        logged = await wait_for_log(kafka_bootstrap, registry, 1)

    ack = derive_id("state-log-foreign", registry.state.name, 1)
    assert summary(logged) == [(0, "activated", ack, None)]
    assert logged[0].offset == 2
    activated = logged[0].entry
    assert isinstance(activated, ActivatedEntry)
    assert activated.reason is ReasonCode.UNAUTHORIZED_ACCESS
    assert "undecodable" in activated.detail
    readers = await folded_log(kafka_bootstrap, registry)
    assert (readers.trusted, readers.foreign, readers.state.active) == (True, 2, True)


async def test_a_seq_gap_in_the_state_log_refuses_start(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    log = LogBuilder(registry.state.name)
    log.trip("t0")
    gap = TripRecordedEntry(seq=2, command_id="t2", ts=T0, reason="manual", source="x")
    _, value = seal_entry(gap, PROCESSOR, scope=registry.state.name, prev=log.head)
    await log.write(kafka_bootstrap, registry.state.name)
    await produce_raw(kafka_bootstrap, registry.state.name, value)

    processor = make_processor()
    with pytest.raises(StartupRefused, match="expected seq 1, got 2"):
        await asyncio.wait_for(processor.run(asyncio.Event()), WAIT)
    assert not processor.owns_commands


async def test_a_reset_whose_authorization_does_not_verify_refuses_start(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    # Sealed with the processor's key (the key in the wrong hands), but the operator's
    # signature inside is MALLORY's: no reader may apply it, and the processor must not
    # write on top of a log it cannot fold.
    log = LogBuilder(registry.state.name)
    log.trip("t0")
    forged = a_reset("forged", MALLORY, activation=(0, "t0"))
    log.add(
        ResetEntry(
            seq=1,
            command_id="forged",
            ts=T0,
            operators=("alice",),
            nonce=forged.nonce,
            authorizations=(forged,),
        )
    )
    await log.write(kafka_bootstrap, registry.state.name)

    processor = make_processor()
    with pytest.raises(StartupRefused, match="does not verify"):
        await asyncio.wait_for(processor.run(asyncio.Event()), WAIT)
    assert not processor.owns_commands


async def test_a_command_topic_with_three_partitions_refuses_start(
    kafka_bootstrap: str, unique_group: str
) -> None:
    reg = topic_registry(prefix=f"t{os.urandom(6).hex()}")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(spec.name, 3 if spec.logical == "commands" else spec.partitions, 1)
                for spec in reg.topics
            ]
        )
    finally:
        await admin.close()
    processor = new_processor(kafka_bootstrap, reg, unique_group, clock=SystemClock())
    with pytest.raises(StartupRefused, match=rf"{reg.commands.name} has 3 partitions"):
        await asyncio.wait_for(processor.run(asyncio.Event()), WAIT)


async def test_missing_topics_refuse_start_without_creating_them(
    kafka_bootstrap: str, unique_group: str
) -> None:
    reg = topic_registry(prefix=f"t{os.urandom(6).hex()}")
    processor = new_processor(kafka_bootstrap, reg, unique_group, clock=SystemClock())
    with pytest.raises(StartupRefused, match=rf"{reg.commands.name} does not exist"):
        await asyncio.wait_for(processor.run(asyncio.Event()), WAIT)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert not set(reg.names) & set(await admin.list_topics())
    finally:
        await admin.close()


# --------------------------------------------------------------------------- crash and restart


def spawn_processor(
    bootstrap: str,
    registry: TopicRegistry,
    log: Path,
    *,
    crash_at: str | None = None,
    **env: str,
) -> subprocess.Popen[bytes]:
    """``python -m ess.roles.command.processor`` as production runs it (``crash_at``: through
    ``python -m ess.chaos.crash_child`` instead, killed at that point), JSON logs to ``log``,
    signing with
    :data:`PROCESSOR` (written next to ``log`` on first use). Its group is named after the
    topic prefix, so it is unique to the test."""
    keys = log.parent / "keys"
    if not (keys / "processor.key").exists():
        write_key_pair(PROCESSOR.private, keys, "processor")
    environment = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESS_TOPIC_PREFIX": registry.prefix,
        "ESS_OPERATOR_KEYS_DIR": str(log.parent / "no-keys"),
        "ESS_PROCESSOR_KEY_FILE": str(keys / "processor.key"),
        "ESS_PROCESSOR_KEYS_DIR": str(keys),
        "ESS_COMMAND_STATUS_PORT": "-1",
        "ESS_LOG_JSON": "true",
        **env,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ess.roles.command.processor"]
            if crash_at is None
            else [sys.executable, "-m", "ess.chaos.crash_child", crash_at],
            cwd=log.parent,  # no stray .env file
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def exit_status(process: subprocess.Popen[bytes]) -> int:
    try:
        return await asyncio.wait_for(asyncio.to_thread(process.wait), WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def log_records(log: Path, message: str) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [record for record in lines if record["msg"] == message]


async def test_crash_between_append_and_commit_appends_nothing_twice(
    kafka_bootstrap: str, registry: TopicRegistry, send: Sender, tmp_path: Path
) -> None:
    group = default_group_id(registry.prefix)
    now = datetime.now(UTC)  # the subprocesses run on the system clock
    await send(a_trip("trip-1", ts=now))
    crash_log = tmp_path / "crashing.log"
    crashing = spawn_processor(kafka_bootstrap, registry, crash_log, crash_at="crash_after_append")

    assert await exit_status(crashing) == -signal.SIGKILL, crash_log.read_text()
    assert log_records(crash_log, CRASH_MESSAGE)
    # It died after appending and before committing: the worst moment.
    assert summary(await log_of(kafka_bootstrap, registry)) == [(0, "activated", "trip-1", 0)]
    assert await committed(kafka_bootstrap, group, registry.commands.name) is None

    # A new processor in the same group (which first waits out the dead member's session).
    await send(a_trip("trip-2", ts=now))
    survivor_log = tmp_path / "survivor.log"
    survivor = spawn_processor(kafka_bootstrap, registry, survivor_log)
    try:
        logged = await wait_for_log(kafka_bootstrap, registry, 2)

        async def trip_2_committed() -> bool:
            return await committed(kafka_bootstrap, group, registry.commands.name) == 2

        done: bool = await eventually(trip_2_committed, timeout=WAIT)
        assert done
    finally:
        survivor.send_signal(signal.SIGTERM)
    assert await exit_status(survivor) == 0, survivor_log.read_text()

    assert summary(logged) == [(0, "activated", "trip-1", 0), (1, "trip_recorded", "trip-2", 1)]
    assert summary(await log_of(kafka_bootstrap, registry)) == summary(logged)
    # No commit, but the tracking record said offset 0 was applied: it resumed at 1 and never
    # saw trip-1 again (it would have logged "command already applied" otherwise).
    (owned,) = log_records(survivor_log, "command processor owns the command partition")
    assert (owned["committed"], owned["next_command_offset"]) == (None, 1)
    assert not log_records(
        survivor_log, "nothing appended: command already applied, or a trip coalesced"
    )
    assert log_records(survivor_log, "command processor stopped")
    assert await committed(kafka_bootstrap, group, registry.commands.name) == 2
    # The crashed run died before publishing trip-1's outcome, and the survivor skipped
    # trip-1: it published that outcome again on taking over (at least once).
    outcomes = await outcomes_of(kafka_bootstrap, registry)
    assert [(o.command_id, o.command_offset, o.outcome, o.seq) for o in outcomes] == [
        ("trip-1", 0, "applied", 0),
        ("trip-2", 1, "applied", 1),
    ]
    assert "published again after a restart" in outcomes[0].detail


async def test_restart_mid_stream_resumes_exactly_where_the_log_and_group_left_off(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    unique_group: str,
) -> None:
    # The first run assigns the partition directly: Tansu ignores LeaveGroup, so a group
    # member that stops is only forgotten when its session expires, and a second join would
    # cost ~11 s here. The group path after a dead member is the crash test's subject.
    first = make_processor()
    async with running(first):
        for n in range(3):
            await send(a_trip(f"trip-{n}"))
        await send(a_reset("forged", MALLORY, operator="alice", activation=(0, "trip-0")))
        poison = await send(b"poison")  # recorded as a stop, with its offset
        await send(a_trip("trip-0"))  # appends nothing: only the committed offset remembers it
        await eventually(lambda: first.next_command_offset == 6, timeout=WAIT)
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 6

    # While no processor runs: more commands, one of them a repeat of an applied one.
    await send(a_trip("trip-3"))
    await send(a_trip("trip-1"))
    await send(a_reset("valid", ALICE, activation=(0, "trip-0")))
    second = make_processor(join_group=True)
    async with running(second):
        await send(a_trip("trip-4"))
        logged = await wait_for_log(kafka_bootstrap, registry, 8)
        await eventually(lambda: second.next_command_offset == 10, timeout=WAIT)

    assert summary(logged) == [
        (0, "activated", "trip-0", 0),
        (1, "trip_recorded", "trip-1", 1),
        (2, "trip_recorded", "trip-2", 2),
        (3, "reset_rejected", "forged", 3),
        (4, "trip_recorded", derive_id("undecodable-command", registry.commands.name, poison), 4),
        (5, "trip_recorded", "trip-3", 6),
        (6, "reset", "valid", 8),
        (7, "activated", "trip-4", 9),
    ]
    # Resumed at the committed offset 6, past the tracked 4 + 1: only the new commands.
    assert second.stats.commands_seen == 4
    assert second.stats.dead_lettered == 0
    assert second.stats.duplicates == 1  # trip-1 again
    assert second.state == fold_log(logged).state
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 10

"""The command processor against a real broker: decide, append, commit, fence, dead-letter.

Most tests assign the command partition directly (``join_group=False``): a group join costs
~3 s on the embedded broker and the group is not what they test. The crash test runs
``python -m ess.processor`` twice, in its real group, as production does; the restart test's
second run joins the group too.
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

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ess.clock import ManualClock, SystemClock
from ess.core import ResetPolicy
from ess.core.ids import derive_id
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from ess.kafka import consumer, producer, read_to_end
from ess.processor import (
    SOURCE,
    CommandProcessor,
    FencedError,
    StartupRefused,
    default_group_id,
)
from ess.statelog import KafkaStateLog, LoggedEntry, fold_log
from schemas import (
    ActivatedEntry,
    DeadLetter,
    ReasonCode,
    ResetCommand,
    SecurityEvent,
    TopicRegistry,
    TripCommand,
    TripRecordedEntry,
    decode,
    encode,
    topic_registry,
)
from tests.helpers import eventually

pytestmark = pytest.mark.integration

#: Bound for anything that should take milliseconds; a group join takes ~3 s on Tansu, and a
#: join after a member was SIGKILLed waits for that member's 6 s session to expire.
WAIT = 20.0
T0 = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)

ALICE = generate_private_key()
BOB = generate_private_key()
MALLORY = generate_private_key()


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
    operator: str = "alice",
    nonce: str | None = None,
    ts: datetime = T0,
) -> ResetCommand:
    return sign_reset(
        key, command_id=command_id, operator=operator, ts=ts, nonce=nonce or f"n-{command_id}"
    )


def policy(quorum: int = 1) -> ResetPolicy:
    return ResetPolicy(
        operators={"alice": public_bytes(ALICE), "bob": public_bytes(BOB)}, quorum=quorum
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


@pytest.fixture
def make_processor(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> Callable[..., CommandProcessor]:
    def make(
        *,
        reset_policy: ResetPolicy | None = None,
        group_id: str | None = None,
        join_group: bool = False,
    ) -> CommandProcessor:
        return CommandProcessor(
            kafka_bootstrap,
            registry,
            reset_policy=reset_policy or policy(),
            clock=ManualClock(T0),
            group_id=group_id or unique_group,
            join_group=join_group,
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


async def log_of(bootstrap: str, registry: TopicRegistry) -> list[LoggedEntry]:
    return await KafkaStateLog(bootstrap, registry.state.name).read()


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
    assert processor.state.active
    assert processor.state == fold_log(logged).state
    assert (processor.stats.commands_seen, processor.stats.entries_appended) == (4, 3)
    assert processor.stats.duplicates == 1
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 4


# --------------------------------------------------------------------------- poison commands


async def test_poison_commands_are_dead_lettered_and_the_next_command_still_applies(
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
        logged = await wait_for_log(kafka_bootstrap, registry, 1)

    assert summary(logged) == [(0, "activated", "after-the-poison", good)]
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
    assert processor.stats.entries_appended == 1


# --------------------------------------------------------------------------- resets


async def test_resets_signed_forged_unknown_expired_and_replayed(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    processor = make_processor()
    async with running(processor):
        await send(a_trip("trip-1"))
        await send(a_reset("forged", MALLORY, operator="alice"))  # alice's name, wrong key
        await send(a_reset("unknown", MALLORY, operator="mallory"))
        await send(a_reset("expired", ALICE, ts=T0 - timedelta(minutes=10)))
        await send(a_reset("valid", ALICE, nonce="n-1"))
        await send(a_trip("trip-2"))
        await send(a_reset("replayed", ALICE, nonce="n-1"))  # a new id, a burnt nonce
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
    assert processor.state.active
    assert processor.state.epoch == 1

    events: list[SecurityEvent] = [
        decode(SecurityEvent, r.value)
        for r in await read_to_end(kafka_bootstrap, registry.security.name, timeout=WAIT)
    ]
    assert [(e.event_id, e.kind, e.source) for e in events] == [
        (derive_id(SOURCE, "unauthorized_access", command_id), "unauthorized_access", SOURCE)
        for command_id in ("forged", "unknown")
    ]
    assert "'alice'" in events[0].detail
    assert "bad_signature" in events[0].detail
    assert "'mallory'" in events[1].detail
    assert "unknown_operator" in events[1].detail
    forged_signature = a_reset("forged", MALLORY, operator="alice").signature
    assert all(forged_signature not in e.detail for e in events)
    assert processor.stats.security_events == 2


async def test_reset_with_quorum_two_needs_two_distinct_operators(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    processor = make_processor(reset_policy=policy(quorum=2))
    async with running(processor):
        await send(a_trip("trip-1"))
        await send(a_reset("alice-approves", ALICE, operator="alice"))
        await send(a_reset("bob-approves", BOB, operator="bob"))
        logged = await wait_for_log(kafka_bootstrap, registry, 3)

    assert summary(logged) == [
        (0, "activated", "trip-1", 0),
        (1, "reset_approval", "alice-approves", 1),
        (2, "reset", "bob-approves", 2),
    ]
    assert getattr(logged[1].entry, "approvals", None) == ("alice",)
    assert getattr(logged[2].entry, "operators", None) == ("alice", "bob")
    assert not processor.state.active


# --------------------------------------------------------------------------- fencing


async def test_a_foreign_entry_in_the_state_log_fences_the_processor(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    unique_group: str,
) -> None:
    processor = make_processor()
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await send(a_trip("trip-1"))
        await wait_for_log(kafka_bootstrap, registry, 1)
        # Someone else writes to ess.state: a valid-looking next entry.
        async with KafkaStateLog(kafka_bootstrap, registry.state.name) as intruder:
            await intruder.append(
                TripRecordedEntry(
                    seq=1, command_id="intruder", ts=T0, reason="manual", source="operator:x"
                )
            )
        await send(a_trip("trip-2"))
        with pytest.raises(FencedError, match="another writer appended"):
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
    assert processor.stats.entries_appended == 1
    # The fenced command was not committed: the rightful owner will process it.
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 1


async def test_two_processors_writing_one_log_leave_exactly_one_standing(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    send: Sender,
    make_processor: Callable[..., CommandProcessor],
    unique_group: str,
) -> None:
    # Two groups: both consume every command, as with a processor started by mistake.
    first = make_processor(group_id=f"{unique_group}-a")
    second = make_processor(group_id=f"{unique_group}-b")
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
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait(tasks, timeout=WAIT)

    logged = await log_of(kafka_bootstrap, registry)
    # Whoever appended first wins; a racing second copy (same seq) is skipped by every reader.
    assert {i.entry.seq for i in logged} == {0}
    assert fold_log(logged).state.next_seq == 1
    assert fold_log(logged).state.active


# --------------------------------------------------------------------------- refusing to start


async def test_a_corrupt_state_log_refuses_start(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    async with KafkaStateLog(kafka_bootstrap, registry.state.name) as log:
        await log.append(ActivatedEntry(seq=0, command_id="t", ts=T0, reason="manual", source="x"))
    writer = producer(kafka_bootstrap, read_to_end_safe=True)
    await writer.start()
    try:
        await writer.send_and_wait(registry.state.name, b"\x00garbage{", key=b"ess")
    finally:
        await writer.stop()

    processor = make_processor()
    with pytest.raises(StartupRefused, match=r"offset 1 is corrupt"):
        await asyncio.wait_for(processor.run(asyncio.Event()), WAIT)
    assert not processor.owns_commands


async def test_a_seq_gap_in_the_state_log_refuses_start(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    make_processor: Callable[..., CommandProcessor],
) -> None:
    async with KafkaStateLog(kafka_bootstrap, registry.state.name) as log:
        for seq in (0, 2):
            await log.append(
                ActivatedEntry(seq=seq, command_id=f"t{seq}", ts=T0, reason="manual", source="x")
            )
    with pytest.raises(StartupRefused, match="expected seq 1, got 2"):
        await asyncio.wait_for(make_processor().run(asyncio.Event()), WAIT)


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
    processor = CommandProcessor(
        kafka_bootstrap, reg, reset_policy=policy(), clock=SystemClock(), group_id=unique_group
    )
    with pytest.raises(StartupRefused, match=rf"{reg.commands.name} has 3 partitions"):
        await asyncio.wait_for(processor.run(asyncio.Event()), WAIT)


async def test_missing_topics_refuse_start_without_creating_them(
    kafka_bootstrap: str, unique_group: str
) -> None:
    reg = topic_registry(prefix=f"t{os.urandom(6).hex()}")
    processor = CommandProcessor(
        kafka_bootstrap, reg, reset_policy=policy(), clock=SystemClock(), group_id=unique_group
    )
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
    bootstrap: str, registry: TopicRegistry, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """``python -m ess.processor`` as production runs it, JSON logs to ``log``. Its group is
    named after the topic prefix, so it is unique to the test."""
    environment = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESS_TOPIC_PREFIX": registry.prefix,
        "ESS_OPERATOR_KEYS_DIR": str(log.parent / "no-keys"),
        "ESS_LOG_JSON": "true",
        **env,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ess.processor"],
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
    crashing = spawn_processor(kafka_bootstrap, registry, crash_log, ESS_FAULT="crash_after_append")

    assert await exit_status(crashing) == -signal.SIGKILL, crash_log.read_text()
    assert log_records(crash_log, "fault injection: SIGKILL after append, before commit")
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
    assert not log_records(survivor_log, "command already applied; nothing appended")
    assert log_records(survivor_log, "command processor stopped")
    assert await committed(kafka_bootstrap, group, registry.commands.name) == 2


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
        await send(a_reset("forged", MALLORY, operator="alice"))
        await send(b"poison")  # appends nothing: only the committed offset remembers it
        await eventually(lambda: first.next_command_offset == 5, timeout=WAIT)
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 5

    # While no processor runs: more commands, one of them a repeat of an applied one.
    await send(a_trip("trip-3"))
    await send(a_trip("trip-1"))
    await send(a_reset("valid", ALICE))
    second = make_processor(join_group=True)
    async with running(second):
        await send(a_trip("trip-4"))
        logged = await wait_for_log(kafka_bootstrap, registry, 7)
        await eventually(lambda: second.next_command_offset == 9, timeout=WAIT)

    assert summary(logged) == [
        (0, "activated", "trip-0", 0),
        (1, "trip_recorded", "trip-1", 1),
        (2, "trip_recorded", "trip-2", 2),
        (3, "reset_rejected", "forged", 3),
        (4, "trip_recorded", "trip-3", 5),
        (5, "reset", "valid", 7),
        (6, "activated", "trip-4", 8),
    ]
    # Resumed at the committed offset 5, past the tracked 3 + 1: only the new commands.
    assert second.stats.commands_seen == 4
    assert second.stats.dead_lettered == 0
    assert second.stats.duplicates == 1  # trip-1 again
    assert second.state == fold_log(logged).state
    assert await committed(kafka_bootstrap, unique_group, registry.commands.name) == 9

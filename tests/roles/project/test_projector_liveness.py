"""Issue 12, item 2: the projector vouches for INACTIVE only while the single writer lives.

A trading gate (:class:`TradingGate` fed by :class:`PolicyStoreGateFeed`) reads what the
projector writes. It opens while the command processor's signed owner beats arrive and its
command backlog is bounded, and closes (the record goes stale) within ``processor_timeout``
(or ``backlog_timeout``) plus the gate's ``max_record_age`` once they stop. Beats that prove
nothing (a standby's, a foreign key's, old ones replayed or read back on start) never count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from loguru import logger

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import SystemClock
from ess.core.attestation import SigningKey
from ess.core.signing import generate_private_key
from ess.gate import GateState, PolicyStoreGateFeed, TradingGate
from ess.kafka.clients import producer, read_to_end
from ess.roles.command.processor import CommandProcessor
from ess.roles.project.projector import Projector
from schemas import ReasonCode, TopicRegistry, TripCommand, encode, topic_registry
from tests.helpers import eventually
from tests.roles.project.test_projector_broker import WAIT, Rig, metric, open_rig, running
from tests.statelog_support import PROCESSOR, policy, sealed_beat, trust

pytestmark = pytest.mark.integration

#: The projector's processor_timeout and backlog_timeout in these tests (seconds).
PROCESSOR_TIMEOUT = 1.0
BACKLOG_TIMEOUT = 1.0
#: The gate's max_record_age (seconds).
MAX_RECORD_AGE = 1.0
#: A generous bound for "the gate closes": three times the designed worst case, plus slack.
CLOSE_BOUND = 3 * (max(PROCESSOR_TIMEOUT, BACKLOG_TIMEOUT) + MAX_RECORD_AGE) + 2.0
LIVENESS_KEY = b"ess-command-processor"


@pytest.fixture
async def rig(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Rig]:
    async with open_rig(kafka_bootstrap, registry) as opened:
        await opened.trip()
        await opened.reset()  # INACTIVE at seq 1: the record that lets gates open
        yield opened


def watched(rig: Rig) -> Projector:
    return rig.projector(processor_timeout=PROCESSOR_TIMEOUT, backlog_timeout=BACKLOG_TIMEOUT)


@contextlib.asynccontextmanager
async def gate_on(rig: Rig) -> AsyncIterator[TradingGate]:
    gate = TradingGate(max_record_age=MAX_RECORD_AGE, max_clock_skew=0.1)
    async with PolicyStoreGateFeed(rig.store, gate, poll_interval=0.05):
        yield gate


async def stays_open(gate: TradingGate, seconds: float) -> None:
    """The gate answers "allowed" at every look for ``seconds`` (an invariant over time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert gate.allowed(), gate.why()
        await asyncio.sleep(0.05)


async def closes(gate: TradingGate, since: float, what: str) -> float:
    """Wait (generously) for the gate to close; log and return how long it took."""
    await eventually(lambda: not gate.allowed(), timeout=CLOSE_BOUND, message=f"gate after {what}")
    elapsed = time.monotonic() - since
    logger.bind(elapsed=round(elapsed, 3), what=what).info(
        "gate closed {elapsed:.2f}s after {what}", elapsed=elapsed, what=what
    )
    print(f"\nMEASURED gate close: {elapsed:.2f}s after {what}")
    return elapsed


async def publish_liveness(rig: Rig, *values: bytes) -> None:
    out = producer(rig.bootstrap)
    await out.start()
    try:
        for value in values:
            await out.send_and_wait(rig.topics.liveness.name, value, key=LIVENESS_KEY)
    finally:
        await out.stop()


@contextlib.asynccontextmanager
async def streaming(
    rig: Rig, value: Callable[[int], bytes], *, interval: float = 0.1
) -> AsyncIterator[list[int]]:
    """Publish ``value(n)`` on ess.liveness every ``interval`` while the block runs; the
    yielded list holds how many were sent."""
    out = producer(rig.bootstrap)
    await out.start()
    sent = [0]

    async def loop() -> None:
        while True:
            await out.send_and_wait(rig.topics.liveness.name, value(sent[0]), key=LIVENESS_KEY)
            sent[0] += 1
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await out.stop()


FOREIGN_KEY = SigningKey(generate_private_key())


def foreign_marker(rig: Rig) -> bytes:
    """A beat no projector accepts, counted in ``ess_liveness_foreign_records_total``: once it
    is counted, everything published before it on ess.liveness has been read."""
    return sealed_beat(rig.topics, run_id="marker", beat_no=0, key=FOREIGN_KEY)


async def read_up_to_here(rig: Rig, projector: Projector, *, foreign_before: int = 0) -> None:
    """Publish a marker and wait until the projector has read it (and so everything before
    it). Call it once nothing else is being published; ``foreign_before`` is how many other
    records that do not verify were published to ess.liveness before it."""
    await publish_liveness(rig, foreign_marker(rig))
    await eventually(
        lambda: metric(projector, "ess_liveness_foreign_records_total") >= foreign_before + 1,
        timeout=WAIT,
    )


async def for_longer_than_the_timeout(sent: list[int]) -> None:
    """Wait until a stream every 0.1 s has run for twice ``processor_timeout``."""
    await eventually(lambda: sent[0] >= 2 * PROCESSOR_TIMEOUT / 0.1, timeout=WAIT)


# --------------------------------------------------------------------------- beats stop


async def test_the_gate_opens_while_beats_flow_and_closes_when_they_stop(rig: Rig) -> None:
    projector = watched(rig)
    async with running(projector), gate_on(rig) as gate:
        async with rig.beating():
            await eventually(gate.allowed, timeout=WAIT)
            assert not rig.record().active
            # Beats keep it open well past processor_timeout + max_record_age.
            await stays_open(gate, 2 * (PROCESSOR_TIMEOUT + MAX_RECORD_AGE))
            assert projector.writer_problem() is None
        stopped = time.monotonic()

        await closes(gate, stopped, "the processor beats stopped")
        assert gate.status().state is GateState.STALE
        assert gate.why().startswith("stale: last refresh")
        status = projector.status()
        assert status.fault is not None
        assert status.fault.startswith("no beat from the command processor for")
        assert status.checks["command_processor"] == "gone"
        assert status.health == "CRITICAL"
        assert status.healthy  # the projector is doing its job: not vouching
        assert metric(projector, "ess_command_processor_up") == 0
        # The INACTIVE record is still there, just no longer refreshed.
        assert not rig.record().active

        # A processor that comes back is vouched for again.
        async with rig.beating():
            await eventually(gate.allowed, timeout=WAIT)


async def test_beats_read_back_on_start_do_not_vouch_for_a_processor_now_dead(rig: Rig) -> None:
    async with rig.beating():

        async def beats_on_topic() -> bool:
            return len(await read_to_end(rig.bootstrap, rig.topics.liveness.name)) >= 3

        await eventually(beats_on_topic, timeout=WAIT)
    # The processor died; its last beats (seconds old, well inside any clock-skew allowance)
    # stay on ess.liveness. Time has to pass for them to be older than processor_timeout.
    await asyncio.sleep(PROCESSOR_TIMEOUT + 0.5)

    projector = watched(rig)
    async with running(projector), gate_on(rig) as gate:
        await eventually(lambda: projector.status().caught_up, timeout=WAIT)
        beats = projector.status().beats_sent
        await eventually(lambda: projector.status().beats_sent >= beats + 5, timeout=WAIT)
        assert EMERGENCY_STOP_KEY not in rig.store.data
        assert not gate.allowed()
        assert projector.writer_problem() is not None

        async with rig.beating():  # a live processor is vouched for at once
            await eventually(gate.allowed, timeout=WAIT)


# --------------------------------------------------------------------------- backlog


async def test_a_command_the_processor_never_reaches_closes_the_gate(rig: Rig) -> None:
    projector = watched(rig)
    async with running(projector), gate_on(rig) as gate:
        # Beats keep coming, but they never get past command 0: a wedged processor.
        async with rig.beating(next_command_offset=0):
            await eventually(gate.allowed, timeout=WAIT)
            out = producer(rig.bootstrap)
            await out.start()
            try:
                trip = TripCommand(
                    command_id=f"trip-{uuid.uuid4().hex[:8]}",
                    reason=ReasonCode.MANUAL,
                    detail="nobody will process this",
                    source="operator:test",
                    ts=datetime.now(UTC),
                )
                await out.send_and_wait(rig.topics.commands.name, encode(trip), key=b"ess")
            finally:
                await out.stop()
            sent = time.monotonic()

            await closes(gate, sent, "a command started waiting for the processor")
            status = projector.status()
            assert status.fault is not None
            assert "command at offset 0 has waited" in status.fault
            assert status.checks["command_processor"] == "gone"
            assert metric(projector, "ess_command_backlog_seconds") > BACKLOG_TIMEOUT
            assert metric(projector, "ess_command_processor_up") == 0

        # The processor catches up (its beats say command 0 is done): vouched for again.
        async with rig.beating(next_command_offset=1):
            await eventually(gate.allowed, timeout=WAIT)
            assert metric(projector, "ess_command_backlog_seconds") == 0


# --------------------------------------------------------------------- beats that prove nothing


async def never_vouched(
    rig: Rig, projector: Projector, gate: TradingGate, *, foreign_before: int = 0
) -> None:
    """Once the beats streamed so far are read: nothing was ever vouched for."""
    await read_up_to_here(rig, projector, foreign_before=foreign_before)
    assert EMERGENCY_STOP_KEY not in rig.store.data
    assert not gate.allowed()
    assert projector.writer_problem() is not None
    assert metric(projector, "ess_command_processor_up") == 0


async def test_a_standbys_beats_do_not_count(rig: Rig) -> None:
    projector = watched(rig)
    run_id = uuid.uuid4().hex
    async with running(projector), gate_on(rig) as gate:
        standby = lambda n: sealed_beat(rig.topics, run_id=run_id, beat_no=n, owner=False)  # noqa: E731
        async with streaming(rig, standby) as sent:
            await for_longer_than_the_timeout(sent)
        await never_vouched(rig, projector, gate)
        assert projector.writer_problem() == (
            "no beat from a command processor that owns the command partition"
        )
        async with rig.beating():  # the owner's beats do
            await eventually(gate.allowed, timeout=WAIT)


@pytest.mark.parametrize("forgery", ["foreign key", "another deployment's topic"])
async def test_beats_that_do_not_verify_do_not_count(rig: Rig, forgery: str) -> None:
    other = topic_registry(prefix=f"o{uuid.uuid4().hex[:12]}")
    run_id = uuid.uuid4().hex

    def forged(n: int) -> bytes:
        if forgery == "foreign key":
            return sealed_beat(rig.topics, run_id=run_id, beat_no=n, key=FOREIGN_KEY)
        # The processor's own key, but sealed for another liveness topic: a copied beat.
        return sealed_beat(other, run_id=run_id, beat_no=n, key=PROCESSOR)

    projector = watched(rig)
    async with running(projector), gate_on(rig) as gate:
        async with streaming(rig, forged) as sent:
            await for_longer_than_the_timeout(sent)
        await never_vouched(rig, projector, gate, foreign_before=sent[0])
        assert metric(projector, "ess_liveness_foreign_records_total") == sent[0] + 1
        async with rig.beating():
            await eventually(gate.allowed, timeout=WAIT)


async def test_replayed_old_beats_do_not_count(rig: Rig) -> None:
    run_id = uuid.uuid4().hex
    # Captured beats of one run: the attacker replays the early ones after the processor died.
    captured = [sealed_beat(rig.topics, run_id=run_id, beat_no=n) for n in range(40)]
    projector = watched(rig)
    async with running(projector), gate_on(rig) as gate:
        async with streaming(rig, lambda n: captured[20 + min(n, 19)]) as sent:
            await eventually(gate.allowed, timeout=WAIT)
            await eventually(lambda: sent[0] >= 20, timeout=WAIT)
        stopped = time.monotonic()
        await closes(gate, stopped, "the beats stopped (before the replay)")
        writes = rig.store.writes

        async with streaming(rig, lambda n: captured[n % 20]) as sent:
            await for_longer_than_the_timeout(sent)
        await read_up_to_here(rig, projector)
        assert rig.store.writes == writes  # nothing re-asserted since the beats stopped
        assert not gate.allowed()
        problem = projector.writer_problem()
        assert problem is not None
        assert problem.startswith("no beat from the command processor for")


# --------------------------------------------------------------------------- the real processor


async def test_stopping_the_real_command_processor_closes_the_gate(
    rig: Rig, unique_group: str
) -> None:
    def processor() -> CommandProcessor:
        return CommandProcessor(
            rig.bootstrap,
            rig.topics,
            reset_policy=policy(),
            clock=SystemClock(),
            signing_key=PROCESSOR,
            trust=trust(rig.topics.state.name),
            group_id=unique_group,
            join_group=False,
            beat_interval=0.2,
        )

    projector = watched(rig)
    async with running(projector), gate_on(rig) as gate:
        stop = asyncio.Event()
        first = processor()
        task = asyncio.create_task(first.run(stop))
        try:
            await eventually(lambda: first.owns_commands or task.done(), timeout=WAIT)
            await eventually(gate.allowed, timeout=WAIT)
            await stays_open(gate, PROCESSOR_TIMEOUT + MAX_RECORD_AGE)
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)
        stopped = time.monotonic()

        await closes(gate, stopped, "the command processor stopped")
        status = projector.status()
        assert status.fault is not None
        assert status.fault.startswith("no beat from the command processor for")

        # A new processor run (a new run_id, beat numbers from 0 again) reopens it.
        stop = asyncio.Event()
        second = processor()
        task = asyncio.create_task(second.run(stop))
        try:
            await eventually(gate.allowed, timeout=WAIT)
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)

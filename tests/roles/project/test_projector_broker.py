"""The projector against a real broker: ess.state in, PolicyStore record, events, health out.

Every entry in these logs is sealed by the test processor key (:class:`LogBuilder`); a test
that expects an INACTIVE record runs a stand-in processor's liveness beats (``rig.beating()``),
because the projector vouches for INACTIVE only while the single writer is alive.

The :class:`Rig` and helpers here are shared by the ``test_projector_*.py`` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from ess.api.fakes import FakePolicyStore
from ess.api.protocols import EMERGENCY_STOP_KEY, PolicyStore
from ess.core.attestation import seal_problem
from ess.core.reader import Trust, seal_entry
from ess.kafka.broker import EmbeddedBroker, ensure_topics
from ess.kafka.clients import consumer, producer, read_to_end
from ess.observability.status import serve_status
from ess.roles.project.metrics import ProjectorMetrics
from ess.roles.project.projector import Projector, run_projector
from ess.settings import EssSettings
from ess.statelog import STATE_KEY, InMemoryStateLog, KafkaStateLog, RawRecord
from schemas import (
    EmergencyEvent,
    EmergencyResetEvent,
    EmergencyStopEvent,
    HealthBeat,
    PolicyRecord,
    ReasonCode,
    ResetEntry,
    StateEntry,
    TopicRegistry,
    TripRecordedEntry,
    decode,
    topic_registry,
    validate,
)
from tests.helpers import eventually
from tests.statelog_support import PROCESSOR, LogBuilder, beating, trust

pytestmark = pytest.mark.integration

INTERVAL = 0.1
WAIT = 15.0
#: The entries' own time: recent, so their events are inside the events topic's retention.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


@dataclass
class Rig:
    """One test's broker topics, sealed log, PolicyStore and health-beat collector.

    ``log`` builds the entries as the command processor would (decided, chained, sealed);
    :meth:`trip`, :meth:`reset` and :meth:`flush` append them to ``ess.state``.
    """

    bootstrap: str
    topics: TopicRegistry
    store: FakePolicyStore = field(default_factory=FakePolicyStore)
    beats: list[HealthBeat] = field(default_factory=list)
    quorum: int = 1
    log: LogBuilder = field(init=False)
    flushed: int = 0

    def __post_init__(self) -> None:
        self.log = LogBuilder(self.topics.state.name, quorum=self.quorum)

    def trust(self) -> Trust:
        return trust(self.topics.state.name)

    def projector(self, *, store: PolicyStore | None = None, **kwargs: Any) -> Projector:
        options: dict[str, Any] = {
            "trust": self.trust(),
            "refresh_interval": INTERVAL,
            "health_interval": INTERVAL,
            **kwargs,
        }
        return Projector(self.bootstrap, self.topics, store or self.store, **options)

    def beating(self, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[None]:
        """A stand-in command processor's signed owner beats while the block runs."""
        return beating(self.bootstrap, self.topics, **kwargs)

    def at(self) -> datetime:
        """A fresh entry time: one second per entry after T0."""
        return T0 + timedelta(seconds=len(self.log.values))

    async def trip(self, **kwargs: Any) -> StateEntry:
        """One trip through the real decider, sealed and appended."""
        kwargs.setdefault("ts", self.at())
        kwargs.setdefault("source", "detector:daily_loss")
        entry = self.log.trip(**kwargs)
        await self.flush()
        return entry

    async def reset(self, *operators: str) -> StateEntry:
        """A signed reset (approvals first with a quorum), sealed and appended."""
        entry = self.log.reset(*operators, ts=self.at())
        await self.flush()
        return entry

    async def flush(self) -> None:
        """Append the built entries not yet on the broker, through the real state log."""
        async with KafkaStateLog(self.bootstrap, self.topics.state.name) as state:
            for value in self.log.values[self.flushed :]:
                await state.append(value)
                self.flushed += 1

    async def append_raw(self, value: bytes) -> int:
        """Produce any bytes to ess.state (a foreign writer); returns the offset."""
        raw = producer(self.bootstrap, read_to_end_safe=True)
        await raw.start()
        try:
            metadata = await raw.send_and_wait(self.topics.state.name, value, key=STATE_KEY)
            return int(metadata.offset)
        finally:
            await raw.stop()

    async def events(self) -> list[EmergencyStopEvent | EmergencyResetEvent]:
        records = await read_to_end(self.bootstrap, self.topics.events.name)
        return [decode(EmergencyEvent, record.value) for record in records]

    def record(self) -> PolicyRecord:
        value = self.store.data.get(EMERGENCY_STOP_KEY)
        assert value is not None, "no emergency_stop record yet"
        return validate(PolicyRecord, value)

    def last_beat(self) -> HealthBeat:
        assert self.beats, "no health beat yet"
        return self.beats[-1]


@contextlib.asynccontextmanager
async def running(projector: Projector) -> AsyncIterator[Projector]:
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def _collect(reader: AIOKafkaConsumer, into: list[HealthBeat]) -> None:
    async for record in reader:
        into.append(decode(HealthBeat, record.value))


@contextlib.asynccontextmanager
async def open_rig(bootstrap: str, registry: TopicRegistry, **kwargs: Any) -> AsyncIterator[Rig]:
    """A :class:`Rig` collecting ESS's health beats for the duration of the block."""
    rig = Rig(bootstrap, registry, **kwargs)
    # No group: every partition of the health topic, from the beginning.
    reader = consumer(bootstrap, registry.health.name, group_id=None)
    await reader.start()
    task = asyncio.create_task(_collect(reader, rig.beats))
    try:
        yield rig
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await reader.stop()


@pytest.fixture
async def rig(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Rig]:
    async with open_rig(kafka_bootstrap, registry) as opened:
        yield opened


def caught_up(projector: Projector) -> bool:
    return projector.status().caught_up


def metric(projector: Projector, name: str, labels: dict[str, str] | None = None) -> float:
    return projector.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def stops_refreshing(rig: Rig, projector: Projector) -> None:
    """The record does not change while the projector beats on: it stopped refreshing."""
    frozen = dict(rig.store.data[EMERGENCY_STOP_KEY])
    writes = rig.store.writes
    beats = projector.status().beats_sent
    # Several beats (each INTERVAL apart) is several refresh intervals.
    await eventually(lambda: projector.status().beats_sent >= beats + 4, timeout=WAIT)
    assert rig.store.writes == writes
    assert rig.store.data[EMERGENCY_STOP_KEY] == frozen


async def keeps_refreshing(rig: Rig) -> None:
    """``refreshed_at`` of the stored record moves on: the projector re-asserts it."""
    first = rig.record()

    def refreshed() -> bool:
        later = rig.record()
        assert first.refreshed_at is not None
        assert later.refreshed_at is not None
        return later.refreshed_at > first.refreshed_at

    await eventually(refreshed, timeout=WAIT)


# --------------------------------------------------------------------------- the happy path


async def test_trip_then_reset_projects_record_events_and_health(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    async with (
        open_rig(kafka_bootstrap, registry, quorum=2) as rig,
        rig.beating(),
        running(rig.projector()) as projector,
    ):
        await eventually(lambda: caught_up(projector), timeout=WAIT)
        # An empty log is INACTIVE since never; ESS is healthy.
        await eventually(lambda: rig.record().seq is None, timeout=WAIT)
        await eventually(
            lambda: rig.last_beat().status == "HEALTHY" and rig.last_beat().component == "ess",
            timeout=WAIT,
        )
        assert rig.last_beat().checks["command_processor"] == "ok"

        tripped = await rig.trip()

        def active() -> bool:
            record = rig.record()
            assert record.active, record
            assert record.seq == 0, record
            return True

        await eventually(active, timeout=WAIT)
        record = rig.record()
        assert record.reason is ReasonCode.DAILY_LOSS
        assert record.timestamp == tripped.ts
        assert record.auto_recover is False
        assert record.detail == "trip at seq 0"
        stored = rig.store.data[EMERGENCY_STOP_KEY]
        assert set(stored) == {
            "active",
            "reason",
            "timestamp",
            "auto_recover",
            "seq",
            "detail",
            "refreshed_at",
            "activation_entry",
        }
        # The ACTIVE record carries its proof: the activation exactly as the log holds it.
        assert stored["activation_entry"] == orjson.loads(rig.log.values[0])
        assert (
            seal_problem(
                stored["activation_entry"],
                rig.trust().processor_keys,
                scope=rig.topics.state.name,
            )
            is None
        )
        assert await eventually(rig.events, timeout=WAIT) == [
            EmergencyStopEvent(
                reason=ReasonCode.DAILY_LOSS, detail="trip at seq 0", timestamp=tripped.ts, seq=0
            )
        ]
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL" and rig.last_beat().checks["state"] == "ACTIVE"
            ),
            timeout=WAIT,
        )

        # Refreshes re-assert the record: refreshed_at moves, timestamp does not.
        await keeps_refreshing(rig)
        assert rig.record().timestamp == tripped.ts

        # Quorum 2: alice's approval (seq 1), then bob's reset (seq 2).
        reset = await rig.reset("alice", "bob")
        assert isinstance(reset, ResetEntry)
        assert reset.seq == 2

        await eventually(lambda: not rig.record().active and rig.record().seq == 2, timeout=WAIT)
        assert rig.record().timestamp == reset.ts
        assert rig.record().reason is None
        assert "activation_entry" not in rig.store.data[EMERGENCY_STOP_KEY]

        async def two_events() -> bool:
            events = await rig.events()
            assert [e.seq for e in events] == [0, 2], events
            return True

        await eventually(two_events, timeout=WAIT)
        reset_event = (await rig.events())[1]
        assert isinstance(reset_event, EmergencyResetEvent)
        assert reset_event.reset_by == "alice,bob"
        assert reset_event.operators == ("alice", "bob")
        await eventually(
            lambda: (
                rig.last_beat().status == "HEALTHY"
                and rig.last_beat().checks["state"] == "INACTIVE"
            ),
            timeout=WAIT,
        )
        status = projector.status()
        assert (status.status, status.seq, status.epoch, status.healthy) == ("INACTIVE", 2, 1, True)
        assert status.fault is None
    # The store never failed, so no beat sent while the processor was vouched for may have
    # called the store stale: a policy_store_stale rule would trip on that.
    assert rig.beats
    vouched = [beat for beat in rig.beats if beat.checks.get("command_processor") == "ok"]
    assert vouched
    assert all(beat.checks.get("policy_store") != "stale" for beat in vouched)


async def test_restart_replays_the_log_without_republishing(rig: Rig) -> None:
    # Written before any projector ran: the first one must publish both at catch-up.
    await rig.trip()
    await rig.trip()  # trip_recorded: announces nothing
    await rig.reset()

    async with rig.beating():
        async with running(rig.projector()) as first:

            async def published() -> bool:
                return first.status().events_published_seq == 2

            await eventually(published, timeout=WAIT)
            await eventually(lambda: rig.record().seq == 2, timeout=WAIT)
        record_before = rig.record()
        events_before = await rig.events()
        assert [e.seq for e in events_before] == [0, 2]

        second_metrics = ProjectorMetrics()
        writes_before = rig.store.writes
        async with running(rig.projector(metrics=second_metrics)) as second:
            await eventually(lambda: caught_up(second), timeout=WAIT)
            await eventually(lambda: rig.store.writes > writes_before, timeout=WAIT)
            # The same record (only the refresh time moves) and nothing queued to republish.
            assert rig.record().model_copy(
                update={"refreshed_at": None}
            ) == record_before.model_copy(update={"refreshed_at": None})
            assert second.status().events_pending == 0
            # Nothing was published by this run: the topic already held both events.
            assert second.status().events_published_seq is None
            # Counters derive from the log: the replay counts each entry once.
            reg = second_metrics.registry
            assert reg.get_sample_value("ess_trips_total", {"reason": "daily_loss"}) == 2
            assert reg.get_sample_value("ess_resets_total") == 1
            assert reg.get_sample_value(
                "ess_events_published_total", {"type": "emergency.stop"}
            ) in {
                None,
                0.0,
            }

            # A new entry after the restart is published, and only it.
            await rig.trip()

            async def three_events() -> bool:
                events = await rig.events()
                assert [e.seq for e in events] == [0, 2, 3], events
                return True

            await eventually(three_events, timeout=WAIT)
    assert (await rig.events())[:2] == events_before


async def test_a_byte_identical_copy_is_skipped_not_a_fault(rig: Rig) -> None:
    # A producer retry lands the same record twice: every reader skips the copy.
    rig.log.trip(ts=rig.at(), source="detector:daily_loss")
    rig.log.reset(ts=rig.at())
    first, second = rig.log.values
    for value in (first, first, second):
        await rig.append_raw(value)

    async with rig.beating(), running(rig.projector()) as projector:
        await eventually(lambda: rig.record().seq == 1, timeout=WAIT)
        status = projector.status()
        assert status.fault is None
        assert status.healthy
        assert status.log_offset == 3
        assert not rig.record().active
        assert metric(projector, "ess_state_log_trusted") == 1
        assert metric(projector, "ess_state_log_foreign_records_total") == 0

        async def two_events() -> bool:
            assert [e.seq for e in await rig.events()] == [0, 1]
            return True

        await eventually(two_events, timeout=WAIT)


# --------------------------------------------------------------------------- failing closed


def gapped(rig: Rig) -> bytes:
    """An entry sealed by the processor key and chained to the head, whose ``seq`` skips one:
    authentic but out of sequence, so the log cannot be folded past it."""
    entry = TripRecordedEntry(
        seq=rig.log.state.next_seq + 1,
        command_id=f"gap-{uuid.uuid4().hex[:8]}",
        ts=rig.at(),
        reason=ReasonCode.DAILY_LOSS,
        detail="after a gap",
        source="detector:daily_loss",
    )
    _, value = seal_entry(entry, PROCESSOR, scope=rig.topics.state.name, prev=rig.log.head)
    return value


def unauthorized_reset(rig: Rig) -> bytes:
    """A reset sealed by the processor key and chained to the head, but with no operator
    authorization: a reader never applies it (a processor key in the wrong hands)."""
    entry = ResetEntry(
        seq=rig.log.state.next_seq,
        command_id=f"reset-{uuid.uuid4().hex[:8]}",
        ts=rig.at(),
        operators=("alice",),
        nonce=uuid.uuid4().hex,
    )
    _, value = seal_entry(entry, PROCESSOR, scope=rig.topics.state.name, prev=rig.log.head)
    return value


async def test_a_gap_keeps_the_active_prefix_and_reports_a_permanent_fault(rig: Rig) -> None:
    await rig.trip()
    await rig.append_raw(gapped(rig))  # seq 2 right after seq 0
    await rig.trip()  # a later authentic entry is not applied either: the fault is permanent

    async with running(rig.projector()) as projector:
        await eventually(lambda: projector.status().fault is not None, timeout=WAIT)
        assert "expected seq 1, got 2" in (projector.status().fault or "")
        # The trusted prefix says ACTIVE: stopping is always safe, so it is (re-)asserted.
        await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)
        await keeps_refreshing(rig)
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL"
                and rig.last_beat().checks["state_log"] == "corrupt"
            ),
            timeout=WAIT,
        )
        status = projector.status()
        assert not status.healthy
        assert status.seq == 0
        assert status.lag == 2
        assert metric(projector, "ess_state_log_trusted") == 0
        assert metric(projector, "ess_state_log_lag_records") == 2


async def test_a_gap_after_an_inactive_prefix_stops_vouching(rig: Rig) -> None:
    await rig.trip()
    await rig.reset()

    async with rig.beating(), running(rig.projector()) as projector:
        await eventually(lambda: rig.record().seq == 1 and not rig.record().active, timeout=WAIT)
        await eventually(lambda: rig.last_beat().status == "HEALTHY", timeout=WAIT)

        await rig.append_raw(gapped(rig))

        await eventually(lambda: projector.status().fault is not None, timeout=WAIT)
        assert "expected seq 2, got 3" in (projector.status().fault or "")
        await stops_refreshing(rig, projector)
        assert rig.record().seq == 1  # the last good record, never refreshed again
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL"
                and rig.last_beat().checks["state_log"] == "corrupt"
                and rig.last_beat().checks["policy_store"] == "stale"
            ),
            timeout=WAIT,
        )
        assert not projector.status().healthy
        assert metric(projector, "ess_state_log_trusted") == 0


async def test_an_unverifiable_reset_is_a_permanent_fault_and_never_resets(rig: Rig) -> None:
    await rig.trip()
    await rig.append_raw(unauthorized_reset(rig))

    async with rig.beating(), running(rig.projector()) as projector:
        await eventually(lambda: projector.status().fault is not None, timeout=WAIT)
        assert "not authorized" in (projector.status().fault or "")
        await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)
        # Not even a later, properly authorized reset ends it: the log cannot be folded.
        await rig.reset()
        await eventually(lambda: projector.status().lag == 2, timeout=WAIT)
        await keeps_refreshing(rig)
        assert rig.record().active
        status = projector.status()
        assert (status.status, status.health, status.healthy) == ("ACTIVE", "CRITICAL", False)
        assert status.checks["state_log"] == "corrupt"
        assert [e.seq for e in await rig.events()] == [0]


async def test_a_lost_entry_is_a_fault_not_an_earlier_state(rig: Rig) -> None:
    await rig.trip()
    await rig.reset()
    rig.log.trip(ts=rig.at(), source="detector:daily_loss")  # seq 2: ACTIVE again...
    rig.log.trip(ts=rig.at(), source="detector:daily_loss")  # seq 3
    await rig.append_raw(rig.log.values[3])  # ...but seq 2 never reached the broker

    async with rig.beating(), running(rig.projector()) as projector:
        # The log says ACTIVE (seq 3 is a trip_recorded) but cannot be folded: the projector
        # must not vouch for the INACTIVE state at seq 1.
        await eventually(lambda: projector.status().checks["state_log"] == "corrupt", timeout=WAIT)
        assert not projector.status().healthy
        if EMERGENCY_STOP_KEY in rig.store.data and not rig.record().active:
            await stops_refreshing(rig, projector)


async def test_an_undecodable_record_is_foreign_and_stops_vouching_for_inactive(rig: Rig) -> None:
    await rig.trip()
    await rig.reset()

    async with rig.beating(), running(rig.projector()) as projector:
        await eventually(lambda: rig.record().seq == 1 and not rig.record().active, timeout=WAIT)
        await eventually(lambda: rig.last_beat().status == "HEALTHY", timeout=WAIT)

        foreign = await rig.append_raw(b'{"seq": 2, "kind": "activated", "oops')

        await eventually(lambda: metric(projector, "ess_state_log_trusted") == 0, timeout=WAIT)
        # Foreign, not broken: no permanent fault, but INACTIVE is no longer vouched for.
        fault = projector.status().fault or ""
        assert f"foreign record at offset {foreign}" in fault
        assert "undecodable" in fault
        await stops_refreshing(rig, projector)
        assert rig.record().seq == 1
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL"
                and rig.last_beat().checks["state_log"] == "untrusted"
            ),
            timeout=WAIT,
        )
        status = projector.status()
        assert status.healthy  # /healthz: following the log and writing works; a restart won't help
        assert status.health == "CRITICAL"
        assert metric(projector, "ess_state_log_foreign_records_total") == 1

        # The log is still followed: the processor's next (authentic) entry is applied, and an
        # ACTIVE record is written even while the log is untrusted.
        await rig.trip()
        await eventually(lambda: rig.record().active and rig.record().seq == 2, timeout=WAIT)
        assert projector.status().checks["state_log"] == "untrusted"
        await keeps_refreshing(rig)


async def test_a_foreign_record_during_catch_up_still_writes_the_active_prefix(rig: Rig) -> None:
    await rig.trip()
    await rig.append_raw(b"\x00not json at all")

    async with running(rig.projector()) as projector:  # no processor beats either
        await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)
        status = projector.status()
        assert status.checks["state_log"] == "untrusted"
        assert status.health == "CRITICAL"
        assert status.fault is not None
        assert "foreign record at offset 1" in status.fault
        assert metric(projector, "ess_state_log_trusted") == 0


async def test_policy_store_failures_are_counted_and_retried(rig: Rig) -> None:
    rig.store.fail_writes = True
    await rig.trip()

    async with running(rig.projector()) as projector:

        def errors() -> float:
            return metric(projector, "ess_policy_store_write_errors_total")

        await eventually(lambda: errors() >= 3, timeout=WAIT)  # retried every interval
        assert EMERGENCY_STOP_KEY not in rig.store.data
        assert projector.status().checks["policy_store"] == "stale"
        # What the detector trips policy_store_stale on (rule ess_policy_store_failing):
        await eventually(
            lambda: rig.last_beat().checks.get("policy_store_writes") == "failing", timeout=WAIT
        )
        assert not projector.status().healthy
        # Events do not wait for the PolicyStore.
        await eventually(lambda: projector.status().events_published_seq == 0, timeout=WAIT)

        rig.store.fail_writes = False

        await eventually(lambda: rig.record().active, timeout=WAIT)
        await eventually(lambda: projector.status().healthy, timeout=WAIT)
        assert metric(projector, "ess_policy_store_last_write_timestamp_seconds") > 0
        assert projector.status().checks["policy_store_writes"] == "ok"


async def test_an_active_store_beyond_the_log_is_not_replaced_with_inactive(rig: Rig) -> None:
    ahead = {"active": True, "reason": "manual", "timestamp": T0.isoformat(), "seq": 7}
    rig.store.data[EMERGENCY_STOP_KEY] = dict(ahead)

    # The log is empty (it may have been lost) and the processor is alive: the projector
    # would vouch for INACTIVE, but not over an ACTIVE record beyond the log.
    async with rig.beating(), running(rig.projector()) as projector:
        await eventually(
            lambda: metric(projector, "ess_policy_store_write_errors_total") >= 2, timeout=WAIT
        )
        assert rig.store.data[EMERGENCY_STOP_KEY] == ahead
        status = projector.status()
        assert not status.healthy
        assert status.fault is not None
        assert "ACTIVE at seq 7, beyond the log's None" in status.fault
        assert status.checks["policy_store"] == "stale"


async def test_a_stored_inactive_record_ahead_of_the_log_is_overwritten(rig: Rig) -> None:
    await rig.trip()
    stale = {"active": False, "reason": None, "timestamp": T0.isoformat(), "seq": 7}
    rig.store.data[EMERGENCY_STOP_KEY] = dict(stale)

    async with running(rig.projector()) as projector:
        await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)
        status = projector.status()
        assert status.healthy
        assert status.checks["policy_store"] == "ok"
        assert "beyond" not in (status.fault or "")


# --------------------------------------------------------------------------- HTTP and entry


async def test_status_and_metrics_endpoints(rig: Rig) -> None:
    tripped = await rig.trip(reason=ReasonCode.FLASH_CRASH)
    projector = rig.projector()
    server = await serve_status(projector, projector.metrics.registry, "127.0.0.1", 0)
    try:
        async with running(projector), aiohttp.ClientSession() as http:
            await eventually(lambda: rig.record().active, timeout=WAIT)

            async def status() -> dict[str, object]:
                async with http.get(f"{server.url}/status") as response:
                    assert response.status == 200
                    body: dict[str, object] = await response.json()
                assert body["last_refresh"] is not None
                return body

            body: dict[str, object] = await eventually(status, timeout=WAIT)
            assert body["status"] == "ACTIVE"
            assert body["reason"] == "flash_crash"
            assert body["detail"] == "trip at seq 0"
            assert body["seq"] == 0
            assert body["epoch"] == 0
            assert body["trips_recorded"] == 0
            assert body["pending_approvals"] == 0
            assert body["log_offset"] == 1
            assert body["healthy"] is True
            assert body["health"] == "CRITICAL"
            assert body["since"] == tripped.ts.isoformat()
            checks = body["checks"]
            assert isinstance(checks, dict)
            # No processor beats in this test: ACTIVE is written anyway, and it shows.
            assert checks["command_processor"] == "gone"

            async with http.get(f"{server.url}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert 'ess_activations_total{reason="flash_crash"} 1.0' in text
            assert "ess_state_active 1.0" in text
            assert "ess_state_last_seq 0.0" in text
            assert "ess_state_log_trusted 1.0" in text
            assert "ess_command_processor_up 0.0" in text

            async with http.get(f"{server.url}/healthz") as response:
                assert response.status == 200
                assert (await response.json())["healthy"] is True
    finally:
        await server.stop()


async def test_run_projector_entry_point_follows_the_configured_topics(rig: Rig) -> None:
    await rig.trip()
    settings = EssSettings(
        kafka={"bootstrap_servers": rig.bootstrap, "topic_prefix": rig.topics.prefix},
        _env_file=None,
    )
    metrics = ProjectorMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projector(
            settings,
            rig.store,
            stop,
            trust=rig.trust(),
            metrics=metrics,
            refresh_interval=INTERVAL,
            health_interval=INTERVAL,
            component="ess-test",
            status_port=0,  # served on a free port for the run, released after it
        )
    )
    try:
        await eventually(lambda: rig.record().active, timeout=WAIT)
        await eventually(lambda: rig.last_beat().component == "ess-test", timeout=WAIT)
        assert metrics.registry.get_sample_value("ess_state_active") == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
    with pytest.raises(ValueError, match="KAFKA_BOOTSTRAP_SERVERS"):
        await run_projector(
            EssSettings(kafka={"bootstrap_servers": ""}, _env_file=None),
            rig.store,
            stop,
            trust=rig.trust(),
        )


async def test_a_lost_broker_stops_refreshing_and_the_projector_still_stops() -> None:
    # Its own broker, because this test kills it (Tansu ignores SIGTERM while clients are
    # connected: a short stop_timeout kills it at once instead of waiting 5 s).
    topics = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
    async with EmbeddedBroker(stop_timeout=0.2) as broker:
        await ensure_topics(broker.bootstrap_servers, topics)
        rig = Rig(broker.bootstrap_servers, topics)
        await rig.trip()
        projector = rig.projector(log_timeout=1.0, io_timeout=0.5)
        async with running(projector):
            await eventually(lambda: rig.record().active, timeout=WAIT)
            await eventually(lambda: projector.status().healthy, timeout=WAIT)

            await asyncio.to_thread(broker.stop)

            await eventually(
                lambda: projector.status().checks["state_log"] == "unreachable", timeout=WAIT
            )
            status = projector.status()
            assert status.health == "CRITICAL"
            assert not status.healthy
            assert status.checks["policy_store"] == "stale"
            frozen = dict(rig.store.data[EMERGENCY_STOP_KEY])
            writes = rig.store.writes

            def beat_errors() -> float:
                return metric(projector, "ess_health_beat_errors_total")

            failed = beat_errors()
            await eventually(lambda: beat_errors() >= failed + 2, timeout=WAIT)
            assert rig.store.writes == writes
            assert rig.store.data[EMERGENCY_STOP_KEY] == frozen


# --------------------------------------------------------------------------- the state-log port


class CountingStateLog(KafkaStateLog):
    """``ess.state`` on Kafka, recording what the projector asks of it: a hand-written spy
    (every call still goes to the real adapter)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.follows: list[int] = []  # from_offset of each follow
        self.yielded: list[RawRecord] = []
        self.answers = 0
        self.ends: list[int] = []
        self.end_offsets = 0
        self.stops = 0

    async def end_offset(self) -> int:
        self.end_offsets += 1
        return await super().end_offset()

    async def stop(self) -> None:
        self.stops += 1
        await super().stop()

    async def follow(
        self,
        from_offset: int = 0,
        *,
        on_fetch: Callable[[], None] | None = None,
        on_end: Callable[[int], None] | None = None,
    ) -> AsyncIterator[list[RawRecord]]:
        self.follows.append(from_offset)

        def answered() -> None:
            self.answers += 1
            if on_fetch is not None:
                on_fetch()

        def ended(end: int) -> None:
            self.ends.append(end)
            if on_end is not None:
                on_end(end)

        async for batch in super().follow(from_offset, on_fetch=answered, on_end=ended):
            self.yielded.extend(batch)
            yield batch


async def test_the_state_is_read_through_the_injected_port(rig: Rig) -> None:
    # The broker's ess.state stays empty: every entry the projector folds comes from the
    # port it was handed (liveness, commands and events are still on the broker).
    rig.log.trip(ts=rig.at(), source="detector:daily_loss")
    log = InMemoryStateLog(rig.log.values, idle_report_sec=0.05)

    async with rig.beating(), running(rig.projector(state_log=log.handle())) as projector:
        await eventually(lambda: caught_up(projector), timeout=WAIT)
        await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)

        async def stop_event() -> bool:
            assert [e.seq for e in await rig.events()] == [0]
            return True

        await eventually(stop_event, timeout=WAIT)

        # Appended to the port after catching up: followed, folded, vouched for.
        rig.log.reset(ts=rig.at())
        await log.append(rig.log.values[-1])
        await eventually(lambda: rig.record().seq == 1 and not rig.record().active, timeout=WAIT)
        await eventually(lambda: rig.last_beat().status == "HEALTHY", timeout=WAIT)
        status = projector.status()
        assert (status.status, status.log_offset, status.lag) == ("INACTIVE", 2, 0)
        assert status.checks["state_log"] == "ok"
    assert rig.flushed == 0
    assert await read_to_end(rig.bootstrap, rig.topics.state.name) == []


async def test_an_injected_kafka_state_log_is_followed_from_zero_on_every_run(rig: Rig) -> None:
    await rig.trip()
    spy = CountingStateLog(rig.bootstrap, rig.topics.state.name)
    projector = rig.projector(state_log=spy)
    try:
        async with running(projector):
            await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)
            await eventually(lambda: caught_up(projector), timeout=WAIT)
            await rig.trip()  # trip_recorded, seq 1: arrives through the port as well
            await eventually(lambda: projector.status().log_offset == 2, timeout=WAIT)
            await eventually(lambda: projector.status().lag == 0, timeout=WAIT)
        assert spy.follows == [0]
        assert [record.offset for record in spy.yielded] == [0, 1]
        assert spy.end_offsets == 1  # the listed end, once on connecting
        assert spy.answers > 0
        assert spy.ends[-1] == 2
        # Handed in, so the caller's to close: the projector did not stop it.
        assert spy.stops == 0

        # A new run forgets what it folded and replays the log through the port from 0.
        async with running(projector):
            # (Until the new run has started, the status is the last run's.)
            await eventually(lambda: spy.follows == [0, 0], timeout=WAIT)
            await eventually(lambda: caught_up(projector), timeout=WAIT)
            assert projector.status().log_offset == 2
        assert spy.follows == [0, 0]
        assert [record.offset for record in spy.yielded] == [0, 1, 0, 1]
    finally:
        await spy.stop()

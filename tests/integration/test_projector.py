"""The projector against a real broker: ess.state in, PolicyStore record, events, health out."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from ess.api.fakes import FakePolicyStore
from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.broker import EmbeddedBroker, ensure_topics
from ess.config import EssSettings
from ess.kafka import consumer, producer, read_to_end
from ess.metrics import ProjectorMetrics
from ess.projector import Projector, run_projector
from ess.statelog import STATE_KEY, KafkaStateLog
from ess.status import serve_status
from schemas import (
    ActivatedEntry,
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

pytestmark = pytest.mark.integration

INTERVAL = 0.1
WAIT = 15.0
#: The entries' own time: recent, so their events are inside the events topic's retention.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def trip(seq: int, reason: ReasonCode = ReasonCode.DAILY_LOSS) -> ActivatedEntry:
    return ActivatedEntry(
        seq=seq,
        command_id=f"trip-{seq}",
        ts=T0 + timedelta(seconds=seq),
        reason=reason,
        detail=f"trip {seq}",
        source="detector:daily_loss",
    )


def recorded(seq: int) -> TripRecordedEntry:
    return TripRecordedEntry(
        seq=seq,
        command_id=f"trip-{seq}",
        ts=T0 + timedelta(seconds=seq),
        reason=ReasonCode.DAILY_LOSS,
        detail=f"trip {seq}",
        source="detector:daily_loss",
    )


def reset(seq: int) -> ResetEntry:
    return ResetEntry(
        seq=seq,
        command_id=f"reset-{seq}",
        ts=T0 + timedelta(seconds=seq),
        operators=("alice", "bob"),
        nonce=f"n-{seq}",
    )


@dataclass
class Rig:
    """One test's broker topics, PolicyStore and health-beat collector."""

    bootstrap: str
    topics: TopicRegistry
    store: FakePolicyStore = field(default_factory=FakePolicyStore)
    beats: list[HealthBeat] = field(default_factory=list)

    def projector(self, **kwargs: object) -> Projector:
        return Projector(
            self.bootstrap,
            self.topics,
            self.store,
            refresh_interval=INTERVAL,
            health_interval=INTERVAL,
            **kwargs,  # type: ignore[arg-type]
        )

    async def append(self, *entries: StateEntry) -> None:
        async with KafkaStateLog(self.bootstrap, self.topics.state.name) as log:
            for entry in entries:
                await log.append(entry)

    async def append_raw(self, value: bytes) -> None:
        raw = producer(self.bootstrap, read_to_end_safe=True)
        await raw.start()
        try:
            await raw.send_and_wait(self.topics.state.name, value, key=STATE_KEY)
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


@pytest.fixture
async def rig(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Rig]:
    rig = Rig(kafka_bootstrap, registry)
    # No group: every partition of the health topic, from the beginning.
    reader = consumer(kafka_bootstrap, registry.health.name, group_id=None)
    await reader.start()
    task = asyncio.create_task(_collect(reader, rig.beats))
    try:
        yield rig
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await reader.stop()


def caught_up(projector: Projector) -> bool:
    return projector.status().caught_up


# --------------------------------------------------------------------------- the happy path


async def test_trip_then_reset_projects_record_events_and_health(rig: Rig) -> None:
    async with running(rig.projector()) as projector:
        await eventually(lambda: caught_up(projector), timeout=WAIT)
        # An empty log is INACTIVE since never; ESS is healthy.
        await eventually(lambda: rig.record().seq is None, timeout=WAIT)
        await eventually(
            lambda: rig.last_beat().status == "HEALTHY" and rig.last_beat().component == "ess",
            timeout=WAIT,
        )

        await rig.append(trip(0))

        def active() -> bool:
            record = rig.record()
            assert record.active, record
            assert record.seq == 0, record
            return True

        await eventually(active, timeout=WAIT)
        record = rig.record()
        assert record.reason is ReasonCode.DAILY_LOSS
        assert record.timestamp == trip(0).ts
        assert record.auto_recover is False
        assert record.detail == "trip 0"
        assert set(rig.store.data[EMERGENCY_STOP_KEY]) == {
            "active",
            "reason",
            "timestamp",
            "auto_recover",
            "seq",
            "detail",
            "refreshed_at",
        }
        assert await eventually(rig.events, timeout=WAIT) == [
            EmergencyStopEvent(
                reason=ReasonCode.DAILY_LOSS, detail="trip 0", timestamp=trip(0).ts, seq=0
            )
        ]
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL" and rig.last_beat().checks["state"] == "ACTIVE"
            ),
            timeout=WAIT,
        )

        # Refreshes re-assert the record: refreshed_at moves, timestamp does not.
        first = rig.record()

        def refreshed() -> bool:
            later = rig.record()
            assert first.refreshed_at is not None
            assert later.refreshed_at is not None
            return later.refreshed_at > first.refreshed_at

        await eventually(refreshed, timeout=WAIT)
        assert rig.record().timestamp == first.timestamp == trip(0).ts

        await rig.append(reset(1))

        await eventually(lambda: not rig.record().active and rig.record().seq == 1, timeout=WAIT)
        assert rig.record().timestamp == reset(1).ts
        assert rig.record().reason is None

        async def two_events() -> bool:
            events = await rig.events()
            assert [e.seq for e in events] == [0, 1], events
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
        assert (status.status, status.seq, status.epoch, status.healthy) == ("INACTIVE", 1, 1, True)
    # The store never failed, so no beat (not even the first ones, before the first write)
    # may have called it stale: a policy_store_stale rule would trip on that.
    assert rig.beats
    assert all(beat.checks.get("policy_store") != "stale" for beat in rig.beats)


async def test_restart_replays_the_log_without_republishing(rig: Rig) -> None:
    # Written before any projector ran: the first one must publish both at catch-up.
    await rig.append(trip(0), recorded(1))
    await rig.append(reset(2))

    async with running(rig.projector()) as first:

        async def published() -> bool:
            return first.status().events_published_seq == 2

        await eventually(published, timeout=WAIT)
        await eventually(lambda: rig.record().seq == 2, timeout=WAIT)
    record_before = rig.record()
    events_before = await rig.events()
    assert [e.seq for e in events_before] == [0, 2]  # trip_recorded announces nothing

    second_metrics = ProjectorMetrics()
    writes_before = rig.store.writes
    async with running(rig.projector(metrics=second_metrics)) as second:
        await eventually(lambda: caught_up(second), timeout=WAIT)
        await eventually(lambda: rig.store.writes > writes_before, timeout=WAIT)
        # The same record (only the refresh time moves) and nothing queued to republish.
        assert rig.record().model_copy(update={"refreshed_at": None}) == record_before.model_copy(
            update={"refreshed_at": None}
        )
        assert second.status().events_pending == 0
        assert second.status().events_published_seq == 2
        # Counters derive from the log: the replay counts each entry once.
        reg = second_metrics.registry
        assert reg.get_sample_value("ess_trips_total", {"reason": "daily_loss"}) == 2
        assert reg.get_sample_value("ess_resets_total") == 1

        # A new entry after the restart is published, and only it.
        await rig.append(trip(3))

        async def three_events() -> bool:
            events = await rig.events()
            assert [e.seq for e in events] == [0, 2, 3], events
            return True

        await eventually(three_events, timeout=WAIT)
    assert (await rig.events())[:2] == events_before


async def test_duplicate_seq_is_skipped_not_a_fault(rig: Rig) -> None:
    await rig.append(trip(0), trip(0), reset(1))

    async with running(rig.projector()) as projector:
        await eventually(lambda: rig.record().seq == 1, timeout=WAIT)
        status = projector.status()
        assert status.fault is None
        assert status.healthy
        assert status.log_offset == 3

        async def two_events() -> bool:
            assert [e.seq for e in await rig.events()] == [0, 1]
            return True

        await eventually(two_events, timeout=WAIT)


# --------------------------------------------------------------------------- failing closed


async def stops_refreshing(rig: Rig, projector: Projector) -> None:
    """The record does not change while the projector beats on: it stopped refreshing."""
    frozen = dict(rig.store.data[EMERGENCY_STOP_KEY])
    writes = rig.store.writes
    beats = projector.status().beats_sent
    # Several beats (each INTERVAL apart) is several refresh intervals.
    await eventually(lambda: projector.status().beats_sent >= beats + 4, timeout=WAIT)
    assert rig.store.writes == writes
    assert rig.store.data[EMERGENCY_STOP_KEY] == frozen


async def test_a_gap_stops_refreshing_keeps_active_and_reports_critical(rig: Rig) -> None:
    await rig.append(trip(0), trip(2))  # seq 1 is missing

    async with running(rig.projector()) as projector:
        await eventually(lambda: projector.status().fault is not None, timeout=WAIT)
        assert "expected seq 1, got 2" in (projector.status().fault or "")
        # The trusted prefix says ACTIVE: written once (stopping is always safe), then frozen.
        await eventually(lambda: rig.record().active and rig.record().seq == 0, timeout=WAIT)
        await stops_refreshing(rig, projector)
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL"
                and rig.last_beat().checks["state_log"] == "corrupt"
                and rig.last_beat().checks["policy_store"] == "stale"
            ),
            timeout=WAIT,
        )
        status = projector.status()
        assert not status.healthy
        assert status.lag == 1
        reg = projector.metrics.registry
        assert reg.get_sample_value("ess_state_log_trusted") == 0
        assert reg.get_sample_value("ess_state_log_lag_records") == 1


async def test_a_corrupt_record_freezes_the_last_good_record(rig: Rig) -> None:
    await rig.append(trip(0), reset(1))

    async with running(rig.projector()) as projector:
        await eventually(lambda: rig.record().seq == 1 and not rig.record().active, timeout=WAIT)
        await eventually(lambda: rig.last_beat().status == "HEALTHY", timeout=WAIT)

        await rig.append_raw(b'{"seq": 2, "kind": "activated", "oops')

        await eventually(lambda: projector.status().fault is not None, timeout=WAIT)
        assert "corrupt" in (projector.status().fault or "")
        await stops_refreshing(rig, projector)
        assert rig.record().seq == 1  # the last good record, never refreshed again
        await eventually(
            lambda: (
                rig.last_beat().status == "CRITICAL"
                and rig.last_beat().checks["state_log"] == "corrupt"
            ),
            timeout=WAIT,
        )
        # Entries after the corruption are not applied either.
        await rig.append(trip(3))
        await eventually(lambda: projector.status().lag == 2, timeout=WAIT)
        assert projector.status().seq == 1


async def test_policy_store_failures_are_counted_and_retried(rig: Rig) -> None:
    rig.store.fail_writes = True
    await rig.append(trip(0))

    async with running(rig.projector()) as projector:
        reg = projector.metrics.registry

        def errors() -> float:
            return reg.get_sample_value("ess_policy_store_write_errors_total") or 0.0

        await eventually(lambda: errors() >= 3, timeout=WAIT)  # retried every interval
        assert EMERGENCY_STOP_KEY not in rig.store.data
        assert projector.status().checks["policy_store"] == "stale"
        # Events do not wait for the PolicyStore.
        await eventually(lambda: projector.status().events_published_seq == 0, timeout=WAIT)

        rig.store.fail_writes = False

        await eventually(lambda: rig.record().active, timeout=WAIT)
        await eventually(lambda: projector.status().healthy, timeout=WAIT)
        assert (reg.get_sample_value("ess_policy_store_last_write_timestamp_seconds") or 0) > 0


async def test_a_store_ahead_of_the_log_is_not_moved_backwards(rig: Rig) -> None:
    ahead = {"active": True, "reason": "manual", "timestamp": T0.isoformat(), "seq": 7}
    rig.store.data[EMERGENCY_STOP_KEY] = dict(ahead)

    async with running(rig.projector()) as projector:  # the log is empty
        reg = projector.metrics.registry
        await eventually(
            lambda: (reg.get_sample_value("ess_policy_store_write_errors_total") or 0) >= 2,
            timeout=WAIT,
        )
        assert rig.store.data[EMERGENCY_STOP_KEY] == ahead
        assert not projector.status().healthy


# --------------------------------------------------------------------------- HTTP and entry


async def test_status_and_metrics_endpoints(rig: Rig) -> None:
    await rig.append(trip(0, ReasonCode.FLASH_CRASH))
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
            assert body["detail"] == "trip 0"
            assert body["seq"] == 0
            assert body["epoch"] == 0
            assert body["trips_recorded"] == 0
            assert body["pending_approvals"] == 0
            assert body["log_offset"] == 1
            assert body["healthy"] is True
            assert body["health"] == "CRITICAL"
            assert body["since"] == trip(0).ts.isoformat()

            async with http.get(f"{server.url}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert 'ess_activations_total{reason="flash_crash"} 1.0' in text
            assert "ess_state_active 1.0" in text
            assert "ess_state_last_seq 0.0" in text

            async with http.get(f"{server.url}/healthz") as response:
                assert response.status == 200
                assert (await response.json())["healthy"] is True
    finally:
        await server.stop()


async def test_run_projector_entry_point_follows_the_configured_topics(rig: Rig) -> None:
    await rig.append(trip(0))
    settings = EssSettings(
        kafka_bootstrap_servers=rig.bootstrap, topic_prefix=rig.topics.prefix, _env_file=None
    )
    metrics = ProjectorMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projector(
            settings,
            rig.store,
            stop,
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
            EssSettings(kafka_bootstrap_servers="", _env_file=None),
            rig.store,
            stop,
        )


async def test_a_lost_broker_stops_refreshing_and_the_projector_still_stops() -> None:
    # Its own broker, because this test kills it (Tansu ignores SIGTERM while clients are
    # connected: a short stop_timeout kills it at once instead of waiting 5 s).
    topics = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
    async with EmbeddedBroker(stop_timeout=0.2) as broker:
        await ensure_topics(broker.bootstrap_servers, topics)
        rig = Rig(broker.bootstrap_servers, topics)
        await rig.append(trip(0))
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
            reg = projector.metrics.registry

            def beat_errors() -> float:
                return reg.get_sample_value("ess_health_beat_errors_total") or 0.0

            failed = beat_errors()
            await eventually(lambda: beat_errors() >= failed + 2, timeout=WAIT)
            assert rig.store.writes == writes
            assert rig.store.data[EMERGENCY_STOP_KEY] == frozen

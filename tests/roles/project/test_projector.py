"""The projector's pure logic (record, events, health, metrics) and the status app, no broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ess.core import INITIAL_STATE, EssState, fold
from ess.observability.status import ProjectorStatus, serve_status
from ess.roles.project.metrics import LogTally, ProjectorMetrics, tally_entries
from ess.roles.project.projector import (
    NEVER,
    LogCondition,
    WriterWatch,
    assess_health,
    event_for,
    health_beat,
    policy_record,
    should_publish,
    store_is_ahead,
)
from schemas import (
    ActivatedEntry,
    EmergencyResetEvent,
    EmergencyStopEvent,
    HealthStatus,
    PolicyRecord,
    ProcessorBeat,
    ReasonCode,
    RejectReason,
    ResetApprovalEntry,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TripRecordedEntry,
    validate,
)

T0 = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)
REFRESH = T0 + timedelta(hours=1)


def activated(seq: int = 0, *, reason: ReasonCode = ReasonCode.DAILY_LOSS) -> ActivatedEntry:
    return ActivatedEntry(
        seq=seq,
        command_id=f"trip-{seq}",
        ts=T0 + timedelta(seconds=seq),
        reason=reason,
        detail="daily loss 5.3% > 5%",
        source="detector:daily_loss",
    )


def recorded(seq: int, *, reason: ReasonCode = ReasonCode.FLASH_CRASH) -> TripRecordedEntry:
    return TripRecordedEntry(
        seq=seq,
        command_id=f"trip-{seq}",
        ts=T0 + timedelta(seconds=seq),
        reason=reason,
        detail="again",
        source="detector:flash_crash",
    )


def reset_entry(seq: int, operators: tuple[str, ...] = ("alice", "bob")) -> ResetEntry:
    return ResetEntry(
        seq=seq,
        command_id=f"reset-{seq}",
        ts=LATER + timedelta(seconds=seq),
        operators=operators,
        nonce=f"n-{seq}",
    )


def rejected(seq: int, why: RejectReason = RejectReason.BAD_SIGNATURE) -> ResetRejectedEntry:
    return ResetRejectedEntry(
        seq=seq, command_id=f"reset-{seq}", ts=T0, operator="mallory", why=why
    )


def approval(seq: int) -> ResetApprovalEntry:
    return ResetApprovalEntry(
        seq=seq,
        command_id=f"reset-{seq}",
        ts=T0,
        operator="alice",
        nonce=f"n-{seq}",
        approvals=("alice",),
        quorum=2,
        expires_at=T0 + timedelta(minutes=5),
    )


# --------------------------------------------------------------------------- PolicyRecord


def test_active_record_is_the_activation_with_the_contract_shape() -> None:
    state = fold([activated(0)])

    record = policy_record(state, refreshed_at=REFRESH)

    assert record.model_dump(mode="json") == {
        "active": True,
        "reason": "daily_loss",
        "timestamp": T0.isoformat().replace("+00:00", "Z"),
        "auto_recover": False,
        "seq": 0,
        "detail": "daily loss 5.3% > 5%",
        "refreshed_at": REFRESH.isoformat().replace("+00:00", "Z"),
    }
    # What a gate reads back validates as the contract model.
    assert validate(PolicyRecord, record.model_dump(mode="json")) == record


def test_timestamp_is_the_state_change_not_the_refresh() -> None:
    state = fold([activated(0)])

    first = policy_record(state, refreshed_at=REFRESH)
    second = policy_record(state, refreshed_at=REFRESH + timedelta(seconds=1))

    assert first.timestamp == second.timestamp == T0
    assert second.refreshed_at == REFRESH + timedelta(seconds=1)


def test_further_trips_keep_the_activation_time_and_reason_but_advance_seq() -> None:
    state = fold([activated(0), recorded(1)])

    record = policy_record(state, refreshed_at=REFRESH)

    assert record.active
    assert record.reason is ReasonCode.DAILY_LOSS
    assert record.timestamp == T0
    assert record.seq == 1


def test_inactive_record_after_reset_carries_the_reset_time() -> None:
    state = fold([activated(0), reset_entry(1)])

    record = policy_record(state, refreshed_at=REFRESH)

    assert not record.active
    assert record.reason is None
    assert record.timestamp == reset_entry(1).ts
    assert record.seq == 1
    assert record.auto_recover is False
    assert record.detail == ""


def test_empty_log_is_inactive_since_never() -> None:
    record = policy_record(INITIAL_STATE, refreshed_at=REFRESH)

    assert not record.active
    assert record.timestamp == NEVER
    assert record.seq is None


def test_store_is_ahead_compares_seq_only() -> None:
    # The projector overwrites any stored record it did not write, except an ACTIVE one
    # beyond the log's seq (see the integration tests); this only says "beyond".
    ours = policy_record(fold([activated(0)]), refreshed_at=REFRESH)
    empty_log = policy_record(INITIAL_STATE, refreshed_at=REFRESH)

    assert store_is_ahead({"seq": 3, "active": True}, ours)
    assert store_is_ahead({"seq": 0}, empty_log)
    assert not store_is_ahead({"seq": 0}, ours)
    assert not store_is_ahead(None, ours)
    assert not store_is_ahead({"seq": None}, ours)
    assert not store_is_ahead({"seq": "7"}, ours)  # unreadable seq: never "ahead"
    assert not store_is_ahead({"seq": True}, empty_log)


# --------------------------------------------------------------------------- events


def test_activation_maps_to_a_stop_event_with_its_seq() -> None:
    event = event_for(activated(4))

    assert event == EmergencyStopEvent(
        reason=ReasonCode.DAILY_LOSS,
        detail="daily loss 5.3% > 5%",
        timestamp=T0 + timedelta(seconds=4),
        seq=4,
    )


def test_reset_maps_to_a_reset_event_naming_every_operator() -> None:
    event = event_for(reset_entry(2))

    assert isinstance(event, EmergencyResetEvent)
    assert event.reset_by == "alice,bob"
    assert event.operators == ("alice", "bob")
    assert event.seq == 2
    assert event.timestamp == reset_entry(2).ts


@pytest.mark.parametrize("entry", [recorded(1), approval(1), rejected(1)])
def test_other_kinds_announce_nothing(entry: StateEntry) -> None:
    assert event_for(entry) is None


def test_an_event_is_published_unless_the_topic_holds_exactly_it_or_it_expired() -> None:
    horizon = timedelta(days=30)
    entry = activated(3)
    event = event_for(entry)
    assert isinstance(event, EmergencyStopEvent)

    def publish(
        on_topic: dict[int, EmergencyStopEvent | EmergencyResetEvent],
        *,
        now: datetime = T0,
        horizon: timedelta | None = horizon,
    ) -> bool:
        return should_publish(event, on_topic=on_topic, entry_ts=entry.ts, now=now, horizon=horizon)

    assert publish({})
    assert not publish({3: event})  # already announced: a restart does not republish it
    # What else the topic holds does not count: only the log says what was announced.
    forged_high = event.model_copy(update={"seq": 1_000_000_000})
    assert publish({1_000_000_000: forged_high})
    assert publish({3: event.model_copy(update={"reason": ReasonCode.MANUAL})})
    assert publish({3: EmergencyResetEvent(reset_by="mallory", timestamp=T0, seq=3)})
    earlier = event_for(activated(2))
    assert isinstance(earlier, EmergencyStopEvent)
    assert publish({2: earlier})
    # Older than the events topic's retention: its event would have expired by now.
    assert not publish({}, now=T0 + timedelta(days=31))
    assert publish({}, now=T0 + timedelta(days=999), horizon=None)


# --------------------------------------------------------------------------- health


def test_health_is_critical_while_active_and_healthy_when_inactive() -> None:
    active = fold([activated(0)])
    inactive = fold([activated(0), reset_entry(1)])

    status, checks = assess_health(active, LogCondition.OK, policy_store_ok=True)
    assert status is HealthStatus.CRITICAL
    assert checks == {
        "state": "ACTIVE",
        "state_log": "ok",
        "command_processor": "ok",
        "policy_store": "ok",
        "policy_store_writes": "ok",
    }

    status, checks = assess_health(inactive, LogCondition.OK, policy_store_ok=True)
    assert status is HealthStatus.HEALTHY
    assert checks["state"] == "INACTIVE"


@pytest.mark.parametrize(
    "log", [LogCondition.UNTRUSTED, LogCondition.CORRUPT, LogCondition.UNREACHABLE]
)
def test_a_log_the_projector_cannot_vouch_for_is_critical_even_when_inactive(
    log: LogCondition,
) -> None:
    status, checks = assess_health(INITIAL_STATE, log, policy_store_ok=False)

    assert status is HealthStatus.CRITICAL
    assert checks["state_log"] == log.value
    assert checks["policy_store"] == "stale"
    assert checks["state"] == "INACTIVE"  # the state is known, just not vouched for


def test_a_gone_command_processor_is_critical_once_the_log_is_known() -> None:
    status, checks = assess_health(
        INITIAL_STATE, LogCondition.OK, policy_store_ok=False, writer="no beat for 4.0s"
    )
    assert status is HealthStatus.CRITICAL
    assert checks["command_processor"] == "gone"

    # While catching up the state is not known yet: degraded, as on every start.
    status, checks = assess_health(
        INITIAL_STATE, LogCondition.CATCHING_UP, policy_store_ok=False, writer="no beat yet"
    )
    assert status is HealthStatus.DEGRADED
    assert checks == {"state": "UNKNOWN", "state_log": "catching_up", "command_processor": "gone"}


def test_catching_up_and_store_trouble_are_degraded() -> None:
    partial = fold([activated(0)])

    status, checks = assess_health(partial, LogCondition.CATCHING_UP, policy_store_ok=False)
    assert status is HealthStatus.DEGRADED
    # Not written yet is not "stale": a policy_store_stale rule must not trip on a restart.
    assert checks == {"state": "UNKNOWN", "state_log": "catching_up", "command_processor": "ok"}

    status, checks = assess_health(INITIAL_STATE, LogCondition.OK, policy_store_ok=False)
    assert status is HealthStatus.DEGRADED
    assert checks["policy_store"] == "stale"


def test_beat_ids_are_deterministic_and_unique_per_run_and_number() -> None:
    def beat(run_id: str, beat_no: int) -> str:
        return health_beat(
            component="ess",
            status=HealthStatus.HEALTHY,
            checks={"state": "INACTIVE"},
            run_id=run_id,
            beat_no=beat_no,
            now=T0,
        ).event_id

    assert beat("run-a", 0) == beat("run-a", 0)
    assert len({beat("run-a", 0), beat("run-a", 1), beat("run-b", 0)}) == 3
    one = health_beat(
        component="ess-x",
        status=HealthStatus.CRITICAL,
        checks={"state": "ACTIVE"},
        run_id="r",
        beat_no=0,
        now=T0,
    )
    assert (one.component, one.status, one.checks, one.ts) == (
        "ess-x",
        HealthStatus.CRITICAL,
        {"state": "ACTIVE"},
        T0,
    )


# --------------------------------------------------------------------------- writer watch


def a_beat(
    beat_no: int, *, run_id: str = "run-a", owner: bool = True, next_command: int | None = 0
) -> ProcessorBeat:
    return ProcessorBeat(
        run_id=run_id,
        beat_no=beat_no,
        owner=owner,
        next_command_offset=next_command if owner else None,
        state_next_offset=0,
        state_next_seq=0,
        ts=T0,
    )


def test_the_writer_is_vouched_for_only_while_owner_beats_are_fresh() -> None:
    watch = WriterWatch(timeout=3.0, backlog_timeout=3.0)
    assert watch.problem(0.0) == "no beat from a command processor that owns the command partition"

    assert watch.beat(a_beat(0), arrived=10.0)
    assert watch.problem(12.9) is None
    problem = watch.problem(13.5)
    assert problem is not None
    assert problem.startswith("no beat from the command processor for 3.5s")


def test_standby_beats_and_replayed_beats_do_not_count() -> None:
    watch = WriterWatch(timeout=3.0, backlog_timeout=3.0)

    assert not watch.beat(a_beat(0, owner=False), arrived=1.0)  # a standby owns nothing
    assert watch.last is None

    assert watch.beat(a_beat(5), arrived=2.0)
    assert not watch.beat(a_beat(5), arrived=4.0)  # the same beat again
    assert not watch.beat(a_beat(3), arrived=4.0)  # an older one of the same run
    assert watch.last_arrival == 2.0
    assert watch.problem(5.5) is not None
    # A newer beat of the run, or a new run (a restarted processor), counts.
    assert watch.beat(a_beat(6), arrived=6.0)
    assert watch.beat(a_beat(0, run_id="run-b"), arrived=7.0)
    assert watch.problem(7.0) is None


def test_beats_from_before_the_watch_started_never_vouch_but_mark_replays() -> None:
    watch = WriterWatch(timeout=3.0, backlog_timeout=3.0)

    watch.seen(a_beat(7))  # read back on start: the processor was alive then, not now
    assert watch.last is None
    assert watch.problem(0.0) is not None
    assert not watch.beat(a_beat(6), arrived=1.0)  # a replay of an earlier beat
    assert not watch.beat(a_beat(7), arrived=1.0)
    assert watch.beat(a_beat(8), arrived=1.0)  # the run's next beat, live
    assert watch.problem(1.0) is None
    watch.seen(a_beat(2))  # an older one read back later changes nothing
    assert not watch.beat(a_beat(8), arrived=2.0)


def test_a_command_waiting_longer_than_the_backlog_timeout_is_a_problem() -> None:
    watch = WriterWatch(timeout=3.0, backlog_timeout=2.0)
    watch.commands_seen(5, 0.0)  # five commands, all processed
    watch.beat(a_beat(0, next_command=5), arrived=0.0)
    assert watch.backlog_age(1.0) == 0.0

    watch.commands_seen(6, 1.0)  # command 5 arrives at t=1
    watch.commands_seen(6, 1.5)  # same high watermark: still waiting since t=1
    watch.beat(a_beat(1, next_command=5), arrived=2.0)
    assert watch.backlog_age(2.0) == 1.0
    watch.beat(a_beat(2, next_command=5), arrived=3.2)
    problem = watch.problem(3.2)
    assert problem is not None
    assert problem.startswith("command at offset 5 has waited 2.2s")

    watch.commands_seen(7, 3.3)
    watch.beat(a_beat(3, next_command=6), arrived=3.4)  # 5 done; 6 waits since t=3.3
    assert watch.backlog_age(3.4) == pytest.approx(0.1)
    assert watch.problem(3.4) is None
    watch.beat(a_beat(4, next_command=7), arrived=3.5)
    assert watch.backlog_age(10.0) == 0.0


# --------------------------------------------------------------------------- metrics


LOG: list[StateEntry] = [
    activated(0, reason=ReasonCode.DAILY_LOSS),
    recorded(1, reason=ReasonCode.FLASH_CRASH),
    recorded(2, reason=ReasonCode.DAILY_LOSS),
    rejected(3, RejectReason.BAD_SIGNATURE),
    approval(4),
    reset_entry(5),
    activated(6, reason=ReasonCode.MANUAL),
]


def test_tally_counts_the_log_by_kind_and_label() -> None:
    tally = tally_entries(LOG)

    assert dict(tally.activations) == {"daily_loss": 1, "manual": 1}
    assert dict(tally.trips) == {"daily_loss": 2, "flash_crash": 1, "manual": 1}
    assert tally.resets == 1
    assert dict(tally.rejected) == {"bad_signature": 1}
    # A value: adding returns a new tally and leaves the old one alone.
    assert tally_entries(LOG[:1]).activations == {"daily_loss": 1}
    assert LogTally().add(approval(0)) == LogTally()


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    assert value is not None, f"{name}{labels} not exported"
    return value


def test_metrics_are_set_from_the_fold_so_a_replay_does_not_double_count() -> None:
    metrics = ProjectorMetrics(CollectorRegistry())
    state: EssState = fold(LOG)
    tally = tally_entries(LOG)

    metrics.observe_log(state, tally)
    metrics.observe_log(state, tally)  # a replay of the same log exports the same numbers

    reg = metrics.registry
    assert sample(reg, "ess_activations_total", {"reason": "daily_loss"}) == 1
    assert sample(reg, "ess_trips_total", {"reason": "daily_loss"}) == 2
    assert sample(reg, "ess_resets_total") == 1
    assert sample(reg, "ess_resets_rejected_total", {"why": "bad_signature"}) == 1
    assert sample(reg, "ess_state_active") == 1
    assert sample(reg, "ess_state_epoch") == 1
    assert sample(reg, "ess_state_last_seq") == 6


def test_process_counters_and_gauges() -> None:
    metrics = ProjectorMetrics(CollectorRegistry())
    reg = metrics.registry
    assert sample(reg, "ess_state_last_seq") == -1
    assert sample(reg, "ess_state_log_trusted") == 1

    metrics.policy_store_write_failed()
    metrics.policy_store_write_failed()
    metrics.policy_store_written(REFRESH)
    metrics.observe_lag(-3)
    metrics.observe_trusted(False)
    metrics.event_published("emergency.stop")
    metrics.foreign_state_records(2)
    metrics.foreign_beat()
    metrics.foreign_policy_record()
    metrics.observe_writer(False, 4.5)

    assert sample(reg, "ess_policy_store_write_errors_total") == 2
    assert sample(reg, "ess_policy_store_last_write_timestamp_seconds") == REFRESH.timestamp()
    assert sample(reg, "ess_state_log_lag_records") == 0
    assert sample(reg, "ess_state_log_trusted") == 0
    assert sample(reg, "ess_events_published_total", {"type": "emergency.stop"}) == 1
    assert sample(reg, "ess_state_log_foreign_records_total") == 2
    assert sample(reg, "ess_liveness_foreign_records_total") == 1
    assert sample(reg, "ess_policy_store_foreign_writes_total") == 1
    assert sample(reg, "ess_command_processor_up") == 0
    assert sample(reg, "ess_command_backlog_seconds") == 4.5


def test_two_metric_sets_in_separate_registries_do_not_collide() -> None:
    first, second = ProjectorMetrics(), ProjectorMetrics()
    first.observe_log(fold(LOG[:1]), tally_entries(LOG[:1]))

    assert b"ess_activations_total" in generate_latest(first.registry)
    assert second.registry.get_sample_value("ess_state_active") == 0
    with pytest.raises(ValueError, match="Duplicated"):
        ProjectorMetrics(first.registry)


# --------------------------------------------------------------------------- status app


class StaticSource:
    def __init__(self, snapshot: ProjectorStatus) -> None:
        self.snapshot = snapshot

    def status(self) -> ProjectorStatus:
        return self.snapshot


def a_status(*, healthy: bool) -> ProjectorStatus:
    return ProjectorStatus(
        status="ACTIVE",
        reason="daily_loss",
        detail="d",
        since=T0,
        seq=0,
        epoch=0,
        trips_recorded=0,
        pending_approvals=0,
        last_refresh=REFRESH,
        log_offset=1,
        lag=0,
        caught_up=True,
        healthy=healthy,
        health="CRITICAL",
        checks={"state": "ACTIVE"},
    )


async def test_status_server_serves_status_metrics_and_healthz_on_a_free_port() -> None:
    metrics = ProjectorMetrics()
    metrics.observe_log(fold(LOG[:1]), tally_entries(LOG[:1]))
    source = StaticSource(a_status(healthy=True))
    server = await serve_status(source, metrics.registry, "127.0.0.1", 0)
    try:
        assert server.port > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/status") as response:
                assert response.status == 200
                body = await response.json()
            assert body["status"] == "ACTIVE"
            assert body["since"] == T0.isoformat()
            assert body["last_refresh"] == REFRESH.isoformat()
            async with http.get(f"{server.url}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            assert 'ess_activations_total{reason="daily_loss"} 1.0' in text
            async with http.get(f"{server.url}/healthz") as response:
                assert response.status == 200
            source.snapshot = a_status(healthy=False)
            async with http.get(f"{server.url}/healthz") as response:
                assert response.status == 503
                assert (await response.json())["healthy"] is False
    finally:
        await server.stop()


def test_failing_writes_are_their_own_check_not_vouching_is_not() -> None:
    """The detector trips ``policy_store_stale`` on ``policy_store_writes=failing`` only: a
    projector that does not vouch (writer gone) reports ``policy_store=stale`` but its
    writes are fine, and must not stop trading on every processor restart."""
    inactive = fold([activated(0), reset_entry(1)])
    _, gone = assess_health(inactive, LogCondition.OK, policy_store_ok=False, writer="gone")
    assert (gone["policy_store"], gone["policy_store_writes"]) == ("stale", "ok")
    status, failing = assess_health(
        inactive, LogCondition.OK, policy_store_ok=False, store_failing=True
    )
    assert (failing["policy_store"], failing["policy_store_writes"]) == ("stale", "failing")
    assert status is HealthStatus.DEGRADED
    _, starting = assess_health(inactive, LogCondition.CATCHING_UP, policy_store_ok=False)
    assert "policy_store_writes" not in starting

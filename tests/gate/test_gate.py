"""TradingGate: every way it fails closed, on a manual wall clock and a fake monotonic clock;
and the polling feed on in-process stores."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from loguru import logger

from ess.api.fakes import FakePolicyStore
from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import ManualClock
from ess.gate import (
    GateState,
    PolicyStoreGateFeed,
    RedisGateFeed,
    TradingGate,
    gate_feed,
)
from ess.policystore import InMemoryPolicyStore, RedisPolicyStore
from schemas import PolicyRecord, ReasonCode
from tests.helpers import eventually

if TYPE_CHECKING:
    from loguru import Record

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class FakeTime:
    """A wall clock and a monotonic clock that move together, only when told."""

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.mono = 5_000.0

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.clock.advance(seconds)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def gate(fake_time: FakeTime) -> TradingGate:
    """Bounds: 10 s record age with 1 s reserved for clock skew, so 9 s effective."""
    return TradingGate(
        max_record_age=10.0,
        max_clock_skew=1.0,
        clock=fake_time.clock,
        monotonic=fake_time.monotonic,
    )


def record(
    when: datetime,
    *,
    active: bool = False,
    reason: ReasonCode | None = None,
    seq: int | None = 1,
    detail: str = "",
    refreshed: bool = True,
) -> dict[str, Any]:
    """An ``emergency_stop`` value as JSON; ``when`` is the writer's ``refreshed_at`` (or only
    ``timestamp`` with ``refreshed=False``)."""
    return PolicyRecord(
        active=active,
        reason=reason,
        timestamp=when - timedelta(hours=1) if refreshed else when,
        seq=seq,
        detail=detail,
        refreshed_at=when if refreshed else None,
    ).model_dump(mode="json")


def feed_fresh(gate: TradingGate, fake_time: FakeTime, **fields: Any) -> None:
    gate.update(record(fake_time.now(), **fields), read_at_wall=fake_time.now())


# ---------------------------------------------------------------------- fail-closed cases


def test_allowed_when_nothing_read_yet_then_false(gate: TradingGate) -> None:
    assert gate.allowed() is False
    assert gate.why() == "no record seen yet"
    assert gate.status().state is GateState.PENDING


def test_allowed_when_store_has_no_record_then_false(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time)

    gate.update(None, read_at_wall=fake_time.now())

    assert gate.allowed() is False
    assert gate.why() == "no record"


def test_allowed_when_fresh_inactive_record_then_true(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time, seq=3)

    assert gate.allowed() is True
    assert gate.why() == "open: inactive record (seq 3), refreshed 0.0 s ago, read 0.0 s ago"


def test_allowed_when_record_active_then_false_with_reason_and_detail(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time)

    feed_fresh(gate, fake_time, active=True, reason=ReasonCode.FLASH_CRASH, seq=2, detail="BTC -9%")

    assert gate.allowed() is False
    assert gate.why() == "ACTIVE: flash_crash (BTC -9%)"
    assert gate.status().state is GateState.ACTIVE


def test_allowed_when_record_active_without_reason_or_detail_then_false(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time, active=True)

    assert gate.allowed() is False
    assert gate.why() == "ACTIVE: no reason given"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("active"),
        lambda r: r.update(active="maybe"),
        lambda r: r.update(auto_recover=True),
        lambda r: r.update(reason="bored"),
        lambda r: r.update(timestamp="yesterday"),
        lambda r: r.update(refreshed_at="2026-11-22T10:00:00"),  # no time zone
        lambda r: r.update(seq=-1),
    ],
    ids=[
        "missing-active",
        "active-not-bool",
        "auto-recover",
        "unknown-reason",
        "bad-timestamp",
        "naive-refreshed-at",
        "negative-seq",
    ],
)
def test_allowed_when_record_invalid_then_false_unreadable(
    gate: TradingGate, fake_time: FakeTime, mutate: Any
) -> None:
    feed_fresh(gate, fake_time)
    value = record(fake_time.now())
    mutate(value)

    gate.update(value, read_at_wall=fake_time.now())

    assert gate.allowed() is False
    assert gate.why().startswith("unreadable record: invalid PolicyRecord")
    assert gate.status().state is GateState.INVALID


@pytest.mark.parametrize("value", [["active", False], "inactive", 42])
def test_allowed_when_record_not_a_mapping_then_false_unreadable(
    gate: TradingGate, fake_time: FakeTime, value: Any
) -> None:
    gate.update(value, read_at_wall=fake_time.now())

    assert gate.allowed() is False
    assert gate.why().startswith("unreadable record")


def test_allowed_when_record_already_older_than_bound_on_arrival_then_false_stale(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    old = fake_time.now() - timedelta(seconds=12.3)

    gate.update(record(old), read_at_wall=fake_time.now())

    assert gate.allowed() is False
    assert gate.why() == "stale: last refresh 12.3 s ago (limit 9.0 s)"
    assert gate.status().state is GateState.STALE


def test_allowed_when_view_ages_past_bound_then_closes_at_the_bound(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time)

    fake_time.advance(8.999)
    open_just_before = gate.allowed()
    fake_time.advance(0.001)

    assert open_just_before is True
    assert gate.allowed() is False
    assert gate.why() == "stale: last refresh 9.0 s ago (limit 9.0 s)"


def test_allowed_when_wall_clock_steps_back_after_update_then_bound_unchanged(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time)

    # Between updates only the monotonic clock counts: an NTP step cannot extend the view.
    fake_time.mono += 9.0

    assert gate.allowed() is False


def test_allowed_when_refreshed_at_missing_then_judged_by_timestamp(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    changed = fake_time.now() - timedelta(seconds=5)
    gate.update(record(changed, refreshed=False), read_at_wall=fake_time.now())
    open_at_first = gate.allowed()

    fake_time.advance(4.0)

    assert open_at_first is True
    assert gate.allowed() is False
    assert gate.why() == "stale: last refresh 9.0 s ago (limit 9.0 s)"


def test_allowed_when_reads_stop_before_record_bound_then_closes_on_read_age(
    fake_time: FakeTime,
) -> None:
    gate = TradingGate(
        max_record_age=10.0,
        max_read_age=2.0,
        max_clock_skew=1.0,
        clock=fake_time.clock,
        monotonic=fake_time.monotonic,
    )
    feed_fresh(gate, fake_time)

    fake_time.advance(2.0)

    assert gate.allowed() is False
    assert gate.why() == "stale: last successful read 2.0 s ago (limit 2.0 s)"


def test_update_when_read_started_earlier_then_read_age_counts_from_read_start(
    fake_time: FakeTime,
) -> None:
    gate = TradingGate(
        max_record_age=10.0,
        max_read_age=2.0,
        clock=fake_time.clock,
        monotonic=fake_time.monotonic,
    )
    read_at = fake_time.now()
    value = record(read_at)
    fake_time.advance(1.5)  # the read took (or its result waited) 1.5 s

    gate.update(value, read_at_wall=read_at)
    open_at_update = gate.allowed()
    fake_time.advance(0.5)

    assert open_at_update is True
    assert gate.allowed() is False
    assert gate.status().seconds_since_read == pytest.approx(2.0)


def test_allowed_when_writer_clock_ahead_within_allowance_then_open_until_bound_from_now(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    ahead = fake_time.now() + timedelta(seconds=0.8)
    gate.update(record(ahead), read_at_wall=fake_time.now())
    open_at_first = gate.allowed()

    fake_time.advance(8.999)
    open_before_bound = gate.allowed()
    fake_time.advance(0.001)

    assert (open_at_first, open_before_bound) == (True, True)
    assert gate.allowed() is False


def test_allowed_when_record_from_future_beyond_skew_allowance_then_false_clock_skew(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time)
    future = fake_time.now() + timedelta(seconds=3)

    gate.update(record(future), read_at_wall=fake_time.now())

    assert gate.allowed() is False
    assert gate.why().startswith("clock skew: record refreshed 3.0 s in the future")


def test_allowed_when_read_fails_then_false_until_fresh_inactive_record(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time)

    gate.mark_failed(ConnectionError("connection refused"))
    closed_reason = gate.why()
    fake_time.advance(1.0)
    feed_fresh(gate, fake_time)

    assert closed_reason == "policy store unreadable: ConnectionError: connection refused"
    assert gate.allowed() is True


def test_allowed_when_failed_and_then_stale_record_read_then_stays_closed(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time)
    gate.mark_failed("timed out")
    fake_time.advance(30.0)

    gate.update(record(START), read_at_wall=fake_time.now())

    assert gate.allowed() is False
    assert gate.why() == "stale: last refresh 30.0 s ago (limit 9.0 s)"


def test_allowed_when_active_then_fresh_newer_inactive_record_then_reopens(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time, active=True, reason=ReasonCode.MANUAL, seq=4)

    feed_fresh(gate, fake_time, seq=5)

    assert gate.allowed() is True


@pytest.mark.parametrize("old_seq", [3, 4, None])
def test_allowed_when_inactive_record_not_newer_than_seen_active_then_false(
    gate: TradingGate, fake_time: FakeTime, old_seq: int | None
) -> None:
    feed_fresh(gate, fake_time, active=True, reason=ReasonCode.DAILY_LOSS, seq=4)

    feed_fresh(gate, fake_time, seq=old_seq)

    assert gate.allowed() is False
    assert "refusing to reopen on an old value" in gate.why()
    assert gate.status().state is GateState.INVALID


def test_update_when_read_time_naive_then_raises_value_error(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        gate.update(record(fake_time.now()), read_at_wall=datetime(2026, 11, 22, 10, 0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_record_age": 1.0, "max_clock_skew": 1.0},
        {"max_record_age": 5.0, "max_clock_skew": -0.1},
        {"max_record_age": 5.0, "max_read_age": 0.0},
    ],
)
def test_gate_when_bounds_inconsistent_then_raises_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_"):
        TradingGate(**kwargs)


def test_status_when_open_then_reports_record_and_ages(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    refreshed = fake_time.now() - timedelta(seconds=2)
    gate.update(record(refreshed, seq=9), read_at_wall=fake_time.now())
    fake_time.advance(0.5)

    status = gate.status()

    assert status.allowed is True
    assert status.state is GateState.OPEN
    assert status.record is not None
    assert status.record.seq == 9
    assert status.seconds_since_refresh == pytest.approx(2.5)
    assert status.seconds_since_read == pytest.approx(0.5)
    assert status.reason == "open: inactive record (seq 9), refreshed 2.5 s ago, read 0.5 s ago"


@pytest.fixture
def log_lines() -> Iterator[list[Record]]:
    lines: list[Record] = []
    sink = logger.add(lambda message: lines.append(message.record), level="INFO")
    yield lines
    logger.remove(sink)


def test_update_when_state_changes_then_logs_transitions_once(
    gate: TradingGate, fake_time: FakeTime, log_lines: list[Record]
) -> None:
    feed_fresh(gate, fake_time)
    feed_fresh(gate, fake_time)  # an ordinary refresh: not logged
    feed_fresh(gate, fake_time, active=True, reason=ReasonCode.TRADE_RATE, seq=2)

    gate_lines = [line for line in log_lines if line["extra"].get("gate") == gate.name]
    assert [line["message"] for line in gate_lines] == [
        "trading gate opened",
        "trading gate closed: ACTIVE: trade_rate",
    ]
    assert gate_lines[1]["extra"]["state"] == "active"
    assert gate_lines[1]["extra"]["seq"] == "2"


def test_allowed_when_closed_then_deadline_is_minus_infinity(
    gate: TradingGate, fake_time: FakeTime
) -> None:
    feed_fresh(gate, fake_time, active=True)
    fake_time.mono = math.inf  # even an absurd monotonic reading cannot open a closed gate

    assert gate.allowed() is False


# ---------------------------------------------------------------------- polling feed


def fresh_inactive(seq: int = 1) -> dict[str, Any]:
    now = datetime.now(UTC)
    return PolicyRecord(
        active=False, reason=None, timestamp=now, seq=seq, refreshed_at=now
    ).model_dump(mode="json")


def active(seq: int = 2) -> dict[str, Any]:
    now = datetime.now(UTC)
    return PolicyRecord(
        active=True, reason=ReasonCode.MANUAL, timestamp=now, seq=seq, refreshed_at=now
    ).model_dump(mode="json")


class HangingStore:
    """A store whose reads never finish (a wedged backend)."""

    async def get(self, key: str) -> Mapping[str, Any] | None:
        await asyncio.Event().wait()
        return None

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        await asyncio.Event().wait()


async def test_feed_start_when_store_has_fresh_inactive_record_then_gate_open_at_once() -> None:
    store = InMemoryPolicyStore()
    await store.set(EMERGENCY_STOP_KEY, fresh_inactive())
    gate = TradingGate()

    async with PolicyStoreGateFeed(store, gate, poll_interval=60) as feed:
        assert gate.allowed() is True
        assert feed.reads == 1


async def test_feed_when_record_becomes_active_then_gate_closes_on_next_poll() -> None:
    store = InMemoryPolicyStore()
    await store.set(EMERGENCY_STOP_KEY, fresh_inactive())
    gate = TradingGate()

    async with PolicyStoreGateFeed(store, gate, poll_interval=0.05):
        await store.set(EMERGENCY_STOP_KEY, active())

        await eventually(lambda: not gate.allowed(), timeout=2)

    assert gate.why() == "ACTIVE: manual"


async def test_feed_notify_when_poll_interval_long_then_reads_at_once() -> None:
    store = InMemoryPolicyStore()
    await store.set(EMERGENCY_STOP_KEY, fresh_inactive())
    gate = TradingGate()

    async with PolicyStoreGateFeed(store, gate, poll_interval=3600) as feed:
        await store.set(EMERGENCY_STOP_KEY, active())
        feed.notify()

        await eventually(lambda: not gate.allowed(), timeout=2)

    assert feed.reads == 2


async def test_feed_when_store_read_fails_then_gate_closed_and_reopens_on_recovery() -> None:
    store = FakePolicyStore(data={EMERGENCY_STOP_KEY: fresh_inactive()}, fail_reads=True)
    gate = TradingGate()

    async with PolicyStoreGateFeed(store, gate, poll_interval=0.05) as feed:
        closed_reason = gate.why()
        store.data[EMERGENCY_STOP_KEY] = fresh_inactive()
        store.fail_reads = False

        await eventually(gate.allowed, timeout=2)

    assert closed_reason == "policy store unreadable: FakeFailure: policy store unreachable"
    assert feed.failures >= 1


async def test_feed_when_read_hangs_then_gate_closed_after_read_timeout() -> None:
    gate = TradingGate()
    gate.update(fresh_inactive(), read_at_wall=datetime.now(UTC))
    feed = PolicyStoreGateFeed(HangingStore(), gate, poll_interval=60, read_timeout=0.05)

    await feed.refresh()

    assert gate.allowed() is False
    assert gate.why() == "policy store unreadable: read of 'emergency_stop' timed out after 0.05 s"
    assert feed.failures == 1


async def test_feed_stop_when_running_then_tasks_end_and_gate_keeps_its_view() -> None:
    store = InMemoryPolicyStore()
    await store.set(EMERGENCY_STOP_KEY, fresh_inactive())
    gate = TradingGate()
    feed = PolicyStoreGateFeed(store, gate, poll_interval=0.05)
    await feed.start()
    running_before = feed.running

    await feed.stop()

    assert (running_before, feed.running) == (True, False)
    assert gate.allowed() is True  # until the view goes stale


def test_feed_when_poll_interval_not_positive_then_raises_value_error() -> None:
    with pytest.raises(ValueError, match="positive"):
        PolicyStoreGateFeed(InMemoryPolicyStore(), TradingGate(), poll_interval=0)


async def test_gate_feed_when_redis_store_then_pubsub_variant_else_polling() -> None:
    redis_store = RedisPolicyStore()  # nothing connects until used

    chosen = gate_feed(redis_store, TradingGate())
    plain = gate_feed(InMemoryPolicyStore(), TradingGate())

    assert isinstance(chosen, RedisGateFeed)
    assert type(plain) is PolicyStoreGateFeed
    await redis_store.close()


async def test_stopping_a_feed_is_bounded_when_a_task_swallows_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in the full test run: a Redis pub/sub listener that did not end when cancelled
    hung ``stop()`` (and with it every shutdown) for good. Now it is left behind, logged."""
    monkeypatch.setattr("ess.gate._STOP_TIMEOUT_S", 0.2)
    feed = PolicyStoreGateFeed(InMemoryPolicyStore(), TradingGate(), poll_interval=0.05)
    await feed.start()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # what a misbehaving client library does

    feed._tasks.append(asyncio.create_task(stubborn(), name="stubborn"))
    try:
        await asyncio.wait_for(feed.stop(), timeout=5)
        assert not feed.running
    finally:
        release.set()

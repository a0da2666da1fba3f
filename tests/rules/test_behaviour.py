"""trade_rate, stop_loss_cluster, order_rejects, execution_errors, position_size_anomaly."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from ess.rules.behaviour import (
    OrderSizeRule,
    PositionSizeRule,
    execution_errors,
    order_rejects,
    stop_loss_cluster,
    trade_rate,
)
from ess.rules.config import DetectionConfig
from schemas import ReasonCode
from tests.rules.support import T0, Driver, at, fill, order, order_error

DEFAULT = DetectionConfig()


def seconds_from_t0(moment: datetime) -> float:
    return (moment - T0).total_seconds()


# --------------------------------------------------------------------------- count windows


def test_trade_rate_more_than_100_in_any_60s() -> None:
    drv = Driver(trade_rate(DEFAULT), topic="ess.fills")
    # 101 fills spread over exactly 60 s: one closed 60 s interval holds all of them.
    times = [i * 0.6 for i in range(101)]
    assert drv.feed([fill(t) for t in times[:100]]) == []
    hit = drv.step(fill(times[100]))
    assert hit is not None
    assert hit.reason is ReasonCode.TRADE_RATE
    assert "101 fills" in hit.detail
    assert "more than 100 in any 60s" in hit.detail
    assert hit.trigger.event_ts == at(60)


def test_trade_rate_not_when_spread_just_wider_than_the_window() -> None:
    drv = Driver(trade_rate(DEFAULT), topic="ess.fills")
    times = [i * 0.6 for i in range(100)] + [60.000001]
    assert drv.feed([fill(t) for t in times]) == []


def test_stop_loss_cluster_across_a_calendar_bucket_boundary() -> None:
    """Six stop-losses 09:59:00..10:01:00: no calendar 10-minute bucket holds six (two fall
    in 09:50-10:00, four in 10:00-10:10), yet an interval of 10 minutes does: it fires."""
    drv = Driver(stop_loss_cluster(DEFAULT), topic="ess.fills")
    start = datetime(2026, 11, 23, 9, 59, tzinfo=UTC)
    offsets = [0, 30, 60, 80, 100, 120]  # 09:59:00 ... 10:01:00
    records = [fill(seconds_from_t0(start) + o, stop_loss=True) for o in offsets]
    buckets: dict[tuple[int, int], int] = {}
    for r in records:
        bucket = (r.ts.hour, r.ts.minute // 10)
        buckets[bucket] = buckets.get(bucket, 0) + 1
    assert sorted(buckets.values()) == [2, 4]
    assert drv.feed(records[:5]) == []
    hit = drv.step(records[5])
    assert hit is not None
    assert hit.reason is ReasonCode.STOP_LOSS_CLUSTER
    assert "6 stop-loss fills" in hit.detail
    assert "09:59:00" in hit.detail
    assert "10:01:00" in hit.detail


def test_stop_loss_cluster_counts_only_stop_losses_and_not_five() -> None:
    drv = Driver(stop_loss_cluster(DEFAULT), topic="ess.fills")
    records = [fill(i, stop_loss=True) for i in range(5)] + [fill(10 + i) for i in range(50)]
    assert drv.feed(records) == []
    assert drv.step(fill(599, stop_loss=True)) is not None  # 6 within [0, 599]


def test_duplicates_never_double_count() -> None:
    drv = Driver(stop_loss_cluster(DEFAULT), topic="ess.fills")
    five = [fill(i * 10, stop_loss=True, event_id=f"sl-{i}") for i in range(5)]
    assert drv.feed(five + five + list(reversed(five))) == []
    assert drv.step(fill(55, stop_loss=True, event_id="sl-new")) is not None


def test_out_of_order_events_count_in_event_time() -> None:
    drv = Driver(stop_loss_cluster(DEFAULT), topic="ess.fills")
    # Five stop-losses far apart plus a late one: only intervals holding the late one can
    # newly exceed five; here the densest holds 6 (300..700 after the late 650 arrives).
    early = [fill(t, stop_loss=True) for t in (0, 300, 400, 500, 700)]
    assert drv.feed(early) == []
    hit = drv.step(fill(650, stop_loss=True))
    assert hit is None  # [300, 900] holds 300,400,500,650,700: five
    hit = drv.step(fill(350, stop_loss=True))
    assert hit is not None
    assert hit.trigger.event_ts == at(350)


@pytest.mark.parametrize(("lateness", "fires"), [(30, False), (700, True)])
def test_late_beyond_tolerance_does_not_count(lateness: float, fires: bool) -> None:
    config = DetectionConfig(max_lateness_sec=lateness)
    drv = Driver(stop_loss_cluster(config), topic="ess.fills")
    records = [fill(t, stop_loss=True) for t in (1000, 1001, 1002, 1003, 1004, 1700)]
    assert drv.feed(records) == []
    # With 1000..1004 it makes six in [1000, 1600], but it is 695 s behind the newest (1700):
    # beyond 600 + 30 s it is too late to count; with 700 s of tolerance it counts.
    late = drv.step(fill(1005, stop_loss=True))
    assert (late is not None) is fires


def test_window_latch_and_re_arm_clear_the_window() -> None:
    drv = Driver(order_rejects(DEFAULT), topic="ess.order-errors")
    old = [order_error(i, event_id=f"r{i}") for i in range(11)]
    hits = drv.feed(old)
    assert len(hits) == 1
    assert hits[0].trigger.offset == 10
    assert drv.feed([order_error(20 + i) for i in range(20)]) == []  # latched
    drv.reset()
    # Redelivered pre-reset rejects never count again.
    assert drv.feed(old) == []
    assert drv.feed([order_error(40 + i) for i in range(10)]) == []
    assert drv.step(order_error(50)) is not None


def test_order_rejects_and_execution_errors_split_by_kind() -> None:
    rejects = Driver(order_rejects(DEFAULT))
    errors = Driver(execution_errors(DEFAULT))
    records = [order_error(i, kind="reject") for i in range(8)] + [
        order_error(10 + i, kind=k) for i, k in enumerate(["error", "timeout"] * 3)
    ]
    assert rejects.feed(records) == []  # 8 rejects: not more than 10
    hits = errors.feed(records)
    assert len(hits) == 1  # the sixth error/timeout
    assert hits[0].reason is ReasonCode.EXECUTION_ERRORS
    assert hits[0].trigger.offset == len(records) - 1


def test_count_window_per_account_override() -> None:
    config = DetectionConfig(account_overrides={"hft": {"trade_rate_max": 1000}})
    drv = Driver(trade_rate(config))
    assert drv.feed([fill(i * 0.01, account="hft") for i in range(500)]) == []
    hits = drv.feed([fill(i * 0.01, account="slow") for i in range(101)])
    assert [h.key for h in hits] == ["slow"]


def test_count_window_matches_brute_force_in_any_order() -> None:
    rng = random.Random(7)
    config = DetectionConfig(max_lateness_sec=3600)
    for _ in range(200):
        times = sorted(rng.uniform(0, 1200) for _ in range(rng.randint(1, 12)))
        expected = any(sum(1 for u in times if t <= u <= t + 600) > 5 for t in times)
        records = [fill(t, stop_loss=True) for t in times]
        rng.shuffle(records)
        drv = Driver(stop_loss_cluster(config))
        assert bool(drv.feed(records)) == expected, times


# --------------------------------------------------------------------------- order size


def test_order_size_fires_above_notional_limit_not_at_it() -> None:
    drv = Driver(OrderSizeRule(DEFAULT), topic="ess.orders")
    assert drv.step(order(qty=10_000, price=100)) is None  # exactly 1,000,000
    hit = drv.step(order(qty=10_000, price=100.01))
    assert hit is not None
    assert hit.reason is ReasonCode.POSITION_SIZE_ANOMALY
    assert hit.rule == "order_size"
    assert "1,000,100.00" in hit.detail


def test_order_size_quantity_limit_and_missing_notional() -> None:
    config = DetectionConfig(account={"max_order_qty": 5, "max_order_notional": 1000})
    drv = Driver(OrderSizeRule(config))
    assert drv.step(order(qty=5, price=1)) is None
    hit = drv.step(order(qty=6, price=1))
    assert hit is not None
    assert "quantity 6 above limit 5" in hit.detail
    drv2 = Driver(OrderSizeRule(config))
    # A producer that sends notional 0: qty * price is used instead.
    assert drv2.step(order(qty=2, price=501, notional=0)) is not None


def test_order_size_override_can_switch_a_limit_off() -> None:
    config = DetectionConfig(account_overrides={"whale": {"max_order_notional": None}})
    drv = Driver(OrderSizeRule(config))
    assert drv.step(order(qty=1e6, price=1e3, account="whale")) is None
    assert drv.step(order(qty=1e6, price=1e3, account="minnow")) is not None


def test_order_size_latches_and_re_arms() -> None:
    drv = Driver(OrderSizeRule(DEFAULT))
    big = order(5, qty=1e6, price=10, event_id="big")
    assert drv.step(big) is not None
    assert drv.step(order(6, qty=1e6, price=10)) is None
    drv.reset()
    assert drv.step(big) is None  # redelivered: before the epoch floor
    assert drv.step(order(7, qty=1e6, price=10)) is not None


# --------------------------------------------------------------------------- position size


def test_net_position_per_account_and_symbol() -> None:
    config = DetectionConfig(account={"max_position_qty": 10, "max_position_notional": None})
    drv = Driver(PositionSizeRule(config), topic="ess.fills")
    records = [fill(i, qty=4) for i in range(2)] + [fill(3, qty=4, side="sell")]
    records += [fill(4, qty=9, symbol="ETH/USDT")]  # another key
    assert drv.feed(records) == []
    assert drv.step(fill(5, qty=6)) is None  # net 10: at the limit
    hit = drv.step(fill(6, qty=0.5))
    assert hit is not None
    assert hit.key == "acct|BTC/USDT"
    assert "10.5" in hit.detail


def test_position_short_side_and_notional() -> None:
    drv = Driver(PositionSizeRule(DEFAULT))  # notional limit 5,000,000
    assert drv.step(fill(0, side="sell", qty=49_999, price=100)) is None
    hit = drv.step(fill(1, side="sell", qty=2, price=100))
    assert hit is not None
    assert "net quantity" not in hit.detail
    assert "-50001" in hit.detail


def test_position_duplicates_do_not_double_count() -> None:
    config = DetectionConfig(account={"max_position_qty": 10, "max_position_notional": None})
    drv = Driver(PositionSizeRule(config))
    fills = [fill(i, qty=3, event_id=f"f{i}") for i in range(3)]
    assert drv.feed(fills + fills[::-1] + fills) == []
    assert drv.state("acct|BTC/USDT").net == 9


def test_position_restarts_flat_after_a_reset() -> None:
    config = DetectionConfig(account={"max_position_qty": 10, "max_position_notional": None})
    drv = Driver(PositionSizeRule(config))
    opening = fill(0, qty=11, event_id="open")
    assert drv.step(opening) is not None
    assert drv.step(fill(1, qty=1)) is None  # latched
    drv.reset()  # ESS flattened every position while ACTIVE
    assert drv.step(opening) is None  # redelivered: not counted again
    assert drv.step(fill(0.5, qty=20)) is None  # late pre-reset fill: flattened past
    assert drv.step(fill(2, qty=10)) is None  # net 10 since the reset: at the limit
    assert drv.step(fill(3, qty=1)) is not None


@pytest.mark.parametrize("symbol", ["A|B", "A\\|B", "back\\slash"])
def test_compound_keys_are_unambiguous(symbol: str) -> None:
    rule = PositionSizeRule(DEFAULT)
    left = rule.key(fill(symbol=symbol, account="x"))
    right = rule.key(fill(symbol="B", account="x|A"))
    assert left != right

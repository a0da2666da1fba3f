"""data_feed_corrupt (incl. records that failed validation) and data_feed_stale."""

from __future__ import annotations

from typing import Any

import pytest

from ess.rules.base import Context, Coordinates
from ess.rules.config import DetectionConfig
from ess.rules.market import CorruptFeedRule, stale_feed
from schemas import ReasonCode
from tests.rules.support import Driver, at, tick

DEFAULT = DetectionConfig()


def test_corrupt_share_above_20_percent_of_last_50() -> None:
    drv = Driver(CorruptFeedRule(DEFAULT), topic="ess.market")
    # 40 good then 10 corrupt: exactly 20 % of 50, not above.
    records = [tick(i) for i in range(40)] + [tick(40 + i, bid=-1) for i in range(10)]
    assert drv.feed(records) == []
    hit = drv.step(tick(50, bid=0))  # window slides: 11 of the newest 50
    assert hit is not None
    assert hit.reason is ReasonCode.DATA_FEED_CORRUPT
    assert hit.key == "BTC/USDT"
    assert "11 of the newest 50" in hit.detail
    assert "non-positive price" in hit.detail


def test_corrupt_needs_the_minimum_ticks() -> None:
    drv = Driver(CorruptFeedRule(DEFAULT))
    assert drv.feed([tick(i, ask=0) for i in range(19)]) == []
    hit = drv.step(tick(19))  # the 20th tick, a good one, completes the minimum
    assert hit is not None
    assert "19 of the newest 20" in hit.detail


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"bid": 0.0}, "non-positive"),
        ({"ask": -1.0}, "non-positive"),
        ({"last": 0.0}, "non-positive"),
        ({"bid": 101.0, "ask": 100.0}, "crossed book"),
        ({"last": 121.0, "bid": 120.9, "ask": 121.1}, "jumped +21.0%"),
        ({"last": 79.0, "bid": 78.9, "ask": 79.1}, "jumped -21.0%"),
    ],
)
def test_corrupt_tick_kinds(kwargs: dict[str, Any], why: str) -> None:
    config = DetectionConfig(corrupt_window_ticks=2, corrupt_min_ticks=2, corrupt_share=0.4)
    drv = Driver(CorruptFeedRule(config))
    assert drv.step(tick(0, bid=99.9, ask=100.1, last=100.0)) is None
    hit = drv.step(tick(1, **kwargs))
    assert hit is not None
    assert why in hit.detail


def test_jump_within_bound_is_good_and_reference_is_previous_good_tick() -> None:
    config = DetectionConfig(corrupt_window_ticks=3, corrupt_min_ticks=3, corrupt_share=0.5)
    drv = Driver(CorruptFeedRule(config))
    records = [
        tick(0, bid=99, ask=101, last=100),
        tick(1, bid=119, ask=121, last=120),  # +20 %: not beyond the bound
        tick(2, bid=-1, ask=1, last=1),  # corrupt: not a reference
    ]
    assert drv.feed(records) == []  # 1 of 3
    # 143 is +19.2 % from 120 (the previous good tick), +43 % from 100.
    assert drv.step(tick(3, bid=142, ask=144, last=143)) is None


def test_out_of_order_duplicates_and_latch() -> None:
    config = DetectionConfig(corrupt_window_ticks=4, corrupt_min_ticks=4, corrupt_share=0.25)
    drv = Driver(CorruptFeedRule(config))
    bad = tick(2, bid=-1, event_id="bad")
    assert drv.feed([tick(3), bad, bad, tick(0), bad]) == []  # 1 corrupt of 3
    assert drv.step(tick(1)) is None  # 1 of 4 = 25 %: not above
    hit = drv.step(tick(4, ask=0))  # window 1..4: 2 of 4
    assert hit is not None
    assert drv.step(tick(5, ask=0)) is None  # latched
    drv.reset()
    assert drv.step(tick(4, ask=0)) is None  # pre-reset time
    records = [tick(6), tick(7), tick(8, ask=0)]
    assert drv.feed(records) == []  # window cleared: 1 of 3, below the minimum
    assert drv.step(tick(9, ask=0)) is not None


def test_records_that_failed_validation_count_as_corrupt() -> None:
    config = DetectionConfig(corrupt_window_ticks=10, corrupt_min_ticks=4)
    rule = CorruptFeedRule(config)
    drv = Driver(rule, topic="ess.market")
    drv.feed([tick(i) for i in range(3)])
    state = drv.state("BTC/USDT")
    ctx = Context()
    coords = Coordinates("ess.market", 1, 99)
    state, hit = rule.invalid(state, "BTC/USDT", coords, at(4), ctx)
    assert hit is not None  # 1 of 4 = 25 %
    assert "failed schema validation" in hit.detail
    assert hit.trigger.event_ts == at(4)
    assert hit.trigger.offset == 99


def test_invalid_records_are_deduplicated_by_coordinates() -> None:
    config = DetectionConfig(corrupt_window_ticks=10, corrupt_min_ticks=10)
    rule = CorruptFeedRule(config)
    ctx = Context()
    state = rule.initial()
    for i in range(7):
        state, _ = rule.step(state, tick(i), Coordinates("m", 0, i), ctx)
    coords = Coordinates("m", 0, 7)
    for _ in range(5):  # the same bad record redelivered
        state, hit = rule.invalid(state, "BTC/USDT", coords, at(7), ctx)
        assert hit is None
    assert state.bad == 1
    state, hit = rule.invalid(state, "BTC/USDT", Coordinates("m", 0, 8), at(8), ctx)
    assert hit is None  # 2 of 9, below the minimum
    state, hit = rule.invalid(state, "BTC/USDT", Coordinates("m", 0, 9), at(9), ctx)
    assert hit is not None  # 3 of 10 > 20 %


def test_data_feed_stale_per_symbol() -> None:
    config = DetectionConfig(required_symbols=frozenset({"ETH/USDT"}))
    drv = Driver(stale_feed(config), topic="ess.market")
    drv.feed([tick(0), tick(5, symbol="SOL/USDT")])
    assert drv.tick("BTC/USDT", at(10)) is None
    hit = drv.tick("BTC/USDT", at(10.5))
    assert hit is not None
    assert hit.reason is ReasonCode.DATA_FEED_STALE
    assert hit.trigger.event_ts == at(10)
    assert drv.tick("SOL/USDT", at(10.5)) is None
    assert drv.tick("ETH/USDT", at(10.5)) is None  # required, never seen: clock starts
    never = drv.tick("ETH/USDT", at(21))
    assert never is not None
    assert never.trigger.topic == "ess.market"

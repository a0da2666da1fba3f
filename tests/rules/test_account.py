"""daily_loss, equity_drawdown, flash_crash (topic pnl, key account)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ess.rules import account
from ess.rules.account import DailyLossRule, DrawdownRule, FlashCrashRule
from ess.rules.config import DetectionConfig
from schemas import ReasonCode
from tests.rules.support import Driver, at, pnl

DEFAULT = DetectionConfig()


def daily(config: DetectionConfig = DEFAULT) -> Driver:
    return Driver(DailyLossRule(config), topic="ess.pnl")


# --------------------------------------------------------------------------- daily loss


def test_daily_loss_fires_at_the_limit_not_below() -> None:
    drv = daily()
    assert drv.feed([pnl(1000, 0), pnl(950, 10), pnl(900.01, 20)]) == []
    hit = drv.step(pnl(900, 30))
    assert hit is not None
    assert hit.reason is ReasonCode.DAILY_LOSS
    assert hit.rule == "daily_loss"
    assert hit.key == "acct"
    assert hit.trigger.offset == 3
    assert hit.trigger.topic == "ess.pnl"
    assert hit.trigger.event_ts == at(30)
    assert "10.00%" in hit.detail
    assert "1,000.00" in hit.detail
    assert "900.00" in hit.detail


@pytest.mark.parametrize("first", [0.0, -250.0, -0.0])
def test_daily_loss_re_anchors_on_the_first_positive_tick_of_the_day(first: float) -> None:
    """Issue 13 finding 6: a first tick at or below zero used to switch the rule off for the
    whole day; now the day is unjudged until the first positive tick, which anchors it."""
    drv = Driver(DailyLossRule(DEFAULT))
    assert drv.step(pnl(first, 0)) is None
    assert not drv.state("acct").judged
    assert drv.step(pnl(1000, 10)) is None
    assert drv.state("acct").judged
    assert drv.step(pnl(950, 20)) is None
    hit = drv.step(pnl(890, 30))
    assert hit is not None
    assert hit.reason is ReasonCode.DAILY_LOSS
    assert "day-start equity 1,000.00" in hit.detail


def test_daily_loss_ignores_a_late_non_positive_tick_before_the_anchor() -> None:
    """A late tick from before the positive anchor with nothing to lose changes nothing."""
    drv = Driver(DailyLossRule(DEFAULT))
    drv.feed([pnl(1000, 10), pnl(950, 20)])
    assert drv.step(pnl(-5, 5)) is None
    assert drv.state("acct").anchor == 1000
    assert drv.step(pnl(880, 30)) is not None


def test_daily_loss_latches_until_the_epoch_changes_then_re_anchors() -> None:
    drv = daily()
    assert drv.step(pnl(1000, 0)) is None
    assert drv.step(pnl(880, 10)) is not None
    assert drv.feed([pnl(800, 20), pnl(700, 30)]) == []  # latched
    drv.reset()
    # The first tick after the reset is the new day-start equity: 700 -> 640 is 8.6 %.
    assert drv.feed([pnl(700, 40), pnl(640, 50)]) == []
    hit = drv.step(pnl(630, 60))
    assert hit is not None
    assert "700.00" in hit.detail


def test_daily_loss_ignores_pre_reset_ticks_after_a_reset() -> None:
    drv = daily()
    drv.feed([pnl(1000, 0, event_id="a"), pnl(1000, 5)])
    assert drv.step(pnl(850, 10, event_id="low")) is not None
    drv.reset()
    # A redelivered (or late) tick from before the reset neither trips nor anchors.
    assert drv.step(pnl(850, 10, event_id="low")) is None
    assert drv.step(pnl(1000, 0, event_id="a")) is None
    assert drv.step(pnl(860, 20)) is None  # anchors at 860
    assert drv.step(pnl(775, 30)) is None  # 9.9 %
    assert drv.step(pnl(774, 31)) is not None


def test_a_new_day_re_anchors() -> None:
    drv = daily()
    day1 = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)
    t_day1 = (day1 - at(0)).total_seconds()
    assert drv.feed([pnl(1000, t_day1), pnl(920, t_day1 + 3500)]) == []
    # Past midnight UTC: the day starts at 920; 840 is 8.7 % below it (16 % below 1000).
    assert drv.feed([pnl(920, t_day1 + 3700), pnl(840, t_day1 + 3800)]) == []
    # A late tick of the closed day does nothing.
    assert drv.step(pnl(500, t_day1 + 3000)) is None
    assert drv.step(pnl(828, t_day1 + 3900)) is not None


def test_a_late_earlier_tick_of_the_day_becomes_the_anchor() -> None:
    drv = daily()
    assert drv.feed([pnl(950, 10), pnl(930, 20)]) == []
    hit = drv.step(pnl(1040, 5))  # earlier in the day, arrives last: day start is 1040
    assert hit is not None
    assert hit.trigger.event_ts == at(5)
    assert "930.00" in hit.detail
    assert "1,040.00" in hit.detail


@pytest.mark.parametrize(
    ("boundary", "midnight_utc"),
    [
        ("America/New_York", datetime(2026, 11, 24, 5, 0, tzinfo=UTC)),  # EST, UTC-5
        ("Europe/Berlin", datetime(2026, 11, 23, 23, 0, tzinfo=UTC)),  # CET, UTC+1
        ("+02:00", datetime(2026, 11, 23, 22, 0, tzinfo=UTC)),
        ("-0530", datetime(2026, 11, 24, 5, 30, tzinfo=UTC)),
        ("UTC", datetime(2026, 11, 24, 0, 0, tzinfo=UTC)),
    ],
)
def test_day_boundary_follows_the_configured_zone(boundary: str, midnight_utc: datetime) -> None:
    drv = daily(DetectionConfig(day_boundary=boundary))
    before = (midnight_utc - at(0)).total_seconds() - 1
    assert drv.feed([pnl(1000, before - 100), pnl(950, before)]) == []
    # One second later is a new day: anchored at 900, so no loss is judged against 1000.
    assert drv.step(pnl(900, before + 1)) is None
    assert drv.step(pnl(811, before + 2)) is None  # 9.9 % below 900
    assert drv.step(pnl(810, before + 3)) is not None


def test_daylight_saving_day_in_a_zone() -> None:
    # 2026-03-08 is 23 hours long in New York; the next day starts at 04:00 UTC.
    drv = daily(DetectionConfig(day_boundary="America/New_York"))
    start = (datetime(2026, 3, 8, 5, 0, tzinfo=UTC) - at(0)).total_seconds()
    end = (datetime(2026, 3, 9, 4, 0, tzinfo=UTC) - at(0)).total_seconds()
    assert drv.feed([pnl(1000, start), pnl(950, end - 1)]) == []
    assert drv.step(pnl(860, end)) is None  # new day at 860
    assert drv.step(pnl(860 * 0.9, end + 1)) is not None


def test_per_account_override_of_daily_loss() -> None:
    config = DetectionConfig(account_overrides={"tight": {"daily_loss": 0.02}})
    drv = daily(config)
    assert drv.feed([pnl(1000, 0, "tight"), pnl(1000, 0, "loose")]) == []
    assert drv.step(pnl(975, 1, "loose")) is None
    hit = drv.step(pnl(975, 1, "tight"))
    assert hit is not None
    assert hit.key == "tight"
    assert "2.00%" in hit.detail


def test_non_positive_day_start_judges_no_ratio() -> None:
    drv = daily()
    assert drv.feed([pnl(0, 0), pnl(-100, 10), pnl(-1000, 20)]) == []


# --------------------------------------------------------------------------- drawdown


def drawdown(config: DetectionConfig = DEFAULT) -> Driver:
    return Driver(DrawdownRule(config), topic="ess.pnl")


def test_drawdown_from_the_running_peak_fires_at_the_limit() -> None:
    drv = drawdown()
    # Day boundaries do not matter: the peak runs across days.
    assert drv.feed([pnl(1000, 0), pnl(2000, 86_400), pnl(1500.01, 2 * 86_400)]) == []
    hit = drv.step(pnl(1500, 2 * 86_400 + 1))
    assert hit is not None
    assert hit.reason is ReasonCode.EQUITY_DRAWDOWN
    assert "25.00%" in hit.detail
    assert "2,000.00" in hit.detail


def test_drawdown_re_anchors_the_peak_after_a_reset() -> None:
    drv = drawdown()
    drv.feed([pnl(1000, 0)])
    assert drv.step(pnl(700, 1)) is not None
    assert drv.step(pnl(600, 2)) is None  # latched
    drv.reset()
    assert drv.step(pnl(600, 1)) is None  # pre-reset time: ignored
    assert drv.feed([pnl(600, 3), pnl(451, 4)]) == []  # peak is 600 now: 24.8 %
    assert drv.step(pnl(450, 5)) is not None


def test_drawdown_duplicates_change_nothing() -> None:
    drv = drawdown()
    first = pnl(1000, 0)
    low = pnl(760, 1)
    assert drv.feed([first, low, first, low, low]) == []


# --------------------------------------------------------------------------- flash crash


def flash(config: DetectionConfig = DEFAULT) -> Driver:
    return Driver(FlashCrashRule(config), topic="ess.pnl")


def test_flash_crash_within_the_window_fires_at_the_limit() -> None:
    drv = flash()
    assert drv.feed([pnl(1000, 0), pnl(990, 20), pnl(950.01, 40)]) == []
    hit = drv.step(pnl(950, 60))  # exactly 60 s after the high: inside (closed interval)
    assert hit is not None
    assert hit.reason is ReasonCode.FLASH_CRASH
    assert "5.00%" in hit.detail
    assert "within 60s" in hit.detail


def test_flash_crash_needs_the_high_within_the_window() -> None:
    drv = flash()
    assert drv.feed([pnl(1000, 0), pnl(980, 30), pnl(950, 60.001)]) == []
    # 980 at 30 s is the high of the last 60 s: 931 is 5 % below it.
    assert drv.step(pnl(931.01, 61)) is None
    assert drv.step(pnl(931, 62)) is not None


def test_flash_crash_late_high_point_is_judged_against_later_lows() -> None:
    drv = flash()
    assert drv.feed([pnl(960, 10), pnl(955, 20)]) == []
    hit = drv.step(pnl(1010, 5))  # arrives late; 955 is 5.4 % below it 15 s later
    assert hit is not None
    assert hit.trigger.event_ts == at(5)
    assert "1,010.00" in hit.detail
    assert "955.00" in hit.detail


def test_flash_crash_too_late_is_ignored() -> None:
    drv = flash(DetectionConfig(max_lateness_sec=10))
    drv.feed([pnl(1000, 100), pnl(999, 200)])
    # 200 - 60 - 10 = 130: a tick at 120 is beyond the tolerance.
    assert drv.step(pnl(500, 120)) is None


def test_flash_crash_latch_and_re_arm_clear_old_highs() -> None:
    drv = flash()
    drv.feed([pnl(1000, 0)])
    assert drv.step(pnl(900, 1)) is not None
    assert drv.step(pnl(800, 2)) is None
    drv.reset()
    # The pre-reset high (1000) is forgotten: 800 -> 761 is 4.9 %.
    assert drv.feed([pnl(800, 3), pnl(761, 4)]) == []
    assert drv.step(pnl(760, 5)) is not None


def test_flash_crash_per_account_window_override() -> None:
    config = DetectionConfig(account_overrides={"slow": {"flash_crash_window_sec": 600}})
    drv = flash(config)
    assert drv.feed([pnl(1000, 0, "fast"), pnl(940, 300, "fast")]) == []
    drv.feed([pnl(1000, 0, "slow")])
    assert drv.step(pnl(940, 300, "slow")) is not None


def test_flash_crash_state_is_thinned_above_the_cap() -> None:
    drv = flash(DetectionConfig(max_lateness_sec=0))
    # 4 ticks a second for 60 s: below the cap every point of the window is kept.
    for i in range(240):
        assert drv.step(pnl(1000 + i, i / 4)) is None
    assert len(drv.state("acct").times) == 240
    # Falling, many points: the cap holds and the crash is still found.
    old = account.MAX_FLASH_POINTS
    account.MAX_FLASH_POINTS = 50
    try:
        for i in range(100):
            drv.step(pnl(2000 - i * 0.01, 60 + i / 100))
        assert len(drv.state("acct").times) <= 50
        assert drv.step(pnl(1899, 61.5)) is not None
    finally:
        account.MAX_FLASH_POINTS = old

"""DetectionConfig: defaults, validation, overrides, day boundaries, enabled rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from ess.rules.catalog import build_rules
from ess.rules.config import ALL_RULES, DetectionConfig, day_bounds, parse_day_boundary


def test_defaults_of_the_brief() -> None:
    config = DetectionConfig()
    assert config.account.daily_loss == 0.10
    assert config.account.drawdown == 0.25
    assert config.latency_threshold_ms == 5000
    assert config.account.flash_crash == 0.05
    assert config.account.flash_crash_window_sec == 60
    assert config.heartbeat_timeout_sec == 15
    assert config.data_feed_stale_sec == 10
    assert config.ignore_components == {"ess"}
    assert config.enabled_rules == set(ALL_RULES)
    assert config.day_zone is UTC


@pytest.mark.parametrize(
    "kwargs",
    [
        {"account": {"daily_loss": 0}},
        {"account": {"daily_loss": 1.0}},
        {"account": {"drawdown": -0.1}},
        {"account": {"trade_rate_max": -1}},
        {"account": {"stop_loss_window_sec": 0}},
        {"account": {"max_order_notional": 0}},
        {"account": {"flash_crash": float("nan")}},
        {"heartbeat_timeout_sec": float("inf")},
        {"latency_consecutive": 0},
        {"corrupt_share": 1.5},
        {"corrupt_min_ticks": 60},  # more than the window of 50
        {"latency_quantile": 0.99, "latency_min_samples": 300},  # above max samples
        {"enabled_rules": {"daily_loss", "no_such_rule"}},
        {"day_boundary": "Mars/Olympus_Mons"},
        {"day_boundary": "+25:00"},
        {"required_components": {"ess"}},  # also ignored by default
        {"account_overrides": {"a": {"daily_loss": None}}},
        {"account_overrides": {"a": {"no_such_threshold": 1}}},
        {"account_overrides": {"": {"daily_loss": 0.2}}},
        {"unknown_field": 1},
        {"account": {"unknown": 1}},
    ],
)
def test_invalid_configs_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DetectionConfig(**kwargs)


def test_config_is_frozen() -> None:
    config = DetectionConfig()
    with pytest.raises(ValidationError):
        config.heartbeat_timeout_sec = 1


def test_per_account_overrides_replace_only_what_they_set() -> None:
    config = DetectionConfig(
        account={"trade_rate_max": 50},
        account_overrides={"hft": {"trade_rate_max": 5000, "max_order_notional": None}},
    )
    hft = config.limits_for("hft")
    assert hft.trade_rate_max == 5000
    assert hft.max_order_notional is None
    assert hft.daily_loss == 0.10
    other = config.limits_for("other")
    assert other.trade_rate_max == 50
    assert other.max_order_notional == 1_000_000


def test_config_from_json_like_data() -> None:
    config = DetectionConfig.model_validate(
        {
            "enabled_rules": ["daily_loss", "heartbeat_lost"],
            "required_components": ["risk", "gateway"],
            "day_boundary": "Europe/London",
            "account_overrides": {"a1": {"daily_loss": 0.05}},
        }
    )
    assert config.required_components == {"risk", "gateway"}
    rules = build_rules(config)
    assert [r.name for rs in rules.values() for r in rs] == ["daily_loss", "heartbeat_lost"]


@pytest.mark.parametrize(
    ("value", "offset"),
    [
        ("UTC", timedelta(0)),
        ("Z", timedelta(0)),
        ("+02:00", timedelta(hours=2)),
        ("-0530", timedelta(hours=-5, minutes=-30)),
        ("UTC+01:00", timedelta(hours=1)),
    ],
)
def test_fixed_day_boundaries(value: str, offset: timedelta) -> None:
    zone = parse_day_boundary(value)
    assert isinstance(zone, timezone)
    assert zone.utcoffset(None) == offset


def test_day_bounds_in_a_zone_with_daylight_saving() -> None:
    zone = parse_day_boundary("America/New_York")
    start, end = day_bounds(datetime(2026, 3, 8, 12, tzinfo=UTC), zone)
    assert end - start == timedelta(hours=23)
    assert start == datetime(2026, 3, 8, 5, tzinfo=UTC)

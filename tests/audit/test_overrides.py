"""``--set`` overrides and config loading: what a what-if replay may change, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ess.audit.overrides import ConfigError, apply_overrides, load_config, parse_assignment
from ess.rules.config import DetectionConfig


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("account.daily_loss=0.07", ("account", "daily_loss"), 0.07),
        ("account.daily_loss=7%", ("account", "daily_loss"), 0.07),
        ("heartbeat_timeout_sec = 30", ("heartbeat_timeout_sec",), 30),
        ("account.max_order_qty=null", ("account", "max_order_qty"), None),
        ('enabled_rules=["daily_loss"]', ("enabled_rules",), ["daily_loss"]),
        ("day_boundary=America/New_York", ("day_boundary",), "America/New_York"),
        ("day_boundary=+02:00", ("day_boundary",), "+02:00"),
    ],
)
def test_assignments_parse_json_percentages_and_text(
    text: str, path: tuple[str, ...], value: object
) -> None:
    got_path, got_value = parse_assignment(text)
    assert got_path == path
    assert got_value == pytest.approx(value) if isinstance(value, float) else got_value == value


def test_overrides_change_only_what_they_name() -> None:
    base = DetectionConfig(
        account=DetectionConfig().account.model_copy(update={"stop_loss_max": 2}),
        heartbeat_timeout_sec=3600,
    )

    config = apply_overrides(
        base,
        [
            "account.daily_loss=0.07",
            "account_overrides.acct-7.stop_loss_max=3",
            "heartbeat_timeout_sec=30",
            "account.daily_loss=0.06",  # later wins
        ],
    )

    assert config.account.daily_loss == pytest.approx(0.06)
    assert config.account.stop_loss_max == 2  # untouched, from the base
    assert config.heartbeat_timeout_sec == 30
    assert config.limits_for("acct-7").stop_loss_max == 3
    assert config.limits_for("acct-7").daily_loss == pytest.approx(0.06)
    assert config.limits_for("acct-8").stop_loss_max == 2
    assert apply_overrides(base, []) is base


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("daily_loss=0.07", "did you mean account.daily_loss"),
        ("account.daily_los=0.07", "unknown limit 'daily_los'; did you mean daily_loss"),
        ("heartbeat_timeout=30", "did you mean heartbeat_timeout_sec"),
        ("account.daily_loss=1.5", "account.daily_loss: Input should be less than 1 (got 1.5)"),
        ("account.daily_loss=lots", "account.daily_loss: Input should be a valid number"),
        ("heartbeat_timeout_sec=-1", "heartbeat_timeout_sec: Input should be greater than 0"),
        ("corrupt_min_ticks=100", "corrupt_min_ticks (100) exceeds corrupt_window_ticks"),
        ('enabled_rules=["nope"]', "unknown rules ['nope']"),
        ("account_overrides.acct-1.daily_loss=null", "only size limits (max_*) may be set"),
        ("account_overrides=1", "name an account and a limit"),
        ("account.daily_loss.x=1", "expected account.<limit>"),
        ("heartbeat_timeout_sec.x=1", "heartbeat_timeout_sec has no sub-settings"),
        ("heartbeat_timeout_sec", "expected PATH=VALUE"),
        ("=1", "expected PATH=VALUE"),
    ],
)
def test_bad_overrides_say_what_is_wrong(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides(DetectionConfig(), [assignment])
    assert message in str(caught.value)


def test_config_files_load_like_the_detectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "detect.toml"
    toml.write_text("heartbeat_timeout_sec = 60\n[account]\ndaily_loss = 0.05\n")
    as_json = tmp_path / "detect.json"
    as_json.write_text('{"account": {"stop_loss_max": 2}}')

    assert load_config(toml).account.daily_loss == pytest.approx(0.05)
    assert load_config(as_json).account.stop_loss_max == 2
    monkeypatch.setenv("ESS_DETECT_CONFIG", str(toml))
    assert load_config(None).heartbeat_timeout_sec == 60
    monkeypatch.delenv("ESS_DETECT_CONFIG")
    assert load_config(None) == DetectionConfig()


def test_bad_config_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("heartbeat_timeout_sec = \n")
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"account": {"daily_loss": 2}}')

    with pytest.raises(ConfigError, match=r"broken\.toml does not parse"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"invalid\.json: account\.daily_loss"):
        load_config(invalid)
    with pytest.raises(ConfigError, match="cannot read detection config"):
        load_config(tmp_path / "missing.toml")

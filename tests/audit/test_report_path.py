"""Where a replay writes its HTML report: a what-if never replaces the audit report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ess.audit.overrides import ConfigError
from ess.audit.report import (
    AUDIT_REPORT,
    ReportPathError,
    default_report_path,
    overrides_hash,
    report_path,
)


def test_the_audit_replay_writes_the_audit_report(tmp_path: Path) -> None:
    assert default_report_path(tmp_path) == tmp_path / "replay-report.html"
    assert report_path(tmp_path) == tmp_path / AUDIT_REPORT


def test_a_what_if_replay_writes_its_own_report_named_by_its_overrides(tmp_path: Path) -> None:
    path = default_report_path(tmp_path, ["account.daily_loss=0.07"])

    assert path.parent == tmp_path
    assert re.fullmatch(r"replay-report-whatif-[0-9a-f]{10}\.html", path.name)
    assert path != tmp_path / AUDIT_REPORT


def test_the_hash_is_stable_and_names_what_is_overridden() -> None:
    one = overrides_hash(["account.daily_loss=0.07", "heartbeat_timeout_sec=30"])

    # Fixed across runs and machines: a report name written today is found again tomorrow.
    # The first hex digits of the sha256 of {"account.daily_loss":0.07,"heartbeat_timeout_sec":30}
    assert one == "ec8d32bf25"
    assert one == overrides_hash(["account.daily_loss=0.07", "heartbeat_timeout_sec=30"])
    # The order of independent options, spaces and the spelling of a value do not matter.
    assert overrides_hash(["heartbeat_timeout_sec=30", "account.daily_loss = 7%"]) == one
    # Later assignments win, as when they are applied: what counts is the final value.
    assert overrides_hash(["account.daily_loss=0.5", "account.daily_loss=0.07"]) == (
        overrides_hash(["account.daily_loss=0.07"])
    )
    # Anything else overridden is another what-if.
    assert overrides_hash(["account.daily_loss=0.08", "heartbeat_timeout_sec=30"]) != one
    assert overrides_hash(["account.daily_loss=0.07"]) != one
    assert overrides_hash(["account.drawdown=0.07"]) != overrides_hash(["account.daily_loss=0.07"])


def test_several_what_ifs_coexist(tmp_path: Path) -> None:
    paths = {
        default_report_path(tmp_path, overrides)
        for overrides in (
            [],
            ["account.daily_loss=5%"],
            ["account.daily_loss=7%"],
            ["heartbeat_timeout_sec=30"],
        )
    }

    assert len(paths) == 4


def test_a_malformed_override_is_refused_rather_than_hashed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected PATH=VALUE"):
        default_report_path(tmp_path, ["daily_loss"])


def test_an_explicit_report_path_is_used(tmp_path: Path) -> None:
    mine = tmp_path / "elsewhere" / "what-if.html"

    assert report_path(tmp_path, ["account.daily_loss=0.07"], mine) == mine
    assert report_path(tmp_path, [], tmp_path / AUDIT_REPORT) == tmp_path / AUDIT_REPORT


def test_a_what_if_may_not_name_the_audit_report(tmp_path: Path) -> None:
    recording = tmp_path / "rec"
    recording.mkdir()
    (tmp_path / "link").symlink_to(recording)
    overrides = ["account.daily_loss=0.07"]

    for explicit in (
        recording / AUDIT_REPORT,
        recording / "sub" / ".." / AUDIT_REPORT,
        tmp_path / "link" / AUDIT_REPORT,
    ):
        with pytest.raises(ReportPathError) as refused:
            report_path(recording, overrides, explicit)
        message = str(refused.value)
        assert "is the audit report of this recording" in message
        assert "must not overwrite it" in message
        assert str(default_report_path(recording, overrides)) in message

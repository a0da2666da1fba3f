"""The settings tree (ess/settings/): one model, each default once, every variable named once,
old names still read with a warning, and a warning for every ``ESS_*`` variable nothing reads."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from loguru import logger
from pydantic import SecretStr, ValidationError

from ess.operator.cli import cli
from ess.roles.detect.settings import DetectorSettings
from ess.settings import (
    OTHER_VARIABLES,
    DetectSettings,
    EssSettings,
    ExecuteSettings,
    KafkaSettings,
    env_variables,
    warn_environment,
)
from ess.settings.environment import sections
from schemas import topic_registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ESS_* or KAFKA_* variable from the test process leaks into the settings."""
    for name in list(__import__("os").environ):
        if name.upper().startswith(("ESS_", "KAFKA_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The WARNING messages logged while the test runs."""
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        yield lines
    finally:
        logger.remove(handler)


# --------------------------------------------------------------------------- the tree


def test_every_variable_belongs_to_one_field() -> None:
    names = [variable.name for variable in env_variables()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert not set(names) & set(OTHER_VARIABLES)
    assert {"KAFKA_BOOTSTRAP_SERVERS", "ESS_KAFKA_BOOTSTRAP_SERVERS", "ESS_TOPIC_PREFIX"} <= set(
        names
    )


def test_every_duration_has_its_unit_in_its_names() -> None:
    durations = 0
    for _, section in sections(EssSettings):
        for field, info in section.model_fields.items():
            assert not field.endswith("_s"), f"{section.__name__}.{field}: spell seconds _sec"
            if info.annotation is float:  # every float setting is a duration
                durations += 1
                assert field.endswith(("_sec", "_ms")), f"{section.__name__}.{field}"
                for name in section.env_names(field):
                    assert name.endswith(("_SEC", "_MS")), name
    assert durations >= 20


def test_the_detector_settings_repeat_no_default_of_the_detect_section() -> None:
    built = DetectorSettings(bootstrap="b:1", registry=topic_registry("unit"))
    section = DetectSettings()
    shared = {f.name for f in dataclasses.fields(DetectorSettings)} & set(
        DetectSettings.model_fields
    )
    assert shared >= {"batch_max", "fetch_max_wait_ms", "tick_interval_sec", "wedged_after_sec"}
    for name in shared - {"status_port"}:  # built in code: no status server unless asked
        assert getattr(built, name) == getattr(section, name), name
    assert built.app_id == section.group
    source = (ROOT / "ess" / "roles" / "detect" / "settings.py").read_text()
    assert not re.search(r"^\s+\w+: (int|float|str) = [\d\"']", source, re.M), "a second default"


def test_each_section_reads_its_own_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ESS_KAFKA_BOOTSTRAP_SERVERS", "k:1")
    clean_env.setenv("ESS_REDIS_URL", "redis://r:6379/0")
    clean_env.setenv("ESS_RESET_QUORUM", "2")
    clean_env.setenv("ess_log_json", "false")  # names are case-insensitive, as before
    clean_env.setenv("ESS_COMMAND_WEDGED_AFTER_SEC", "12")
    clean_env.setenv("ESS_PROCESSOR_BEAT_INTERVAL_SEC", "0.25")
    clean_env.setenv("ESS_STATUS_PORT", "-1")
    clean_env.setenv("ESS_DETECT_TICK_INTERVAL_SEC", "2.5")
    clean_env.setenv("ESS_EXECUTOR_FLATTEN_DEADLINE_SEC", "7")

    settings = EssSettings(_env_file=None)

    assert settings.kafka.bootstrap_servers == "k:1"
    assert settings.resolved_policy_store_url() == "redis://r:6379/0"
    assert settings.reset_policy().quorum == 1  # no operator keys installed: fail closed
    assert settings.keys.reset_quorum == 2
    assert settings.observability.log_json is False
    assert (settings.command.wedged_after_sec, settings.command.beat_interval_sec) == (12, 0.25)
    assert settings.project.status_port == -1
    assert settings.detect.tick_interval_sec == 2.5
    assert settings.execute.flatten_deadline_sec == 7


def test_kafka_names_win_over_the_ess_kafka_alias_and_blank_is_unset(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "first:1")
    clean_env.setenv("ESS_KAFKA_BOOTSTRAP_SERVERS", "second:1")
    clean_env.setenv("ESS_TOPIC_PREFIX", "")
    clean_env.setenv("ESS_DETECT_CONFIG", " ")

    settings = EssSettings(_env_file=None)

    assert settings.kafka.bootstrap_servers == "first:1"
    assert settings.kafka.topic_prefix == "ess"
    assert settings.detect.config is None


def test_the_environment_wins_over_the_env_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ESS_TOPIC_PREFIX=fromfile\nESS_DETECT_GROUP=file-group\n")
    clean_env.setenv("ESS_DETECT_GROUP", "env-group")

    settings = EssSettings(_env_file=env_file)

    assert (settings.kafka.topic_prefix, settings.detect.group) == ("fromfile", "env-group")
    assert EssSettings(_env_file=None).kafka.topic_prefix == "ess"


def test_sections_given_in_code_merge_with_or_replace_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("ESS_TOPIC_PREFIX", "env")
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:1")

    merged = EssSettings(kafka={"topic_prefix": "code"}, _env_file=None)
    replaced = EssSettings(kafka=KafkaSettings(topic_prefix="code"), _env_file=None)
    moved = merged.with_sections(kafka={"bootstrap_servers": "other:2"})

    assert (merged.kafka.topic_prefix, merged.kafka.bootstrap_servers) == ("code", "env:1")
    assert (replaced.kafka.topic_prefix, replaced.kafka.bootstrap_servers) == ("code", "")
    assert (moved.kafka.bootstrap_servers, moved.kafka.topic_prefix) == ("other:2", "code")
    with pytest.raises(ValidationError, match="extra"):
        EssSettings(kafka_bootstrap_servers="flat names are gone", _env_file=None)
    with pytest.raises(ValidationError):
        merged.with_sections(kafka={"input_partitions": 0})


def test_a_bad_value_is_reported_under_its_variable_or_its_field(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("ESS_DETECT_BATCH_MAX", "many")
    with pytest.raises(ValidationError, match=r"ESS_DETECT_BATCH_MAX\n") as from_env:
        EssSettings(_env_file=None)
    assert "many" not in str(from_env.value)  # inputs stay hidden (they may be secrets)

    clean_env.delenv("ESS_DETECT_BATCH_MAX")
    with pytest.raises(ValidationError, match=r"detect\.batch_max\n"):
        EssSettings(detect={"batch_max": "many"}, _env_file=None)
    password = "hunter2-do-not-print"
    with pytest.raises(ValidationError) as from_code:
        EssSettings(
            kafka={"security_protocol": "SASL_SSL", "sasl_password": SecretStr(password)},
            _env_file=None,
        )
    assert password not in str(from_code.value)


# --------------------------------------------------------------------------- deprecated names


def test_an_old_executor_name_is_still_read_with_a_warning_naming_both(
    clean_env: pytest.MonkeyPatch, warnings: list[str]
) -> None:
    clean_env.setenv("ESS_EXECUTOR_FLATTEN_DEADLINE_S", "4")

    assert EssSettings(_env_file=None).execute.flatten_deadline_sec == 4
    report = warn_environment({"ESS_EXECUTOR_FLATTEN_DEADLINE_S": "4"}, warned=set())

    assert [(d.name, d.replacement, d.ignored) for d in report.deprecated] == [
        ("ESS_EXECUTOR_FLATTEN_DEADLINE_S", "ESS_EXECUTOR_FLATTEN_DEADLINE_SEC", False)
    ]
    assert report.unknown == ()
    assert len(warnings) == 1
    assert "ESS_EXECUTOR_FLATTEN_DEADLINE_S is deprecated" in warnings[0]
    assert "ESS_EXECUTOR_FLATTEN_DEADLINE_SEC" in warnings[0]


def test_the_new_name_wins_over_the_old_one_and_the_old_one_is_called_ignored(
    clean_env: pytest.MonkeyPatch, warnings: list[str]
) -> None:
    env = {"ESS_EXECUTOR_LOG_TIMEOUT_S": "9", "ESS_EXECUTOR_LOG_TIMEOUT_SEC": "2"}
    for name, value in env.items():
        clean_env.setenv(name, value)

    assert EssSettings(_env_file=None).execute.log_timeout_sec == 2
    warn_environment(env, warned=set())

    assert warnings == [
        "ESS_EXECUTOR_LOG_TIMEOUT_S is deprecated and ignored: ESS_EXECUTOR_LOG_TIMEOUT_SEC is set"
    ]


def test_every_old_executor_name_maps_to_a_renamed_field() -> None:
    old = {v.name: v for v in env_variables() if v.deprecated}
    assert len(old) == 9
    for name, variable in old.items():
        assert variable.replacement == f"{name}EC"  # ..._S -> ..._SEC
        assert variable.field in ExecuteSettings.model_fields


# --------------------------------------------------------------------------- unknown variables


def test_unknown_variables_are_warned_about_once_with_a_suggestion(warnings: list[str]) -> None:
    env = {
        "ESS_DETECT_TICK_INTERVAL": "2",  # its unit forgotten
        "ESS_EXECUTOR_FLATEN_DEADLINE_SEC": "3",  # misspelt
        "ESS_SOMETHING_ELSE": "1",
        "ess_lowercase_typo": "1",
        "ESS_TOPIC_PREFIX": "ok",
        "KAFKA_HEAP_OPTS": "-Xmx1G",  # not ESS's: Kafka tooling reads many KAFKA_* names
    }
    warned: set[str] = set()

    report = warn_environment(env, warned=warned)
    again = warn_environment(env, warned=warned)

    suggestions = {u.name: u.suggestion for u in report.unknown}
    assert suggestions == {
        "ESS_DETECT_TICK_INTERVAL": "ESS_DETECT_TICK_INTERVAL_SEC",
        "ESS_EXECUTOR_FLATEN_DEADLINE_SEC": "ESS_EXECUTOR_FLATTEN_DEADLINE_SEC",
        "ESS_LOWERCASE_TYPO": None,
        "ESS_SOMETHING_ELSE": None,
    }
    assert again == report
    assert len(warnings) == 4, "one line per variable, once"
    assert any(
        line.startswith("ESS_DETECT_TICK_INTERVAL is set but no ESS setting reads it")
        and line.endswith("did you mean ESS_DETECT_TICK_INTERVAL_SEC?")
        for line in warnings
    )


def test_venue_credentials_venue_lists_and_test_variables_are_known(
    tmp_path: Path, warnings: list[str]
) -> None:
    venues = tmp_path / "venues.json"
    venues.write_text(
        json.dumps(
            [
                {"name": "futures", "exchange": "binanceusdm"},
                {
                    "name": "spot",
                    "exchange": "binance",
                    "api_key_env": "ESS_SPOT_KEY",
                    "secret_env": "ESS_SPOT_SECRET",
                },
            ]
        )
    )
    env = {
        "ESS_VENUES_FILE": str(venues),
        "ESS_VENUE_FUTURES_API_KEY": "k",
        "ESS_VENUE_FUTURES_SECRET": "s",
        "ESS_VENUE_OTHER_API_KEY": "k",  # the default pattern, even for an unlisted venue
        "ESS_SPOT_KEY": "k",  # names the venue file declares
        "ESS_SPOT_SECRET": "s",
        "ESS_TEST_REDIS_URL": "redis://localhost",
    }

    report = warn_environment(env, warned=set())

    assert report.unknown == ()
    assert warnings == []
    broken = warn_environment({**env, "ESS_VENUES_FILE": str(tmp_path / "none")}, warned=set())
    assert [u.name for u in broken.unknown] == ["ESS_SPOT_KEY", "ESS_SPOT_SECRET"]


def test_the_worker_and_the_cli_warn_at_start(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ESS_DETECT_TICK_INTERVAL", "2")
    clean_env.setenv("ESS_LOG_JSON", "false")

    outcome = CliRunner().invoke(cli, ["status"])  # stops at once: no cluster configured

    assert outcome.exit_code == 2
    text = " ".join(outcome.output.split())
    assert "ESS_DETECT_TICK_INTERVAL is set but no ESS setting reads it" in text
    assert "did you mean ESS_DETECT_TICK_INTERVAL_SEC?" in text


def test_the_readme_documents_every_variable_once_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", readme, re.M)
    documented: dict[str, list[str]] = {}
    for name, default in rows:
        documented.setdefault(name, []).append(default.strip())
    for _, section in sections(EssSettings):
        for field, info in section.model_fields.items():
            name = section.env_names(field)[0]
            assert len(documented.get(name, [])) == 1, f"{name}: {documented.get(name)}"
            assert documented[name][0] == _shown(info.default), name


def _shown(default: Any) -> str:
    """A default as the README's settings tables write it."""
    if default is None or default == "":
        return "\u2013"  # the en dash of the tables
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return format(default, "g")
    return str(default)

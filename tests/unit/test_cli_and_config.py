from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from ess.cli import cli
from ess.config import EssSettings
from ess.core.signing import load_private_key, public_bytes


def test_keygen_writes_a_usable_key_pair(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["keygen", "--name", "alice", "--dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    key = load_private_key(tmp_path / "alice.key")
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in (tmp_path / "alice.pub").read_text()
    settings = EssSettings(operator_keys_dir=tmp_path)
    assert settings.reset_policy().operators["alice"] == public_bytes(key)


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["keygen", "--name", "bob", "--dir", str(tmp_path)])

    result = runner.invoke(cli, ["keygen", "--name", "bob", "--dir", str(tmp_path)])

    assert result.exit_code == 1
    assert "refusing to overwrite" in result.output


def test_keygen_rejects_odd_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["keygen", "--name", "../evil", "--dir", str(tmp_path)])

    assert result.exit_code == 2
    assert not list(tmp_path.iterdir())


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092")
    monkeypatch.setenv("ESS_TOPIC_PREFIX", "prod")
    monkeypatch.setenv("ESS_RESET_QUORUM", "2")
    monkeypatch.setenv("ESS_LOG_LEVEL", "debug")
    monkeypatch.setenv("ESS_OPERATOR_KEYS_DIR", str(tmp_path / "none"))

    settings = EssSettings()

    assert settings.kafka_bootstrap_servers == "kafka-1:9092"
    assert settings.registry().commands.name == "prod.commands"
    assert settings.log_level == "DEBUG"
    policy = settings.reset_policy()
    assert dict(policy.operators) == {}, "no keys installed: nobody can reset (fail closed)"
    assert policy.quorum == 1


def test_settings_reject_unknown_log_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        EssSettings(log_level="chatty")

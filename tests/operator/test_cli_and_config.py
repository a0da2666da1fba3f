from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ess.core.attestation import SigningKey, key_id
from ess.core.signing import (
    KeyMaterialError,
    generate_private_key,
    load_private_key,
    parse_public_key,
    public_bytes,
    write_key_pair,
)
from ess.operator.cli import cli
from ess.settings import EssSettings


def keygen(*args: str) -> Result:
    return CliRunner().invoke(cli, ["keygen", *args])


def test_keygen_writes_a_usable_key_pair(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["keygen", "--name", "alice", "--dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    key = load_private_key(tmp_path / "alice.key")
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in (tmp_path / "alice.pub").read_text()
    settings = EssSettings(keys={"operator_keys_dir": tmp_path})
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

    assert settings.kafka.bootstrap_servers == "kafka-1:9092"
    assert settings.registry().commands.name == "prod.commands"
    assert settings.observability.log_level == "DEBUG"
    policy = settings.reset_policy()
    assert dict(policy.operators) == {}, "no keys installed: nobody can reset (fail closed)"
    assert policy.quorum == 1


def test_settings_reject_unknown_log_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        EssSettings(observability={"log_level": "chatty"})


# --------------------------------------------------------------------------- processor keys


def test_keygen_processor_writes_the_private_key_and_the_trusted_public_key(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "keys"

    result = keygen("--processor", "--dir", str(directory))

    assert result.exit_code == 0, result.output
    private = directory / "processor.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public_raw = public_bytes(load_private_key(private))
    [public] = (directory / "processors").glob("*.pub")
    assert public.name == f"{key_id(public_raw)}.pub"
    assert parse_public_key(public.read_text()) == public_raw
    assert f"key id: {key_id(public_raw)}" in result.output
    assert not (directory / "processor.pub").exists(), "only the trusted copy is kept"
    # What the processor signs with, and what a reader configured with the directory trusts.
    settings = EssSettings(
        keys={"processor_key_file": private, "processor_keys_dir": directory / "processors"},
        _env_file=None,
    )
    assert settings.processor_signing_key().key_id == key_id(public_raw)
    assert dict(settings.state_trust().processor_keys) == {key_id(public_raw): public_raw}


def test_keygen_processor_refuses_to_overwrite_a_private_key(tmp_path: Path) -> None:
    assert keygen("--processor", "--dir", str(tmp_path)).exit_code == 0
    before = (tmp_path / "processor.key").read_bytes()

    again = keygen("--processor", "--dir", str(tmp_path))

    assert again.exit_code == 1
    assert "refusing to overwrite" in again.output
    assert (tmp_path / "processor.key").read_bytes() == before
    assert len(list((tmp_path / "processors").glob("*.pub"))) == 1


@pytest.mark.parametrize("args", [["--name", "alice", "--processor"], []])
def test_keygen_needs_exactly_one_of_name_and_processor(tmp_path: Path, args: list[str]) -> None:
    result = keygen(*args, "--dir", str(tmp_path))

    assert result.exit_code == 2, result.output
    assert "give either --name NAME (an operator) or --processor" in result.output
    assert list(tmp_path.iterdir()) == []


def test_state_trust_without_any_processor_key_refuses_with_what_to_do(tmp_path: Path) -> None:
    settings = EssSettings(keys={"processor_keys_dir": tmp_path / "none"}, _env_file=None)

    with pytest.raises(KeyMaterialError, match="ESS_PROCESSOR_KEYS_DIR") as refused:
        settings.state_trust()
    assert "ess keygen --processor" in str(refused.value)


def test_state_trust_holds_the_installed_keys_and_the_processor_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = SigningKey(generate_private_key())
    own = SigningKey(generate_private_key())
    (tmp_path / "processors").mkdir()
    (tmp_path / "processors" / "old.pub").write_text(base64.b64encode(installed.public).decode())
    alice, carol = generate_private_key(), generate_private_key()
    write_key_pair(alice, tmp_path / "operators", "alice")
    write_key_pair(carol, tmp_path / "operators" / "retired", "carol")
    monkeypatch.setenv("ESS_TOPIC_PREFIX", "prod")
    monkeypatch.setenv("ESS_STATE_LOG_UNSIGNED_BEFORE", "17")
    settings = EssSettings(
        keys={
            "processor_keys_dir": tmp_path / "processors",
            "operator_keys_dir": tmp_path / "operators",
        },
        _env_file=None,
    )

    trust = settings.state_trust(also_trust=own)

    assert trust.scope == "prod.state"
    assert dict(trust.processor_keys) == {
        installed.key_id: installed.public,
        own.key_id: own.public,
    }
    # Retired operators still verify old resets; only current ones may sign new ones.
    assert dict(trust.operator_keys) == {"alice": public_bytes(alice), "carol": public_bytes(carol)}
    assert dict(settings.reset_policy().operators) == {"alice": public_bytes(alice)}
    assert trust.unsigned_before == 17


def test_processor_signing_key_missing_says_what_to_do(tmp_path: Path) -> None:
    settings = EssSettings(keys={"processor_key_file": tmp_path / "processor.key"}, _env_file=None)

    with pytest.raises(KeyMaterialError, match="ESS_PROCESSOR_KEY_FILE") as refused:
        settings.processor_signing_key()
    assert "ess keygen --processor" in str(refused.value)


def test_an_unusable_public_key_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "processors").mkdir()
    (tmp_path / "processors" / "bad.pub").write_text("not a key")
    settings = EssSettings(keys={"processor_keys_dir": tmp_path / "processors"}, _env_file=None)

    with pytest.raises(KeyMaterialError, match=r"bad\.pub"):
        settings.state_trust()


def test_two_operator_names_with_one_key_are_refused(tmp_path: Path) -> None:
    key = generate_private_key()
    write_key_pair(key, tmp_path, "alice")
    (tmp_path / "alias.pub").write_text((tmp_path / "alice.pub").read_text())
    settings = EssSettings(keys={"operator_keys_dir": tmp_path}, _env_file=None)

    with pytest.raises(ValueError, match="same public key"):
        settings.reset_policy()


def test_a_small_order_operator_key_is_refused(tmp_path: Path) -> None:
    # The identity point: it "verifies" forged signatures, so it must never be loaded.
    identity = bytes([1]) + bytes(31)
    (tmp_path / "mallory.pub").write_text(base64.b64encode(identity).decode())
    settings = EssSettings(keys={"operator_keys_dir": tmp_path}, _env_file=None)

    with pytest.raises(KeyMaterialError, match=r"mallory\.pub"):
        settings.reset_policy()

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ess.config import EssSettings
from ess.core.signing import KeyMaterialError, generate_private_key, public_bytes, write_key_pair
from ess.operator.cli import cli
from ess.roles import worker
from ess.roles.command.processor import EXIT_FENCED, FencedError
from ess.roles.worker import ROLES, run_worker
from ess.venues.config import VenueConfigError


@pytest.mark.parametrize("roles", [(), ("detect", "trade")])
async def test_run_worker_refuses_unknown_or_no_roles(roles: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        await run_worker(EssSettings(), roles)


def test_roles_are_the_documented_ones() -> None:
    assert ROLES == ("detect", "command", "execute", "project")


async def test_the_execute_role_without_venue_settings_fails_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ESS_VENUES", raising=False)
    monkeypatch.delenv("ESS_VENUES_FILE", raising=False)
    with pytest.raises(VenueConfigError, match="ESS_VENUES_FILE"):
        await run_worker(EssSettings(kafka_bootstrap_servers="127.0.0.1:1"), ("execute",))


async def test_the_execute_role_reports_missing_credentials_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESS_VENUES", '[{"name": "futures", "exchange": "binanceusdm"}]')
    monkeypatch.delenv("ESS_VENUE_FUTURES_API_KEY", raising=False)
    with pytest.raises(VenueConfigError, match="ESS_VENUE_FUTURES_API_KEY"):
        await run_worker(EssSettings(kafka_bootstrap_servers="127.0.0.1:1"), ("execute",))


def test_ess_worker_exits_3_when_the_command_processor_was_fenced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fenced(*_: object, **__: object) -> None:
        raise worker.WorkerError("role command failed") from FencedError("another writer")

    monkeypatch.setattr(worker, "run_worker", fenced)
    outcome = CliRunner().invoke(cli, ["worker", "--role", "command"])

    assert outcome.exit_code == EXIT_FENCED


# --------------------------------------------------------------------------- processor key


def test_the_embedded_broker_without_a_key_file_signs_with_a_key_made_for_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = EssSettings(processor_key_file=tmp_path / "none.key", _env_file=None)

    first, second = worker._signing_key(settings), worker._signing_key(settings)

    assert first.key_id != second.key_id
    assert not (tmp_path / "none.key").exists()


def test_a_key_file_is_used_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    key = generate_private_key()
    paths = write_key_pair(key, tmp_path, "processor")
    settings = EssSettings(processor_key_file=paths.private, _env_file=None)

    assert worker._signing_key(settings).public == public_bytes(key)


async def test_an_external_broker_without_a_processor_key_fails_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Nothing listens there: a worker that tried to connect would fail otherwise (or hang).
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    settings = EssSettings(processor_key_file=tmp_path / "missing.key", _env_file=None)

    with pytest.raises(KeyMaterialError, match="ess keygen --processor"):
        await run_worker(settings, ("command",))


async def test_a_reader_role_without_trusted_processor_keys_fails_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    settings = EssSettings(processor_keys_dir=tmp_path / "none", _env_file=None)

    with pytest.raises(KeyMaterialError, match="ESS_PROCESSOR_KEYS_DIR"):
        await run_worker(settings, ("project",))


def test_ess_worker_exits_1_with_the_key_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("ESS_PROCESSOR_KEY_FILE", str(tmp_path / "missing.key"))

    outcome = CliRunner().invoke(cli, ["worker", "--role", "command"])

    assert outcome.exit_code == 1
    assert "ess keygen --processor" in " ".join(outcome.output.split())

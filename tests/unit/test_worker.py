from __future__ import annotations

import pytest
from click.testing import CliRunner

from ess import worker
from ess.cli import cli
from ess.config import EssSettings
from ess.executor.config import VenueConfigError
from ess.processor import EXIT_FENCED, FencedError
from ess.worker import ROLES, run_worker


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

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ess.core.reader import Trust
from ess.core.signing import KeyMaterialError, generate_private_key, public_bytes, write_key_pair
from ess.operator.cli import cli
from ess.roles import worker
from ess.roles.command.processor import EXIT_FENCED, FencedError
from ess.roles.context import Role, RoleContext
from ess.roles.worker import ROLES, run_worker
from ess.settings import EssSettings
from ess.venues.config import VenueConfigError


@pytest.mark.parametrize("roles", [(), ("detect", "trade")])
async def test_run_worker_refuses_unknown_or_no_roles(roles: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        await run_worker(EssSettings(), roles)


def test_roles_are_the_documented_ones() -> None:
    assert tuple(ROLES) == ("detect", "command", "execute", "project")


@pytest.mark.parametrize("name", ["detect", "command", "execute", "project"])
def test_every_role_is_its_package_run_with_one_signature(name: str) -> None:
    package = importlib.import_module(f"ess.roles.{name}")
    assert ROLES[name] is package.run
    assert inspect.iscoroutinefunction(package.run)
    assert list(inspect.signature(package.run).parameters) == ["settings", "stop", "context"]


def test_importing_the_roles_does_not_load_faust() -> None:
    code = (
        "import sys, ess.roles.worker, ess.roles.detect; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'faust', 'streams'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


class _Recorder:
    """Fake roles: each records its call and runs until ``stop``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, EssSettings, RoleContext]] = []
        self.started = asyncio.Event()

    def role(self, name: str) -> Role:
        async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None:
            self.calls.append((name, settings, context))
            self.started.set()
            await stop.wait()

        return run


async def test_jobs_start_exactly_the_requested_roles_from_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(worker, "ROLES", {n: recorder.role(n) for n in ("a", "b", "c")})
    settings = EssSettings(_env_file=None)
    context = RoleContext(bootstrap="b:1", trust=Trust(scope="s"))
    stop = asyncio.Event()
    stop.set()

    jobs = worker._jobs(settings, ("c", "a"), stop, context)
    await asyncio.gather(*jobs.values())

    assert list(jobs) == ["a", "c"]  # table order, whatever the order asked
    assert [(name, s, c) for name, s, c in recorder.calls] == [
        ("a", settings, context),
        ("c", settings, context),
    ]


class _FakeTarget:
    """Stands in for kafka_target: a cluster that is already there."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def __call__(self, registry: object, *, security: object, bootstrap: str | None) -> Any:
        self.asked.append(bootstrap)

        @contextlib.asynccontextmanager
        async def target() -> AsyncIterator[str]:
            yield "resolved:9092"

        return target()


async def test_run_worker_prepares_one_context_for_every_role(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recorder = _Recorder()
    fake_roles = {name: recorder.role(name) for name in ("detect", "command", "execute", "project")}
    monkeypatch.setattr(worker, "ROLES", fake_roles)
    target = _FakeTarget()
    monkeypatch.setattr(worker, "kafka_target", target)
    settings = EssSettings(keys={"processor_key_file": tmp_path / "none.key"}, _env_file=None)
    stop = asyncio.Event()

    running = asyncio.create_task(run_worker(settings, ("project", "command"), stop))
    await asyncio.wait_for(recorder.started.wait(), 10)
    await asyncio.sleep(0)  # let the second role start too
    stop.set()
    await asyncio.wait_for(running, 10)

    assert target.asked == [""]  # the settings' cluster (none: the embedded broker)
    assert sorted(name for name, _, _ in recorder.calls) == ["command", "project"]
    context = recorder.calls[0][2]
    assert all(c is context for _, _, c in recorder.calls), "one context, prepared once"
    assert context.bootstrap == "resolved:9092"
    assert context.venues == ()
    assert context.signing_key is not None  # a key made for the run (embedded broker)
    assert context.signing_key.key_id in context.trust.processor_keys


async def test_the_execute_role_without_venue_settings_fails_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ESS_VENUES", raising=False)
    monkeypatch.delenv("ESS_VENUES_FILE", raising=False)
    with pytest.raises(VenueConfigError, match="ESS_VENUES_FILE"):
        await run_worker(
            EssSettings(kafka={"bootstrap_servers": "127.0.0.1:1"}),
            ("execute",),
        )


async def test_the_execute_role_reports_missing_credentials_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ESS_VENUES", '[{"name": "futures", "exchange": "binanceusdm"}]')
    monkeypatch.delenv("ESS_VENUE_FUTURES_API_KEY", raising=False)
    with pytest.raises(VenueConfigError, match="ESS_VENUE_FUTURES_API_KEY"):
        await run_worker(
            EssSettings(kafka={"bootstrap_servers": "127.0.0.1:1"}),
            ("execute",),
        )


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
    settings = EssSettings(keys={"processor_key_file": tmp_path / "none.key"}, _env_file=None)

    first, second = worker._signing_key(settings), worker._signing_key(settings)

    assert first.key_id != second.key_id
    assert not (tmp_path / "none.key").exists()


def test_a_key_file_is_used_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    key = generate_private_key()
    paths = write_key_pair(key, tmp_path, "processor")
    settings = EssSettings(keys={"processor_key_file": paths.private}, _env_file=None)

    assert worker._signing_key(settings).public == public_bytes(key)


async def test_an_external_broker_without_a_processor_key_fails_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Nothing listens there: a worker that tried to connect would fail otherwise (or hang).
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    settings = EssSettings(keys={"processor_key_file": tmp_path / "missing.key"}, _env_file=None)

    with pytest.raises(KeyMaterialError, match="ess keygen --processor"):
        await run_worker(settings, ("command",))


async def test_a_reader_role_without_trusted_processor_keys_fails_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    settings = EssSettings(keys={"processor_keys_dir": tmp_path / "none"}, _env_file=None)

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

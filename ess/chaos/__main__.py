"""``python -m ess.chaos`` (``make chaos``): every campaign at full size, one after the other.

Writes ``bench/results/chaos.json``: the headline figures at the top level (:data:`HEADLINE`:
crash and forgery figures), every campaign's figures under ``campaigns``, and ``failures``:
each campaign's ``FAILURES`` figures that are not 0. Exit code 0 only when there are none.
``--quick`` runs the shortened versions (what ``make test`` runs) and writes nothing;
``--only crash,venue`` re-measures those campaigns and merges them into the results file.
ESS's own logs go to a file (printed at the start), so the terminal shows progress and the
verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ess.observability.logging import configure_logging

CAMPAIGNS: tuple[str, ...] = (
    "crash",
    "venue",
    "broker_loss",
    "writer_loss",
    "fuzz",
    "forgery",
    "inprocess",
)
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "chaos.json"
#: The figures repeated at the top level of the results, and the campaign each comes from.
HEADLINE: dict[str, str] = {
    "scenarios": "crash",
    "kills": "crash",
    "missed_trips": "crash",
    "duplicate_activations": "crash",
    "auto_reactivations": "crash",
    "not_flat_at_end": "crash",
    "final_state_matches_replay": "crash",
    "gate_open_while_active_s": "crash",
    "trips_never_applied": "crash",
    "lost_answers": "crash",
    "unauthenticated_entries_applied": "forgery",
    "forged_state_effects": "forgery",
}


def headline(campaigns: dict[str, Any]) -> dict[str, Any]:
    """The :data:`HEADLINE` figures of the campaigns that ran."""
    return {key: campaigns[name].get(key) for key, name in HEADLINE.items() if name in campaigns}


def failures_of(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    """The campaign's ``FAILURES`` figures that are not 0 (a missing one counts as failed)."""
    module = importlib.import_module(f"ess.chaos.{name}")
    found: dict[str, Any] = {}
    for key in module.FAILURES:
        value = figures.get(key)
        if value != 0:
            found[key] = value
    if figures.get("final_state_matches_replay") is False:
        found["final_state_matches_replay"] = False
    return found


async def run_all(
    names: Sequence[str], *, quick: bool, seed: int, console: Console
) -> dict[str, Any]:
    """Run ``names`` in order; one campaign raising is recorded as a failure, not fatal."""
    campaigns: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    for name in names:
        module = importlib.import_module(f"ess.chaos.{name}")
        started = time.monotonic()
        with console.status(f"campaign {name} ({'quick' if quick else 'full'})..."):
            try:
                figures: dict[str, Any] = await module.run_campaign(quick=quick, seed=seed)
            except Exception as exc:  # the verdict must name it, and the others still run
                figures = {"error": f"{type(exc).__name__}: {exc}"}
        figures.setdefault("duration_s", round(time.monotonic() - started, 1))
        campaigns[name] = figures
        failed = (
            failures_of(name, figures) if "error" not in figures else {"error": figures["error"]}
        )
        if failed:
            failures[name] = failed
        verdict = "[red]FAILED[/] " + json.dumps(failed) if failed else "[green]ok[/]"
        console.print(f"campaign {name}: {verdict} ({figures['duration_s']} s)")
    return {
        "benchmark": "chaos",
        **headline(campaigns),
        "all_failures_zero": not failures,
        "failures": failures,
        "campaigns": campaigns,
        "quick": quick,
        "seed": seed,
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _table(result: dict[str, Any]) -> Table:
    table = Table(title="ESS reliability campaigns")
    table.add_column("campaign")
    table.add_column("figures")
    table.add_column("verdict")
    for name, figures in result["campaigns"].items():
        shown = {k: v for k, v in figures.items() if not isinstance(v, dict | list)}
        failed = result["failures"].get(name)
        table.add_row(name, json.dumps(shown), "[red]FAILED[/]" if failed else "[green]ok[/]")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ess.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the shortened campaigns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated campaign names")
    args = parser.parse_args(argv)
    names = [name for name in args.only.split(",") if name] or list(CAMPAIGNS)
    unknown = sorted(set(names) - set(CAMPAIGNS))
    if unknown:
        parser.error(f"unknown campaigns {unknown}; choose from {', '.join(CAMPAIGNS)}")
    console = Console()
    log_path = Path(tempfile.gettempdir()) / "ess-chaos.log"
    with log_path.open("w") as log_file:
        configure_logging("INFO", json=True, sink=log_file)
        console.print(f"ESS logs (JSON) go to {log_path}")
        result = asyncio.run(run_all(names, quick=args.quick, seed=args.seed, console=console))
    if not args.quick:
        result = merge_into_results(result)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"figures written to {RESULTS}")
    console.print(_table(result))
    return 0 if result["all_failures_zero"] else 1


def merge_into_results(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the campaigns it did not run taken from the existing results file, so
    ``--only fuzz`` re-measures one campaign without losing the others' figures."""
    try:
        previous: dict[str, Any] = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return result
    campaigns = {**previous.get("campaigns", {}), **result["campaigns"]}
    failures = {
        name: failed
        for name, failed in {**previous.get("failures", {}), **result["failures"]}.items()
        if name in campaigns and (name not in result["campaigns"] or name in result["failures"])
    }
    return {
        **result,
        **headline(campaigns),
        "campaigns": campaigns,
        "failures": failures,
        "all_failures_zero": not failures,
    }


if __name__ == "__main__":
    sys.exit(main())

"""The runnable entry points that talk to a broker: `make demo`'s trading session and its
every-venue stop, the broker round trip, `ess broker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from ess.examples import broker_roundtrip, venues_demo
from ess.examples.trading_demo import run_demo

pytestmark = pytest.mark.integration


async def test_the_venues_demo_flattens_every_family_from_a_venues_file(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ess worker` started from a venues file naming binanceusdm, binancecoinm, binance,
    bybit and okx books; `ess trip` flattens all of them; `ess reset` re-opens."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    out = StringIO()

    ok = await venues_demo.run_demo(Console(file=out, width=120), tmp_path)

    text = out.getvalue()
    assert ok, text + (tmp_path / "worker.log").read_text()
    file = (tmp_path / "venues.toml").read_text()
    for exchange in ("binanceusdm", "binancecoinm", "binance", "bybit", "okx"):
        assert f'exchange = "{exchange}"' in file
    for venue in ("binance-usdm", "binance-coinm", "binance-spot", "bybit-linear", "okx-swap"):
        assert f"{venue}: FLAT" in text


def test_broker_roundtrip_demo_uses_the_configured_cluster(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)

    assert broker_roundtrip.main() == 0


async def test_the_trading_demo_trips_flattens_and_resets(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    out = StringIO()

    result = await run_demo(Console(file=out, width=120))

    assert result.ok, out.getvalue()
    assert result.reason == "flash_crash"
    assert result.venues_flat
    assert result.reset_by == "alice"
    assert result.actions["flatten/verified_flat"] == 2
    assert result.replay_matches  # ess record + ess replay of the run decide the same
    assert result.report.endswith("replay-report.html")
    assert "ESS ACTIVE" in out.getvalue()


def test_ess_broker_command_serves_until_interrupted() -> None:
    env = {**os.environ, "ESS_LOG_JSON": "false"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ess.operator.cli", "broker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        ready = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "KAFKA_BOOTSTRAP_SERVERS=" in line or not line:
                ready = line
                break
        assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:" in ready
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    assert code == 0

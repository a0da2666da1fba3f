"""The runnable entry points that talk to a broker: `make demo`'s round trip, `ess broker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ess.examples import broker_roundtrip

pytestmark = pytest.mark.integration


def test_broker_roundtrip_demo_uses_the_configured_cluster(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)

    assert broker_roundtrip.main() == 0


def test_ess_broker_command_serves_until_interrupted() -> None:
    env = {**os.environ, "ESS_LOG_JSON": "false"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ess.cli", "broker"],
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

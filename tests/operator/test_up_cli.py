"""``ess up`` as a user runs it: one command, then the printed ``export`` line and ``ess status``
in another shell, then Ctrl-C. (What it starts and the lost-log path: tests/operator/test_up.py.)"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: Generous: the first start generates keys and starts a broker, a simulator and four roles.
READY_WITHIN_S = 120


def test_ess_up_prints_where_everything_is_and_its_export_line_works(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESS_", "KAFKA_"))}
    for port in ("ESS_STATUS_PORT", "ESS_COMMAND_STATUS_PORT", "ESS_EXECUTOR_STATUS_PORT"):
        env[port] = "0"
    env["ESS_DETECT_STATUS_PORT"] = "0"
    data = tmp_path / "data"
    up = subprocess.Popen(
        [sys.executable, "-m", "ess", "up", "--data-dir", str(data)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A hang fails the test instead of blocking on readline forever.
    watchdog = threading.Timer(READY_WITHIN_S, up.kill)
    watchdog.start()
    assert up.stdout is not None
    lines: list[str] = []
    try:
        for line in up.stdout:
            lines.append(line)
            if line.strip().startswith("export "):
                break
        watchdog.cancel()
        exports = [line.strip() for line in lines if line.strip().startswith("export ")]
        assert exports, "".join(lines[-10:]) + (up.stderr.read() if up.stderr else "")
        assert any(line.startswith("ESS is up on this host") for line in lines)
        assert any("DEVELOPMENT ONLY" in line for line in lines)
        assert (data / "keys" / "dev.key").is_file()
        shell_env = dict(env)
        for assignment in shlex.split(exports[0])[1:]:
            name, _, value = assignment.partition("=")
            shell_env[name] = value
        status = subprocess.run(
            [sys.executable, "-m", "ess", "status", "--json"],
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "INACTIVE"
    finally:
        watchdog.cancel()
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0, up.stderr.read() if up.stderr else ""

"""Every ``ess`` command with its broker and Redis out of reach, or a bad setting: one or two
lines naming what to fix, the documented exit code, never a traceback (issue 16, item 6).

The commands run as the user runs them (``python -m ess`` in a subprocess, the environment
pointing at a closed loopback port), side by side to keep the file quick.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ess.operator.cli import EXIT_FAILED, EXIT_USAGE, cli
from tests.fixtures.redis import closed_port, silent_server

#: Generous: a command that hangs on an unreachable broker fails here, not in CI's timeout.
COMMAND_TIMEOUT_S = 90


@dataclass(frozen=True)
class Outcome:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run(args: tuple[str, ...], env: Mapping[str, str], cwd: Path) -> Outcome:
    done = subprocess.run(
        [sys.executable, "-m", "ess", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    return Outcome(args, done.returncode, done.stdout, done.stderr)


def run_all(
    commands: list[tuple[str, ...]], env: Mapping[str, str], cwd: Path
) -> dict[tuple[str, ...], Outcome]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = pool.map(lambda args: run(args, env, cwd), commands)
        return {outcome.args: outcome for outcome in outcomes}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Keys as a deployment installs them: the processor's, alice's (operator)."""
    keys = tmp_path / "keys"
    runner = CliRunner()
    assert runner.invoke(cli, ["keygen", "--processor", "--dir", str(keys)]).exit_code == 0
    made = runner.invoke(cli, ["keygen", "--name", "alice", "--dir", str(keys)])
    assert made.exit_code == 0, made.output
    (keys / "operators").mkdir()
    (keys / "alice.pub").rename(keys / "operators" / "alice.pub")
    return tmp_path


def environment(workdir: Path, bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESS_", "KAFKA_"))}
    keys = workdir / "keys"
    return {
        **env,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESS_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "ESS_PROCESSOR_KEYS_DIR": str(keys / "processors"),
        "ESS_PROCESSOR_KEY_FILE": str(keys / "processor.key"),
        "ESS_OPERATOR_KEYS_DIR": str(keys / "operators"),
        "ESS_VENUES": "[]",  # the execute role on purpose without venues: it reaches the broker
        "ESS_STATUS_PORT": "-1",
        "ESS_COMMAND_STATUS_PORT": "-1",
        "ESS_EXECUTOR_STATUS_PORT": "-1",
    }


@pytest.fixture
def unreachable(workdir: Path) -> dict[str, str]:
    return environment(workdir, f"127.0.0.1:{closed_port()}")


def assert_clean(outcome: Outcome, code: int, *needles: str) -> None:
    """Exit ``code``, no traceback, at most two lines on stderr (JSON log lines aside), and
    each of ``needles`` said."""
    said = [line for line in outcome.stderr.splitlines() if line and not line.startswith("{")]
    assert "Traceback" not in outcome.output, outcome.output[-3000:]
    assert outcome.code == code, (outcome.args, outcome.output[-3000:])
    assert len(said) <= 2, (outcome.args, said)
    flat = " ".join(outcome.output.split())
    for needle in needles:
        assert needle in flat, (outcome.args, flat[-2000:])


def test_every_command_with_the_broker_and_redis_unreachable(
    workdir: Path, unreachable: dict[str, str]
) -> None:
    key = str(workdir / "keys" / "alice.key")
    # Every command once (the worker with all its roles: each role reaches the broker through
    # the same start-up, before anything else starts).
    commands: list[tuple[str, ...]] = [
        ("status", "--json"),
        ("log",),
        ("log", "--follow", "--json"),
        ("trip", "--detail", "test"),
        ("reset", "--operator", "alice", "--key", key, "--detail", "test"),
        ("record", "--out", str(workdir / "recording")),
        ("worker",),
    ]
    outcomes = run_all(commands, unreachable, workdir)

    for args, outcome in outcomes.items():
        assert_clean(outcome, EXIT_FAILED, "cannot reach Kafka", "KAFKA_BOOTSTRAP_SERVERS")
        if args[0] == "trip":
            assert "trip was NOT sent" in " ".join(outcome.output.split())
    assert not (workdir / "recording").exists() or not any((workdir / "recording").iterdir())


def test_trip_against_a_broker_that_never_answers_gives_up_and_says_so(workdir: Path) -> None:
    """The emergency command must not hang: a broker that accepts connections and never
    answers is given up on within the bound, and the operator is told the trip did not go
    out and what to do."""
    with silent_server() as port:
        outcome = run(
            ("trip", "--detail", "broker hangs"), environment(workdir, f"127.0.0.1:{port}"), workdir
        )
    assert_clean(outcome, EXIT_FAILED, "trip was NOT sent", "no answer in", "by hand")


def test_a_bad_setting_names_its_variable_on_one_line(
    workdir: Path, unreachable: dict[str, str]
) -> None:
    env = {**unreachable, "ESS_DETECT_TICK_INTERVAL_SEC": "soon"}
    outcomes = run_all([("status",), ("trip", "--detail", "x"), ("worker",)], env, workdir)
    for outcome in outcomes.values():
        assert_clean(outcome, EXIT_USAGE, "ESS_DETECT_TICK_INTERVAL_SEC", "valid number")


def test_a_mistyped_command_gets_a_suggestion(workdir: Path) -> None:
    outcome = run(("stauts",), environment(workdir, "127.0.0.1:1"), workdir)
    assert outcome.code == EXIT_USAGE
    assert "Did you mean status?" in outcome.stderr
    assert "Traceback" not in outcome.output


def test_a_broker_port_in_use_is_refused_before_anything_starts(workdir: Path) -> None:
    with silent_server() as port:
        outcome = run(("broker", "--port", str(port)), environment(workdir, ""), workdir)
    assert_clean(outcome, EXIT_FAILED, f"port {port}", "in use")
    assert "broker ready" not in outcome.output

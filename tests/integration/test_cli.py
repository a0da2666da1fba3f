"""Operator CLI against the embedded broker: commands go to ess.commands, views read ess.state."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from ess.cli import cli
from ess.core.signing import parse_public_key, verify_reset
from ess.kafka import read_to_end
from ess.statelog import KafkaStateLog
from schemas import ActivatedEntry, Command, ResetCommand, TopicRegistry, TripCommand, decode

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture
def env(
    kafka_bootstrap: str, registry: TopicRegistry, monkeypatch: pytest.MonkeyPatch
) -> TopicRegistry:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("ESS_TOPIC_PREFIX", registry.prefix)
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps tables to the terminal width
    return registry


def commands(bootstrap: str, registry: TopicRegistry) -> list[TripCommand | ResetCommand]:
    records = asyncio.run(read_to_end(bootstrap, registry.commands.name))
    return [decode(Command, record.value) for record in records if record.value]


def append(bootstrap: str, registry: TopicRegistry, *entries: ActivatedEntry) -> None:
    async def go() -> None:
        async with KafkaStateLog(bootstrap, registry.state.name) as log:
            for entry in entries:
                await log.append(entry)

    asyncio.run(go())


def test_trip_writes_a_manual_trip_command(env: TopicRegistry, kafka_bootstrap: str) -> None:
    result = CliRunner().invoke(
        cli, ["trip", "--detail", "desk saw a fat finger", "--operator", "carol", "--no-wait"]
    )

    assert result.exit_code == 0, result.output
    [command] = commands(kafka_bootstrap, env)
    assert isinstance(command, TripCommand)
    assert (command.reason, command.detail, command.source) == (
        "manual",
        "desk saw a fat finger",
        "operator:carol",
    )
    assert command.command_id in result.output


def test_trip_wait_times_out_clearly_without_a_processor(env: TopicRegistry) -> None:
    result = CliRunner().invoke(cli, ["trip", "--detail", "x", "--timeout", "0.5"])

    assert result.exit_code == 1
    assert "is the command processor running" in result.output


def test_reset_writes_a_verifiable_signed_command(
    env: TopicRegistry, kafka_bootstrap: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["keygen", "--name", "alice", "--dir", str(tmp_path)])

    result = runner.invoke(
        cli,
        [
            "reset",
            "--operator",
            "alice",
            "--key",
            str(tmp_path / "alice.key"),
            "--detail",
            "fixed",
            "--no-wait",
        ],
    )

    assert result.exit_code == 0, result.output
    [command] = commands(kafka_bootstrap, env)
    assert isinstance(command, ResetCommand)
    public = parse_public_key((tmp_path / "alice.pub").read_text())
    assert verify_reset(command, public)
    assert command.signature not in result.output, "signatures are never printed"


def test_status_and_log_read_the_state_log(env: TopicRegistry, kafka_bootstrap: str) -> None:
    append(
        kafka_bootstrap,
        env,
        ActivatedEntry(
            seq=0,
            command_id="c1",
            ts=T0,
            reason="flash_crash",
            detail="BTC -12% in 40s",
            source="detector:flash_crash",
        ),
    )
    runner = CliRunner()

    status = runner.invoke(cli, ["status", "--json"])
    log = runner.invoke(cli, ["log"])

    assert status.exit_code == 0, status.output
    summary = json.loads(status.output)
    assert (summary["status"], summary["reason"], summary["seq"]) == ("ACTIVE", "flash_crash", 0)
    assert log.exit_code == 0, log.output
    assert "activated" in log.output
    assert "BTC -12% in 40s" in log.output


def test_commands_need_a_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)

    result = CliRunner().invoke(cli, ["status"])

    assert result.exit_code == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.output

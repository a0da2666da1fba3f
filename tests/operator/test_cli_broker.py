"""Operator CLI against the embedded broker: commands go to ess.commands, views read ess.state
(verified: every reader trusts only the command processor's sealed entries), and ``trip`` /
``reset`` learn the processor's verdict from its signed outcome on ess.outcomes."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ess.core.reader import seal_entry
from ess.core.signing import (
    parse_public_key,
    verify_reset,
    write_key_pair,
)
from ess.kafka.clients import producer, read_to_end
from ess.operator.cli import cli
from ess.roles.command.processor import run_processor
from ess.settings import EssSettings
from schemas import (
    Command,
    ReasonCode,
    ResetCommand,
    ResetEntry,
    TopicRegistry,
    TriggerRef,
    TripCommand,
    decode,
    encode,
)
from tests.helpers import eventually
from tests.statelog_support import ALICE, OPERATOR_KEYS, PROCESSOR, LogBuilder

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Keys:
    """Key files as a deployment installs them: the processor's and the operators' public
    keys where every reader looks, and alice's private key for signing resets."""

    processors: Path
    operators: Path
    alice_key: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    processors = tmp_path / "keys" / "processors"
    operators = tmp_path / "keys" / "operators"
    processors.mkdir(parents=True)
    operators.mkdir(parents=True)
    (processors / f"{PROCESSOR.key_id}.pub").write_text(_b64(PROCESSOR.public))
    for name, public in OPERATOR_KEYS.items():
        (operators / f"{name}.pub").write_text(_b64(public))
    alice = write_key_pair(ALICE, tmp_path / "private", "alice")
    return Keys(processors, operators, alice.private)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def env(
    kafka_bootstrap: str, registry: TopicRegistry, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> TopicRegistry:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("ESS_TOPIC_PREFIX", registry.prefix)
    monkeypatch.setenv("ESS_PROCESSOR_KEYS_DIR", str(keys.processors))
    monkeypatch.setenv("ESS_OPERATOR_KEYS_DIR", str(keys.operators))
    monkeypatch.delenv("ESS_STATE_LOG_UNSIGNED_BEFORE", raising=False)
    monkeypatch.setenv("ESS_RESET_QUORUM", "1")
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps tables to the terminal width
    return registry


@pytest.fixture
def processor(env: TopicRegistry) -> Iterator[None]:
    """The real command processor (signing with :data:`PROCESSOR`) in a thread of its own:
    the CLI runs its own event loop in the test's thread."""
    settings = EssSettings()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            ready.set()
            await run_processor(settings, stop, signing_key=PROCESSOR, status_port=-1)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by the test's teardown
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="ess-test-processor", daemon=True)
    thread.start()
    assert ready.wait(10)
    # The CLI's --timeout is the operator's wait for a running processor, not for its start:
    # hand over only once it owns the command partition (its beat says so).
    asyncio.run(
        eventually(
            lambda: owner_beat_seen(settings.kafka.bootstrap_servers, env),
            timeout=60,
            message="the command processor never reported owning the command partition",
        )
    )
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    assert not thread.is_alive(), "the command processor did not stop"
    assert not failure, failure


async def owner_beat_seen(bootstrap: str, registry: TopicRegistry) -> bool:
    """Whether a processor beat on ``ess.liveness`` says it owns the command partition."""
    records = await read_to_end(bootstrap, registry.liveness.name)
    beats = (json.loads(record.value) for record in records if record.value)
    return any(beat.get("kind") == "processor_beat" and beat.get("owner") for beat in beats)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def commands(bootstrap: str, registry: TopicRegistry) -> list[TripCommand | ResetCommand]:
    records = asyncio.run(read_to_end(bootstrap, registry.commands.name))
    return [decode(Command, record.value) for record in records if record.value]


def write(bootstrap: str, registry: TopicRegistry, log: LogBuilder, *, start: int = 0) -> None:
    asyncio.run(log.write(bootstrap, registry.state.name, start=start))


def produce_raw(bootstrap: str, topic: str, value: bytes) -> None:
    """A record written by hand, the way anyone with write access to the topic could."""

    async def go() -> None:
        out = producer(bootstrap, read_to_end_safe=True)
        await out.start()
        try:
            await out.send_and_wait(topic, value, key=b"ess")
        finally:
            await out.stop()

    asyncio.run(go())


def reset_args(keys: Keys, *more: str) -> list[str]:
    return [
        "reset",
        "--operator",
        "alice",
        "--key",
        str(keys.alice_key),
        "--detail",
        "fixed",
        *more,
    ]


def flash_crash(log: LogBuilder) -> None:
    log.trip(
        "c1",
        reason=ReasonCode.FLASH_CRASH,
        detail="BTC -12% in 40s",
        source="detector:flash_crash",
        ts=T0,
    )


# --------------------------------------------------------------------------- trip


def test_trip_writes_a_manual_trip_command(env: TopicRegistry, kafka_bootstrap: str) -> None:
    result = invoke("trip", "--detail", "desk saw a fat finger", "--operator", "carol", "--no-wait")

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
    result = invoke("trip", "--detail", "x", "--timeout", "0.5")

    assert result.exit_code == 1
    assert "is the command processor running" in result.output


def test_trip_wait_ignores_an_outcome_the_processor_did_not_sign(
    env: TopicRegistry, kafka_bootstrap: str
) -> None:
    """Anyone may write ess.outcomes; an unsigned "applied" outcome for the trip's id is not
    the processor's word, so the CLI keeps waiting (and times out)."""

    def forge() -> None:
        # Wait for the trip to be sent, then answer it by hand.
        deadline = 50
        while deadline:
            sent = commands(kafka_bootstrap, env)
            if sent:
                forged = {
                    "command_id": sent[0].command_id,
                    "command_offset": 0,
                    "command_kind": "trip",
                    "outcome": "applied",
                    "entry_kind": "activated",
                    "seq": 0,
                    "ts": T0.isoformat(),
                }
                produce_raw(kafka_bootstrap, env.outcomes.name, json.dumps(forged).encode())
                return
            deadline -= 1
            threading.Event().wait(0.1)

    forger = threading.Thread(target=forge, daemon=True)
    forger.start()
    result = invoke("trip", "--detail", "x", "--timeout", "4")
    forger.join(10)

    assert result.exit_code == 1, result.output
    assert "no outcome for command" in result.output
    assert "ESS ACTIVE" not in result.output


def test_trip_and_reset_wait_for_the_processors_signed_outcomes(
    env: TopicRegistry, kafka_bootstrap: str, keys: Keys, processor: None
) -> None:
    tripped = invoke("trip", "--detail", "desk stop", "--operator", "carol", "--timeout", "20")

    assert tripped.exit_code == 0, tripped.output
    assert "ESS ACTIVE at seq 0" in tripped.output

    again = invoke("trip", "--detail", "belt and braces", "--timeout", "20")

    assert again.exit_code == 0, again.output
    assert "recorded (already ACTIVE) at seq 1" in again.output

    reset = invoke(*reset_args(keys, "--timeout", "20"))

    assert reset.exit_code == 0, reset.output
    assert "resetting activation seq 0 (manual: desk stop)" in reset.output
    assert "ESS RESET at seq 2" in reset.output
    status = json.loads(invoke("status", "--json").stdout)
    assert (status["status"], status["epoch"], status["trusted"]) == ("INACTIVE", 1, True)


# --------------------------------------------------------------------------- reset


def test_reset_writes_a_verifiable_signed_command_bound_to_the_activation(
    env: TopicRegistry, kafka_bootstrap: str, tmp_path: Path
) -> None:
    log = LogBuilder(env.state.name)
    flash_crash(log)
    write(kafka_bootstrap, env, log)
    assert invoke("keygen", "--name", "alice", "--dir", str(tmp_path / "new")).exit_code == 0

    result = invoke(
        "reset",
        "--operator",
        "alice",
        "--key",
        str(tmp_path / "new" / "alice.key"),
        "--detail",
        "fixed",
        "--no-wait",
    )

    assert result.exit_code == 0, result.output
    [command] = commands(kafka_bootstrap, env)
    assert isinstance(command, ResetCommand)
    public = parse_public_key((tmp_path / "new" / "alice.pub").read_text())
    assert verify_reset(command, public)
    assert (command.activation_seq, command.activation_command_id) == (0, "c1")
    assert command.signature not in result.output, "signatures are never printed"
    assert "resetting activation seq 0 (flash_crash: BTC -12% in 40s)" in result.output


def test_reset_binds_to_the_current_activation_not_an_earlier_one(
    env: TopicRegistry, kafka_bootstrap: str, keys: Keys
) -> None:
    log = LogBuilder(env.state.name)
    flash_crash(log)  # seq 0
    log.reset()  # seq 1
    log.trip("c2", detail="second stop", ts=T0)  # seq 2: the current activation
    write(kafka_bootstrap, env, log)

    result = invoke(*reset_args(keys, "--no-wait"))

    assert result.exit_code == 0, result.output
    [command] = commands(kafka_bootstrap, env)
    assert isinstance(command, ResetCommand)
    assert (command.activation_seq, command.activation_command_id) == (2, "c2")
    assert verify_reset(command, OPERATOR_KEYS["alice"])


@pytest.mark.parametrize("history", ["empty", "reset"])
def test_reset_refuses_when_ess_is_inactive(
    env: TopicRegistry, kafka_bootstrap: str, keys: Keys, history: str
) -> None:
    if history == "reset":
        log = LogBuilder(env.state.name)
        flash_crash(log)
        log.reset()
        write(kafka_bootstrap, env, log)

    result = invoke(*reset_args(keys))

    assert result.exit_code == 1, result.output
    assert "ESS is not ACTIVE: nothing to reset" in " ".join(result.output.split())
    assert commands(kafka_bootstrap, env) == [], "nothing was sent"


def test_reset_is_not_fooled_by_a_hand_produced_activation(
    env: TopicRegistry, kafka_bootstrap: str, keys: Keys
) -> None:
    """An unsigned ``activated`` entry does not make ESS ACTIVE for the CLI either: there is
    no activation a reset could be bound to."""
    log = LogBuilder(env.state.name)
    flash_crash(log)
    log.reset()
    write(kafka_bootstrap, env, log)
    forged = log.entries[0].model_copy(
        update={"seq": 2, "command_id": "forged", "signer": None, "signature": None}
    )
    produce_raw(kafka_bootstrap, env.state.name, encode(forged))

    result = invoke(*reset_args(keys))

    assert result.exit_code == 1, result.output
    assert "ESS is not ACTIVE" in result.output


# --------------------------------------------------------------------------- status and log


def test_status_and_log_read_the_state_log(env: TopicRegistry, kafka_bootstrap: str) -> None:
    log = LogBuilder(env.state.name)
    flash_crash(log)
    write(kafka_bootstrap, env, log)

    status = invoke("status", "--json")
    shown = invoke("log")

    assert status.exit_code == 0, status.output
    summary = json.loads(status.stdout)
    assert (summary["status"], summary["reason"], summary["seq"]) == ("ACTIVE", "flash_crash", 0)
    assert (summary["trusted"], summary["foreign_records"]) == (True, 0)
    assert shown.exit_code == 0, shown.output
    assert "activated" in shown.output
    assert "BTC -12% in 40s" in shown.output
    assert "FOREIGN" not in shown.output


def test_a_hand_produced_state_record_is_shown_foreign_and_never_applied(
    env: TopicRegistry, kafka_bootstrap: str
) -> None:
    log = LogBuilder(env.state.name)
    flash_crash(log)  # offset 0
    write(kafka_bootstrap, env, log)
    # offset 1: a reset entry anyone could produce, unsigned
    forged = ResetEntry(
        seq=1, command_id="r-forged", ts=T0, operators=("alice",), nonce="n", detail="forged"
    )
    produce_raw(kafka_bootstrap, env.state.name, encode(forged))

    shown = invoke("log")
    status = invoke("status", "--json")

    assert shown.exit_code == 0, shown.output
    [row] = [line for line in shown.output.splitlines() if "FOREIGN" in line]
    assert "offset 1, not applied: unsigned" in row
    assert "r-forged" not in shown.output, "its content is not shown as an entry"
    summary = json.loads(status.stdout)
    assert (summary["status"], summary["seq"]) == ("ACTIVE", 0), "the reset was not applied"
    assert (summary["trusted"], summary["foreign_records"]) == (False, 1)

    # The command processor acknowledges it with an unauthorized_access trip pointing at it.
    log.trip(
        reason=ReasonCode.UNAUTHORIZED_ACCESS,
        source="ess-command-processor",
        detail="foreign record in the state log",
        trigger=TriggerRef(topic=env.state.name, partition=0, offset=1, event_ts=T0),
    )
    write(kafka_bootstrap, env, log, start=1)

    acknowledged = json.loads(invoke("status", "--json").stdout)
    assert (acknowledged["status"], acknowledged["seq"]) == ("ACTIVE", 1)
    assert (acknowledged["trusted"], acknowledged["foreign_records"]) == (True, 1)
    rows = [line for line in invoke("log").output.splitlines() if "trip_recorded" in line]
    assert len(rows) == 1


def test_status_of_a_log_that_cannot_be_folded_fails_clearly(
    env: TopicRegistry, kafka_bootstrap: str
) -> None:
    log = LogBuilder(env.state.name)
    flash_crash(log)
    write(kafka_bootstrap, env, log)
    # An authentic entry out of sequence (seq 5 after seq 0): entries are missing.
    gap = log.entries[0].model_copy(update={"seq": 5, "command_id": "c5"})
    _, value = seal_entry(gap, PROCESSOR, scope=env.state.name, prev=log.head)
    produce_raw(kafka_bootstrap, env.state.name, value)

    result = invoke("status")

    assert result.exit_code == 1, result.output
    assert "expected seq 1, got 5" in " ".join(result.output.split())


def test_views_need_trusted_processor_keys(
    env: TopicRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESS_PROCESSOR_KEYS_DIR", str(tmp_path / "nothing-here"))

    result = invoke("status")

    assert result.exit_code == 1
    assert "ESS_PROCESSOR_KEYS_DIR" in result.output


def test_commands_need_a_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)

    result = invoke("status")

    assert result.exit_code == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.output

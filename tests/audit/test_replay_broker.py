"""Record a live session and replay it offline (contract, behaviour 5): the replay decides
exactly the trips the live run decided (reason, triggering record, event time).

One live session: a detection worker and the command processor on the embedded broker
trip eight different reasons, a silence rule among them, around a signed reset, with poison
records dead-lettered on the way. ``ess record`` copies the topics; ``ess replay`` (with a
broker address nothing listens on) must then report a match, and a what-if replay must show
the moved decision. The recorded state log is the processor's sealed log as written: the
replay verifies it with the keys a deployment installs, and a record somebody else wrote to
it (here: a hand-made reset, after the live run) is reported and never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from loguru import logger

from ess.audit.compare import Outcome, compare
from ess.audit.replay import Decision, replay
from ess.core.signing import generate_private_key, public_key_text, sign_reset
from ess.kafka.clients import producer, read_to_end
from ess.operator.cli import cli
from ess.operator.commands import read_state
from ess.roles.command.processor import run_processor
from ess.roles.detect.settings import DetectorSettings
from ess.rules.config import DetectionConfig
from ess.settings import EssSettings
from ess.statelog import STATE_KEY
from schemas import (
    ActivatedEntry,
    ReasonCode,
    ResetEntry,
    TopicRegistry,
    TripRecordedEntry,
    encode,
    topic_registry,
)
from tests.helpers import eventually
from tests.records import beat, fill, latency, order_error, pnl, security, tick
from tests.roles.detect.test_detection_broker import _base_time, worker
from tests.statelog_support import PROCESSOR

pytestmark = pytest.mark.integration

#: Small thresholds: a handful of records per trip. Silence after an hour, so that only the
#: component made silent on purpose (a beat two hours old) trips on it.
CONFIG = DetectionConfig(
    account=DetectionConfig().account.model_copy(
        update={"stop_loss_max": 2, "order_rejects_max": 2}
    ),
    heartbeat_timeout_sec=3600,
    data_feed_stale_sec=3600,
)
TICK_S = 0.5
ALICE = generate_private_key()


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


@contextlib.asynccontextmanager
async def command_processor(settings: EssSettings) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_processor(settings, stop, signing_key=PROCESSOR, status_port=-1))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def detector_trips(entries: list[Any]) -> list[ActivatedEntry | TripRecordedEntry]:
    return [
        e
        for e in entries
        if isinstance(e, ActivatedEntry | TripRecordedEntry) and e.source.startswith("detector:")
    ]


def essentials(decisions: list[Decision]) -> list[tuple[object, ...]]:
    """What the contract says a replay reproduces (plus command id and epoch), by command id:
    two trips from different topics at the same moment reach the live processor in either
    order, and that order is not a decision."""
    return sorted(
        (
            (
                d.command_id,
                d.reason,
                (d.trigger.topic, d.trigger.partition, d.trigger.offset),
                d.trigger.event_ts,
                d.epoch,
            )
            for d in decisions
        ),
        key=lambda item: str(item[0]),
    )


async def cli_in_thread(*args: str) -> Result:
    # The CLI runs its own event loop (asyncio.run): give it a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def test_a_recorded_live_session_replays_to_the_same_trips(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = _base_time()
    keys = tmp_path / "operators"
    keys.mkdir()
    (keys / "alice.pub").write_text(public_key_text(ALICE))
    processors = tmp_path / "processors"
    processors.mkdir()
    (processors / f"{PROCESSOR.key_id}.pub").write_text(public_key_text(PROCESSOR.private))
    ess = EssSettings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": registry.prefix},
        keys={"operator_keys_dir": keys, "processor_keys_dir": processors},
        _env_file=None,
    )
    trust = ess.state_trust()
    detect = DetectorSettings(
        bootstrap=kafka_bootstrap,
        registry=registry,
        app_id=f"ess-detect-{uuid.uuid4().hex[:8]}",
        detection=CONFIG,
        tick_interval_sec=TICK_S,
        standby_replicas=0,
    )
    epochs: list[int] = []
    # The detector's epoch follower says when it saw the reset; importing ess silences its
    # logs (a library's convention), so they are switched on for this test.
    logger.enable("ess")
    sink = logger.add(
        lambda message: epochs.append(message.record["extra"]["epoch"]),
        filter=lambda record: record["message"] == "ESS epoch changed",
        level="INFO",
    )
    out = producer(kafka_bootstrap)
    commands = producer(kafka_bootstrap, read_to_end_safe=True)
    await out.start()
    await commands.start()

    async def send(logical: str, key: str, record: dict[str, Any] | bytes) -> None:
        value = record if isinstance(record, bytes) else orjson.dumps(record)
        await out.send_and_wait(getattr(registry, logical).name, value, key=key.encode())

    async def trips_logged(count: int, task: asyncio.Task[None]) -> list[Any]:
        if task.done():
            task.result()  # the processor died: say why
        view = await read_state(kafka_bootstrap, registry, trust)
        assert view.folded.trusted
        entries = [logged.entry for logged in view.entries]
        trips = detector_trips(entries)
        assert len(trips) >= count, f"{len(trips)} of {count} trips: {[t.reason for t in trips]}"
        return entries

    try:
        async with command_processor(ess) as processing, worker(detect, trust):
            # Epoch 0: poison first, then four trips (the last record of every partition
            # used trips, so "all four logged" means "every record processed").
            await send("fills", "acct-sl", b"\xff\xfe{not json")
            await send("fills", "acct-sl", {**fill("acct-sl", t0), "qty": -1})
            for i in range(3):
                await send("fills", "acct-sl", fill("acct-sl", t0 + s(10 * i), stop_loss=True))
            for i, equity in enumerate((1000, 950, 890)):
                await send("pnl", "acct-dl", pnl("acct-dl", equity, t0 + s(120 * i)))
            await send("security", "gw", security("api_key_changed", "gw", t0))
            await send("health", "svc-hb", beat("svc-hb", t0 - timedelta(hours=2)))
            await eventually(lambda: trips_logged(4, processing), timeout=20, interval=0.2)

            # A signed reset of the current activation; the detector must know the new epoch
            # before epoch-1 records.
            now = await read_state(kafka_bootstrap, registry, trust)
            activation = now.folded.state.activation
            assert activation is not None
            reset = sign_reset(
                ALICE,
                command_id=f"reset-{uuid.uuid4().hex}",
                operator="alice",
                ts=datetime.now(UTC),
                nonce=uuid.uuid4().hex,
                detail="replay test",
                activation_seq=activation.seq,
                activation_command_id=activation.command_id,
            )
            await commands.send_and_wait(registry.commands.name, encode(reset), key=b"ess")

            def epoch_one() -> bool:
                assert 1 in epochs, f"detector epochs so far: {epochs}"
                return True

            await eventually(epoch_one, timeout=15)

            # Epoch 1: the daily-loss latch re-armed (and a flash crash on the same tick),
            # order rejects, a latency spike, a critical component, and a poison tick.
            await send("pnl", "acct-dl", pnl("acct-dl", 1000, t0 + s(250)))
            await send("pnl", "acct-dl", pnl("acct-dl", 880, t0 + s(260)))
            for i in range(3):
                await send("order_errors", "acct-rj", order_error("acct-rj", t0 + s(i), "reject"))
            for i in range(3):
                await send("latency", "gw-lat", latency("gw-lat", t0 + s(i), 6_000 + i))
            await send("health", "svc-sc", beat("svc-sc", t0, "CRITICAL"))
            await send("market", "CORR", {**tick("CORR", t0), "bid": "NaN?"})
            entries = await eventually(
                lambda: trips_logged(9, processing), timeout=20, interval=0.2
            )

            async def dead_letters() -> int:
                letters = await read_to_end(kafka_bootstrap, registry.deadletter.name)
                assert len(letters) >= 3, f"{len(letters)} dead letters"
                return len(letters)

            await eventually(dead_letters, timeout=10, interval=0.2)
    finally:
        logger.remove(sink)
        logger.disable("ess")
        await out.stop()
        await commands.stop()

    live = detector_trips(entries)
    assert len({t.reason for t in live}) == 8
    assert [e.kind for e in entries].count("reset") == 1

    # Somebody else writes to the state log once the processor is gone: a reset entry that
    # would have cleared the epoch-1 trips, had anyone applied it.
    forged = ResetEntry(
        seq=len(entries),
        command_id="reset-forged",
        ts=datetime.now(UTC),
        operators=("alice",),
        nonce="forged",
    )
    forger = producer(kafka_bootstrap, read_to_end_safe=True)
    await forger.start()
    try:
        sent = await forger.send_and_wait(registry.state.name, encode(forged), key=STATE_KEY)
    finally:
        await forger.stop()

    # Record (the live processes are stopped; the topics stay).
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("ESS_TOPIC_PREFIX", registry.prefix)
    monkeypatch.setenv("ESS_PROCESSOR_KEYS_DIR", str(processors))
    monkeypatch.setenv("ESS_OPERATOR_KEYS_DIR", str(keys))
    monkeypatch.setenv("COLUMNS", "220")
    monkeypatch.delenv("ESS_DETECT_CONFIG", raising=False)
    recording = tmp_path / "recording"
    recorded = await cli_in_thread("record", "--out", str(recording))
    assert recorded.exit_code == 0, recorded.output
    config_file = tmp_path / "detect.json"
    config_file.write_text(CONFIG.model_dump_json())

    # Replay offline: nothing listens at this address, and nothing needs to.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    audit = await cli_in_thread(
        "replay", str(recording), "--config", str(config_file), "--tick-interval", str(TICK_S)
    )
    assert audit.exit_code == 0, audit.output
    assert "MATCH: the replay decided exactly what the live run did" in audit.output
    assert "1 record(s) of the recorded state log did not verify" in " ".join(audit.output.split())
    assert (recording / "replay-report.html").read_text(encoding="utf-8").count("<svg") >= 1

    # The same through the library, compared field by field with the live state log.
    result = replay(recording, CONFIG, trust=trust, tick_interval=TICK_S)
    assert [(item.offset, item.why) for item in result.foreign] == [(sent.offset, "unsigned")]
    assert len(result.resets) == 1, "only the operator's reset applies"
    assert essentials(result.replayed) == essentials(result.recorded)
    assert [(d.command_id, d.reason, d.trigger) for d in result.recorded] == [
        (t.command_id, t.reason, t.trigger) for t in live
    ]
    assert result.unreplayable == []
    assert result.dead_letters == 3
    assert sorted(d.epoch for d in result.replayed) == [0] * 4 + [1] * 5
    [silence] = [d for d in result.replayed if d.reason is ReasonCode.HEARTBEAT_LOST]
    assert silence.trigger.event_ts == t0 - timedelta(hours=2) + timedelta(hours=1)

    # What if the stop-loss cluster limit had been 1? The same cluster trips one fill earlier.
    what_if = await cli_in_thread(
        "replay",
        str(recording),
        "--config",
        str(config_file),
        "--tick-interval",
        str(TICK_S),
        "--set",
        "account.stop_loss_max=1",
        "--report",
        str(tmp_path / "what-if.html"),
    )
    assert what_if.exit_code == 0, what_if.output
    moved = compare(
        result.recorded,
        replay(
            recording,
            CONFIG.model_copy(
                update={"account": CONFIG.account.model_copy(update={"stop_loss_max": 1})}
            ),
            trust=trust,
            tick_interval=TICK_S,
        ).replayed,
        what_if=True,
    )
    outcomes = {row.decision.rule: row.outcome for row in moved.rows}
    assert outcomes["stop_loss_cluster"] is Outcome.EARLIER
    assert outcomes["daily_loss"] is Outcome.UNCHANGED
    assert "earlier" in what_if.output


async def test_record_reads_each_partition_to_its_end_after_batched_appends(
    kafka_bootstrap: str, registry: TopicRegistry, tmp_path: Path
) -> None:
    """Many records in one produce batch: Tansu's listed end offset stops at the batch's
    first record; the recording must still hold every record."""
    from ess.audit.recording import RecordingError, read_topic, record  # noqa: PLC0415

    out = producer(kafka_bootstrap)
    await out.start()
    try:
        sends = [
            await out.send(registry.pnl.name, orjson.dumps({"n": i}), key=b"acct", partition=2)
            for i in range(50)
        ]
        await asyncio.gather(*sends)
    finally:
        await out.stop()

    manifest = await record(kafka_bootstrap, registry, tmp_path / "rec", topics=["pnl"])

    assert [entry.logical for entry in manifest.topics] == ["pnl", "state"]
    [pnl_entry] = [entry for entry in manifest.topics if entry.logical == "pnl"]
    assert pnl_entry.end_offsets == {0: 0, 1: 0, 2: 50, 3: 0}
    partition = read_topic(tmp_path / "rec", pnl_entry)[2]
    assert [orjson.loads(v or b"")["n"] for v in partition.values] == list(range(50))
    assert partition.keys == [b"acct"] * 50
    assert all(stamp is not None and stamp > 0 for stamp in partition.timestamps)

    other = topic_registry(f"{registry.prefix}-missing")
    with pytest.raises(RecordingError, match="do not exist"):
        await record(kafka_bootstrap, other, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()

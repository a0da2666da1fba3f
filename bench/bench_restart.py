"""Restart catch-up: how long a role takes to rebuild ESS's state from a long ``ess.state``.

Run: ``python -m bench.bench_restart`` (about a minute). Writes ``bench/results/restart.json``
and prints it.

Every role (command processor, projector, executor, epoch follower) folds the whole state
log through the verifying reader (:mod:`ess.core.reader`) before it acts; nothing is applied
or enforced until it is done, so the catch-up time is time ESS is blind after a restart.

The log: ``ENTRIES`` (100,000) entries as the command processor writes them, sealed with a
processor key and chained, decided by the real core: activations, the most ``trip_recorded``
entries one activation may hold (``TRIP_RECORDS_PER_ACTIVATION``: beyond it trips are
coalesced) and a signed operator reset, over and over. That is the longest log the log
bounds allow for 100 activations, each ended by a human.

What is measured (``RUNS`` runs each, the median reported, every run listed):

* ``fold_s``: :func:`~ess.core.reader.fold_records` over the records already in memory:
  decode, chain and seal verification, the fold.
* ``catch_up_s``: what a restarting role does: read the whole topic from the broker
  (:meth:`~ess.statelog.KafkaStateLog.read`; the embedded broker, or
  ``KAFKA_BOOTSTRAP_SERVERS``) and fold it (:class:`~ess.statelog.StateLogReader`).

``target_s`` is 2 s for ``catch_up_s``.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.bench_detect import run_and_report
from ess.core import INITIAL_STATE, ResetPolicy, decide, evolve
from ess.core.attestation import SigningKey, trusted_keys
from ess.core.decider import TRIP_RECORDS_PER_ACTIVATION
from ess.core.reader import RawRecord, Trust, digest, fold_records, seal_entry
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from ess.kafka.broker import kafka_target
from ess.kafka.clients import producer
from ess.statelog import STATE_KEY, KafkaStateLog, StateLogReader
from schemas import ReasonCode, TripCommand, topic_registry

RESULTS = Path(__file__).resolve().parent / "results" / "restart.json"
ENTRIES = int(os.environ.get("BENCH_RESTART_ENTRIES", "100000"))
RUNS = int(os.environ.get("BENCH_RESTART_RUNS", "3"))
TARGET_S = 2.0
#: A fixed start: the log is the same whatever today's date.
START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def build_log(entries: int, scope: str) -> tuple[list[bytes], Trust]:
    """``entries`` sealed, chained records for the topic ``scope`` (activation, trips,
    reset, again) and the trust that verifies them."""
    key = SigningKey(generate_private_key())
    operator = generate_private_key()
    policy = ResetPolicy(operators={"alice": public_bytes(operator)})
    state, head = INITIAL_STATE, None
    values: list[bytes] = []
    per_epoch = TRIP_RECORDS_PER_ACTIVATION + 2  # activated, trip_recorded..., reset
    for index in range(entries):
        now = START + timedelta(milliseconds=index)
        if index % per_epoch == per_epoch - 1 and state.activation is not None:
            command: Any = sign_reset(
                operator,
                command_id=f"reset-{index}",
                operator="alice",
                ts=now,
                nonce=uuid.uuid4().hex,
                activation_seq=state.activation.seq,
                activation_command_id=state.activation.command_id,
            )
        else:
            command = TripCommand(
                command_id=f"trip-{index}",
                reason=ReasonCode.TRADE_RATE,
                detail=f"fills burst {index}",
                source="detector:trade_rate",
                ts=now,
            )
        [entry] = decide(state, command, now=now, policy=policy)
        sealed, value = seal_entry(
            entry.model_copy(update={"command_offset": index}), key, scope=scope, prev=head
        )
        state, head = evolve(state, sealed), digest(value)
        values.append(value)
    trust = Trust(
        scope=scope,
        processor_keys=trusted_keys([key.public]),
        operator_keys=policy.operators,
    )
    return values, trust


def _fold(values: list[bytes], trust: Trust) -> dict[str, Any]:
    records = [RawRecord(offset, value) for offset, value in enumerate(values)]
    gc.collect()
    t0 = time.perf_counter()
    folded, _ = fold_records(records, trust)
    seconds = time.perf_counter() - t0
    assert folded.state.next_seq == len(values), "the bench log did not fold completely"
    return {"seconds": round(seconds, 3), "next_seq": folded.state.next_seq}


async def _write(bootstrap: str, topic: str, values: list[bytes]) -> float:
    out = producer(bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await out.start()
    t0 = time.monotonic()
    try:
        futures = [await out.send(topic, value, key=STATE_KEY) for value in values]
        for future in futures:
            await future
    finally:
        await out.stop()
    return time.monotonic() - t0


async def _catch_up(bootstrap: str, topic: str, trust: Trust, expected: int) -> dict[str, Any]:
    """Read the whole topic and fold it, as a restarting role does."""
    gc.collect()
    t0 = time.perf_counter()
    records = await KafkaStateLog(bootstrap, topic).read()  # reading needs no producer
    read_s = time.perf_counter() - t0
    reader = StateLogReader(trust, name="bench")
    reader.feed(records)
    seconds = time.perf_counter() - t0
    assert reader.folded.state.next_seq == expected, "catch-up did not reach the end"
    return {"seconds": round(seconds, 3), "read_s": round(read_s, 3)}


async def run() -> dict[str, Any]:
    registry = topic_registry(f"bench{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    values, trust = build_log(ENTRIES, registry.state.name)
    built_s = time.perf_counter() - t0
    folds = [_fold(values, trust) for _ in range(RUNS)]
    async with kafka_target(registry) as bootstrap:
        topic = registry.state.name
        written_s = await _write(bootstrap, topic, values)
        catch_ups = [await _catch_up(bootstrap, topic, trust, len(values)) for _ in range(RUNS)]
    catch_up = statistics.median(run["seconds"] for run in catch_ups)
    return {
        "benchmark": "restart",
        "entries": len(values),
        "log_bytes": sum(len(value) for value in values),
        "fold_s": statistics.median(run["seconds"] for run in folds),
        "catch_up_s": catch_up,
        "read_s": statistics.median(run["read_s"] for run in catch_ups),
        "target_s": TARGET_S,
        "target_met": catch_up <= TARGET_S,
        "trip_records_per_activation": TRIP_RECORDS_PER_ACTIVATION,
        "runs": {"fold": folds, "catch_up": catch_ups},
        "setup": {"built_s": round(built_s, 1), "written_s": round(written_s, 1)},
        "broker": "KAFKA_BOOTSTRAP_SERVERS"
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        else ("embedded (Tansu, memory storage)"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def main() -> None:
    run_and_report(run, RESULTS)


if __name__ == "__main__":
    main()

"""Audit replay throughput: a recorded 200k-record mix through ``ess replay``'s engine.

Run: ``python -m bench.bench_replay`` from the repository root (about half a minute). No
broker: the recording is generated directly as recording files (the same realistic mix of
all eight input topics as ``bench/bench_detect.py``'s backlog, from its generator), placed
into partitions as Kafka's default partitioner would, with Kafka timestamps equal to the
records' event times. Writes ``bench/results/replay.json`` and prints it.

What is measured (``RUNS`` runs, the median reported, every run listed):

* ``records_per_s``: input records per second of the whole replay (wall clock), reading and
  parsing the recording files included, as ``ess replay`` runs it: topics spread over worker
  processes (one per CPU, here 2).
* ``one_process_records_per_s``: the same with ``workers=1`` (everything in this process).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2
from loguru import logger

from bench.bench_detect import BACKLOG, MIX, SPAN_S, make_mix
from ess.audit.recording import RecordingWriter
from ess.audit.replay import replay
from ess.core.reader import Trust
from schemas import topic_registry

RESULTS = Path(__file__).resolve().parent / "results" / "replay.json"
RUNS = int(os.environ.get("BENCH_REPLAY_RUNS", "3"))
TARGET_RPS = 100_000
#: A fixed start: the run is reproducible and independent of today's date.
START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
#: The recording's state log is empty (the run never tripped), so no key needs trusting.
TRUST = Trust(scope=topic_registry("ess").state.name)


def write_recording(directory: Path, n: int) -> dict[str, int]:
    """The mix as a recording in ``directory``; returns records per topic."""
    registry = topic_registry("ess")
    writer = RecordingWriter(directory, registry.prefix)
    files = {spec.logical: writer.topic(spec) for spec in registry.inputs()}
    writer.topic(registry.state)  # the state log of a run that never tripped: empty
    offsets: dict[tuple[str, int], int] = {}
    start_ms = int(START.timestamp() * 1000)
    step_ms = SPAN_S * 1000 / n
    counts: dict[str, int] = {}
    for i, (logical, key, value) in enumerate(make_mix(n, START)):
        spec = getattr(registry, logical)
        partition = (murmur2(key) & 0x7FFFFFFF) % spec.partitions
        offset = offsets.get((logical, partition), 0)
        offsets[(logical, partition)] = offset + 1
        # Kafka timestamp: the event time plus a millisecond of producer latency.
        files[logical].write(partition, offset, int(start_ms + i * step_ms) + 1, key, value)
        counts[logical] = counts.get(logical, 0) + 1
    writer.close(START)
    return counts


def measure(directory: Path, workers: int | None) -> dict[str, Any]:
    gc.collect()
    wall0 = time.perf_counter()
    result = replay(directory, trust=TRUST, workers=workers)
    wall = time.perf_counter() - wall0
    return {
        "workers": result.workers,
        "records": result.records,
        "seconds": round(wall, 3),
        "records_per_s": round(result.records / wall),
        "valid": result.valid,
        "dead_letters": result.dead_letters,
        "trips": len(result.replayed),
        "ticks": result.ticks,
        "decisions": sorted(
            (d.command_id, d.reason.value, d.trigger.event_ts.isoformat()) for d in result.replayed
        ),
    }


def run() -> dict[str, Any]:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="ess-bench-replay-") as tmp:
        directory = Path(tmp) / "recording"
        t0 = time.perf_counter()
        counts = write_recording(directory, BACKLOG)
        generated_s = time.perf_counter() - t0
        size = sum(path.stat().st_size for path in directory.iterdir())
        measure(directory, 1)  # warm-up: imports, first-touch allocations
        parallel = [measure(directory, None) for _ in range(RUNS)]
        single = [measure(directory, 1) for _ in range(RUNS)]
    # Same decisions whatever the number of workers (a correctness check, not a timing).
    decisions = {tuple(map(tuple, r.pop("decisions"))) for r in parallel + single}
    if len(decisions) != 1:
        raise SystemExit("replays with different worker counts decided differently")
    best = statistics.median(r["records_per_s"] for r in parallel)
    return {
        "benchmark": "replay",
        "records": parallel[0]["records"],
        "records_per_s": round(best),
        "workers": parallel[0]["workers"],
        "seconds": statistics.median(r["seconds"] for r in parallel),
        "one_process_records_per_s": round(statistics.median(r["records_per_s"] for r in single)),
        "target_records_per_s": TARGET_RPS,
        "target_met": best >= TARGET_RPS,
        "trips": parallel[0]["trips"],
        "dead_letters": parallel[0]["dead_letters"],
        "ticks": parallel[0]["ticks"],
        "recording": {
            "bytes": size,
            "by_topic": counts,
            "mix": MIX,
            "span_s": SPAN_S,
            "generated_s": round(generated_s, 2),
        },
        "runs": {"parallel": parallel, "one_process": single},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    result = run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

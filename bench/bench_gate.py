"""How much does ``TradingGate.allowed()`` cost per call? (target: p99 < 5 microseconds)

Two measurements per case, because each hides something the other shows:

* ``batched``: ``perf_counter_ns`` around batches of ``BATCH`` calls; a sample is the batch's
  mean per-call cost. Timer overhead is amortised away, so this is the honest steady-state
  cost (the loop's own overhead, ``loop_overhead_ns``, is included; subtract it if you like).
* ``per_call``: ``perf_counter_ns`` around every single call. Includes the timer's own cost
  (``timer_overhead_ns``) but keeps outliers (a GC pause, a thread switch) that batching
  averages out, so its p99 is the conservative tail.

Cases: ``open`` (fresh inactive record), ``closed_active`` (the stop is on) and
``closed_stale`` (the view expired). Writes ``bench/results/gate.json`` and prints it.
Run: ``python -m bench.bench_gate`` (a few seconds).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from ess.gate import TradingGate
from schemas import PolicyRecord, ReasonCode

BATCH = 1_000
BATCHES = 2_000
PER_CALL_SAMPLES = 200_000
WARMUP_CALLS = 100_000
TARGET_P99_NS = 5_000
RESULTS = Path(__file__).resolve().parent / "results" / "gate.json"


def _gate(case: str) -> TradingGate:
    gate = TradingGate(max_record_age=10.0, max_clock_skew=1.0)
    now = datetime.now(UTC)
    refreshed = now - timedelta(seconds=60) if case == "closed_stale" else now
    record = PolicyRecord(
        active=case == "closed_active",
        reason=ReasonCode.FLASH_CRASH if case == "closed_active" else None,
        timestamp=refreshed,
        seq=1,
        refreshed_at=refreshed,
    )
    gate.update(record.model_dump(mode="json"), read_at_wall=now)
    return gate


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "p50_ns": round(_percentile(ordered, 0.50), 1),
        "p99_ns": round(_percentile(ordered, 0.99), 1),
        "p999_ns": round(_percentile(ordered, 0.999), 1),
        "mean_ns": round(statistics.fmean(ordered), 1),
        "min_ns": round(ordered[0], 1),
        "max_ns": round(ordered[-1], 1),
        "samples": len(ordered),
    }


def _batched(call: Callable[[], object]) -> list[float]:
    clock = time.perf_counter_ns
    rounds = range(BATCH)
    samples = []
    for _ in range(BATCHES):
        started = clock()
        for _ in rounds:
            call()
        samples.append((clock() - started) / BATCH)
    return samples


def _per_call(call: Callable[[], object]) -> list[float]:
    clock = time.perf_counter_ns
    samples: list[float] = []
    append = samples.append
    for _ in range(PER_CALL_SAMPLES):
        started = clock()
        call()
        append(clock() - started)
    return samples


def _empty_loop_ns() -> float:
    clock = time.perf_counter_ns
    rounds = range(BATCH)
    best = float("inf")
    for _ in range(200):
        started = clock()
        for _ in rounds:
            pass
        best = min(best, (clock() - started) / BATCH)
    return best


def _timer_ns() -> float:
    clock = time.perf_counter_ns
    return statistics.median(-(clock() - clock()) for _ in range(100_000))


def run() -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for case in ("open", "closed_active", "closed_stale"):
        gate = _gate(case)
        allowed = gate.allowed
        for _ in range(WARMUP_CALLS):  # let the interpreter specialise the call site
            allowed()
        cases[case] = {
            "allowed": allowed(),
            "why": gate.why(),
            "batched": _summary(_batched(allowed)),
            "per_call": _summary(_per_call(allowed)),
        }
    worst_p99 = max(case["batched"]["p99_ns"] for case in cases.values())
    return {
        "benchmark": "ess.gate.TradingGate.allowed",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "batch_size": BATCH,
        "loop_overhead_ns": round(_empty_loop_ns(), 1),
        "timer_overhead_ns": round(_timer_ns(), 1),
        "target_p99_ns": TARGET_P99_NS,
        "meets_target": worst_p99 < TARGET_P99_NS,
        "cases": cases,
        "measured_at": datetime.now(UTC).isoformat(),
    }


def main() -> None:
    logger.disable("ess")  # the gates' transition logs would interleave with the JSON
    results = run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

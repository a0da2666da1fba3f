"""How the embedded broker (Tansu 0.6.0, memory storage) copes with a steady consumed load.

Run: ``python -m bench.bench_broker`` (about 2 minutes). Writes ``bench/results/broker.json``
and prints it.

Why it exists: under a steady load the detection worker fell behind although it had spare
CPU. This benchmark takes the worker out: the same record mix is produced at ``RATE``
records/s for ``SECONDS`` seconds, (1) with nobody consuming, (2) consumed by the plain
aiokafka loop of ``bench_detect`` (the rule code, no Faust) and (3) consumed by a detection
worker, each on a fresh broker. Every 2 s it samples the CPU of the broker, the consumer and
this process (the producer), and the consumer's lag (records produced, not yet processed).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.bench_detect import LEAD_S, Child, faust_worker, make_mix, plain_worker, run_and_report

RESULTS = Path(__file__).resolve().parent / "results" / "broker.json"
RATE = int(os.environ.get("BENCH_BROKER_RATE", "5000"))
SECONDS = float(os.environ.get("BENCH_BROKER_SECONDS", "20"))
SAMPLE_S = 2.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(consumer: str | None) -> list[dict[str, Any]]:
    """One run on a fresh broker; ``consumer``: None, ``"plain"`` or ``"worker"``."""
    from ess.kafka.broker import EmbeddedBroker, ensure_topics  # noqa: PLC0415
    from ess.kafka.clients import producer  # noqa: PLC0415
    from schemas import topic_registry  # noqa: PLC0415

    async with EmbeddedBroker() as broker:
        assert broker.pid is not None
        bootstrap = broker.bootstrap_servers
        prefix = f"brk{uuid.uuid4().hex[:6]}"
        registry = topic_registry(prefix)
        await ensure_topics(bootstrap, registry)
        reader = None
        if consumer == "plain":
            reader = Child(plain_worker, bootstrap, prefix, 10**9)
        elif consumer == "worker":
            reader = Child(faust_worker, bootstrap, prefix, f"ess-detect-{prefix}", True)
        if reader is not None:
            await reader.wait(lambda c: c.ready_at is not None, f"{consumer} ready")
        load = make_mix(50_000, datetime.now(UTC) + timedelta(seconds=LEAD_S), seed=3)
        gen = producer(bootstrap, linger_ms=5, max_batch_size=256 * 1024)
        await gen.start()
        pids = {"broker": broker.pid, "producer": os.getpid()}
        if reader is not None and reader.proc.pid is not None:
            pids["consumer"] = reader.proc.pid
        samples: list[dict[str, Any]] = []
        try:
            start = last = time.monotonic()
            cpu = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            sent = 0
            per_tick = RATE // 100
            while time.monotonic() - start < SECONDS:
                due = start + (sent // per_tick + 1) * 0.01
                for _ in range(per_tick):
                    topic, key, value = load[sent % len(load)]
                    await gen.send(getattr(registry, topic).name, value, key=key)
                    sent += 1
                now = time.monotonic()
                if now - last >= SAMPLE_S:
                    sample: dict[str, Any] = {"t": round(now - start, 1), "produced": sent}
                    for name, pid in pids.items():
                        used = _cpu_seconds(pid)
                        sample[f"{name}_cpu"] = round((used - cpu[name]) / (now - last), 2)
                        cpu[name] = used
                    if reader is not None:
                        reader.poll()
                        sample["lag"] = sent - reader.count
                    samples.append(sample)
                    print(sample, file=sys.stderr)
                    last = now
                await asyncio.sleep(max(due - time.monotonic(), 0))
        finally:
            await gen.stop()
            if reader is not None:
                reader.stop()
    return samples


async def run() -> dict[str, Any]:
    produce_only = await _phase(None)
    consumed = await _phase("plain")
    worker = await _phase("worker")
    return {
        "benchmark": "broker",
        "rate_eps": RATE,
        "seconds": SECONDS,
        "produce_only": produce_only,
        "consumed_by_plain_loop": consumed,
        "consumed_by_detection_worker": worker,
        "meta": {
            "broker": "tansu 0.6.0, memory storage (embedded)",
            "consumers": "bench_detect.plain_worker (aiokafka, fetch wait 5 ms, rule code) and "
            "bench_detect.faust_worker (one detection worker, default settings)",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def main() -> None:
    run_and_report(run, RESULTS)


if __name__ == "__main__":
    main()

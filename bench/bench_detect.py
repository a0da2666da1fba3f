"""Detection throughput and trip latency: one Faust worker versus a plain aiokafka loop.

Run: ``python -m bench.bench_detect`` from the repository root (about 2.5 minutes). Starts its
own embedded brokers, writes ``bench/results/detect.json`` and prints it.

What is measured
----------------
* ``throughput_eps``: records/s one detection worker (``streams``, all catalog rules with
  default thresholds) sustains over a pre-produced backlog of a realistic mix of all eight
  input topics (see ``MIX``), from its 5,000th record to the last. The worker runs in its
  own process (as in production), reporting progress through a pipe.
* ``baseline_plain_eps``: the same backlog read by a plain aiokafka consumer loop in its own
  process, running the *same* :class:`ess.detection.detector.TopicDetector` batches over an
  in-memory dict instead of Faust tables (no changelog): the cost floor of the rule code.
* ``trip_latency_ms``: from just before producing a triggering record (a ``SecurityEvent``,
  which trips at once) to the ``TripCommand`` arriving at a consumer of ``ess.commands``
  (fetch wait 5 ms), closed loop. ``idle``: nothing else flows; its ``broker_hop`` is the
  broker's share (:func:`measure_hops`). ``load``: a generator in this process streams the
  mix at ``LOAD_EPS`` records/s meanwhile (``eps`` is what it achieved); ``load_half_rate``
  at half the rate. A worker behind the load makes each trip wait for the backlog ahead of
  it: that phase is bounded to 30 s and reports how many trips were sent and arrived.

Each phase runs on a fresh embedded broker (:func:`latency_phase`): the embedded broker's
fetches get slower as it fills (``bench/bench_broker.py``). With ``KAFKA_BOOTSTRAP_SERVERS``
set, every phase uses that cluster instead, under topics of its own.

Everything (broker, worker, load generator, measuring consumer) shares this machine's cores,
as in the measurements of ``docs/embedded-broker.md`` ("Measurements").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from loguru import logger

RESULTS = Path(__file__).resolve().parent / "results" / "detect.json"

#: Records in the backlog, and the share of each logical topic (sums to 1).
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "200000"))
MIX = {
    "fills": 0.30,
    "orders": 0.20,
    "pnl": 0.15,
    "market": 0.15,
    "latency": 0.10,
    "health": 0.05,
    "order_errors": 0.0495,
    "security": 0.0005,
}
#: Share of records that fail validation (dead-lettered): producers do have bugs.
INVALID_SHARE = 0.0005
ACCOUNTS = 2_000
COMPONENTS = 20
SYMBOLS = 50
#: Event time of the backlog spans this many seconds, starting this far in the future of
#: generation: silence rules (wall-clock ticks) must not fire on a backlog that is older than
#: their timeouts by the time it is processed, and per-account rates stay realistic.
SPAN_S = 20.0
LEAD_S = 60.0
IDLE_TRIPS = 100
LOAD_TRIPS = 100
LOAD_EPS = 10_000
#: Bounds: the run must end by itself.
PHASE_TIMEOUT_S = 90.0


# --------------------------------------------------------------------------- records


def make_mix(n: int, start: datetime, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    """``n`` records ``(logical topic, key, value)`` in event-time order."""
    rng = random.Random(seed)
    topics = list(MIX)
    weights = [MIX[t] for t in topics]
    equity = [100_000.0] * ACCOUNTS
    out: list[tuple[str, bytes, bytes]] = []
    step = SPAN_S / n
    for i in range(n):
        ts = (start + timedelta(seconds=i * step)).isoformat()
        topic = rng.choices(topics, weights)[0]
        eid = f"e{i}"
        record: dict[str, Any]
        if topic in {"fills", "orders", "order_errors", "pnl"}:
            a = rng.randrange(ACCOUNTS)
            key = f"acct-{a}"
            if topic == "fills":
                record = {
                    "event_id": eid,
                    "account_id": key,
                    "venue": "binance",
                    "symbol": f"SYM{a % SYMBOLS}",
                    "side": rng.choice(("buy", "sell")),
                    "qty": 1.0,
                    "price": 100.0,
                    "realized_pnl": rng.uniform(-5, 5),
                    "is_stop_loss": rng.random() < 0.02,
                    "order_id": f"o{i}",
                    "ts": ts,
                }
            elif topic == "orders":
                record = {
                    "event_id": eid,
                    "account_id": key,
                    "venue": "binance",
                    "symbol": f"SYM{a % SYMBOLS}",
                    "side": "buy",
                    "qty": 1.0,
                    "price": 100.0,
                    "notional": 100.0,
                    "ts": ts,
                }
            elif topic == "order_errors":
                record = {
                    "event_id": eid,
                    "account_id": key,
                    "venue": "binance",
                    "symbol": "SYM0",
                    "kind": rng.choice(("reject", "error", "timeout")),
                    "code": "-2010",
                    "message": "insufficient margin",
                    "ts": ts,
                }
            else:
                equity[a] *= 1 + rng.uniform(-0.001, 0.001)
                record = {"event_id": eid, "account_id": key, "equity": equity[a], "ts": ts}
        elif topic in {"health", "latency"}:
            key = f"svc-{rng.randrange(COMPONENTS)}"
            if topic == "health":
                record = {
                    "event_id": eid,
                    "component": key,
                    "status": "HEALTHY",
                    "checks": {"exchange": "up", "data_feed": "ok", "policy_store": "ok"},
                    "ts": ts,
                }
            else:
                record = {
                    "event_id": eid,
                    "component": key,
                    "operation": "place_order",
                    "latency_ms": rng.uniform(5, 300),
                    "ts": ts,
                }
        elif topic == "market":
            key = f"SYM{rng.randrange(SYMBOLS)}"
            mid = 100 + rng.uniform(-0.5, 0.5)
            record = {
                "event_id": eid,
                "symbol": key,
                "bid": mid - 0.01,
                "ask": mid + 0.01,
                "last": mid,
                "ts": ts,
            }
        else:
            key = f"gw-{i}"
            record = {
                "event_id": eid,
                "kind": "unauthorized_access",
                "source": key,
                "detail": "bench",
                "ts": ts,
            }
        value = orjson.dumps(record)
        if rng.random() < INVALID_SHARE:
            value = value.replace(b'"ts"', b'"tz"')  # missing ts: a schema error
        out.append((topic, key.encode(), value))
    return out


# --------------------------------------------------------------------------- child processes


def _counting(detectors: Sequence[Any], conn: Connection, *, report: bool = True) -> list[Any]:
    """The detectors, wrapped so that processed batches report progress (at most every 20 ms,
    and when the count reaches the backlog): ``("progress", monotonic, records so far)``.
    ``report=False``: count only (nobody reads the pipe during a latency phase)."""
    from ess.detection.detector import TopicDetector  # noqa: PLC0415

    state = {"n": 0, "last": 0.0}

    class Counting(TopicDetector):
        @property
        def processed(self) -> int:
            return int(state["n"])

        def process(self, batch: Any, table: Any, ctx: Any, now: Any) -> Any:
            batch = list(batch)
            out = super().process(batch, table, ctx, now)
            state["n"] += len(batch)
            t = time.monotonic()
            before = state["n"] - len(batch)
            # Reports stop after the backlog: the parent no longer reads the pipe then.
            if report and before < BACKLOG and (t - state["last"] >= 0.02 or state["n"] >= BACKLOG):
                state["last"] = t
                conn.send(("progress", t, state["n"]))
            return out

    wrapped = []
    for d in detectors:
        c = Counting(
            logical=d.logical,
            topic=d.topic,
            record_type=d.record_type,
            rules=d.rules,
            key_field=d.key_field,
        )
        wrapped.append(c)
    return wrapped


def _quiet_logs() -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING", filter=lambda r: "trip sent" not in r["message"])


def faust_worker(bootstrap: str, prefix: str, app_id: str, report: bool, conn: Connection) -> None:
    """Child process: one detection worker until the parent sends ``"stop"``."""
    import uvloop  # noqa: PLC0415

    from ess.core.reader import Trust  # noqa: PLC0415
    from ess.detection import build_detectors  # noqa: PLC0415
    from ess.roles.detect.settings import DetectorSettings  # noqa: PLC0415
    from schemas import topic_registry  # noqa: PLC0415
    from streams.runner import run_detector  # noqa: PLC0415

    _quiet_logs()

    async def main() -> None:
        settings = DetectorSettings(
            bootstrap=bootstrap, registry=topic_registry(prefix), app_id=app_id
        )
        detectors = _counting(
            build_detectors(settings.detection, settings.registry), conn, report=report
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), stop.set)
        # The benchmark's state log stays empty: the epoch follower has nothing to verify.
        trust = Trust(scope=settings.registry.state.name)
        runner = asyncio.create_task(
            run_detector(settings, stop, trust=trust, ready=ready, detectors=detectors)
        )
        await ready.wait()
        conn.send(("ready", time.monotonic(), 0))
        profile = os.environ.get("BENCH_PROFILE")  # a path: cProfile the backlog phase
        if profile:
            import cProfile  # noqa: PLC0415

            with cProfile.Profile() as prof:
                while detectors[0].processed < BACKLOG and not runner.done():
                    await asyncio.sleep(0.05)
            prof.dump_stats(profile)
        await runner
        with contextlib.suppress(Exception):
            conn.send(("stopped", time.monotonic(), 0))

    uvloop.run(main())


def plain_worker(bootstrap: str, prefix: str, total: int, conn: Connection) -> None:
    """Child process: the backlog through a plain aiokafka loop and the same rule code."""
    import uvloop  # noqa: PLC0415

    from ess.detection import build_detectors  # noqa: PLC0415
    from ess.detection.detector import RawRecord  # noqa: PLC0415
    from ess.kafka.clients import consumer  # noqa: PLC0415
    from ess.roles.detect.outputs import KafkaOutputs  # noqa: PLC0415
    from ess.roles.detect.settings import DetectorSettings  # noqa: PLC0415
    from ess.rules.base import Context, trip_command  # noqa: PLC0415
    from schemas import topic_registry  # noqa: PLC0415

    _quiet_logs()

    async def main() -> None:
        registry = topic_registry(prefix)
        settings = DetectorSettings(bootstrap=bootstrap, registry=registry)
        detectors = {
            d.topic: d
            for d in _counting(build_detectors(settings.detection, settings.registry), conn)
        }
        tables: dict[str, dict[str, Any]] = {name: {} for name in detectors}
        outputs = KafkaOutputs(bootstrap, registry)
        await outputs.start()
        reader = consumer(bootstrap, group_id=None, fetch_max_wait_ms=5)
        await reader.start()
        tps = [
            TopicPartition(spec.name, p)
            for spec in registry.inputs()
            for p in range(spec.partitions)
        ]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        conn.send(("ready", time.monotonic(), 0))
        seen = 0
        ctx = Context()
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while seen < total and time.monotonic() < deadline:
            batches = await reader.getmany(timeout_ms=100, max_records=5000)
            for tp, records in batches.items():
                det = detectors[tp.topic]
                table = tables[tp.topic]
                out = det.process(
                    [
                        RawRecord(r.partition, r.offset, r.value, r.timestamp, r.key)
                        for r in records
                    ],
                    table,
                    ctx,
                    datetime.now(UTC),
                )
                if out.detections:
                    await outputs.send_trips([trip_command(d) for d in out.detections])
                for w in out.writes:
                    table[w.key] = w.value
                seen += len(records)
        conn.send(("progress", time.monotonic(), seen))
        await reader.stop()
        await outputs.stop()
        conn.send(("stopped", time.monotonic(), 0))

    uvloop.run(main())


# --------------------------------------------------------------------------- parent


class Child:
    """A child process and its progress pipe."""

    def __init__(self, target: Any, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(*args, child_conn), daemon=True)
        self.proc.start()
        self.progress: list[tuple[float, int]] = []
        self.ready_at: float | None = None

    def poll(self) -> None:
        while self.conn.poll():
            kind, t, n = self.conn.recv()
            if kind == "ready":
                self.ready_at = t
            elif kind == "progress":
                self.progress.append((t, n))

    @property
    def count(self) -> int:
        return self.progress[-1][1] if self.progress else 0

    async def wait(self, cond: Any, what: str) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while True:
            self.poll()
            if cond(self):
                return
            if not self.proc.is_alive():
                raise RuntimeError(f"child exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send("stop")
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()

    def rate(self, total: int, skip: int = 5_000) -> float:
        """Records/s between the first report past ``skip`` and the one reaching ``total``."""
        start = next((t, n) for t, n in self.progress if n >= skip)
        end = next((t, n) for t, n in self.progress if n >= total)
        return (end[1] - start[1]) / (end[0] - start[0])


async def produce_backlog(bootstrap: str, registry: Any, records: list[Any]) -> float:
    from ess.kafka.clients import producer  # noqa: PLC0415

    out = producer(bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await out.start()
    t0 = time.monotonic()
    futures = [
        await out.send(getattr(registry, topic).name, value, key=key)
        for topic, key, value in records
    ]
    await asyncio.gather(*futures)
    await out.stop()
    return time.monotonic() - t0


async def measure_trips(
    bootstrap: str,
    registry: Any,
    count: int,
    *,
    load: list[Any] | None = None,
    load_eps: int = LOAD_EPS,
) -> dict[str, Any]:
    """Closed-loop trips; with ``load``, stream it at ``load_eps`` meanwhile."""
    from ess.kafka.clients import consumer, producer  # noqa: PLC0415
    from schemas import TripCommand, decode  # noqa: PLC0415

    arrivals: dict[tuple[int, int], float] = {}
    reader = consumer(bootstrap, group_id=None, fetch_max_wait_ms=5)
    await reader.start()
    tp = TopicPartition(registry.commands.name, 0)
    reader.assign([tp])
    await reader.seek_to_end(tp)
    sec = registry.security.name

    async def collect() -> None:
        while True:
            batch = await reader.getmany(tp, timeout_ms=50)
            now = time.monotonic()
            for r in batch.get(tp, []):
                trip = decode(TripCommand, r.value)
                if trip.trigger is not None and trip.trigger.topic == sec:
                    arrivals[(trip.trigger.partition, trip.trigger.offset)] = now

    trips_out = producer(bootstrap, linger_ms=0)
    await trips_out.start()
    collector = asyncio.create_task(collect())
    sent_load = 0
    load_task = None
    load_elapsed = 0.0

    async def stream_load() -> None:
        """``load_eps`` records/s in 10 ms ticks, each tick one batch per partition (aiokafka
        ``send_batch``): the generator shares the cores with the worker and the broker, and
        per-record ``send`` would cost it ~0.3 core per 5k records/s."""
        nonlocal sent_load, load_elapsed
        assert load is not None
        gen = producer(bootstrap, linger_ms=0, max_batch_size=1024 * 1024)
        await gen.start()
        placed = [
            (spec.name, _partition(key, spec.partitions), key, value)
            for topic, key, value in load
            for spec in [getattr(registry, topic)]
        ]
        for name in {name for name, *_ in placed}:
            await gen.partitions_for(name)  # send_batch needs the topic's metadata
        t0 = time.monotonic()
        tick = 0.01
        per_tick = int(load_eps * tick)
        i = 0
        try:
            while True:
                due = t0 + (i // per_tick + 1) * tick
                batches: dict[tuple[str, int], Any] = {}
                for _ in range(per_tick):
                    name, partition, key, value = placed[i % len(placed)]
                    batch = batches.get((name, partition))
                    if batch is None:
                        batch = batches[(name, partition)] = gen.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                    i += 1
                for (name, partition), batch in batches.items():
                    await gen.send_batch(batch, name, partition=partition)
                sent_load = i
                load_elapsed = time.monotonic() - t0
                delay = due - time.monotonic()
                await asyncio.sleep(max(delay, 0))
        finally:
            await gen.stop()

    if load is not None:
        load_task = asyncio.create_task(stream_load())
        await asyncio.sleep(2.0)  # let the worker settle into the load
    latencies: list[float] = []
    sent_trips = 0
    try:
        await asyncio.sleep(0.5)
        rng = random.Random(11)
        # A saturated worker makes every trip wait for the backlog ahead of it: bound the
        # phase, and report how many trips arrived at all.
        phase_end = time.monotonic() + 30.0
        for _ in range(count):
            if time.monotonic() > phase_end:
                break
            record = {
                "event_id": uuid.uuid4().hex,
                "kind": "api_key_invalid",
                "source": f"lat-{uuid.uuid4().hex[:8]}",
                "detail": "latency probe",
                "ts": datetime.now(UTC).isoformat(),
            }
            t0 = time.monotonic()
            meta = await trips_out.send_and_wait(sec, orjson.dumps(record), key=b"lat")
            sent_trips += 1
            key = (meta.partition, meta.offset)
            deadline = min(t0 + 10, phase_end + 10)
            while key not in arrivals and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)  # 0.5 ms polling: cheaper than an Event per trip
            if key in arrivals:
                latencies.append((arrivals[key] - t0) * 1000)
            await asyncio.sleep(rng.uniform(0.02, 0.05))
    finally:
        if load_task is not None:
            load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load_task
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await trips_out.stop()
        await reader.stop()
    result: dict[str, Any] = {
        "trips": sent_trips,
        "arrived": len(latencies),
        "p50": round(_pct(latencies, 50), 2),
        "p99": round(_pct(latencies, 99), 2),
        "max": round(max(latencies), 2) if latencies else None,
    }
    if load is not None:
        result["eps"] = round(sent_load / load_elapsed) if load_elapsed else 0
    return result


async def measure_hops(bootstrap: str, registry: Any, count: int) -> dict[str, float]:
    """The broker's share of a trip: produce one record and see it arrive at a plain aiokafka
    consumer assigned to every input partition (as the worker's consumer is), fetch wait
    5 ms. A trip makes two such hops (input topic to worker, worker to ``ess.commands``)."""
    from ess.kafka.clients import consumer, producer  # noqa: PLC0415

    reader = consumer(bootstrap, group_id=None, fetch_max_wait_ms=5)
    await reader.start()
    tps = [
        TopicPartition(spec.name, p) for spec in registry.inputs() for p in range(spec.partitions)
    ]
    reader.assign(tps)
    await reader.seek_to_end(*tps)
    writer = producer(bootstrap, linger_ms=0)
    await writer.start()
    arrivals: dict[int, float] = {}
    target = TopicPartition(registry.security.name, 0)

    async def collect() -> None:
        while True:
            batch = await reader.getmany(timeout_ms=50)
            now = time.monotonic()
            for record in batch.get(target, []):
                arrivals[record.offset] = now

    collector = asyncio.create_task(collect())
    latencies: list[float] = []
    rng = random.Random(5)
    try:
        for _ in range(count):
            t0 = time.monotonic()
            meta = await writer.send_and_wait(target.topic, b"{}", key=b"hop", partition=0)
            while meta.offset not in arrivals and time.monotonic() < t0 + 5:
                await asyncio.sleep(0.0005)
            if meta.offset in arrivals:
                latencies.append((arrivals[meta.offset] - t0) * 1000)
            await asyncio.sleep(rng.uniform(0.02, 0.05))
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await writer.stop()
        await reader.stop()
    return {"p50": round(_pct(latencies, 50), 2), "p99": round(_pct(latencies, 99), 2)}


def _partition(key: bytes, partitions: int) -> int:
    """Where Kafka's default partitioner puts ``key``."""
    from aiokafka.partitioner import murmur2  # noqa: PLC0415

    hashed: int = murmur2(key)
    return int((hashed & 0x7FFFFFFF) % partitions)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def latency_phase(load_eps: int | None) -> dict[str, Any]:
    """Trip latency on a fresh broker: idle (``load_eps`` None) or under load.

    Each phase gets its own embedded broker because Tansu's memory storage gets slower to
    fetch from as it fills (``make bench-broker``: at 5k records/s consumed, its CPU climbs to
    0.8-0.9 of a core within 18 s, for a plain aiokafka consumer as for the worker, while
    producing alone costs it ~0.2): a phase run after the 200k-record backlog would measure
    the broker's history, not the worker.
    """
    from ess.kafka.broker import kafka_target  # noqa: PLC0415
    from schemas import topic_registry  # noqa: PLC0415

    prefix = f"lat{uuid.uuid4().hex[:6]}"
    registry = topic_registry(prefix)
    async with kafka_target(registry) as bootstrap:
        floor = await measure_hops(bootstrap, registry, IDLE_TRIPS) if load_eps is None else None
        worker = Child(faust_worker, bootstrap, prefix, f"ess-detect-bench-{prefix}", False)
        try:
            await worker.wait(lambda c: c.ready_at is not None, "faust worker ready")
            if floor is not None:
                idle = await measure_trips(bootstrap, registry, IDLE_TRIPS)
                return {**idle, "broker_hop": floor}
            load = make_mix(50_000, datetime.now(UTC) + timedelta(seconds=LEAD_S), seed=3)
            return await measure_trips(
                bootstrap, registry, LOAD_TRIPS, load=load, load_eps=load_eps
            )
        finally:
            worker.stop()


async def throughput_phase() -> tuple[float, float]:
    """``(plain loop, faust worker)`` records/s over the same pre-produced backlog."""
    from ess.kafka.broker import kafka_target  # noqa: PLC0415
    from schemas import topic_registry  # noqa: PLC0415

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    registry = topic_registry(prefix)
    async with kafka_target(registry) as bootstrap:
        gen_start = datetime.now(UTC) + timedelta(seconds=LEAD_S)
        records = make_mix(BACKLOG, gen_start)
        produce_s = await produce_backlog(bootstrap, registry, records)
        print(f"backlog of {BACKLOG} produced in {produce_s:.1f}s", file=sys.stderr)

        # Plain loop first: it reads without a group, so it leaves no trace for Faust.
        plain = Child(plain_worker, bootstrap, prefix, BACKLOG)
        await plain.wait(lambda c: c.count >= BACKLOG, "plain loop to finish the backlog")
        plain.stop()
        baseline = plain.rate(BACKLOG)
        print(f"plain loop: {baseline:.0f} records/s", file=sys.stderr)

        worker = Child(faust_worker, bootstrap, prefix, f"ess-detect-bench-{prefix}", True)
        try:
            await worker.wait(lambda c: c.ready_at is not None, "faust worker ready")
            await worker.wait(lambda c: c.count >= BACKLOG, "faust worker to finish the backlog")
            throughput = worker.rate(BACKLOG)
            print(f"faust worker: {throughput:.0f} records/s", file=sys.stderr)
        finally:
            worker.stop()
    return baseline, throughput


async def run() -> dict[str, Any]:
    import faust  # noqa: PLC0415

    from schemas import topic_registry  # noqa: PLC0415

    started = time.monotonic()
    baseline, throughput = await throughput_phase()
    idle = await latency_phase(None)
    print(f"idle latency: {idle}", file=sys.stderr)
    # Half the rate first (well below the worker's capacity), then the full rate.
    half = await latency_phase(LOAD_EPS // 2)
    print(f"half-load latency: {half}", file=sys.stderr)
    loaded = await latency_phase(LOAD_EPS)
    print(f"load latency: {loaded}", file=sys.stderr)
    registry = topic_registry()
    return {
        "benchmark": "detect",
        "throughput_eps": round(throughput),
        "baseline_plain_eps": round(baseline),
        "ratio_to_plain": round(throughput / baseline, 3),
        "trip_latency_ms": {"idle": idle, "load": loaded, "load_half_rate": half},
        "targets": {
            "throughput_eps": 20_000,
            "ratio_to_plain": 0.5,
            "idle_p99_ms": 15,
            "load_p99_ms": 25,
        },
        "meta": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "faust": faust.__version__,
            "platform": platform.platform(),
            "backlog_records": BACKLOG,
            "mix": MIX,
            "invalid_share": INVALID_SHARE,
            "keys": {"accounts": ACCOUNTS, "components": COMPONENTS, "symbols": SYMBOLS},
            "input_partitions": registry.fills.partitions,
            "worker": "1 process, uvloop, fetch wait 5 ms, one stream event per fetched batch",
            "brokers": "a fresh embedded broker per phase (throughput, idle, half load, load)",
            "rules": "ess.rules.catalog defaults (all enabled)",
            "duration_s": round(time.monotonic() - started, 1),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def run_and_report(run: Callable[[], Awaitable[dict[str, Any]]], results: Path) -> None:
    """Run a benchmark with WARNING-level logs, write its figures to ``results``, print them."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    async def main() -> dict[str, Any]:
        return await run()

    result = asyncio.run(main())
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    run_and_report(run, RESULTS)


if __name__ == "__main__":
    main()

"""Detection workers against a real broker: every detector reason code end to end, windows
across bucket boundaries, duplicates and out-of-order records, poison records, a restart,
and two redundant detector groups.

Each worker start costs ~4-5 s (the group join on the embedded broker waits half the 6 s
session timeout), so related cases share one worker: one test drives every reason code
through one worker, with one key per case so that the cases cannot interfere.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ess.core.reader import Trust
from ess.kafka.clients import consumer, producer
from ess.roles.detect.settings import DetectorSettings
from ess.rules.config import AccountOverrides, DetectionConfig
from schemas import DeadLetter, ReasonCode, TopicRegistry, TripCommand, decode
from streams.runner import run_detector
from tests.helpers import eventually
from tests.records import beat, fill, latency, order, order_error, pnl, s, security, tick

pytestmark = pytest.mark.integration

#: Thresholds small enough for a handful of records per case. Silence limits are an hour so
#: that only the keys a case makes silent on purpose (records two hours old) trip on them.
CONFIG = DetectionConfig(
    account=DetectionConfig().account.model_copy(
        update={
            "trade_rate_max": 5,
            "stop_loss_max": 2,
            "order_rejects_max": 2,
            "execution_errors_max": 2,
        }
    ),
    account_overrides={
        # Drawdown case: keep the daily-loss rule out of the way on that account.
        "acct-dd": AccountOverrides(daily_loss=0.9),
        # Restart case: more room in the stop-loss window.
        "acct-restart": AccountOverrides(stop_loss_max=4),
    },
    heartbeat_timeout_sec=3600,
    data_feed_stale_sec=3600,
    corrupt_window_ticks=5,
    corrupt_min_ticks=4,
)


def _base_time() -> datetime:
    """Five minutes ago, moved so that ``T0 .. T0 + 6 min`` stays in one UTC day (the daily
    loss rule's day)."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    if (t0 + timedelta(minutes=6)).date() != t0.date():
        t0 = t0.replace(hour=0, minute=0, second=1) + timedelta(days=1)
    return t0


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int


@dataclass
class Harness:
    """A producer of contract records and a collector of ``ess.commands``/dead letters."""

    registry: TopicRegistry
    producer: AIOKafkaProducer
    trips: list[TripCommand] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)

    async def send(self, logical: str, key: str, record: dict[str, Any] | bytes) -> Sent:
        topic = getattr(self.registry, logical).name
        value = record if isinstance(record, bytes) else orjson.dumps(record)
        meta = await self.producer.send_and_wait(topic, value, key=key.encode())
        return Sent(topic, meta.partition, meta.offset)

    def trips_for(self, reason: ReasonCode, sent: Sent) -> list[TripCommand]:
        return [
            trip
            for trip in self.trips
            if trip.reason is reason
            and trip.trigger is not None
            and (trip.trigger.topic, trip.trigger.partition, trip.trigger.offset)
            == (sent.topic, sent.partition, sent.offset)
        ]


async def _collect(
    bootstrap: str, topic: str, sink: list[Any], parse: Callable[[bytes], Any]
) -> None:
    reader: AIOKafkaConsumer = consumer(bootstrap, group_id=None, client_id="test-collector")
    await reader.start()
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        while True:
            batch = await reader.getmany(tp, timeout_ms=100)
            sink.extend(parse(record.value) for record in batch.get(tp, []))

    finally:
        await reader.stop()


@contextlib.asynccontextmanager
async def harness(bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Harness]:
    out = producer(bootstrap)
    await out.start()
    h = Harness(registry, out)
    tasks = [
        asyncio.create_task(
            _collect(bootstrap, registry.commands.name, h.trips, lambda v: decode(TripCommand, v))
        ),
        asyncio.create_task(
            _collect(
                bootstrap, registry.deadletter.name, h.letters, lambda v: decode(DeadLetter, v)
            )
        ),
    ]
    try:
        yield h
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await out.stop()


@contextlib.asynccontextmanager
async def worker(settings: DetectorSettings, trust: Trust | None = None) -> AsyncIterator[None]:
    """A detection worker running in this process, ready on entry, stopped on exit. Its
    epoch follower verifies ``ess.state`` with ``trust`` (default: trusting no key, enough
    for a state log nobody writes)."""
    stop, ready = asyncio.Event(), asyncio.Event()
    trust = trust or Trust(scope=settings.registry.state.name)
    task = asyncio.create_task(run_detector(settings, stop, trust=trust, ready=ready))
    try:
        ready_wait = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, ready_wait}, timeout=40, return_when="FIRST_COMPLETED")
        ready_wait.cancel()
        if task in done:
            task.result()  # raises what went wrong
        assert ready.is_set(), "detection worker not ready within 40 s"
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def _settings(bootstrap: str, registry: TopicRegistry, group: str) -> DetectorSettings:
    return DetectorSettings(
        bootstrap=bootstrap,
        registry=registry,
        app_id=group,
        detection=CONFIG,
        tick_interval_sec=0.5,
        standby_replicas=0,
    )


# --------------------------------------------------------------------------- tests


async def test_every_detector_reason_trips_with_the_triggering_records_coordinates(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    t0 = _base_time()
    settings = _settings(kafka_bootstrap, registry, f"ess-detect-{uuid.uuid4().hex[:8]}")
    async with harness(kafka_bootstrap, registry) as h, worker(settings):
        expected: list[tuple[ReasonCode, Sent]] = []

        def expect(reason: ReasonCode, sent: Sent) -> None:
            expected.append((reason, sent))

        # Poison first: garbage bytes and a Fill with a negative qty on the fills topic.
        garbage = await h.send("fills", "acct-poison", b"\xff\xfe{not json")
        bad_fill = await h.send("fills", "acct-poison", {**fill("acct-poison", t0), "qty": -1})

        # pnl: daily loss, drawdown, flash crash (one account each).
        await h.send("pnl", "acct-dl", pnl("acct-dl", 1000, t0))
        await h.send("pnl", "acct-dl", pnl("acct-dl", 950, t0 + s(120)))
        expect(
            ReasonCode.DAILY_LOSS, await h.send("pnl", "acct-dl", pnl("acct-dl", 890, t0 + s(240)))
        )
        for i, equity in enumerate((1000, 900, 800)):
            await h.send("pnl", "acct-dd", pnl("acct-dd", equity, t0 + s(100 * i)))
        expect(
            ReasonCode.EQUITY_DRAWDOWN,
            await h.send("pnl", "acct-dd", pnl("acct-dd", 740, t0 + s(300))),
        )
        await h.send("pnl", "acct-fc", pnl("acct-fc", 1000, t0))
        expect(
            ReasonCode.FLASH_CRASH, await h.send("pnl", "acct-fc", pnl("acct-fc", 940, t0 + s(10)))
        )

        # fills: trade rate across a minute boundary (a calendar-minute bucket would hold 2
        # and 4 of these 6 fills; "any 60 s" holds all 6 > 5).
        minute = t0.replace(second=0) + timedelta(minutes=2)
        offsets = (-2, -1, 0.5, 1, 2)
        for dt in offsets:
            await h.send("fills", "acct-tr", fill("acct-tr", minute + s(dt)))
        expect(
            ReasonCode.TRADE_RATE,
            await h.send("fills", "acct-tr", fill("acct-tr", minute + s(3))),
        )
        # Duplicates and out-of-order records never double count: five distinct fills, each
        # sent twice, newest first, stay at 5 (no trip); the sixth distinct one trips.
        ids = [f"ooo-{i}" for i in range(5)]
        for _ in range(2):
            for i in reversed(range(5)):
                await h.send("fills", "acct-ooo", fill("acct-ooo", t0 + s(i), event_id=ids[i]))
        expect(
            ReasonCode.TRADE_RATE,
            await h.send("fills", "acct-ooo", fill("acct-ooo", t0 + s(5), event_id="ooo-5")),
        )
        for i in range(2):
            await h.send("fills", "acct-sl", fill("acct-sl", t0 + s(10 * i), stop_loss=True))
        expect(
            ReasonCode.STOP_LOSS_CLUSTER,
            await h.send("fills", "acct-sl", fill("acct-sl", t0 + s(20), stop_loss=True)),
        )
        expect(
            ReasonCode.POSITION_SIZE_ANOMALY,
            await h.send("fills", "acct-pos", fill("acct-pos", t0, qty=60_000, price=100)),
        )
        # orders: one order above the notional limit.
        expect(
            ReasonCode.POSITION_SIZE_ANOMALY,
            await h.send("orders", "acct-ord", order("acct-ord", t0, 2_000_000)),
        )
        # order errors: rejects and execution errors.
        for i in range(2):
            await h.send("order_errors", "acct-rj", order_error("acct-rj", t0 + s(i), "reject"))
        expect(
            ReasonCode.ORDER_REJECTS,
            await h.send("order_errors", "acct-rj", order_error("acct-rj", t0 + s(2), "reject")),
        )
        await h.send("order_errors", "acct-ee", order_error("acct-ee", t0, "error"))
        await h.send("order_errors", "acct-ee", order_error("acct-ee", t0 + s(1), "timeout"))
        expect(
            ReasonCode.EXECUTION_ERRORS,
            await h.send("order_errors", "acct-ee", order_error("acct-ee", t0 + s(2), "error")),
        )
        # health: critical, exchange down > 5 s, policy store stale > 5 s, silence.
        expect(
            ReasonCode.SYSTEM_CRITICAL,
            await h.send("health", "svc-sc", beat("svc-sc", t0, "CRITICAL")),
        )
        for dt in (0, 3):
            await h.send("health", "svc-ex", beat("svc-ex", t0 + s(dt), exchange="down"))
        expect(
            ReasonCode.EXCHANGE_DISCONNECTED,
            await h.send("health", "svc-ex", beat("svc-ex", t0 + s(6), exchange="down")),
        )
        await h.send("health", "svc-ps", beat("svc-ps", t0, policy_store="stale"))
        expect(
            ReasonCode.POLICY_STORE_STALE,
            await h.send("health", "svc-ps", beat("svc-ps", t0 + s(6), policy_store="stale")),
        )
        expect(
            ReasonCode.HEARTBEAT_LOST,
            await h.send("health", "svc-hb", beat("svc-hb", t0 - timedelta(hours=2))),
        )
        # latency: three consecutive samples above 5 s.
        for i in range(2):
            await h.send("latency", "gw-lat", latency("gw-lat", t0 + s(i), 6_000))
        expect(
            ReasonCode.LATENCY_SPIKE,
            await h.send("latency", "gw-lat", latency("gw-lat", t0 + s(2), 7_000)),
        )
        # market: corrupt share (a schema-invalid tick counts too), and a silent symbol.
        await h.send("market", "CORR", tick("CORR", t0))
        await h.send("market", "CORR", tick("CORR", t0 + s(1)))
        await h.send("market", "CORR", tick("CORR", t0 + s(2), bid=-1))
        expect(
            ReasonCode.DATA_FEED_CORRUPT,
            await h.send("market", "CORR", {**tick("CORR", t0 + s(3)), "bid": "NaN?"}),
        )
        expect(
            ReasonCode.DATA_FEED_STALE,
            await h.send("market", "STALE", tick("STALE", t0 - timedelta(hours=2))),
        )
        # security: every kind trips at once.
        for kind in (
            ReasonCode.API_KEY_INVALID,
            ReasonCode.API_KEY_CHANGED,
            ReasonCode.UNAUTHORIZED_ACCESS,
            ReasonCode.ENVIRONMENT_MODIFIED,
        ):
            expect(kind, await h.send("security", "gw", security(kind.value, "gw", t0)))

        def all_arrived() -> bool:
            missing = [(r.value, sent) for r, sent in expected if not h.trips_for(r, sent)]
            assert not missing, f"no trip yet for {missing}"
            return True

        await eventually(all_arrived, timeout=20, message="every reason code trips")

        # Every detector reason code is covered.
        detector_reasons = set(ReasonCode) - {ReasonCode.MANUAL, ReasonCode.STATE_LOG_LOST}
        assert {reason for reason, _ in expected} == detector_reasons
        # Exactly one trip per expected trigger; nothing fired twice.
        for reason, sent in expected:
            assert len(h.trips_for(reason, sent)) == 1, (reason, sent)
        ids = [trip.command_id for trip in h.trips]
        assert len(ids) == len(set(ids)), "a trip was sent twice"
        hb = next(t for t in h.trips if t.reason is ReasonCode.HEARTBEAT_LOST)
        assert hb.trigger is not None
        assert hb.trigger.event_ts == t0 - timedelta(hours=2) + timedelta(hours=1)

        # The poison records were dead-lettered with their coordinates; detection went on.
        def poison_letters() -> list[DeadLetter]:
            got = [
                letter
                for letter in h.letters
                if (letter.source_topic, letter.partition, letter.offset)
                in {(p.topic, p.partition, p.offset) for p in (garbage, bad_fill)}
            ]
            assert len(got) == 2, h.letters
            return got

        letters = await eventually(poison_letters, timeout=10)
        by_offset = {letter.offset: letter for letter in letters}
        assert by_offset[garbage.offset].raw_encoding == "base64"
        assert "qty" in by_offset[bad_fill.offset].error
        assert by_offset[bad_fill.offset].raw_encoding == "utf-8"


async def test_restart_mid_stream_loses_no_trip_and_sends_none_twice(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    t0 = _base_time()
    settings = _settings(kafka_bootstrap, registry, f"ess-detect-{uuid.uuid4().hex[:8]}")
    async with harness(kafka_bootstrap, registry) as h:
        async with worker(settings):
            before = await h.send("security", "gw", security("api_key_changed", "gw", t0))
            for i in range(3):  # 3 of the 5 stop-loss fills the account's limit (4) needs
                await h.send(
                    "fills", "acct-restart", fill("acct-restart", t0 + s(i), stop_loss=True)
                )
            await eventually(lambda: h.trips_for(ReasonCode.API_KEY_CHANGED, before))
        # A new worker of the same group: it must resume from the committed offsets and the
        # changelogged window (3 fills), not from scratch.
        async with worker(settings):
            await h.send("fills", "acct-restart", fill("acct-restart", t0 + s(3), stop_loss=True))
            crossing = await h.send(
                "fills", "acct-restart", fill("acct-restart", t0 + s(4), stop_loss=True)
            )
            await eventually(
                lambda: h.trips_for(ReasonCode.STOP_LOSS_CLUSTER, crossing), timeout=15
            )
            # Give a redelivery a chance to show up before judging "none twice".
            marker = await h.send("security", "gw2", security("api_key_invalid", "gw2", t0))
            await eventually(lambda: h.trips_for(ReasonCode.API_KEY_INVALID, marker))
        assert len(h.trips_for(ReasonCode.API_KEY_CHANGED, before)) == 1
        assert len(h.trips_for(ReasonCode.STOP_LOSS_CLUSTER, crossing)) == 1
        assert [t.reason for t in h.trips].count(ReasonCode.STOP_LOSS_CLUSTER) == 1


async def test_two_detector_groups_send_identical_command_ids(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    t0 = _base_time()
    run = uuid.uuid4().hex[:8]
    a = _settings(kafka_bootstrap, registry, f"ess-detect-a-{run}")
    b = a.with_group(f"ess-detect-b-{run}")
    async with harness(kafka_bootstrap, registry) as h, worker(a), worker(b):
        trigger = await h.send("health", "svc-x", beat("svc-x", t0, "CRITICAL"))

        def both() -> list[TripCommand]:
            got = h.trips_for(ReasonCode.SYSTEM_CRITICAL, trigger)
            assert len(got) == 2, got
            return got

        first, second = await eventually(both, timeout=15)
        assert first.command_id == second.command_id
        assert first.model_dump() == second.model_dump()


async def test_a_burst_split_into_fetched_batches_counts_exactly_and_commits_every_offset(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    """Records already waiting when the worker starts arrive in large fetches, delivered as
    batches of at most ``batch_max`` (3 here): the windows must still count every record
    once, and the group must commit every offset it processed."""
    t0 = _base_time()
    settings = replace(
        _settings(kafka_bootstrap, registry, f"ess-detect-{uuid.uuid4().hex[:8]}"), batch_max=3
    )
    async with harness(kafka_bootstrap, registry) as h:
        sent: list[Sent] = []
        for k in range(8):  # at the limit (5 fills in the window): no trip
            for i in range(5):
                sent.append(
                    await h.send("fills", f"acct-burst-{k}", fill(f"acct-burst-{k}", t0 + s(i)))
                )
        for i in range(6):  # one over the limit: exactly one trip, on the sixth fill
            sent.append(await h.send("fills", "acct-burst-x", fill("acct-burst-x", t0 + s(i))))
        crossing = sent[-1]
        async with worker(settings):
            await eventually(lambda: h.trips_for(ReasonCode.TRADE_RATE, crossing), timeout=15)
            marker = await h.send("security", "gw", security("api_key_invalid", "gw", t0))
            await eventually(lambda: h.trips_for(ReasonCode.API_KEY_INVALID, marker))
        assert [t.reason for t in h.trips].count(ReasonCode.TRADE_RATE) == 1

    ends: dict[int, int] = {}
    for record in sent:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    group_reader = consumer(kafka_bootstrap, group_id=settings.app_id, client_id="test-offsets")
    await group_reader.start()
    try:
        committed = {
            p: await group_reader.committed(TopicPartition(registry.fills.name, p)) for p in ends
        }
    finally:
        await group_reader.stop()
    assert committed == ends

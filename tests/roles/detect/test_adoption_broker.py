"""Two defects a new user met, reproduced through a detection worker on a real broker.

* **Mis-keyed input.** A producer that does not key its records by the contract's key field
  (or keys them by something else) lands one key's records on several partitions. Several
  detection workers would then each hold a part of that key's window (undercounting), and
  even one worker writes the key's state to the changelog partition of whichever record came
  last. Detection must refuse such a record loudly (dead letter ``key_mismatch``, metric,
  log) and leave the key's state where it lives.
* **Stopping a bot.** A component that announces ``retired`` on its last beat must not trip
  ``heartbeat_lost``; one in ``maintenance`` not before its announced end; one that simply
  vanishes still trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ess.core.reader import Trust
from ess.detection.detector import Slot
from ess.kafka.clients import consumer, producer
from ess.roles.detect.observe import DetectObserver
from ess.roles.detect.settings import DetectorSettings
from ess.rules.config import DetectionConfig
from schemas import DeadLetter, ReasonCode, TopicRegistry, TripCommand, decode
from streams.runner import run_detector
from tests.helpers import eventually
from tests.records import beat, fill, s

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def detecting(settings: DetectorSettings, observer: DetectObserver) -> AsyncIterator[None]:
    """A detection worker in this process, ready on entry, stopped on exit."""
    stop, ready = asyncio.Event(), asyncio.Event()
    trust = Trust(scope=settings.registry.state.name)
    task = asyncio.create_task(
        run_detector(settings, stop, trust=trust, ready=ready, observer=observer)
    )
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


@contextlib.asynccontextmanager
async def collecting(bootstrap: str, topic: str) -> AsyncIterator[list[bytes]]:
    """Every record value of ``topic`` (partition 0) into a list, for the block's duration."""
    sink: list[bytes] = []
    reader: AIOKafkaConsumer = consumer(bootstrap, group_id=None, client_id="test-collector")
    await reader.start()
    tp = TopicPartition(topic, 0)
    reader.assign([tp])
    await reader.seek_to_beginning(tp)

    async def pump() -> None:
        while True:
            batch = await reader.getmany(tp, timeout_ms=100)
            sink.extend(record.value for record in batch.get(tp, []))

    task = asyncio.create_task(pump())
    try:
        yield sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.stop()


def _settings(
    bootstrap: str, registry: TopicRegistry, detection: DetectionConfig
) -> DetectorSettings:
    return DetectorSettings(
        bootstrap=bootstrap,
        registry=registry,
        app_id=f"ess-detect-{uuid.uuid4().hex[:8]}",
        detection=detection,
        tick_interval_sec=0.2,
        standby_replicas=0,
    )


async def test_a_mis_keyed_record_is_dead_lettered_counted_and_does_not_split_the_window(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    config = DetectionConfig(
        account=DetectionConfig().account.model_copy(update={"trade_rate_max": 3})
    )
    settings = _settings(kafka_bootstrap, registry, config)
    observer = DetectObserver(settings.app_id)
    fills = registry.fills.name
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    out = producer(kafka_bootstrap)
    await out.start()
    try:
        async with (
            collecting(kafka_bootstrap, registry.deadletter.name) as letters_raw,
            collecting(kafka_bootstrap, registry.commands.name) as trips_raw,
            detecting(settings, observer),
        ):
            # Three fills keyed correctly: at the limit (3 in the minute), no trip.
            home = None
            for i in range(3):
                meta = await out.send_and_wait(
                    fills, orjson.dumps(fill("acct-k", t0 + s(i))), key=b"acct-k"
                )
                home = meta.partition
            assert home is not None
            away = (home + 1) % registry.fills.partitions
            # Two more fills of the same account on another partition: one without a key,
            # one keyed by something else (the venue). Counted, they would trip trade_rate.
            unkeyed = await out.send_and_wait(
                fills, orjson.dumps(fill("acct-k", t0 + s(3))), key=None, partition=away
            )
            wrong = await out.send_and_wait(
                fills, orjson.dumps(fill("acct-k", t0 + s(4))), key=b"binance", partition=away
            )

            def refused() -> dict[int, DeadLetter]:
                letters = [decode(DeadLetter, raw) for raw in list(letters_raw)]
                got = {
                    letter.offset: letter
                    for letter in letters
                    if (letter.source_topic, letter.partition) == (fills, away)
                }
                assert set(got) == {unkeyed.offset, wrong.offset}, letters
                return got

            got = await eventually(refused, timeout=20)
            for letter in got.values():
                assert letter.reason == "key_mismatch"
                assert letter.error.startswith("key_mismatch:")
                assert "'acct-k'" in letter.error  # expected
            assert "got no key" in got[unkeyed.offset].error
            assert "'binance'" in got[wrong.offset].error

            metrics = observer.metrics.registry

            def counted() -> bool:
                # Counted once the batch is done, just after its dead letters were sent.
                mismatches = {"topic": fills, "action": "dead_lettered"}
                assert metrics.get_sample_value("ess_input_key_mismatch_total", mismatches) == 2
                letters = {"topic": fills, "reason": "key_mismatch"}
                assert metrics.get_sample_value("ess_detect_dead_letters_total", letters) == 2
                return True

            await eventually(counted, timeout=10)
            accepted = {"topic": fills, "action": "accepted"}
            assert metrics.get_sample_value("ess_input_key_mismatch_total", accepted) == 0
            # The account's window still lives on its own partition only: no write of the
            # mis-keyed records moved it (and none counted them: no trip).
            lane = next(lane for lane in observer.app.ess_lanes if lane.detector.topic == fills)
            slot = lane.table.data["trade_rate|acct-k"]
            assert isinstance(slot, Slot)
            assert slot.partition == home
            assert len(slot.state.ids) == 3  # the three correctly keyed fills
            assert not [decode(TripCommand, raw) for raw in list(trips_raw)]

            # The next correctly keyed fill is the fourth in the minute: it trips.
            crossing = await out.send_and_wait(
                fills, orjson.dumps(fill("acct-k", t0 + s(5))), key=b"acct-k"
            )

            def tripped() -> TripCommand:
                trips = [decode(TripCommand, raw) for raw in list(trips_raw)]
                assert len(trips) == 1, trips
                return trips[0]

            trip = await eventually(tripped, timeout=20)
            assert trip.reason is ReasonCode.TRADE_RATE
            assert trip.trigger is not None
            assert (trip.trigger.partition, trip.trigger.offset) == (home, crossing.offset)
    finally:
        await out.stop()


async def test_a_retired_component_does_not_trip_while_a_vanished_one_does(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    settings = _settings(kafka_bootstrap, registry, DetectionConfig(heartbeat_timeout_sec=3))
    observer = DetectObserver(settings.app_id)
    health = registry.health.name
    now = datetime.now(UTC)
    out = producer(kafka_bootstrap)
    await out.start()
    try:
        async with (
            collecting(kafka_bootstrap, registry.commands.name) as trips_raw,
            detecting(settings, observer),
        ):
            # Silent for longer than the timeout already: each trips on the first tick that
            # sees it, unless its announcement holds. The retired and the maintenance bots
            # fell silent *before* the vanished one, so a tick that trips the vanished one
            # would trip them too.
            sends = [
                ("bot-retired", beat("bot-retired", now - s(30))),
                ("bot-retired", {**beat("bot-retired", now - s(20)), "lifecycle": "retired"}),
                (
                    "bot-maint",
                    {
                        **beat("bot-maint", now - s(20)),
                        "lifecycle": "maintenance",
                        "maintenance_until": (now + timedelta(hours=1)).isoformat(),
                    },
                ),
                ("bot-gone", beat("bot-gone", now - s(10))),
            ]
            for key, record in sends:
                await out.send_and_wait(health, orjson.dumps(record), key=key.encode())

            def lost() -> list[TripCommand]:
                trips = [decode(TripCommand, raw) for raw in list(trips_raw)]
                assert [t for t in trips if "bot-gone" in t.detail], trips
                return trips

            trips = await eventually(lost, timeout=20)
            assert [t.reason for t in trips] == [ReasonCode.HEARTBEAT_LOST]
            assert "bot-retired" not in trips[0].detail
            assert "bot-maint" not in trips[0].detail
    finally:
        await out.stop()

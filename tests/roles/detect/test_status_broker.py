"""The status servers of the ``detect`` and ``command`` roles against a real broker.

Detect: ``/healthz``, ``/status`` and ``/metrics`` of a running detection worker, counts after
a trip and a poison record, and ``/healthz`` failing while a partition is wedged (its agent
held on purpose, records waiting) and recovering once it moves again. One worker start
(~4-5 s: the group join on the embedded broker) covers every case.

Command: the processor's liveness (beats), backlog, last seq and command outcomes on
``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ess.core.reader import Trust
from ess.kafka.clients import producer
from ess.observability.status import serve_status
from ess.roles.command.metrics import ProcessorMetrics
from ess.roles.detect.observe import DetectObserver
from ess.roles.detect.settings import DetectorSettings
from schemas import ReasonCode, TopicRegistry, encode
from streams.runner import run_detector
from tests.helpers import eventually
from tests.records import order
from tests.roles.command.test_processor_broker import WAIT, a_trip, new_processor, running

pytestmark = pytest.mark.integration

#: Small, so that the wedged case needs no long wait; polled, never slept on.
WEDGED_AFTER_S = 1.0


@contextlib.asynccontextmanager
async def detecting(settings: DetectorSettings, observer: DetectObserver) -> AsyncIterator[str]:
    """A detection worker in this process, ready on entry; yields its status server's URL."""
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
        assert observer.status_url is not None
        yield observer.status_url
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


async def test_detect_role_serves_status_metrics_and_healthz(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    settings = DetectorSettings(
        bootstrap=kafka_bootstrap,
        registry=registry,
        app_id=f"ess-detect-{uuid.uuid4().hex[:8]}",
        standby_replicas=0,
        status_port=0,  # a free port for this run
        wedged_after_sec=WEDGED_AFTER_S,
    )
    observer = DetectObserver(settings.app_id, wedged_after=settings.wedged_after_sec)
    orders = registry.orders.name
    out = producer(kafka_bootstrap)
    await out.start()
    try:
        async with detecting(settings, observer) as url, aiohttp.ClientSession() as http:
            status, body = await get(http, f"{url}/healthz")
            assert (status, body["healthy"]) == (200, True)
            status, page = await get(http, f"{url}/status")
            assert status == 200
            assert (page["role"], page["app_id"], page["ready"]) == (
                "detect",
                settings.app_id,
                True,
            )

            # The only member of its group owns every input partition.
            async def every_partition_tracked() -> bool:
                _, page = await get(http, f"{url}/status")
                tracked = {(p["topic"], p["partition"]) for p in page["partitions"]}
                return tracked == {
                    (spec.name, partition)
                    for spec in registry.inputs()
                    for partition in range(spec.partitions)
                }

            await eventually(every_partition_tracked, timeout=20)

            # A trip and a poison record on the orders topic.
            now = datetime.now(UTC)
            await out.send_and_wait(
                orders, orjson.dumps(order("acct-big", now, 2_000_000)), key=b"acct-big"
            )
            await out.send_and_wait(orders, b"\xff{not json", key=b"acct-big")

            async def counted() -> str:
                _, text = await get(http, f"{url}/metrics")
                assert value(text, "ess_detect_records_total", topic=orders) == 2
                assert (
                    value(
                        text,
                        "ess_detect_trips_total",
                        rule="order_size",
                        reason=ReasonCode.POSITION_SIZE_ANOMALY.value,
                    )
                    == 1
                )
                assert (
                    value(text, "ess_detect_dead_letters_total", topic=orders, reason="invalid")
                    == 1
                )
                assert value(text, "ess_detect_rule_records_total", rule="order_size") == 1
                assert value(text, "ess_detect_fetch_to_trip_seconds_count") == 1
                return str(text)

            text = await eventually(counted, timeout=20)
            assert value(text, "ess_detect_ready") == 1
            assert value(text, "ess_detect_wedged") == 0
            lags = {
                labels: v
                for (name, labels), v in samples(text).items()
                if name == "ess_detect_consumer_lag_records" and dict(labels)["topic"] == orders
            }
            assert lags
            assert set(lags.values()) == {0}

            # Wedge the orders agent: hold its lane (as a batch stuck on an undeliverable trip
            # would), then give it records.
            lane = next(lane for lane in observer.app.ess_lanes if lane.detector.topic == orders)
            async with lane.lock:
                meta = await out.send_and_wait(
                    orders, orjson.dumps(order("acct-small", now, 10)), key=b"acct-small"
                )

                async def wedged() -> dict[str, Any]:
                    status, body = await get(http, f"{url}/healthz")
                    assert status == 503
                    return dict(body)

                body = await eventually(wedged, timeout=20)
                assert body["checks"]["progress"].startswith(f"wedged: {orders}[{meta.partition}]")
                _, text = await get(http, f"{url}/metrics")
                assert value(text, "ess_detect_wedged") == 1
                labels = {"topic": orders, "partition": str(meta.partition)}
                assert value(text, "ess_detect_consumer_lag_records", **labels) == 1
                lag_seconds = value(text, "ess_detect_consumer_lag_seconds", **labels)
                assert lag_seconds is not None
                assert lag_seconds > WEDGED_AFTER_S

            async def healthy_again() -> dict[str, Any]:
                status, page = await get(http, f"{url}/status")
                assert status == 200
                assert page["healthy"] is True
                assert page["lag_records"] == 0
                return dict(page)

            page = await eventually(healthy_again, timeout=20)
            assert page["records"][orders] == 3
    finally:
        await out.stop()


async def test_command_role_serves_liveness_backlog_and_outcomes(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    metrics = ProcessorMetrics()
    processor = new_processor(
        kafka_bootstrap, registry, unique_group, beat_interval=0.1, metrics=metrics
    )
    server = await serve_status(processor, metrics.registry, port=0)
    out = producer(kafka_bootstrap, read_to_end_safe=True)
    await out.start()
    try:
        async with running(processor), aiohttp.ClientSession() as http:
            await out.send_and_wait(registry.commands.name, encode(a_trip("t-1")), key=b"ess")
            await out.send_and_wait(registry.commands.name, encode(a_trip("t-1")), key=b"ess")

            async def caught_up() -> str:
                _, text = await get(http, f"{server.url}/metrics")
                applied = value(text, "ess_commands_total", kind="trip", outcome="applied")
                duplicate = value(text, "ess_commands_total", kind="trip", outcome="duplicate")
                assert (applied, duplicate) == (1, 1)
                assert value(text, "ess_command_processor_last_seq") == 0
                assert value(text, "ess_command_processor_lag_records") == 0
                beats = value(text, "ess_command_processor_beats_total")
                assert beats is not None
                assert beats >= 2
                return str(text)

            text = await eventually(caught_up, timeout=WAIT)
            assert value(text, "ess_command_processor_owner") == 1
            last_beat = value(text, "ess_command_processor_last_beat_timestamp_seconds")
            assert last_beat is not None
            assert last_beat > 0
            assert value(text, "ess_command_processor_beat_errors_total") == 0
            status, body = await get(http, f"{server.url}/healthz")
            assert (status, body["healthy"]) == (200, True)
        # Stopped: no longer the owner, and no stale backlog figure left behind.
        assert metrics.registry.get_sample_value("ess_command_processor_owner") == 0
        assert metrics.registry.get_sample_value("ess_command_processor_lag_records") == 0
    finally:
        await out.stop()
        await server.stop()

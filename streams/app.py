"""The detection Faust app: one agent per input topic, one state table per input topic, one
timer for silence rules. Built by :func:`create_app`; nothing is bound at import time.

Per input topic ``T`` (``ess.fills``, ``ess.pnl``, ...):

* **agent** ``detect-<logical>`` reads ``T`` as raw bytes in batches (natural batching,
  see ``_agent_body``), and hands each batch to :meth:`TopicDetector.process`
  (:mod:`streams.detect`, pure). It then sends the detections as ``TripCommand`` s and waits
  for the broker's ack, writes the changed states (once per key per batch), and sends dead
  letters. Any exception is caught inside the loop: an exception escaping a Faust agent acks
  the in-flight records, which would silently drop them (faust-streaming B1, #315).
* **table** ``detect-<logical>``: per-(rule, key) state, changelogged (``<app id>-detect-
  <logical>-changelog``) with exactly ``T``'s partition count, and written with ``T``'s
  partition of the record: state for partition ``p`` is recovered on whichever worker owns
  ``p`` after a rebalance or restart.
* **timer** (every worker, not ``on_leader``): ticks the silence rules (``heartbeat_lost``,
  ``data_feed_stale``) with the wall clock as watermark, for the keys whose partitions this
  worker owns right now. A key's state and latch live on the owner of its partition, and only
  that worker may write them (and knows the last record seen); a leader-only timer would
  read a partial table on every worker but one. See :meth:`TopicDetector.tick`.

An ``asyncio.Lock`` per topic serializes a batch and a tick of the same table: both read
states, await the trip sends, then write, and must not interleave across that await.

The ESS epoch comes from an :class:`~streams.epoch.EpochFollower` (every worker follows
``ess.state``), and outputs go through a :class:`~streams.outputs.Outputs` (ESS's own
producers), both injected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from aiokafka.partitioner import murmur2
from loguru import logger

from ess.clock import Clock, SystemClock
from ess.rules.base import Context, trip_command
from ess.rules.catalog import RECORD_TYPE, build_rules
from schemas import DeadLetter, TripCommand
from streams.detect import BatchOutcome, RawRecord, TopicDetector
from streams.faust_compat import DetectApp, DetectTable, LeanMonitor
from streams.settings import DetectorSettings

__all__ = ["ContextSource", "Outputs", "build_detectors", "create_app"]


class ContextSource(Protocol):
    """Where rules get the ESS epoch from (:class:`~streams.epoch.EpochFollower`)."""

    @property
    def context(self) -> Context: ...


class Outputs(Protocol):
    """Where trips and dead letters go."""

    async def send_trips(self, commands: Sequence[TripCommand]) -> None:
        """Deliver every command (broker-acknowledged) before returning."""
        ...

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...


def build_detectors(settings: DetectorSettings) -> list[TopicDetector]:
    """One :class:`TopicDetector` per input topic of the registry, with the catalog's rules
    for ``settings.detection``. Topics without enabled rules still get one: their records
    are validated and bad ones dead-lettered."""
    rules = build_rules(settings.detection)
    detectors = []
    for logical, record_type in RECORD_TYPE.items():
        spec = getattr(settings.registry, logical)
        detectors.append(
            TopicDetector(
                logical=logical,
                topic=spec.name,
                record_type=record_type,
                rules=rules.get(logical, []),
                key_field=spec.key,
                max_future_skew=timedelta(seconds=settings.detection.max_future_skew_sec),
            )
        )
    return detectors


def _partitioner(partitions: int) -> Callable[[str], int]:
    """Where a producer using Kafka's default partitioner puts ``key`` (murmur2)."""

    def partition_of(key: str) -> int:
        hashed: int = murmur2(key.encode())
        return (hashed & 0x7FFFFFFF) % partitions

    return partition_of


@dataclass(slots=True)
class _Lane:
    """One input topic's detector, table and lock."""

    detector: TopicDetector
    table: Any
    partitions: int
    lock: asyncio.Lock


async def _perform(out: BatchOutcome, lane: _Lane, outputs: Outputs) -> None:
    if out.detections:
        commands = [trip_command(detection) for detection in out.detections]
        await outputs.send_trips(commands)
        for command in commands:
            logger.bind(
                command_id=command.command_id,
                reason=command.reason.value,
                source=command.source,
                trigger=None
                if command.trigger is None
                else command.trigger.model_dump(mode="json"),
            ).warning(f"trip sent: {command.reason.value} ({command.source})")
    table: DetectTable = lane.table
    for write in out.writes:
        table.put(write.key, write.slot)
    if out.dead_letters:
        await outputs.send_dead_letters(out.dead_letters)


def create_app(
    settings: DetectorSettings,
    *,
    outputs: Outputs,
    epoch: ContextSource,
    clock: Clock | None = None,
    detectors: Sequence[TopicDetector] | None = None,
) -> Any:
    """A configured, unstarted Faust app (a :class:`~streams.faust_compat.DetectApp`).

    Every topic of ``settings.registry`` must already exist with its partition count
    (:func:`ess.broker.ensure_topics`; :func:`streams.runner.run_detector` does it): Faust
    only creates its own internal topics (changelogs, the leader topic), and a source topic
    auto-created by the broker on first use would get the broker's default count.
    """
    clock = clock or SystemClock()
    registry = settings.registry
    input_partitions = {spec.partitions for spec in registry.inputs()}
    app = DetectApp(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap.split(",")],
        store=settings.store,
        autodiscover=False,
        web_enabled=settings.web_enabled,
        # Tansu makes JoinGroup wait session/2: 6 s gives a ~3 s join and ~15 s blind time
        # after a SIGKILL (Faust's 60 s default: 30 s join, ~110 s blind).
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        producer_linger=settings.producer_linger_s,
        # Internal topics Faust creates (leader topic, any table without explicit partitions)
        # default to the input partition count; tables below set theirs explicitly.
        topic_partitions=max(input_partitions),
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        Monitor=LeanMonitor,
        Table=DetectTable,
        # TLS/SASL for Faust's consumer, producer and admin client; None (PLAINTEXT) is
        # Faust's own default.
        broker_credentials=settings.security.faust_credentials(),
    )
    app.ess_fetch_max_wait_ms = settings.fetch_max_wait_ms

    lanes: list[_Lane] = []
    for detector in detectors if detectors is not None else build_detectors(settings):
        spec = getattr(registry, detector.logical)
        # Keys and values go to the changelog as JSON (Faust's table default serializers).
        table = app.Table(f"detect-{detector.logical}", partitions=spec.partitions)
        lane = _Lane(detector, table, spec.partitions, asyncio.Lock())
        lanes.append(lane)
        topic = app.topic(
            spec.name,
            key_serializer="raw",
            value_serializer="raw",
            partitions=spec.partitions,
            # A source topic is ESS's contract, created by ensure_topics, never by Faust.
            internal=False,
        )
        app.agent(topic, name=f"detect-{detector.logical}")(
            _agent_body(lane, settings, outputs, epoch, clock)
        )

    ticking = [lane for lane in lanes if lane.detector.ticks]
    if ticking:
        app.timer(interval=settings.tick_interval_s, name="detect-silence-tick")(
            _tick_body(app, ticking, outputs, epoch, clock)
        )
    app.ess_lanes = lanes
    return app


def _agent_body(
    lane: _Lane, settings: DetectorSettings, outputs: Outputs, epoch: ContextSource, clock: Clock
) -> Callable[[Any], Any]:
    detector = lane.detector
    batch_max = settings.batch_max

    async def detect(stream: Any) -> None:
        """Natural batching: events accumulate while the stream's queue still holds more,
        and a batch is processed as soon as the queue runs dry or ``batch_max`` is reached.
        An idle record is processed at once (no batching timer in the trip path).

        ``stream.take_events(max, within)`` was measured first and dropped: its batches are
        cut by the ``within`` timer, so it adds up to ``within`` to every trip at idle, and
        with Faust delivering one event per ~60 us to eight agents a 2 ms window held 1-2
        events per agent anyway (60k records in 40k batches). Faust's delivery is the
        bottleneck either way, so batches here stay small too (measured: ~1 record); the
        per-key amortization that matters is the changelog, coalesced per key until the
        next offset commit (:class:`~streams.faust_compat.DetectTable`).

        Acks are manual (``noack``) and in order, after the batch's outputs are done: a batch
        is committed only once its trips are acknowledged and its states are in the table.
        """
        queue = getattr(stream.channel, "queue", None)
        more_waiting: Callable[[], bool] = (
            (lambda: not queue.empty()) if queue is not None else (lambda: False)
        )
        pending: list[Any] = []
        async for event in stream.noack().events():
            pending.append(event)
            if len(pending) < batch_max and more_waiting():
                continue
            events, pending = pending, []
            try:
                batch = []
                for item in events:
                    message = item.message
                    stamp = message.timestamp
                    batch.append(
                        RawRecord(
                            message.partition,
                            message.offset,
                            message.value,
                            None if stamp is None else int(stamp * 1000),
                        )
                    )
                async with lane.lock:
                    out = detector.process(batch, lane.table.data, epoch.context, clock.now())
                    await _perform(out, lane, outputs)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never let an exception escape: Faust would ack (and so drop) the batch.
                logger.bind(topic=detector.topic, events=len(events)).exception(
                    "detection batch failed"
                )
            for item in events:
                item.ack()

    return detect


def _tick_body(
    app: Any, lanes: Sequence[_Lane], outputs: Outputs, epoch: ContextSource, clock: Clock
) -> Callable[[], Any]:
    async def tick() -> None:
        if app.rebalancing:
            return  # tables may be mid-recovery; the next tick comes soon
        try:
            assigned = app.consumer.assignment()
        except Exception:
            return  # consumer not started yet
        for lane in lanes:
            owned = {tp.partition for tp in assigned if tp.topic == lane.detector.topic}
            if not owned:
                continue
            try:
                async with lane.lock:
                    out = lane.detector.tick(
                        lane.table.data,
                        owns=owned.__contains__,
                        partition_of=_partitioner(lane.partitions),
                        watermark=clock.now(),
                        ctx=epoch.context,
                    )
                    await _perform(out, lane, outputs)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.bind(topic=lane.detector.topic).exception("silence tick failed")

    return tick

"""The detection Faust app: one agent per input topic, one state table per input topic, one
timer for silence rules. Built by :func:`create_app`; nothing is bound at import time.

Per input topic ``T`` (``ess.fills``, ``ess.pnl``, ...):

* **agent** ``detect-<logical>`` receives ``T``'s raw records one fetch at a time: the
  consumer turns the records of ``T`` from each fetch into one stream event, a
  :class:`~streams.faust_compat.FetchedBatch`, through an in-memory channel
  (:meth:`~streams.faust_compat.DetectApp.deliver_batches`; per-record events cost more
  than the rules). It hands the batch (values, coordinates, Kafka keys: a record keyed other
  than by its key field is refused there) to :meth:`TopicDetector.process`
  (:mod:`ess.detection.detector`, pure), sends the detections as ``TripCommand`` s and waits for
  the broker's ack, writes the changed states (once per key per batch), sends dead letters, and
  only then acks the batch. Any exception is caught inside the loop: an exception escaping a Faust
  agent would stop it (faust-streaming #315; docs/faust.md).
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

The ESS epoch comes from an :class:`~ess.roles.detect.epoch.EpochFollower` (every worker follows
``ess.state``), and outputs go through a :class:`~ess.roles.detect.outputs.Outputs` (ESS's own
producers), both injected. What was done is reported to a
:class:`~ess.roles.detect.observe.DetectObserver` (metrics, ``/status``, ``/healthz``) once it is
done: trips after the broker's ack, a batch after its ack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.partitioner import murmur2
from loguru import logger

from ess.clock import Clock, SystemClock
from ess.detection.detector import BatchOutcome, TopicDetector, build_detectors
from ess.roles.detect.observe import DetectObserver
from ess.roles.detect.settings import DetectorSettings
from ess.rules.base import Context, trip_command
from schemas import DeadLetter, TripCommand
from streams.faust_compat import (
    DetectApp,
    DetectTable,
    LeanMonitor,
    ack_batch,
    consumer_urls,
    current_batch,
)

__all__ = ["ContextSource", "Outputs", "create_app"]


class ContextSource(Protocol):
    """Where rules get the ESS epoch from (:class:`~ess.roles.detect.epoch.EpochFollower`)."""

    @property
    def context(self) -> Context: ...


class Outputs(Protocol):
    """Where trips and dead letters go."""

    async def send_trips(self, commands: Sequence[TripCommand]) -> None:
        """Deliver every command (broker-acknowledged) before returning."""
        ...

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...


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


async def _perform(
    out: BatchOutcome,
    lane: _Lane,
    outputs: Outputs,
    observer: DetectObserver,
    fetched_at: float | None,
) -> None:
    if out.detections:
        commands = [trip_command(detection) for detection in out.detections]
        await outputs.send_trips(commands)
        observer.trips_sent(out.detections, fetched_at)
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
    observer: DetectObserver | None = None,
) -> Any:
    """A configured, unstarted Faust app (a :class:`~streams.faust_compat.DetectApp`).

    ``observer`` receives what the agents and the timer did (a fresh one when omitted); it is
    attached to the app (``app.ess_observer``) to follow its consumer.

    Every topic of ``settings.registry`` must already exist with its partition count
    (:func:`ess.kafka.broker.ensure_topics`; :func:`streams.runner.run_detector` does it): Faust
    only creates its own internal topics (changelogs, the leader topic), and a source topic
    auto-created by the broker on first use would get the broker's default count.
    """
    clock = clock or SystemClock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates its own folder only
    if observer is None:
        observer = DetectObserver(settings.app_id, wedged_after=settings.wedged_after_sec)
    registry = settings.registry
    input_partitions = {spec.partitions for spec in registry.inputs()}
    app = DetectApp(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap.split(",")],
        # The consumer's transport is DetectTransport, picked by its URL scheme; the producer
        # (trips go through ESS's own, Faust's carries changelogs) stays on kafka://.
        broker_consumer=consumer_urls(settings.bootstrap),
        store=settings.store,
        datadir=str(settings.data_dir / f"{settings.app_id}-data"),
        autodiscover=False,
        web_enabled=settings.web_enabled,
        # The embedded broker holds JoinGroup for half the session and keeps a departed member
        # until its session expires: short sessions make joins and takeovers fast (figures:
        # BENCHMARKS.md; docs/embedded-broker.md, "Group joins").
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        producer_linger=settings.producer_linger_ms / 1000,
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
    app.ess_batch_max = settings.batch_max

    lanes: list[_Lane] = []
    for detector in (
        detectors
        if detectors is not None
        else build_detectors(settings.detection, settings.registry)
    ):
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
        app.agent(app.deliver_batches(topic), name=f"detect-{detector.logical}")(
            _agent_body(app, lane, outputs=outputs, epoch=epoch, clock=clock, observer=observer)
        )

    ticking = [lane for lane in lanes if lane.detector.ticks]
    if ticking:
        app.timer(interval=settings.tick_interval_sec, name="detect-silence-tick")(
            _tick_body(app, ticking, outputs, epoch, clock, observer)
        )
    app.ess_lanes = lanes
    observer.attach(
        app,
        [lane.detector.topic for lane in lanes],
        [rule.name for lane in lanes for rule in lane.detector.rules],
    )
    app.ess_observer = observer
    return app


def _agent_body(
    app: Any,
    lane: _Lane,
    *,
    outputs: Outputs,
    epoch: ContextSource,
    clock: Clock,
    observer: DetectObserver,
) -> Callable[[Any], Any]:
    detector = lane.detector

    async def detect(stream: Any) -> None:
        """One stream event is a :class:`~streams.faust_compat.FetchedBatch`: this topic's
        records from one consumer fetch, at most ``batch_max`` of them
        (:meth:`~streams.faust_compat.DetectApp.deliver_batches`). At idle a fetch holds the
        one new record, so it is processed at once (no batching timer in the trip path);
        under load a fetch holds whatever arrived meanwhile.

        Per-record Faust events cost more delivery machinery than the rules themselves
        (figures: BENCHMARKS.md); ``stream.take_events`` batches close on a timer that adds to
        every idle trip. Why the body catches everything: docs/faust.md.

        A batch is acknowledged (its offsets may be committed) only once its trips are
        acknowledged by the broker and its states are in the table.
        """
        async for batch in stream:
            if not current_batch(app, batch):
                continue  # fetched before a rebalance: refetched from the committed offset
            out: BatchOutcome | None = None
            try:
                async with lane.lock:
                    out = detector.process(
                        batch.records, lane.table.data, epoch.context, clock.now()
                    )
                    await _perform(out, lane, outputs, observer, batch.fetched_at)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never let an exception escape: the agent would stop. What can land here is
                # a bug (process() refuses bad input, trips are retried until delivered):
                # logged, and the batch is acked so the worker goes on.
                out = None
                logger.bind(topic=detector.topic, events=len(batch.records)).exception(
                    "detection batch failed"
                )
            ack_batch(app, batch)
            observer.batch_done(detector, len(batch.records), batch.offsets, batch.fetched_at, out)

    return detect


def _tick_body(  # noqa: PLR0917 - private; create_app's one call passes its parts
    app: Any,
    lanes: Sequence[_Lane],
    outputs: Outputs,
    epoch: ContextSource,
    clock: Clock,
    observer: DetectObserver,
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
                    await _perform(out, lane, outputs, observer, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                observer.tick_failed(lane.detector.topic)
                logger.bind(topic=lane.detector.topic).exception("silence tick failed")

    return tick

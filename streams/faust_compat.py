"""Small subclasses of Faust internals, each fixing a documented problem (docs/faust.md).

1. One stream event per fetched batch (:class:`DetectConsumer`, :meth:`DetectApp.deliver_batches`,
   :class:`FetchedBatch`): a copy of Faust 0.15.3's ``Consumer._drain_messages``/``getmany``.
2. A configurable consumer fetch wait (:class:`DetectConsumerThread`); Faust hard-codes 1500 ms.
3. Table recovery up to the fetch high watermark (:meth:`DetectConsumerThread._highwaters`).
4. Table writes outside stream iteration, flushed once per key per commit (:class:`DetectTable`).
5. No per-event monitor bookkeeping (:class:`LeanMonitor`).

:class:`DetectTransport` reaches Faust through its own seams: this module registers it in
Faust's transport registry under the URL scheme :data:`TRANSPORT_SCHEME`, and
:func:`streams.app.create_app` names that scheme in ``broker_consumer`` only (the producer
keeps ``kafka://``). The Faust, mode and aiokafka members relied on are pinned by source
fingerprint in ``tests/streams/test_faust_drift.py``; pyproject.toml pins faust-streaming
exactly. Faust has no typed API here, so ``Any`` stays in this module.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final, cast

import aiokafka
import faust
import orjson
from faust.sensors.monitor import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from loguru import logger
from mode.utils.futures import notify

from ess.detection.detector import RawRecord

__all__ = [
    "TRANSPORT_SCHEME",
    "DetectApp",
    "DetectTable",
    "FetchedBatch",
    "LeanMonitor",
    "ack_batch",
    "consumer_urls",
    "current_batch",
]

#: The broker URL scheme of :class:`DetectTransport` in Faust's transport registry. A scheme
#: of its own: ``kafka://`` keeps meaning Faust's transport for every other app and client.
TRANSPORT_SCHEME: Final = "ess-kafka"
#: How long the high-watermark probe may take per recovery round before it settles for the
#: listed end offsets (what Faust would have used anyway).
_PROBE_TIMEOUT_S: Final = 5.0
#: A changelog flush yields to the event loop after this many keys.
_FLUSH_SLICE: Final = 256


async def fetched_highwaters(
    bootstrap: list[str], listed: dict[Any, int], auth: dict[str, Any] | None = None
) -> dict[Any, int]:
    """``max(listed end, fetch high watermark)`` per partition, from a throwaway group-less
    consumer that fetches once near the listed end of each partition. ``auth``: the app's
    TLS/SASL keywords (``credentials_to_aiokafka_auth``), so the probe connects like Faust."""
    probe = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id="ess-detect-highwater",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=1024,
        **(auth or {}),
    )
    await probe.start()
    try:
        tps = [aiokafka.TopicPartition(tp.topic, tp.partition) for tp in listed]
        probe.assign(tps)
        for tp, original in zip(tps, listed, strict=True):
            probe.seek(tp, max(listed[original] - 1, 0))
        found: dict[Any, int] = {}
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            while len(found) < len(tps):
                await probe.getmany(timeout_ms=20)
                for tp, original in zip(tps, listed, strict=True):
                    if original not in found:
                        highwater = probe.highwater(tp)
                        if highwater is not None:
                            found[original] = max(listed[original], highwater)
        return found
    except TimeoutError:
        logger.warning("high watermark probe timed out; using listed end offsets")
        return dict(listed)
    finally:
        await probe.stop()


class DetectConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with a configurable fetch wait and true highwaters."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
        consumer._fetch_max_wait_ms = cast("DetectApp", self.app).ess_fetch_max_wait_ms
        return consumer

    async def _highwaters(self, partitions: Any) -> Any:
        listed = dict(await super()._highwaters(partitions))
        if self.consumer.in_transaction or not listed:
            return listed
        bootstrap = faust_aiokafka.server_list(
            self.transport.url, faust_aiokafka.Transport.default_port
        )
        auth = dict(
            faust_aiokafka.credentials_to_aiokafka_auth(
                self.app.conf.broker_credentials, self.app.conf.ssl_context
            )
        )
        truer = await fetched_highwaters(bootstrap, listed, auth)
        raised = {tp: (listed[tp], end) for tp, end in truer.items() if end != listed[tp]}
        if raised:
            logger.bind(
                corrected={f"{tp.topic}[{tp.partition}]": v for tp, v in raised.items()}
            ).info("end offsets under-reported by the broker; using fetch high watermarks")
        return truer


class DetectConsumer(faust_aiokafka.Consumer):
    """Faust's consumer that delivers registered topics a fetch at a time and flushes
    :class:`DetectTable` changelogs before each commit."""

    def _new_consumer_thread(self) -> DetectConsumerThread:
        return DetectConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's ``Consumer._drain_messages`` + ``Consumer.getmany`` (0.15.3), except that
        the records of a topic in ``app.ess_batch_routes`` become :class:`FetchedBatch` es
        (one per topic per fetch, at most ``app.ess_batch_max`` records each) put into that
        topic's channel once the whole fetch has been read.

        Kept from Faust, per fetch: records of paused or no longer assigned partitions are
        dropped, a fetch is abandoned when the consumer generation changes or the flow is
        suspended (rebalance), and a fetch while the flow is inactive seeks back to the
        committed offsets. Per record: skip records below the read offset (a seek happened),
        register gaps so commits can pass them, advance the read offset. Per batch instead of
        per record: tracking (a rebalance waits for tracked batches to be acked) and the ack
        (:func:`ack_batch`). Dropped: the monitor's end-offset and message-in sensors (no-ops
        in :class:`LeanMonitor`), and the commit every ``broker_commit_every`` records from
        this loop, which stopped fetching until the changelog flush and the offset commit
        were done; commits come from Faust's timer (``broker_commit_interval``, 2.8 s).

        A put is abandoned, like Faust's per-record delivery, when a rebalance suspends the
        flow; those records are never acked and are fetched again from the committed offset.
        """
        routes = cast("DetectApp", self.app).ess_batch_routes
        if not routes:
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    await self._seek_back()
                    continue
                for batch in await self._split_fetch(records, active, routes):
                    # A FetchedBatch stands in for the Message objects of its records.
                    self._unacked_messages.add(batch)  # type: ignore[arg-type]
                    await self.wait_first(routes[batch.topic].put(batch), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _split_fetch(
        self, records: Any, active: Any, routes: dict[str, Any]
    ) -> list[FetchedBatch]:
        """One fetch's records: routed topics' into batches (returned), the others delivered
        one by one through Faust's callback (changelogs during recovery, for instance)."""
        batch_max = cast("DetectApp", self.app).ess_batch_max
        read_offsets = self._read_offset
        generation = self.app.consumer_generation_id
        done: list[FetchedBatch] = []
        filling: dict[str, FetchedBatch] = {}
        for tp, fetched in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                break
            if not (active is None or tp in active or tp in self._buffered_partitions):
                continue
            topic = tp.topic
            routed = topic in routes
            acking = self.app.topics.acks_enabled_for(topic)
            read = read_offsets[tp]
            for record in fetched:
                offset = record.offset
                if read is not None and offset < read:
                    continue  # below a seek: Faust drops these too
                if read and offset - read > 1 and acking:
                    await self._add_gap(tp, read + 1, offset)
                if routed:
                    batch = filling.get(topic)
                    if batch is None:
                        batch = filling[topic] = FetchedBatch(topic, generation)
                    batch.add(tp, record)
                    if len(batch.records) >= batch_max:
                        done.append(filling.pop(topic))
                else:
                    message = self._to_message(tp, record)
                    await self.wait_first(self.callback(message), self.suspend_flow.wait())
                read = read_offsets[tp] = offset
        done.extend(filling.values())
        return done

    async def _seek_back(self) -> None:
        """What Faust's ``getmany`` does for a fetch while the flow is inactive."""
        try:
            await self.perform_seek()
        except Exception as exc:
            logger.warning(f"seek back to committed offsets failed: {exc!r}")

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        # Every commit (periodic, on rebalance, on stop) passes here before Faust flushes its
        # producer and commits: the changelog records of every processed record are queued
        # on that producer first, so they are on the broker before the offsets are.
        for table in self.app.tables.values():
            if isinstance(table, DetectTable):
                await table.flush()
        result: bool = await super()._commit_offsets(
            offsets, start_new_transaction=start_new_transaction
        )
        return result


class DetectTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`DetectConsumer` as its consumer; selected by a
    ``broker_consumer`` URL of scheme :data:`TRANSPORT_SCHEME`."""

    Consumer = DetectConsumer


# Faust builds an app's consumer transport with ``transport.by_url(broker_consumer[0])``.
TRANSPORTS[TRANSPORT_SCHEME] = f"{__name__}:DetectTransport"


class LeanMonitor(Monitor):
    """Faust's monitor without its per-event bookkeeping (see the module notes)."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None


class DetectTable(faust.Table[str, Any]):
    """A table whose writes are local at once and reach the changelog in coalesced flushes.

    :meth:`put` sets a key in memory and marks it dirty; :meth:`flush` sends one changelog
    record per dirty key. :class:`DetectConsumer` flushes every such table right before each
    offset commit, so the changelog always covers every committed record (at-least-once, as
    with ``Table.__setitem__``), while a key updated by many records between two commits
    (every 2.8 s by default) costs one changelog record instead of many. That also keeps the
    changelog short, and with it table recovery on a broker that never compacts.

    Changelog records go straight to Faust's aiokafka producer, JSON key and value (what
    ``Table.__setitem__`` would send and recovery decodes). ``send_changelog`` would take its
    partition from ``current_event()``, unset outside a per-event stream iteration (#300,
    #497), and is slow per write (``FutureMessage``/``ProducerBuffer``; figures: BENCHMARKS.md).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._dirty: set[str] = set()
        self._metadata_known = False

    def put(self, key: str, value: Any) -> None:
        """Set ``key`` locally; its changelog record is sent by the next :meth:`flush`.
        ``value`` must have ``partition`` and ``stored()`` (a
        :class:`ess.detection.detector.Slot`)."""
        self.data[key] = value
        self._dirty.add(key)

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    async def flush(self) -> int:
        """Queue the changelog record of every dirty key on Faust's producer; returns how
        many. Faust's commit flushes that producer before it commits the offsets.

        Records are appended to one aiokafka batch per changelog partition and sent with
        ``send_batch`` (far cheaper per record than ``send``; figures: BENCHMARKS.md), and the loop
        yields every ``_FLUSH_SLICE`` keys: a flush after a busy commit interval covers
        thousands of keys, and must not stall the agents (and every trip) while it runs.
        """
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return 0
        faust_producer: Any = self.app.producer
        producer = faust_producer._ensure_producer()  # the aiokafka producer
        topic = self.changelog_topic_name
        if not self._metadata_known:
            await producer.partitions_for(topic)  # send_batch needs the partition metadata
            self._metadata_known = True
        data = self.data
        batches: dict[int, Any] = {}
        sent = 0
        try:
            for key in dirty:
                value = data.get(key)
                if value is None or isinstance(value, dict):
                    continue  # deleted, or (re)loaded from the changelog and unchanged since
                partition = value.partition
                record = {"key": orjson.dumps(key), "value": orjson.dumps(value.stored())}
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(**record, timestamp=None) is None:  # full: send, start anew
                    await producer.send_batch(batch, topic, partition=partition)
                    batch = batches[partition] = producer.create_batch()
                    batch.append(**record, timestamp=None)  # a new batch takes any first record
                sent += 1
                if sent % _FLUSH_SLICE == 0:
                    await asyncio.sleep(0)
            for partition, batch in batches.items():
                await producer.send_batch(batch, topic, partition=partition)
        except BaseException:
            # Not all of them left: keep every key dirty for the next flush (resending a
            # state is harmless; a commit without it would lose it on restart).
            self._dirty |= dirty
            raise
        return sent


class FetchedBatch:
    """The records of one topic from one consumer fetch, delivered to its agent as one stream
    value. It stands in for Faust's per-record ``Message`` in the consumer's bookkeeping: it
    is tracked while unacknowledged (a rebalance waits for it, ``wait_empty``) and acked
    once, for all its offsets (:func:`ack_batch`)."""

    __slots__ = (
        "__weakref__",
        "acked",
        "fetched_at",
        "generation_id",
        "offsets",
        "records",
        "topic",
    )

    #: Read by Faust's ``wait_empty`` when it logs what it is still waiting for.
    refcount = 1

    def __init__(self, topic: str, generation_id: int) -> None:
        self.topic = topic
        self.generation_id = generation_id
        #: When the fetch was read (monotonic seconds): the start of the fetch-to-trip and
        #: batch latencies (:mod:`ess.roles.detect.observe`).
        self.fetched_at = time.monotonic()
        self.records: list[RawRecord] = []
        self.offsets: dict[Any, list[int]] = {}
        self.acked = False

    def add(self, tp: Any, record: Any) -> None:
        """Append an aiokafka ``ConsumerRecord`` of partition ``tp``, with its Kafka key:
        the detector checks it against the record's key field."""
        self.records.append(
            RawRecord(record.partition, record.offset, record.value, record.timestamp, record.key)
        )
        offsets = self.offsets.get(tp)
        if offsets is None:
            offsets = self.offsets[tp] = []
        offsets.append(record.offset)

    def __repr__(self) -> str:
        return f"FetchedBatch({self.topic!r}, {len(self.records)} records)"


def current_batch(app: Any, batch: FetchedBatch) -> bool:
    """Whether a delivered batch still belongs to the current assignment: Faust's stream
    skips an event fetched before a rebalance (flow suspended, or another consumer
    generation) the same way; its records are fetched again from the committed offset."""
    return bool(app.flow_control.is_active() and batch.generation_id == app.consumer_generation_id)


def ack_batch(app: Any, batch: FetchedBatch) -> None:
    """Acknowledge every offset of ``batch`` at once: what ``Consumer.ack`` does per message
    (offsets at or after the committed one join the acked list that commits advance over),
    under the same lock, then wake a rebalance waiting for in-flight records."""
    consumer = app.consumer
    with ack_lock:
        if batch.acked:
            return
        batch.acked = True
        if app.topics.acks_enabled_for(batch.topic):
            newly = 0
            for tp, offsets in batch.offsets.items():
                committed = consumer._committed_offset[tp]
                index = consumer._acked_index[tp]
                acked = consumer._acked[tp]
                for offset in offsets:
                    if (committed is None or offset >= committed) and offset not in index:
                        index.add(offset)
                        acked.append(offset)
                        newly += 1
            consumer._n_acked += newly
        consumer._unacked_messages.discard(batch)
        notify(consumer._waiting_for_ack)


class DetectApp(faust.App):
    """A Faust app whose Kafka consumer is :class:`DetectConsumer`: construct it with
    ``broker_consumer`` URLs of scheme :data:`TRANSPORT_SCHEME` (:func:`consumer_urls`).

    ``ess_fetch_max_wait_ms`` is read when the consumer is created (at start).
    """

    ess_fetch_max_wait_ms: int = 10
    #: Most records in one :class:`FetchedBatch`.
    ess_batch_max: int = 2000
    #: The detection lanes (detector, table, lock per input topic), for tests and tools.
    ess_lanes: list[Any]
    #: What the agents report to (:class:`ess.roles.detect.observe.DetectObserver`).
    ess_observer: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Topic name -> the channel its fetched batches go to.
        self.ess_batch_routes: dict[str, Any] = {}

    def deliver_batches(self, topic: Any, *, maxsize: int = 4) -> Any:
        """Subscribe to ``topic`` and deliver its records as lists, one per fetch, through
        the returned in-memory channel (which an agent iterates). ``maxsize`` batches may
        wait in the channel before the consumer stops fetching (back-pressure)."""
        if not isinstance(self.transport, DetectTransport):
            # Faust's own consumer would never fill the channel: fail here, not silently.
            raise ValueError(
                f"batch delivery needs broker_consumer URLs of scheme {TRANSPORT_SCHEME}:// "
                f"(streams.faust_compat.consumer_urls), got {self.conf.broker_consumer}"
            )
        channel = self.channel(maxsize=maxsize)
        for name in topic.topics:
            self.ess_batch_routes[name] = channel
        # Registered with the conductor like an agent's topic: subscribed, acks enabled,
        # co-partitioned with its table by the assignor.
        self.topics.add(topic)
        return channel


def consumer_urls(bootstrap: str) -> list[str]:
    """``broker_consumer`` for a :class:`DetectApp` from a ``host:port,...`` bootstrap
    string: the same servers, under :data:`TRANSPORT_SCHEME`."""
    return [f"{TRANSPORT_SCHEME}://{server.strip()}" for server in bootstrap.split(",")]

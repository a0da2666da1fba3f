"""Small, measured subclasses of Faust internals. Each one fixes a documented problem.

Faust has no typed API here, so ``Any`` stays in this module.

1. **Consumer fetch wait** (:class:`DetectConsumerThread`). Faust passes the literal
   ``fetch_max_wait_ms=1500`` in ``faust/transport/drivers/aiokafka.py``
   (``AIOKafkaConsumerThread._create_worker_consumer``), and no setting reaches it. The
   embedded Tansu broker holds an idle fetch for the whole wait, and aiokafka allows one fetch
   in flight per node, so an untouched worker sees a record ~0.5 s late at idle and ~1.4 s at
   1k records/s (``shared/notes/faust-on-embedded-broker.md`` section 2). The subclass sets
   the value on the consumer it builds; aiokafka reads it when its Fetcher starts. 5-20 ms
   all give ~10 ms idle detection latency.
2. **High watermarks** (:meth:`DetectConsumerThread._highwaters`). Table recovery stops at
   ``end_offsets()``; Tansu 0.6.0 answers it with "base offset of the last batch + 1", so a
   restarted worker could stop replaying a changelog early and lose keys (measured: 2 of 12
   restarts lost 7-11 of 10k keys). The subclass also reads the high watermark of a real
   fetch response and takes the larger value, which is right on Kafka and on Tansu.
3. **Per-event sensors** (:class:`LeanMonitor`). Faust's ``Monitor`` records four per-event
   statistics that only its web views show; no-op versions measured +5-10 % throughput.
4. **Table writes outside stream iteration** (:class:`DetectTable`). ``Table.__setitem__``
   takes the changelog partition from ``current_event()``, which is unset inside
   ``stream.take()`` batches and timers (faust-streaming #300, #497: "Cannot modify table key
   from outside of stream iteration"). :meth:`DetectTable.write` takes the partition
   explicitly; writes are coalesced per key until the next offset commit (measured: the
   first benchmark run, with ``send_changelog`` per key per batch, managed 2.8k records/s).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiokafka
import faust
import orjson
from faust.sensors.monitor import Monitor
from faust.transport.drivers import aiokafka as faust_aiokafka
from loguru import logger

__all__ = ["DetectApp", "DetectTable", "LeanMonitor"]

#: How long the high-watermark probe may take per recovery round before it settles for the
#: listed end offsets (what Faust would have used anyway).
_PROBE_TIMEOUT_S: Final = 5.0


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
        consumer._fetch_max_wait_ms = int(getattr(self.app, "ess_fetch_max_wait_ms", 1500))
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
    """Faust's consumer that flushes :class:`DetectTable` changelogs before each commit."""

    def _new_consumer_thread(self) -> DetectConsumerThread:
        return DetectConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
    Consumer = DetectConsumer


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
    #497), and costs ~250 us per write through ``FutureMessage``/``ProducerBuffer``.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._dirty: set[str] = set()

    def put(self, key: str, value: Any) -> None:
        """Set ``key`` locally; its changelog record is sent by the next :meth:`flush`.
        ``value`` must have ``partition`` and ``stored()`` (a :class:`streams.detect.Slot`)."""
        self.data[key] = value
        self._dirty.add(key)

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    async def flush(self) -> int:
        """Send the changelog record of every dirty key; returns how many."""
        dirty, self._dirty = self._dirty, set()
        topic = self.changelog_topic_name
        send = self.app.producer.send
        data = self.data
        for key in dirty:
            value = data.get(key)
            if value is None or isinstance(value, dict):
                continue  # deleted, or (re)loaded from the changelog and unchanged since
            await send(
                topic, orjson.dumps(key), orjson.dumps(value.stored()), value.partition, None, None
            )
        return len(dirty)


class DetectApp(faust.App):
    """A Faust app whose Kafka consumer is :class:`DetectConsumer`.

    ``ess_fetch_max_wait_ms`` is read when the consumer is created (at start).
    """

    ess_fetch_max_wait_ms: int = 10
    #: The detection lanes (detector, table, lock per input topic), for tests and tools.
    ess_lanes: list[Any]

    def _new_transport(self) -> Any:
        return DetectTransport(self.conf.broker_consumer, self)

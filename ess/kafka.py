"""Thin aiokafka constructors and a read-to-the-end helper, correct on Kafka and on Tansu.

Every ESS component builds its clients here, so the broker-specific knobs live in one place.
The defaults are chosen for the embedded Tansu 0.6.0 broker *and* stay correct on real Kafka;
the measurements behind them are in ``shared/notes/faust-on-embedded-broker.md``:

* Tansu does not answer a waiting fetch early when data arrives: a fetch on an idle partition
  is held for its full ``fetch_max_wait_ms``, so delivery latency is spread from 0 to about
  half that wait. Consumers therefore wait :data:`FETCH_MAX_WAIT_MS` (10 ms), not aiokafka's
  500 ms (measured: round trip p50 3 ms at 5 ms vs 128 ms at 500 ms).
* Tansu lacks idempotent and transactional producers (``InitProducerId`` fails), so producers
  run with ``enable_idempotence=False``; ESS deduplicates in the domain instead.
* Tansu answers ``ListOffsets`` (``end_offsets()``) with the base offset of the last batch
  + 1, ignoring every record after the first in a multi-record batch. See
  :func:`producer` (``read_to_end_safe``) and :func:`read_to_end`.
* Tansu makes ``JoinGroup`` wait ``session_timeout / 2``; 6 s sessions keep a group join at
  about 3 s (6 s is also real Kafka's default minimum session timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

__all__ = [
    "FETCH_MAX_WAIT_MS",
    "HEARTBEAT_INTERVAL_MS",
    "SESSION_TIMEOUT_MS",
    "UnknownTopicError",
    "consumer",
    "producer",
    "read_to_end",
]

#: Consumer fetch wait. 5-20 ms all give ~10 ms idle detection latency on Tansu; 10 ms costs
#: roughly 0.1 core (client plus broker) per idle consumer. Real Kafka answers a waiting fetch
#: as soon as data arrives, so there the value only sets the idle polling rate.
FETCH_MAX_WAIT_MS: Final = 10
SESSION_TIMEOUT_MS: Final = 6_000
HEARTBEAT_INTERVAL_MS: Final = 1_000

#: aiokafka's ``max_batch_size`` for :func:`producer` with ``read_to_end_safe``. aiokafka always
#: admits the first record into an empty batch, and admits no second one into a batch over
#: this size, so every produce batch holds exactly one record.
_ONE_RECORD_PER_BATCH: Final = 1

#: How long one poll of :func:`read_to_end` waits for records before it re-checks the end.
_POLL_MS: Final = 100


class UnknownTopicError(LookupError):
    """The topic or partition does not exist (and was deliberately not auto-created)."""


def producer(
    bootstrap: str, *, read_to_end_safe: bool = False, **overrides: Any
) -> AIOKafkaProducer:
    """An unstarted producer of ``bytes`` keys and values, with ``acks="all"``.

    ``linger_ms`` is 2: under load that batches enough to free CPU (measured p50 under 1k
    records/s: 40 ms at 0 ms linger, 24 ms at 2 ms) and costs at most 2 ms when idle.

    ``read_to_end_safe=True`` is for topics that someone later reads "to the end" by offset
    (``ess.state``, ``ess.commands``, changelogs): every record is sent as its own batch.
    Tansu 0.6.0 reports the end offset of a partition as *last batch's base offset + 1*; with
    one-record batches that is the true end (measured: 2,000 concurrent sends, reported end
    2,000, where default batching reported 1 after 5, 37 or 200 records; ``linger_ms=0``
    alone does not help, since records sent while a request is in flight still share a
    batch). It costs throughput (about 3.7k records/s on the embedded broker), which these
    low-volume topics do not need, and it is harmless on real Kafka.

    ``overrides`` are passed to :class:`aiokafka.AIOKafkaProducer` and win over the defaults.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "ess",
        "acks": "all",
        # Tansu has no InitProducerId; and aiokafka would turn this on by default with acks=all.
        "enable_idempotence": False,
        "linger_ms": 2,
    }
    if read_to_end_safe:
        if overrides.get("max_batch_size", _ONE_RECORD_PER_BATCH) != _ONE_RECORD_PER_BATCH:
            raise ValueError(
                "read_to_end_safe=True needs one record per batch; drop max_batch_size"
            )
        # A batch of one is never worth lingering for.
        config.update(max_batch_size=_ONE_RECORD_PER_BATCH, linger_ms=0)
    config.update(overrides)
    return AIOKafkaProducer(**config)


def consumer(
    bootstrap: str, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """An unstarted consumer of ``bytes``, subscribed to ``topics`` (if any).

    Defaults: read from the earliest offset when the group has no committed offset (ESS must
    not skip records it has never seen), no auto-commit (commit after processing, so a crash
    re-delivers rather than loses), a 10 ms fetch wait (see the module notes), and 6 s / 1 s
    session / heartbeat so a group join on Tansu takes about 3 s (Tansu holds JoinGroup for
    half the session timeout: 5 s with aiokafka's default 10 s session, 30 s with Faust's).

    ``group_id`` is required on purpose: ``None`` (no group, no commits, every partition, or
    manual ``assign``) and a named group behave very differently. ``overrides`` are passed to
    :class:`aiokafka.AIOKafkaConsumer` and win over the defaults.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "ess",
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
    }
    config.update(overrides)
    return AIOKafkaConsumer(*topics, **config)


async def read_to_end(
    bootstrap: str,
    topic: str,
    partition: int = 0,
    *,
    start_offset: int = 0,
    # Own timeout rather than the caller's asyncio.timeout: the error reports progress.
    timeout: float = 30.0,  # noqa: ASYNC109
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of one partition, from its first offset (or ``start_offset``) to its
    current end, in order.

    "The end" is the high watermark carried by the fetch responses, not ``end_offsets()``:
    on Tansu 0.6.0 ``end_offsets()`` (ListOffsets) under-reports after a multi-record batch,
    while fetches return every record and a correct high watermark. Reading stops once a poll
    comes back empty *and* the position has reached both the fetched high watermark and the
    listed end offset, which is right on real Kafka and on Tansu alike. Records appended
    while reading may or may not be included.

    Raises :class:`UnknownTopicError` for a missing topic or partition without creating it
    (Tansu would auto-create a 4-partition topic), and :class:`TimeoutError` after
    ``timeout`` seconds.
    """
    tp = TopicPartition(topic, partition)
    reader = consumer(bootstrap, group_id=None, client_id="ess-reader")
    await reader.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            # topics() asks for all topics' metadata, which never auto-creates one.
            if topic not in await reader.topics():
                raise UnknownTopicError(f"topic {topic} does not exist")
            partitions = reader.partitions_for_topic(topic) or set()
            if partition not in partitions:
                raise UnknownTopicError(
                    f"topic {topic} has no partition {partition} (it has {len(partitions)})"
                )
            reader.assign([tp])
            if start_offset > 0:
                reader.seek(tp, start_offset)
            else:
                await reader.seek_to_beginning(tp)
            listed_end: int = (await reader.end_offsets([tp]))[tp]
            while True:
                batch = (await reader.getmany(tp, timeout_ms=_POLL_MS)).get(tp, [])
                if batch:
                    records.extend(batch)
                    continue
                highwater: int | None = reader.highwater(tp)
                if highwater is not None and await reader.position(tp) >= max(
                    highwater, listed_end
                ):
                    return records
    except TimeoutError as exc:
        raise TimeoutError(
            f"reading {topic}[{partition}] to its end took over {timeout:g}s "
            f"({len(records)} records read)"
        ) from exc
    finally:
        await reader.stop()

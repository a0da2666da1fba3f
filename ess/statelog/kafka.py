"""``ess.state`` on Kafka: the :class:`~ess.statelog.base.StateLog` adapter and the follower
every long-running reader uses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ess.core.reader import RawRecord
from ess.kafka.clients import KafkaSecurity, consumer, follow_partition, producer, read_to_end
from schemas import TopicRegistry

__all__ = ["STATE_KEY", "KafkaStateLog", "follow_state"]

#: Kafka key of every state-log record: one partition, so the key only documents intent.
STATE_KEY = b"ess"


class KafkaStateLog:
    """``ess.state`` on Kafka. Appends go one record per batch with ``acks=all`` and are
    awaited, so an entry is on the broker before anyone acts on it (and so that "read to the
    end" works on the embedded broker, see :func:`ess.kafka.clients.producer`).

    ``idempotent=True`` makes the broker drop a producer retry's second copy (where the
    broker supports idempotent producers; the embedded broker does not, see
    :func:`ess.kafka.clients.supports_idempotence`). Readers recognise such a copy either way.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        security: KafkaSecurity | None = None,
        idempotent: bool = False,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = security
        self.idempotent = idempotent
        self._producer: AIOKafkaProducer | None = None
        #: Lists the end offset (:meth:`end_offset`); opened on first use, kept until stop.
        self._lister: AIOKafkaConsumer | None = None
        self._tp = TopicPartition(topic, 0)

    async def start(self) -> None:
        if self._producer is None:
            self._producer = producer(
                self.bootstrap,
                read_to_end_safe=True,
                security=self.security,
                enable_idempotence=self.idempotent,
            )
            await self._producer.start()

    async def stop(self) -> None:
        producer_, self._producer = self._producer, None
        lister, self._lister = self._lister, None
        try:
            if producer_ is not None:
                await producer_.stop()
        finally:
            if lister is not None:
                await lister.stop()

    async def read(self, from_offset: int = 0) -> list[RawRecord]:
        records = await read_to_end(
            self.bootstrap, self.topic, start_offset=from_offset, security=self.security
        )
        return [RawRecord(record.offset, record.value) for record in records]

    async def append(self, value: bytes) -> int:
        if self._producer is None:
            raise RuntimeError("KafkaStateLog.start() was not called")
        metadata = await self._producer.send_and_wait(self.topic, value, key=STATE_KEY)
        return int(metadata.offset)

    async def end_offset(self) -> int:
        """ListOffsets of the partition. Enough to see a new record even on Tansu, which
        under-reports only *within* a multi-record batch: every append here is a batch of
        one, and any batch at or after a reader's position moves the reported end past it.
        The client is kept, so only the first call pays for the connection and metadata."""
        if self._lister is None:
            lister = consumer(
                self.bootstrap, group_id=None, client_id="ess-state-end", security=self.security
            )
            try:
                await lister.start()
            except BaseException:
                # A consumer whose start failed half-way still holds connections.
                with contextlib.suppress(Exception):
                    await lister.stop()
                raise
            lister.assign([self._tp])
            self._lister = lister
        ends = await self._lister.end_offsets([self._tp])
        return int(ends[self._tp])

    async def follow(
        self,
        from_offset: int = 0,
        *,
        on_fetch: Callable[[], None] | None = None,
        on_end: Callable[[int], None] | None = None,
    ) -> AsyncIterator[list[RawRecord]]:
        """Follow the partition with a consumer of its own (no group, no commits); the end
        reported is the high watermark of the same fetch response."""
        async for batch in follow_partition(
            self.bootstrap,
            self.topic,
            from_offset,
            security=self.security,
            on_fetch=on_fetch,
            on_end=on_end,
        ):
            yield [RawRecord(record.offset, record.value) for record in batch]

    async def __aenter__(self) -> KafkaStateLog:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


async def follow_state(
    bootstrap: str,
    registry: TopicRegistry,
    from_offset: int = 0,
    *,
    security: KafkaSecurity | None = None,
    on_fetch: Callable[[], None] | None = None,
) -> AsyncIterator[list[RawRecord]]:
    """Yield batches of state-log records from ``from_offset`` on, forever (the caller stops
    iterating); feed them to a :class:`StateLogReader`.

    ``on_fetch`` is called whenever the broker answered a fetch, with or without records: an
    empty batch alone cannot tell an idle log from an unreachable broker."""
    async for batch in follow_partition(
        bootstrap, registry.state.name, from_offset, security=security, on_fetch=on_fetch
    ):
        yield [RawRecord(record.offset, record.value) for record in batch]

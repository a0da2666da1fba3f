"""The state log ``ess.state``: append-only, one partition, one writer, read by everyone.

Storage is a port, :class:`StateLog` (raw bytes in, raw records out), with two adapters: the
Kafka topic (:class:`KafkaStateLog`) and a list (:class:`InMemoryStateLog`). Reading is one
class, :class:`StateLogReader`, that every reader uses: it verifies each record's seal and
chain and folds only authentic entries (:mod:`ess.core.reader` has the rules), and logs what
it refused. A reader never decodes a state-log record any other way.

A record that does not verify is *foreign*: never applied, logged CRITICAL, and it leaves
the reader untrusted until the command processor acknowledges it with a trip
(:attr:`StateLogReader.trusted`). A ``seq`` gap or a reset whose authorization does not
verify raises :class:`~ess.core.reader.LogBroken`: the reader must fail closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from loguru import logger

from ess.core.reader import (
    BatchReport,
    Folded,
    ForeignRecord,
    LogBroken,
    LoggedEntry,
    RawRecord,
    Trust,
    fold_log,
    fold_records,
)
from ess.kafka import KafkaSecurity, follow_partition, producer, read_to_end
from schemas import TopicRegistry

__all__ = [
    "STATE_KEY",
    "Folded",
    "ForeignRecord",
    "InMemoryStateLog",
    "KafkaStateLog",
    "LogBroken",
    "LoggedEntry",
    "RawRecord",
    "StateLog",
    "StateLogReader",
    "Trust",
    "fold_log",
    "follow_state",
]

#: Kafka key of every state-log record: one partition, so the key only documents intent.
STATE_KEY = b"ess"


class StateLog(Protocol):
    """Read and append ``ess.state`` as raw records (readers verify them)."""

    async def read(self, from_offset: int = 0) -> list[RawRecord]:
        """Records from ``from_offset`` to the current end."""
        ...

    async def append(self, value: bytes) -> int:
        """Append one record durably; returns its offset."""
        ...


class InMemoryStateLog:
    """A state log in a list: for tests and the single-process API."""

    def __init__(self, values: Sequence[bytes] = ()) -> None:
        self._values = list(values)

    async def read(self, from_offset: int = 0) -> list[RawRecord]:
        return [
            RawRecord(offset, value)
            for offset, value in enumerate(self._values)
            if offset >= from_offset
        ]

    async def append(self, value: bytes) -> int:
        self._values.append(value)
        return len(self._values) - 1


class KafkaStateLog:
    """``ess.state`` on Kafka. Appends go one record per batch with ``acks=all`` and are
    awaited, so an entry is on the broker before anyone acts on it (and so that "read to the
    end" works on the embedded broker, see :func:`ess.kafka.producer`).

    ``idempotent=True`` makes the broker drop a producer retry's second copy (where the
    broker supports idempotent producers; the embedded broker does not, see
    :func:`ess.kafka.supports_idempotence`). Readers recognise such a copy either way.
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
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

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

    async def __aenter__(self) -> KafkaStateLog:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


class StateLogReader:
    """Verifies and folds ``ess.state`` records as they are read; logs what it refuses.

    One per reader (it holds that reader's position). :meth:`feed` takes the next records in
    offset order and returns what it did; :attr:`folded` is where the reader stands.
    ``name`` labels log lines (``projector``, ``executor``...).
    """

    def __init__(self, trust: Trust, *, name: str, start: Folded | None = None) -> None:
        self.trust = trust
        self.name = name
        self.folded = start or Folded()

    @property
    def trusted(self) -> bool:
        """No foreign record is waiting for the processor's acknowledgement."""
        return self.folded.trusted

    def feed(self, records: Sequence[RawRecord]) -> BatchReport:
        """Fold ``records`` (the next ones in the log). Raises
        :class:`~ess.core.reader.LogBroken` when the log cannot be folded further."""
        fresh = [record for record in records if record.offset >= self.folded.next_offset]
        if not fresh:
            return BatchReport()
        try:
            self.folded, report = fold_records(fresh, self.trust, self.folded)
        except LogBroken as exc:
            logger.bind(reader=self.name, topic=self.trust.scope, error=str(exc)).critical(
                "state log cannot be folded further: failing closed"
            )
            raise
        self._log(report)
        return report

    def _log(self, report: BatchReport) -> None:
        for item in report.foreign:
            logger.bind(
                reader=self.name, topic=self.trust.scope, offset=item.offset, why=item.why
            ).critical("foreign record in the state log: not applied, log untrusted")
        for logged in report.skipped:
            logger.bind(
                reader=self.name,
                offset=logged.offset,
                seq=logged.entry.seq,
                kind=logged.entry.kind,
            ).warning("state log: authentic copy skipped (first writer wins)")
        for offset in report.acknowledged:
            logger.bind(reader=self.name, upto_offset=offset).warning(
                "foreign state-log records acknowledged by the command processor"
            )


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

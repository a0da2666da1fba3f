"""The state log ``ess.state``: append-only, one partition, one writer, read by everyone.

Readers fold it with :func:`fold_log`, which is tolerant in one way only: an entry whose
``seq`` was already applied is skipped (first writer wins). That covers a producer retry that
wrote an entry twice and a fenced zombie writer that raced the real one. A *gap* in ``seq``
is never papered over: it raises :class:`~ess.core.SequenceError`, and the reader must fail
closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from loguru import logger

from ess.core import INITIAL_STATE, EssState, SequenceError, evolve
from ess.kafka import KafkaSecurity, consumer, producer, read_to_end
from schemas import RecordError, StateEntry, TopicRegistry, decode, encode

#: Kafka key of every state-log record: one partition, so the key only documents intent.
STATE_KEY = b"ess"


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """An entry with where it sits in the log (``offset`` is the Kafka offset)."""

    offset: int
    entry: StateEntry


@dataclass(frozen=True, slots=True)
class Folded:
    """Result of folding a log: the state, the next offset to read, and what was skipped."""

    state: EssState
    next_offset: int
    skipped: tuple[LoggedEntry, ...] = ()
    max_command_offset: int | None = None


def fold_log(logged: Iterable[LoggedEntry], start: Folded | None = None) -> Folded:
    """Fold entries (in offset order) onto ``start`` (default: empty log).

    Duplicated ``seq`` values are skipped and reported; a gap raises ``SequenceError``.
    ``max_command_offset`` tracks the highest ``command_offset`` applied (the processor's
    resume point in ``ess.commands``).
    """
    state = start.state if start else INITIAL_STATE
    next_offset = start.next_offset if start else 0
    skipped = list(start.skipped) if start else []
    tracked = start.max_command_offset if start else None
    for item in logged:
        next_offset = item.offset + 1
        if item.entry.seq < state.next_seq:
            logger.bind(seq=item.entry.seq, offset=item.offset, kind=item.entry.kind).warning(
                "state log: duplicate seq skipped (first writer wins)"
            )
            skipped.append(item)
            continue
        state = evolve(state, item.entry)  # raises SequenceError on a gap
        if item.entry.command_offset is not None:
            tracked = max(tracked or 0, item.entry.command_offset)
    return Folded(state, next_offset, tuple(skipped), tracked)


class StateLog(Protocol):
    """Read and append ``ess.state``."""

    async def read(self, from_offset: int = 0) -> list[LoggedEntry]:
        """Entries from ``from_offset`` to the current end."""
        ...

    async def append(self, entry: StateEntry) -> int:
        """Append one entry durably; returns its offset."""
        ...


class InMemoryStateLog:
    """A state log in a list: for tests and the single-process API."""

    def __init__(self, entries: Sequence[StateEntry] = ()) -> None:
        self._entries = list(entries)

    async def read(self, from_offset: int = 0) -> list[LoggedEntry]:
        return [
            LoggedEntry(offset, entry)
            for offset, entry in enumerate(self._entries)
            if offset >= from_offset
        ]

    async def append(self, entry: StateEntry) -> int:
        self._entries.append(entry)
        return len(self._entries) - 1


class KafkaStateLog:
    """``ess.state`` on Kafka. Appends go one record per batch with ``acks=all`` and are
    awaited, so an entry is on the broker before anyone acts on it (and so that "read to the
    end" works on the embedded broker, see :func:`ess.kafka.producer`).

    An undecodable record in the state log is corruption, not bad input: :meth:`read` raises
    rather than skipping it, because every reader must fail closed on a log it cannot trust.
    """

    def __init__(
        self, bootstrap: str, topic: str, *, security: KafkaSecurity | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = security
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            self._producer = producer(self.bootstrap, read_to_end_safe=True, security=self.security)
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def read(self, from_offset: int = 0) -> list[LoggedEntry]:
        records = await read_to_end(
            self.bootstrap, self.topic, start_offset=from_offset, security=self.security
        )
        return [self.decode_record(record.offset, record.value) for record in records]

    @staticmethod
    def decode_record(offset: int, value: bytes | None) -> LoggedEntry:
        """Decode one state-log record; raises ``SequenceError`` on a corrupt record."""
        try:
            return LoggedEntry(offset, decode(StateEntry, value or b""))
        except RecordError as exc:
            raise SequenceError(f"state log record at offset {offset} is corrupt: {exc}") from exc

    async def append(self, entry: StateEntry) -> int:
        if self._producer is None:
            raise RuntimeError("KafkaStateLog.start() was not called")
        metadata = await self._producer.send_and_wait(self.topic, encode(entry), key=STATE_KEY)
        return int(metadata.offset)

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
) -> AsyncIterator[LoggedEntry]:
    """Yield state-log entries from ``from_offset`` on, forever (the caller stops iterating).

    ``on_fetch`` is called whenever the broker answered a fetch, with or without records: an
    empty batch alone cannot tell an idle log from an unreachable broker."""
    tp = TopicPartition(registry.state.name, 0)
    reader = consumer(bootstrap, group_id=None, client_id="ess-follower", security=security)
    await reader.start()
    try:
        reader.assign([tp])
        reader.seek(tp, from_offset)
        last_poll: int | None = None
        while True:
            batch = await reader.getmany(tp, timeout_ms=200)
            polled = reader.last_poll_timestamp(tp)
            if on_fetch is not None and polled is not None and polled != last_poll:
                last_poll = polled
                on_fetch()
            for record in batch.get(tp, []):
                yield KafkaStateLog.decode_record(record.offset, record.value)
    finally:
        await reader.stop()

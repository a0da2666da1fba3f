"""The state log ``ess.state``: append-only, one partition, one writer, read by everyone.

Storage is a port, :class:`StateLog` (raw bytes in, raw records out), with two adapters: the
Kafka topic (:mod:`ess.statelog.kafka`) and a list (:mod:`ess.statelog.memory`). Reading is one
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

from loguru import logger

from ess.core.reader import BatchReport, Folded, LogBroken, RawRecord, Trust, fold_records

__all__ = ["StateLog", "StateLogReader"]


class StateLog(Protocol):
    """Read, follow and append ``ess.state`` as raw records (readers verify them).

    One port for every role, so that the processor's fencing, the readers' catch-up and
    their following can be tested on a list as well as on Kafka, by one contract suite
    (``tests/statelog/contract.py``). Offsets start at 0 and grow by one per record; every
    handle on the same log sees one total order, whoever appended.
    """

    async def start(self) -> None:
        """Open what appending needs (a producer); :meth:`read` and :meth:`follow` work
        without it."""
        ...

    async def stop(self) -> None:
        """Close what :meth:`start` and :meth:`end_offset` opened; safe to call twice."""
        ...

    async def read(self, from_offset: int = 0) -> list[RawRecord]:
        """Records from ``from_offset`` to the current end."""
        ...

    async def append(self, value: bytes) -> int:
        """Append one record durably; returns its offset."""
        ...

    async def end_offset(self) -> int:
        """The offset the next record will get: a cheap look at the end, which is how the
        command processor notices an entry it did not write before it appends."""
        ...

    def follow(
        self,
        from_offset: int = 0,
        *,
        on_fetch: Callable[[], None] | None = None,
        on_end: Callable[[int], None] | None = None,
    ) -> AsyncIterator[list[RawRecord]]:
        """Yield non-empty batches of records from ``from_offset`` on, in order, each once,
        forever (the caller stops iterating).

        ``on_fetch`` is called whenever the store answered, with or without records: an empty
        wait alone cannot tell an idle log from an unreachable broker, and readers report
        the difference (a stale view of the log closes the gates).

        ``on_end`` is called right after ``on_fetch``, with the end of the log as that same
        answer saw it (the offset the next record would get; on Kafka the fetched high
        watermark). It is reported *before* the answer's records are yielded, so it always
        lies beyond them. A follower that has consumed everything up to it has read the
        whole log as of that answer: that is how a long-running reader knows it caught up,
        and how far behind it is, without asking the store anything more per poll (on
        Tansu the listed end, :meth:`end_offset`, can fall short after a multi-record batch
        from another producer; a fetched end does not)."""
        ...


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

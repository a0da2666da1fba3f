"""The single writer's discipline on ``ess.state``, over the :class:`~ess.statelog.StateLog`
port: fold what is there, seal and append, check where each entry landed, and stop (fenced)
the moment another writer's authentic entry shows up.

It is the part of the command processor that decides whether the processor may write at all,
so it is kept apart from the Kafka consumer loop: the same code runs over the in-memory log in
the fast tests (fencing, catch-up, resume, retried sends) and over Kafka in production.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loguru import logger

from ess.core import EssState
from ess.core.attestation import SigningKey
from ess.core.reader import (
    LogBroken,
    LoggedEntry,
    RawRecord,
    Trust,
    digest,
    fold_log,
    seal_entry,
)
from ess.roles.command.errors import FencedError, critical
from ess.statelog import Folded, StateLog, StateLogReader
from schemas import StateEntry

__all__ = ["Fed", "StateWriter"]


@dataclass(frozen=True, slots=True)
class Fed:
    """What one fold of the log brought: the entries applied (read back or just written),
    how many new foreign records were met, and how many copies of our own entries (a
    retried send) were skipped."""

    applied: Sequence[LoggedEntry] = ()
    foreign: int = 0
    own_copies: int = 0


def _ignore(_: Fed) -> None:
    """The default listener: nothing to count."""


@dataclass(slots=True)
class StateWriter:
    """Appends sealed entries to ``log`` as its only writer, folding as it goes.

    Args:
        log: The state log (started by the caller before :meth:`append`).
        key: The processor's signing key; it must be among ``trust``'s processor keys, or
            the writer's own entries would read back as foreign.
        trust: What the writer's own reader trusts; its ``scope`` is what seals bind to.
        on_fed: Told after every fold (the processor counts metrics and remembers the
            entries of recent commands from it).
    """

    log: StateLog
    key: SigningKey
    trust: Trust
    on_fed: Callable[[Fed], None] = _ignore
    _reader: StateLogReader = field(init=False)

    def __post_init__(self) -> None:
        self._reader = StateLogReader(self.trust, name="command-processor")

    @property
    def folded(self) -> Folded:
        """Where the writer stands in the log."""
        return self._reader.folded

    @property
    def state(self) -> EssState:
        return self._reader.folded.state

    @property
    def scope(self) -> str:
        return self.trust.scope

    async def catch_up(self) -> Sequence[LoggedEntry]:
        """Fold every record after where the writer stands. Raises
        :class:`~ess.core.reader.LogBroken` when the log cannot be folded (the caller refuses
        to write: a log nobody can trust must not grow)."""
        return self.feed(await self.log.read(self.folded.next_offset))

    def feed(self, records: Sequence[RawRecord]) -> Sequence[LoggedEntry]:
        """Fold records read back from the log; returns the entries that were applied."""
        before = self.folded.foreign
        report = self._reader.feed(records)
        head = self.folded.head
        self.on_fed(
            Fed(
                applied=report.applied,
                foreign=self.folded.foreign - before,
                own_copies=sum(1 for item in report.skipped if item.digest == head),
            )
        )
        return report.applied

    async def append(self, entry: StateEntry) -> tuple[StateEntry, int]:
        """Seal (chain and sign) ``entry``, append it and await the ack, check where it
        landed and fold it in; returns the entry as written and its offset.

        Raises :class:`FencedError` when it landed behind an authentic entry this writer
        did not write. Errors of the log itself propagate: whether the entry landed is then
        unknown, and only a restart (which folds the log) may go on."""
        expected = self.folded.next_offset
        sealed, value = seal_entry(entry, self.key, scope=self.scope, prev=self.folded.head)
        offset = await self.log.append(value)
        if offset == expected:
            logged = LoggedEntry(offset, sealed, digest(value))
            self._reader.folded = fold_log([logged], self.folded, scope=self.scope)
            self.on_fed(Fed(applied=(logged,)))
        else:
            await self._landed_elsewhere(sealed, value, expected, offset)
        return sealed, offset

    async def absorb_tail(self) -> None:
        """Before deciding: fold whatever appeared after our last entry. Authentic entries we
        did not write fence us (:class:`FencedError`); foreign records are folded (the caller
        acknowledges them)."""
        expected = self.folded.next_offset
        # The end offset is enough to see a new record even on Tansu: it under-reports only
        # *within* a multi-record batch, and any batch at or after ``expected`` moves the
        # reported end past ``expected``.
        if await self.log.end_offset() <= expected:
            return
        try:
            applied = self.feed(await self.log.read(expected))
        except LogBroken as exc:
            raise self._fenced(None, expected, f"the log cannot be folded: {exc}") from exc
        if applied:
            raise self._fenced(
                None, expected, f"{len(applied)} authentic entries appeared that we did not write"
            )

    async def _landed_elsewhere(
        self, sealed: StateEntry, value: bytes, expected: int, offset: int
    ) -> None:
        """Our entry did not land where the log ended: read what came before it. Copies of
        our own entry (a retried send whose first answer was lost) and foreign records are
        harmless (the caller acknowledges the latter); another authentic entry in its place
        means a second writer, and we are fenced."""
        records = [r for r in await self.log.read(expected) if r.offset <= offset]
        try:
            applied = self.feed(records)
        except LogBroken as exc:
            raise self._fenced(sealed, expected, f"the log cannot be folded: {exc}") from exc
        if [item.digest for item in applied] != [digest(value)]:
            raise self._fenced(
                sealed, expected, f"our entry landed at offset {offset} behind another writer's"
            )
        if offset != applied[0].offset:
            logger.bind(seq=sealed.seq, first=applied[0].offset, copy=offset).warning(
                "state log: our entry was written twice (a retried send); the copy is skipped"
            )

    def _fenced(self, entry: StateEntry | None, expected: int, observed: str) -> FencedError:
        seq = entry.seq if entry is not None else self.state.next_seq
        return critical(
            FencedError,
            f"another writer appended to {self.scope}: this processor's next entry belongs at "
            f"offset {expected} but {observed}. Refusing to append seq {seq}; stop the other "
            "writer, then restart this processor.",
            expected_offset=expected,
            seq=seq,
        )

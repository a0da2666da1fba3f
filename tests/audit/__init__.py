"""Tests of the audit tooling (``ess.audit``), and the recording builder they share.

Everything here runs without a broker: recordings are written directly in the recording
format, as ``ess record`` would have written them. State-log entries are sealed by the test
command processor key (:data:`tests.statelog_support.PROCESSOR`), as the live processor seals
them; a replay verifies them with :data:`TRUST`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from ess.audit.recording import Manifest, RecordingWriter, TopicFile
from ess.core import INITIAL_STATE, EssState, SequenceError, decide, evolve
from ess.core.reader import Trust, digest, seal_entry
from ess.core.signing import sign_reset
from ess.rules.base import Coordinates, Detection, trip_command
from schemas import (
    ActivatedEntry,
    ReasonCode,
    ResetCommand,
    ResetEntry,
    StateEntry,
    TopicRegistry,
    TriggerRef,
    TripCommand,
    TripRecordedEntry,
    topic_registry,
)
from tests.records import beat, fill, pnl, s, security
from tests.statelog_support import ALICE, BOB, PROCESSOR, operator_reset, policy, trust

# Re-exported: the audit tests build their records with the shared builders.
__all__ = ["beat", "fill", "pnl", "s", "security"]

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
#: What a replay of these recordings trusts: the test processor key and operators.
TRUST: Trust = trust("ess.state")


def ms(moment: datetime) -> int:
    """Kafka timestamp (ms) of ``moment``."""
    return int(moment.timestamp() * 1000)


@dataclass
class Builder:
    """Writes a recording: input records and state-log entries with their Kafka timestamps."""

    directory: Path
    registry: TopicRegistry = field(default_factory=lambda: topic_registry("ess"))
    _files: dict[str, TopicFile] = field(default_factory=dict)
    _offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    _writer: RecordingWriter | None = None
    _folded: EssState = INITIAL_STATE
    _head: str | None = None

    def __post_init__(self) -> None:
        self._writer = RecordingWriter(self.directory, self.registry.prefix)
        for spec in [*self.registry.inputs(), self.registry.state]:
            self._files[spec.logical] = self._writer.topic(spec)

    def add(
        self,
        logical: str,
        key: str,
        record: dict[str, Any] | bytes | None,
        at: datetime,
        *,
        partition: int | None = None,
    ) -> Coordinates:
        """Record one input record sent at ``at`` (its Kafka timestamp); returns where."""
        spec = getattr(self.registry, logical)
        if partition is None:
            partition = (murmur2(key.encode()) & 0x7FFFFFFF) % spec.partitions
        value = orjson.dumps(record) if isinstance(record, dict) else record
        offset = self._offsets.get((logical, partition), 0)
        self._offsets[(logical, partition)] = offset + 1
        self._files[logical].write(partition, offset, ms(at), key.encode(), value)
        return Coordinates(spec.name, partition, offset)

    def state(self, entry: StateEntry, at: datetime | None = None) -> None:
        """Record one state-log entry, appended at ``at`` (default: its ``ts``), sealed and
        chained as the command processor writes it. A ``reset`` without authorizations gets
        alice's signed command for the activation it clears (:func:`reset_entry`)."""
        if isinstance(entry, ResetEntry) and not entry.authorizations:
            command = operator_reset(
                self._folded, ts=entry.ts, command_id=entry.command_id, nonce=entry.nonce
            )
            entry = entry.model_copy(update={"authorizations": (command,)})
        sealed, value = seal_entry(
            entry, PROCESSOR, scope=self.registry.state.name, prev=self._head
        )
        self._head = digest(value)
        with contextlib.suppress(SequenceError):  # a test of a broken log
            self._folded = evolve(self._folded, sealed)
        self.raw_state(value, at or entry.ts)

    def command(self, command: TripCommand | ResetCommand, *, quorum: int = 1) -> list[StateEntry]:
        """Record what the command processor appends for ``command``: decided by the real
        core at the command's ``ts`` (with the test operators and ``quorum``), then sealed
        and appended at that time. Returns the entries."""
        entries = decide(self._folded, command, now=command.ts, policy=policy(quorum))
        for entry in entries:
            self.state(entry)
        return entries

    def signed_reset(
        self,
        operator: str,
        ts: datetime,
        *,
        detail: str = "",
        as_operator: str | None = None,
        activation: tuple[int, str] | None = None,
    ) -> ResetCommand:
        """A reset signed with ``operator``'s key (``alice`` or ``bob``) for the current
        activation, or for ``activation`` (``(seq, command_id)``: a stale one is refused as
        ``activation_mismatch``); ``as_operator`` claims another name (a forgery)."""
        current = self._folded.activation
        seq, command_id = activation or (
            (current.seq, current.command_id) if current else (None, None)
        )
        return sign_reset(
            {"alice": ALICE, "bob": BOB}[operator],
            command_id=f"reset-{operator}-{ms(ts)}",
            operator=as_operator or operator,
            ts=ts,
            nonce=f"nonce-{operator}-{ms(ts)}",
            detail=detail,
            activation_seq=seq,
            activation_command_id=command_id,
        )

    def raw_state(self, value: bytes, at: datetime) -> None:
        """Record ``value`` in the state log as is (a test of what a replay refuses)."""
        logical = "state"
        offset = self._offsets.get((logical, 0), 0)
        self._offsets[(logical, 0)] = offset + 1
        self._files[logical].write(0, offset, ms(at), b"ess", value)

    def close(self, recorded_at: datetime = T0) -> Manifest:
        assert self._writer is not None
        return self._writer.close(recorded_at)


def trip_entry(
    seq: int,
    rule: str,
    reason: ReasonCode,
    key: str,
    coords: Coordinates,
    event_ts: datetime,
    *,
    kind: str = "activated",
    ts: datetime | None = None,
    discriminator: str = "",
) -> ActivatedEntry | TripRecordedEntry:
    """The state entry a live detector trip leaves (its command id derived as live)."""
    detection = Detection(
        rule,
        reason,
        key,
        "recorded live",
        TriggerRef(
            topic=coords.topic,
            partition=coords.partition,
            offset=coords.offset,
            event_ts=event_ts,
        ),
        discriminator,
    )
    command = trip_command(detection)
    model = ActivatedEntry if kind == "activated" else TripRecordedEntry
    return model(
        seq=seq,
        command_id=command.command_id,
        ts=ts or event_ts,
        reason=reason,
        detail=command.detail,
        source=command.source,
        trigger=command.trigger,
    )


def reset_entry(seq: int, ts: datetime) -> ResetEntry:
    """A reset by alice (:meth:`Builder.state` adds her signed authorization)."""
    return ResetEntry(
        seq=seq, command_id=f"reset-{seq}", ts=ts, operators=("alice",), nonce=f"n-{seq}"
    )


# --------------------------------------------------------------------------- records

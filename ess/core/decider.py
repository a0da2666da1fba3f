"""The ESS state machine as a decider: ``decide`` turns a command into log entries, ``evolve``
folds one entry into the state. Both are pure: time comes in as ``now``, keys as data.

Invariants (property-tested in ``tests/property``):

* INACTIVE -> ACTIVE on any trip; a trip while ACTIVE is recorded (``trip_recorded``).
* Only an authorized reset (known operator, valid signature, fresh, unused nonce, quorum met)
  returns ESS to INACTIVE. Nothing else does: not time, not a restart, not a cleared condition.
* A command already applied (same kind and ``command_id``) yields no entries.
* ``seq`` is contiguous; ``evolve`` refuses an entry out of sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from ess.core.signing import verify_reset
from ess.core.state import INITIAL_STATE, Activation, Approval, EssState, Status
from schemas import (
    ActivatedEntry,
    RejectReason,
    ResetApprovalEntry,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TripCommand,
    TripRecordedEntry,
)

DEFAULT_MAX_AGE = timedelta(minutes=5)
UNAUTHENTICATED = "unauthenticated"
#: Rejections of resets whose sender could not be authenticated (forgeries, unknown operators).
UNAUTHENTICATED_REJECTIONS = frozenset({RejectReason.UNKNOWN_OPERATOR, RejectReason.BAD_SIGNATURE})
DEFAULT_MAX_SKEW = timedelta(seconds=30)


class SequenceError(ValueError):
    """An entry whose ``seq`` is not the next one: a gap, a duplicate or a second writer."""


@dataclass(frozen=True, slots=True)
class ResetPolicy:
    """Who may reset, and how.

    ``operators`` maps operator name to its raw 32-byte Ed25519 public key. ``quorum`` distinct
    operators must approve within ``max_age`` of their commands' ``ts``. A command stamped more
    than ``max_skew`` in the future is refused: its expiry would be meaningless.
    """

    operators: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    quorum: int = 1
    max_age: timedelta = DEFAULT_MAX_AGE
    max_skew: timedelta = DEFAULT_MAX_SKEW

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise ValueError("quorum must be at least 1")
        if self.quorum > len(self.operators) and self.operators:
            raise ValueError(
                f"quorum {self.quorum} cannot be met by {len(self.operators)} operators"
            )
        object.__setattr__(self, "operators", MappingProxyType(dict(self.operators)))


def decide(
    state: EssState, command: TripCommand | ResetCommand, *, now: datetime, policy: ResetPolicy
) -> list[StateEntry]:
    """Entries that applying ``command`` at time ``now`` appends to the log (maybe none)."""
    if (command.kind, command.command_id) in state.applied:
        return []
    if isinstance(command, TripCommand):
        return [_decide_trip(state, command, now)]
    entry = _decide_reset(state, command, now, policy)
    return [] if entry is None else [entry]


def _decide_trip(state: EssState, command: TripCommand, now: datetime) -> StateEntry:
    common = {
        "seq": state.next_seq,
        "command_id": command.command_id,
        "ts": now,
        "reason": command.reason,
        "detail": command.detail,
        "source": command.source,
        "trigger": command.trigger,
    }
    if state.active:
        return TripRecordedEntry(**common)
    return ActivatedEntry(**common)


def _decide_reset(
    state: EssState, command: ResetCommand, now: datetime, policy: ResetPolicy
) -> StateEntry | None:
    def reject(why: RejectReason, detail: str, *, authentic: bool = True) -> ResetRejectedEntry:
        return ResetRejectedEntry(
            seq=state.next_seq,
            command_id=command.command_id,
            ts=now,
            operator=command.operator,
            why=why,
            detail=detail,
            nonce=command.nonce if authentic else None,
        )

    public_key = policy.operators.get(command.operator)
    authentic = public_key is not None and verify_reset(command, public_key)
    if not authentic and (UNAUTHENTICATED, command.command_id) in state.applied:
        return None  # the same forgery again: logged once is enough
    if public_key is None:
        return reject(
            RejectReason.UNKNOWN_OPERATOR, "operator has no registered key", authentic=False
        )
    if not authentic:
        return reject(RejectReason.BAD_SIGNATURE, "signature does not verify", authentic=False)
    if (command.operator, command.nonce) in state.used_nonces:
        # Not "authentic" for nonce purposes: the nonce is already burnt either way.
        return reject(RejectReason.NONCE_REUSED, f"nonce {command.nonce!r} already used")
    if now - command.ts > policy.max_age:
        return reject(
            RejectReason.EXPIRED,
            f"issued {command.ts.isoformat()}, max age {policy.max_age.total_seconds():g}s",
        )
    if command.ts - now > policy.max_skew:
        return reject(
            RejectReason.FROM_THE_FUTURE,
            f"issued {command.ts.isoformat()}, ahead of {now.isoformat()}",
        )
    if not state.active:
        return reject(RejectReason.NOT_ACTIVE, "ESS is not active; nothing to reset")

    pending = [a for a in state.approvals if a.expires_at >= now]
    if any(a.operator == command.operator for a in pending):
        return reject(
            RejectReason.DUPLICATE_APPROVAL,
            "operator already approved; quorum needs distinct operators",
        )
    approvers = (*(a.operator for a in pending), command.operator)
    if len(approvers) >= policy.quorum:
        return ResetEntry(
            seq=state.next_seq,
            command_id=command.command_id,
            ts=now,
            operators=approvers,
            detail=command.detail,
            nonce=command.nonce,
        )
    return ResetApprovalEntry(
        seq=state.next_seq,
        command_id=command.command_id,
        ts=now,
        operator=command.operator,
        nonce=command.nonce,
        approvals=approvers,
        quorum=policy.quorum,
        expires_at=command.ts + policy.max_age,
    )


def evolve(state: EssState, entry: StateEntry) -> EssState:
    """The state after ``entry``. Raises :class:`SequenceError` unless ``entry.seq`` is next."""
    if entry.seq != state.next_seq:
        raise SequenceError(f"expected seq {state.next_seq}, got {entry.seq} ({entry.kind})")
    base = replace(state, next_seq=entry.seq + 1, applied=state.applied | {_dedupe_key(entry)})
    return _apply(base, entry)


def _dedupe_key(entry: StateEntry) -> tuple[str, str]:
    """``(namespace, command_id)`` under which an entry's command counts as applied.

    Trips and resets have separate namespaces, and unauthenticated resets (unknown operator,
    bad signature) a third one: a forgery can then never "use up" the id of a real command.
    """
    if isinstance(entry, ActivatedEntry | TripRecordedEntry):
        return ("trip", entry.command_id)
    if isinstance(entry, ResetRejectedEntry) and entry.why in UNAUTHENTICATED_REJECTIONS:
        return (UNAUTHENTICATED, entry.command_id)
    return ("reset", entry.command_id)


def _apply(base: EssState, entry: StateEntry) -> EssState:
    """State change of one entry, ``next_seq`` and ``applied`` already advanced."""
    match entry:
        case ActivatedEntry():
            activation = Activation(
                seq=entry.seq,
                command_id=entry.command_id,
                reason=entry.reason,
                detail=entry.detail,
                source=entry.source,
                trigger=entry.trigger,
                ts=entry.ts,
            )
            return replace(
                base,
                status=Status.ACTIVE,
                activation=activation,
                trips_recorded=0,
                approvals=(),
                last_change=entry.ts,
            )
        case TripRecordedEntry():
            # A new trip while a quorum is pending voids the approvals: they were given for
            # the situation before this trip.
            return replace(base, trips_recorded=base.trips_recorded + 1, approvals=())
        case ResetApprovalEntry():
            still_valid = {a.operator: a for a in base.approvals}
            approvals = tuple(
                still_valid[op]
                if op != entry.operator
                else Approval(operator=op, expires_at=entry.expires_at)
                for op in entry.approvals
                if op in still_valid or op == entry.operator
            )
            return replace(
                base,
                approvals=approvals,
                used_nonces=base.used_nonces | {(entry.operator, entry.nonce)},
            )
        case ResetEntry():
            return replace(
                base,
                status=Status.INACTIVE,
                activation=None,
                trips_recorded=0,
                approvals=(),
                epoch=base.epoch + 1,
                last_change=entry.ts,
                used_nonces=base.used_nonces | {(entry.operators[-1], entry.nonce)},
            )
        case ResetRejectedEntry():
            if entry.nonce is None:
                return base
            return replace(base, used_nonces=base.used_nonces | {(entry.operator, entry.nonce)})
    raise TypeError(f"unknown entry kind {entry!r}")  # pragma: no cover - exhaustive match


def fold(entries: Iterable[StateEntry], state: EssState = INITIAL_STATE) -> EssState:
    """Fold entries onto ``state`` (from scratch by default): how every reader rebuilds."""
    for entry in entries:
        state = evolve(state, entry)
    return state

"""The ESS state machine as a decider: ``decide`` turns a command into log entries, ``evolve``
folds one entry into the state. Both are pure: time comes in as ``now``, keys as data.

Invariants (property-tested in ``tests/core/test_decider_properties.py``):

* INACTIVE -> ACTIVE on any trip; a trip while ACTIVE is recorded (``trip_recorded``).
* Only an authorized reset (known operator, valid signature, fresh, unused nonce, bound to
  the current activation, quorum of distinct keys met) returns ESS to INACTIVE. Nothing else
  does: not time, not a restart, not a cleared condition.
* A reset already applied (same ``command_id``) yields no entries, ever. A trip already
  applied *in the current epoch* yields none; a trip id from an earlier epoch is a new trip
  unless what triggered it happened before the last reset (a late redelivery). So a
  producer cannot "use up" the ids of future detections while ESS is ACTIVE, and an
  operator script reusing a fixed id trips ESS again after a reset.
* ``seq`` is contiguous; ``evolve`` refuses an entry out of sequence. The one exception is
  the ``state_log_lost`` activation that re-establishes a stop after the log was lost: it may
  carry the numbering forward past the lost log's (:func:`carries_seq_forward`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from ess.core.edwards import public_key_problem
from ess.core.growset import GrowSet
from ess.core.signing import verify_reset
from ess.core.state import INITIAL_STATE, Activation, Approval, EssState, Status
from ess.errors import EssError
from schemas import (
    ActivatedEntry,
    ReasonCode,
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
#: Rejections that are worth a security event: nobody vouched for the reset, or an authentic
#: one was aimed at another activation than the current one (replayed or held back).
SUSPICIOUS_REJECTIONS = UNAUTHENTICATED_REJECTIONS | {RejectReason.ACTIVATION_MISMATCH}
DEFAULT_MAX_SKEW = timedelta(seconds=30)
#: ``trip_recorded`` entries one activation may hold. Beyond it further trips are coalesced
#: (no entry: ESS is ACTIVE and stays so; each still gets an outcome): anyone allowed to
#: trip could otherwise grow the log, and with it every restart, without bound.
TRIP_RECORDS_PER_ACTIVATION = 1000


class SequenceError(EssError, ValueError):
    """An entry whose ``seq`` is not the next one: a gap, a duplicate or a second writer."""


@dataclass(frozen=True, slots=True)
class ResetPolicy:
    """Who may reset, and how.

    ``operators`` maps operator name to its raw 32-byte Ed25519 public key. ``quorum`` distinct
    operators must approve within ``max_age`` of their commands' ``ts``. A command stamped more
    than ``max_skew`` in the future is refused: its expiry would be meaningless.

    A quorum counts keys, not names, so two names for one key are refused here (the same
    person could otherwise approve twice), as is any key that is not a canonical point of
    prime order (:mod:`ess.core.edwards`: a small-order key verifies forged signatures).
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
        owners: dict[bytes, str] = {}
        for name, key in sorted(self.operators.items()):
            problem = public_key_problem(key)
            if problem is not None:
                raise ValueError(f"operator {name!r}: unusable public key: {problem}")
            if key in owners:
                raise ValueError(
                    f"operators {owners[key]!r} and {name!r} have the same public key: a quorum "
                    "counts keys, so one key must belong to one operator"
                )
            owners[key] = name
        object.__setattr__(self, "operators", MappingProxyType(dict(self.operators)))


def decide(
    state: EssState, command: TripCommand | ResetCommand, *, now: datetime, policy: ResetPolicy
) -> list[StateEntry]:
    """Entries that applying ``command`` at time ``now`` appends to the log (maybe none)."""
    if isinstance(command, TripCommand):
        if trip_is_duplicate(state, command) or trip_is_coalesced(state):
            return []
        return [_decide_trip(state, command, now)]
    if ("reset", command.command_id) in state.applied:
        return []
    entry = _decide_reset(state, command, now, policy)
    return [] if entry is None else [entry]


def trip_is_duplicate(state: EssState, command: TripCommand) -> bool:
    """Whether ``command`` was already applied: in this epoch, or in an earlier one *and*
    triggered before the last reset (a redelivery that arrives late).

    When it was triggered is the trigger's event time, or the command's ``ts`` for a trip
    without a trigger (operators' trips). A trip id applied in an earlier epoch whose trigger
    is not older than the last reset is a new trip: ids of detections are predictable, and a
    producer must not be able to "use up" the id of a future detection while ESS is ACTIVE.
    """
    if command.command_id in state.epoch_trips:
        return True
    if ("trip", command.command_id) not in state.applied or state.last_reset is None:
        return False
    happened = command.trigger.event_ts if command.trigger is not None else command.ts
    return happened < state.last_reset


def trip_is_coalesced(state: EssState) -> bool:
    """Whether a new trip now appends nothing because this activation already recorded
    :data:`TRIP_RECORDS_PER_ACTIVATION` of them (the stop is in force either way)."""
    return state.active and state.trips_recorded >= TRIP_RECORDS_PER_ACTIVATION


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
    activation = state.activation
    if not state.active or activation is None:
        return reject(RejectReason.NOT_ACTIVE, "ESS is not active; nothing to reset")
    if (command.activation_seq, command.activation_command_id) != (
        activation.seq,
        activation.command_id,
    ):
        return reject(
            RejectReason.ACTIVATION_MISMATCH,
            f"signed for activation seq {command.activation_seq} "
            f"({command.activation_command_id}), but the current one is seq {activation.seq} "
            f"({activation.command_id})",
        )

    pending = _counting_approvals(state, now, policy)
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
            authorizations=(*(a.command for a in pending if a.command is not None), command),
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
        command=command,
    )


def _counting_approvals(state: EssState, now: datetime, policy: ResetPolicy) -> list[Approval]:
    """Pending approvals that still count: not expired, and whose signed command verifies
    under its operator's *current* key (an operator removed or re-keyed since approving no
    longer counts)."""
    counting = []
    for approval in state.approvals:
        key = policy.operators.get(approval.operator)
        if (
            approval.expires_at >= now
            and key is not None
            and approval.command is not None
            and verify_reset(approval.command, key)
        ):
            counting.append(approval)
    return counting


def reset_authorization_problem(
    state: EssState, entry: ResetEntry, operator_keys: Mapping[str, bytes]
) -> str | None:
    """Why a reader must not apply ``entry`` to ``state``, or ``None`` when it may.

    The command processor signed the entry, but a reader does not take its word for the
    authorization: the entry carries the operators' signed reset commands, and each must
    verify under that operator's key (as this reader knows it), name the activation being
    cleared, and come from a distinct key; the last one is the command the entry is for.
    (The quorum size and the commands' ages are the processor's configuration; the reader
    checks what needs no configuration.)
    """
    activation = state.activation
    if activation is None:
        return "a reset while ESS is not active"
    if not entry.authorizations:
        return "the reset carries no signed authorization"
    signers = [command.operator for command in entry.authorizations]
    if sorted(signers) != sorted(entry.operators) or len(set(signers)) != len(signers):
        return f"authorizations by {signers} do not match operators {list(entry.operators)}"
    last = entry.authorizations[-1]
    if (last.command_id, last.nonce) != (entry.command_id, entry.nonce):
        return "the last authorization is not the command this reset was recorded for"
    keys_seen: set[bytes] = set()
    for command in entry.authorizations:
        key = operator_keys.get(command.operator)
        if key is None:
            return f"operator {command.operator!r} has no public key known to this reader"
        if key in keys_seen:
            return "two authorizations were signed with one key"
        keys_seen.add(key)
        if not verify_reset(command, key):
            return f"the authorization by {command.operator!r} does not verify"
        if (command.activation_seq, command.activation_command_id) != (
            activation.seq,
            activation.command_id,
        ):
            return f"the authorization by {command.operator!r} is for another activation"
    return None


def carries_seq_forward(entry: StateEntry) -> bool:
    """Whether ``entry`` may skip ahead of the next ``seq``: only the ``activated`` entry with
    reason ``state_log_lost``, by which the command processor re-establishes a stop that the
    PolicyStore record proves at a ``seq`` the log has lost (:mod:`ess.core.recovery`).

    Carrying the numbering past the record's keeps every ``seq`` ESS publishes increasing
    across the loss, which is what a gate that saw the old record needs to reopen on the next
    reset. No entry goes missing in between: readers follow the signed chain (``prev``), and
    the jump is one the processor signed; everything else stays strictly contiguous."""
    return isinstance(entry, ActivatedEntry) and entry.reason is ReasonCode.STATE_LOG_LOST


def evolve(state: EssState, entry: StateEntry) -> EssState:
    """The state after ``entry``. Raises :class:`SequenceError` unless ``entry.seq`` is next
    (or, for an entry that :func:`carries_seq_forward`, at least next).

    One ``replace`` per entry: folding a long log is dominated by this function."""
    if entry.seq != state.next_seq and not (
        entry.seq > state.next_seq and carries_seq_forward(entry)
    ):
        raise SequenceError(f"expected seq {state.next_seq}, got {entry.seq} ({entry.kind})")
    changes = _changes(state, entry)
    changes["next_seq"] = entry.seq + 1
    changes["applied"] = state.applied.add(_dedupe_key(entry))
    return _updated(state, changes)


#: EssState's fields, in order, for :func:`_updated`.
_STATE_FIELDS = tuple(item.name for item in fields(EssState))


def _updated(state: EssState, changes: dict[str, Any]) -> EssState:
    """``dataclasses.replace(state, **changes)`` without its per-call overhead (a third of
    the time of folding a long log). EssState has no ``__post_init__`` to skip."""
    new = object.__new__(EssState)
    for name in _STATE_FIELDS:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(state, name))
    return new


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


def _changes(base: EssState, entry: StateEntry) -> dict[str, Any]:
    """The fields of ``base`` that ``entry`` changes besides ``next_seq`` and ``applied``."""
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
            return {
                "status": Status.ACTIVE,
                "activation": activation,
                "trips_recorded": 0,
                "approvals": (),
                "last_change": entry.ts,
                "epoch_trips": base.epoch_trips.add(entry.command_id),
            }
        case TripRecordedEntry():
            # A new trip while a quorum is pending voids the approvals: they were given for
            # the situation before this trip.
            return {
                "trips_recorded": base.trips_recorded + 1,
                "approvals": (),
                "epoch_trips": base.epoch_trips.add(entry.command_id),
            }
        case ResetApprovalEntry():
            still_valid = {a.operator: a for a in base.approvals}
            approvals = tuple(
                still_valid[op]
                if op != entry.operator
                else Approval(operator=op, expires_at=entry.expires_at, command=entry.command)
                for op in entry.approvals
                if op in still_valid or op == entry.operator
            )
            return {
                "approvals": approvals,
                "used_nonces": base.used_nonces.add((entry.operator, entry.nonce)),
            }
        case ResetEntry():
            return {
                "status": Status.INACTIVE,
                "activation": None,
                "trips_recorded": 0,
                "approvals": (),
                "epoch": base.epoch + 1,
                "last_change": entry.ts,
                "used_nonces": base.used_nonces.add((entry.operators[-1], entry.nonce)),
                "epoch_trips": GrowSet(),
                "last_reset": entry.ts,
            }
        case ResetRejectedEntry():
            if entry.nonce is None:
                return {}
            return {"used_nonces": base.used_nonces.add((entry.operator, entry.nonce))}
    raise TypeError(f"unknown entry kind {entry!r}")  # pragma: no cover - exhaustive match


def fold(entries: Iterable[StateEntry], state: EssState = INITIAL_STATE) -> EssState:
    """Fold entries onto ``state`` (from scratch by default): how every reader rebuilds."""
    for entry in entries:
        state = evolve(state, entry)
    return state

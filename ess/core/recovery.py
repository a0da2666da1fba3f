"""A stop the state log has lost, proven by the PolicyStore record, and re-established. Pure.

The state log ``ess.state`` is the source of truth, but it can be lost while the PolicyStore
keeps its projection: the embedded broker keeps nothing on disk, so restarting ``ess worker``
(or ``ess up``) on it starts an empty log while Redis or the SQLite file still holds the
ACTIVE ``emergency_stop`` record. Folding the empty log says INACTIVE, which is exactly the
state ESS must never fall into by accident: "never time, never a restart".

The command processor therefore reads the stored record once before it serves
(:func:`lost_stop`): an ACTIVE record at a ``seq`` the log does not reach, while the log says
INACTIVE, is a stop the log has lost. The processor re-establishes it with one ``activated``
entry (:func:`reestablish`), reason ``state_log_lost``, whose ``seq`` is carried past the
record's (:func:`ess.core.decider.carries_seq_forward`): every ``seq`` ESS publishes keeps
increasing across the loss, so a gate that saw the old record's ``seq`` accepts the next
reset as newer. From there on it is an ordinary activation: flattened by the executor,
projected by the projector, ended only by a signed reset.

Proof. The projector writes, with every ACTIVE record, the ``activated`` entry it projects
exactly as the processor sealed it (``PolicyRecord.activation_entry``). A record whose entry
verifies under a trusted processor key, for this log (the seal's scope), is *verified*: ESS
itself stopped there. Anything else (no entry, an unknown key, a broken signature, an entry
that is not an activation or contradicts the record) is *unverified*: either the log was lost
together with the key that signed it (``ess worker`` on the embedded broker without a key
file makes a key per run), or somebody else wrote the record. An unverified record is adopted
as a stop too, saying so in its detail: ignoring it would need a judgement ESS cannot make
(fail closed), and adopting it costs at most a stop that a signed reset ends. The command
processor also reports it as an ``unauthorized_access`` security event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

from ess.core.attestation import seal_problem
from ess.core.ids import derive_id
from ess.core.reader import Trust
from ess.core.state import EssState
from schemas import ActivatedEntry, ReasonCode, RecordError, StateEntry, clip, decode

__all__ = ["MAX_CARRIED_SEQ", "LostStop", "lost_stop", "proof_of", "reestablish"]

#: Highest ``seq`` a re-established stop carries the log to: the largest integer every JSON
#: reader represents exactly (JavaScript's 2**53 - 1). A record claiming more is not carried
#: forward (it was not written by ESS); the stop is re-established at the log's next ``seq``.
MAX_CARRIED_SEQ: Final = 2**53 - 1


@dataclass(frozen=True, slots=True)
class LostStop:
    """An ACTIVE PolicyStore record at a ``seq`` the state log does not reach.

    ``proof`` is the verified activation the record carries (``None``: unverified, and
    ``problem`` says why). ``reason`` and ``since`` are the record's own words, for the detail.
    """

    record_seq: int
    reason: str
    since: str
    proof: ActivatedEntry | None
    problem: str | None = None

    @property
    def verified(self) -> bool:
        """The record carries an activation the processor signed for this log."""
        return self.proof is not None


def lost_stop(stored: Mapping[str, Any] | None, state: EssState, trust: Trust) -> LostStop | None:
    """The stop ``stored`` (the ``emergency_stop`` value as read) proves beyond the log whose
    fold is ``state``, or ``None``.

    ``None`` unless the record says ``"active": true`` at an integer ``seq`` at or beyond the
    log's next ``seq`` *and* the log is INACTIVE. A log that is ACTIVE already enforces a stop;
    a record without a usable ``seq`` cannot be placed beyond the log (the projector overwrites
    such a record from the log, see ``store_is_ahead``).
    """
    if not isinstance(stored, Mapping) or stored.get("active") is not True or state.active:
        return None
    seq = stored.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < state.next_seq:
        return None
    reason = clip(str(stored.get("reason")), 64)
    since = clip(str(stored.get("timestamp")), 64)
    proof, problem = proof_of(stored, seq=seq, trust=trust)
    return LostStop(record_seq=seq, reason=reason, since=since, proof=proof, problem=problem)


def proof_of(
    stored: Mapping[str, Any], *, seq: int, trust: Trust
) -> tuple[ActivatedEntry | None, str | None]:
    """The activation ``stored`` carries, verified, or ``(None, why not)``.

    Verified means: sealed by a key in ``trust`` for ``trust.scope`` (this deployment's state
    log), an ``activated`` entry, at or before the record's ``seq``, with the record's reason.
    """
    document = stored.get("activation_entry")
    if document is None:
        return None, "it carries no signed activation (activation_entry)"
    if not isinstance(document, Mapping):
        return None, "its activation_entry is not a JSON object"
    problem = seal_problem(document, trust.processor_keys, scope=trust.scope)
    if problem is not None:
        return None, f"its activation_entry is not the processor's: {problem}"
    try:
        entry: StateEntry = decode(StateEntry, orjson.dumps(dict(document)))
    except (RecordError, TypeError, orjson.JSONEncodeError) as exc:
        return None, f"its activation_entry does not decode: {clip(str(exc), 300)}"
    if not isinstance(entry, ActivatedEntry):
        return None, f"its activation_entry is a {entry.kind} entry, not an activation"
    if entry.seq > seq:
        return None, f"its activation (seq {entry.seq}) is later than the record's seq {seq}"
    if stored.get("reason") != entry.reason.value:
        return None, "the record's reason is not its activation's"
    return entry, None


def reestablish(
    lost: LostStop, state: EssState, *, now: datetime, scope: str, source: str
) -> ActivatedEntry | None:
    """The ``activated`` entry (reason ``state_log_lost``) that re-establishes ``lost`` on the
    log folded into ``state`` (``scope``: the state topic), decided at ``now`` by ``source``;
    ``None`` when that entry is already applied.

    Its ``seq`` is the record's plus one (never below the log's next), unless the record
    claims more than :data:`MAX_CARRIED_SEQ`. Its id is derived from the record, so a
    processor that re-establishes the same record twice (a crash before the append was seen)
    records it once.
    """
    proof = lost.proof
    command_id = derive_id(
        "state-log-lost",
        scope,
        lost.record_seq,
        proof.command_id if proof is not None else "",
        lost.since,
    )
    if ("trip", command_id) in state.applied:
        return None
    carried = lost.record_seq < MAX_CARRIED_SEQ
    seq = max(state.next_seq, lost.record_seq + 1) if carried else state.next_seq
    numbering = (
        f"the log continues at seq {seq}"
        if carried
        else f"seq {lost.record_seq} is beyond {MAX_CARRIED_SEQ} and not carried forward"
    )
    if proof is not None:
        signer = proof.signer or "?"
        detail = (
            f"the state log was lost: it ends before seq {lost.record_seq}, where the "
            f"PolicyStore record emergency_stop says ESS is ACTIVE, with the activation signed "
            f"by processor key {signer} (seq {proof.seq}, {proof.reason.value}: "
            f"{clip(proof.detail, 500)!r}, command {proof.command_id}, since "
            f"{proof.ts.isoformat()}). Stop re-established; {numbering}. Reset it with a "
            "signed reset once the cause is known."
        )
    else:
        detail = (
            f"UNVERIFIED: the PolicyStore record emergency_stop says ESS is ACTIVE at seq "
            f"{lost.record_seq} (reason {lost.reason!r}, since {lost.since}), beyond the state "
            f"log's end, but {lost.problem}. Either the log was lost together with the "
            "processor key that signed it, or someone else wrote the record: stopped anyway "
            f"(fail closed); {numbering}. Find out which before resetting."
        )
    return ActivatedEntry(
        seq=seq,
        command_id=command_id,
        ts=now,
        reason=ReasonCode.STATE_LOG_LOST,
        detail=clip(detail),
        source=source,
        trigger=None,
    )

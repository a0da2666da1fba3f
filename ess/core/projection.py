"""Pure projections of the ESS state: the PolicyStore record and the events it announces.

Shared by the stream projector (:mod:`ess.roles.project.projector`) and the in-process controller
(:mod:`ess.api.controller`), so both write exactly the same record and events.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from ess.core.state import EssState
from schemas import (
    ActivatedEntry,
    EmergencyResetEvent,
    EmergencyStopEvent,
    PolicyRecord,
    ResetEntry,
    StateEntry,
)

#: ``timestamp`` of the record for an empty log (ESS never changed state). A fixed instant
#: rather than "now": the record must be the same on every replay and restart, and
#: ``timestamp`` means "when the state changed", which for an empty log is never.
NEVER: Final = datetime(1970, 1, 1, tzinfo=UTC)


def policy_record(
    state: EssState,
    *,
    refreshed_at: datetime,
    activation_entry: Mapping[str, Any] | None = None,
) -> PolicyRecord:
    """The ``emergency_stop`` record for ``state``, re-asserted at ``refreshed_at``.

    ``timestamp`` is when the state changed: the activation's time while ACTIVE, the reset's
    while INACTIVE, :data:`NEVER` for an empty log. It is never the refresh time (that is
    ``refreshed_at``), so a gate can show "stopped since" and judge staleness separately.
    ``seq`` is the last applied entry's (any kind), ``None`` for an empty log. The same
    shape as :class:`ess.api.EmergencyStopController` writes.

    ``activation_entry``: the current activation's entry exactly as the command processor
    sealed it (the JSON object read from the log). It goes into an ACTIVE record only, as the
    proof a processor that lost its log re-establishes the stop from
    (:mod:`ess.core.recovery`); an INACTIVE record never carries one.
    """
    activation = state.activation
    if activation is not None:
        return PolicyRecord(
            active=True,
            reason=activation.reason,
            timestamp=activation.ts,
            seq=state.last_seq,
            detail=activation.detail,
            refreshed_at=refreshed_at,
            activation_entry=dict(activation_entry) if activation_entry is not None else None,
        )
    return PolicyRecord(
        active=False,
        reason=None,
        timestamp=state.last_change or NEVER,
        seq=state.last_seq,
        detail="",
        refreshed_at=refreshed_at,
    )


def event_for(entry: StateEntry) -> EmergencyStopEvent | EmergencyResetEvent | None:
    """The event an entry announces, carrying the entry's ``seq``; ``None`` for kinds that
    announce nothing (``trip_recorded``, ``reset_approval``, ``reset_rejected``).

    ``timestamp`` is the entry's ``ts`` (when the processor decided), so a replayed or late
    event still says when it happened, not when it was sent.
    """
    if isinstance(entry, ActivatedEntry):
        return EmergencyStopEvent(
            reason=entry.reason, detail=entry.detail, timestamp=entry.ts, seq=entry.seq
        )
    if isinstance(entry, ResetEntry):
        return EmergencyResetEvent(
            reset_by=",".join(entry.operators),
            operators=entry.operators,
            timestamp=entry.ts,
            seq=entry.seq,
        )
    return None

"""The ESS state: what the state log says, folded. A frozen value, never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ess.core.growset import GrowSet
from schemas import ReasonCode, ResetCommand, TriggerRef


class Status(StrEnum):
    """INACTIVE: trading allowed. ACTIVE: trading stopped, venues being kept flat."""

    INACTIVE = "INACTIVE"
    ACTIVE = "ACTIVE"


@dataclass(frozen=True, slots=True)
class Activation:
    """The trip that moved ESS to ACTIVE (the first one; later trips are only recorded)."""

    seq: int
    command_id: str
    reason: ReasonCode
    detail: str
    source: str
    trigger: TriggerRef | None
    ts: datetime


@dataclass(frozen=True, slots=True)
class Approval:
    """One authorized operator's reset approval, pending a quorum. ``command`` is the signed
    reset it came from: it is re-checked against the operator's current key when the quorum
    is counted, and carried into the ``reset`` entry as its authorization."""

    operator: str
    expires_at: datetime
    command: ResetCommand | None = None


@dataclass(frozen=True, slots=True)
class EssState:
    """Folded state log.

    ``applied`` holds ``(namespace, command_id)`` pairs of every command ever applied.
    Namespaces are ``trip``, ``reset`` and ``unauthenticated`` (forged or unknown-operator
    resets), so that a forgery can never "use up" the id of a real trip or reset. A reset id
    is applied at most once, ever. Trip ids are deduplicated per epoch: ``epoch_trips`` holds
    the trip ids applied since the last reset (``last_reset``), and an id from an earlier
    epoch only counts as a duplicate when its trigger happened before that reset (a late
    redelivery), see :func:`ess.core.decide`.
    ``epoch`` counts resets; detectors re-anchor their loss baselines when it changes.

    The three sets are :class:`~ess.core.growset.GrowSet`: adding to one never copies it
    whole, so folding a log is O(n log n) at worst, not quadratic.
    """

    status: Status = Status.INACTIVE
    next_seq: int = 0
    activation: Activation | None = None
    trips_recorded: int = 0
    approvals: tuple[Approval, ...] = ()
    epoch: int = 0
    last_change: datetime | None = None
    applied: GrowSet[tuple[str, str]] = field(default_factory=GrowSet)
    used_nonces: GrowSet[tuple[str, str]] = field(default_factory=GrowSet)
    epoch_trips: GrowSet[str] = field(default_factory=GrowSet)
    last_reset: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status is Status.ACTIVE

    @property
    def last_seq(self) -> int | None:
        """``seq`` of the last applied entry, ``None`` for an empty log."""
        return self.next_seq - 1 if self.next_seq else None


INITIAL_STATE = EssState()

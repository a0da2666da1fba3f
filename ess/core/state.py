"""The ESS state: what the state log says, folded. A frozen value, never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from schemas import ReasonCode, TriggerRef


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
    """One authorized operator's reset approval, pending a quorum."""

    operator: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class EssState:
    """Folded state log.

    ``applied`` holds ``(namespace, command_id)`` pairs: a command is applied at most once.
    Namespaces are ``trip``, ``reset`` and ``unauthenticated`` (forged or unknown-operator
    resets), so that a forgery can never "use up" the id of a real trip or reset.
    ``epoch`` counts resets; detectors re-anchor their loss baselines when it changes.
    """

    status: Status = Status.INACTIVE
    next_seq: int = 0
    activation: Activation | None = None
    trips_recorded: int = 0
    approvals: tuple[Approval, ...] = ()
    epoch: int = 0
    last_change: datetime | None = None
    applied: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    used_nonces: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @property
    def active(self) -> bool:
        return self.status is Status.ACTIVE

    @property
    def last_seq(self) -> int | None:
        """``seq`` of the last applied entry, ``None`` for an empty log."""
        return self.next_seq - 1 if self.next_seq else None


INITIAL_STATE = EssState()

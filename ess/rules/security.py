"""Security rules (topic ``security``, key ``source``): every ``SecurityEvent`` trips at once,
with the reason code of its kind.

One rule per kind, so each kind latches on its own: an ``api_key_invalid`` already reported
for a source must not hide a later ``unauthorized_access`` from it. Duplicates (same
``event_id``) cannot double-report: within an epoch the first one latches; after a reset the
epoch floor ignores anything at or before the newest event seen before it, which is where a
redelivered old event sits.
"""

from __future__ import annotations

from datetime import datetime

from ess.rules._common import (
    EMPTY_LATCH,
    LatchState,
    StateCodec,
    detection,
    fire_latch,
    latch_gate,
    to_us,
)
from ess.rules.base import Context, Coordinates, Detection
from ess.rules.config import DetectionConfig
from schemas import ReasonCode, SecurityEvent, SecurityEventKind


class SecurityEventRule(StateCodec):
    """Trip on a ``SecurityEvent`` of one ``kind`` (rule name = reason code = kind)."""

    topic = "security"
    state_type = LatchState

    def __init__(self, kind: SecurityEventKind) -> None:
        self.kind = kind
        self.name = kind.value
        self.reason = ReasonCode(kind.value)

    def key(self, record: SecurityEvent) -> str:
        """The reporting source."""
        return record.source

    def initial(self) -> LatchState:
        """Armed, nothing seen."""
        return EMPTY_LATCH

    def step(
        self, state: LatchState, record: SecurityEvent, coords: Coordinates, ctx: Context
    ) -> tuple[LatchState, Detection | None]:
        """Fire on the first event of this kind from the source (per epoch)."""
        if record.kind is not self.kind:
            return state, None
        new, armed = latch_gate(state, to_us(record.ts), ctx)
        if not armed:
            return new, None
        detail = f"{self.kind.value} reported by {record.source} ({record.event_id})"
        if record.detail:
            detail = f"{detail}: {record.detail}"
        return fire_latch(new), detection(
            self.name, self.reason, record.source, detail, (coords, record.ts)
        )

    def tick(
        self, state: LatchState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[LatchState, Detection | None]:
        """Not a silence rule."""
        return state, None


def security_rules(config: DetectionConfig) -> list[SecurityEventRule]:
    """One rule per :class:`SecurityEventKind` (all thresholds are "at once")."""
    del config  # no thresholds; the signature matches the other families
    return [SecurityEventRule(kind) for kind in SecurityEventKind]

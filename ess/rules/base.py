"""The shape every detection rule has: a pure fold over one key's event-time state.

A rule never reads a clock, a table or a topic. The stream shell (``streams/``) looks up the
per-key state, calls :meth:`Rule.step` for each record (and :meth:`Rule.tick` when time moves
without records, for silence rules), stores the new state and turns a :class:`Detection` into
a ``TripCommand`` with :func:`trip_command`. Replay calls the very same functions.

Conventions every rule follows:

* ``step`` receives records in any order and possibly twice (at-least-once delivery): state
  keeps what it needs (recent ``event_id``s, exact per-key event times in the window) so that
  out-of-order and duplicate records never double count.
* Windows mean "in any interval of that length", evaluated on every record (never on window
  close): the state is the exact list of event times still inside the window.
* A rule *latches* per key and epoch: once it has fired for a key it stays quiet until the
  ESS epoch changes (an authorized reset), then re-anchors its baselines and re-arms.
* State must be small and JSON-serializable via ``dump`` / ``load``: it is stored in a
  changelogged table, and changelog replay time grows with value size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from ess.core.ids import derive_id
from schemas import ReasonCode, TriggerRef, TripCommand

R_contra = TypeVar("R_contra", contravariant=True)
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Coordinates:
    """Where a record sits: enough to find it again (``TriggerRef`` minus event time), and
    when the broker logged it (``logged_us``: the Kafka timestamp in microseconds, ``None``
    when unknown). Rules that measure silence use the earlier of that and the record's own
    ``ts``, so a producer cannot postpone a silence by stamping a record in the future."""

    topic: str
    partition: int
    offset: int
    logged_us: int | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule may know beyond the record: the current ESS ``epoch`` (resets so far).

    When ``epoch`` is newer than the one stored in a key's state, the rule re-anchors its
    baselines (peak equity, day-start equity, ...) and re-arms its latch.
    """

    epoch: int = 0
    #: Event time at which ``epoch`` began (the ``ts`` of the reset), when the caller knows it.
    #: Silence rules re-anchor their silence clock there after a reset; without it they use
    #: the first watermark they see in the new epoch (which a fast replay may not reproduce).
    epoch_started: datetime | None = None


@dataclass(frozen=True, slots=True)
class Detection:
    """A threshold crossing: what, for which key, why, and which record crossed it."""

    rule: str
    reason: ReasonCode
    key: str
    detail: str
    trigger: TriggerRef
    #: Extra input of the derived command id, for a re-detection that must point at the same
    #: triggering record as an earlier one (a silence rule still silent after a reset: its
    #: last record is unchanged). Empty for every other detection, which keeps their ids.
    discriminator: str = ""


class Rule(Protocol, Generic[R_contra, S]):
    """A detection rule over records of type ``R`` with per-key state ``S``."""

    #: Stable rule name (used in ``source`` = ``detector:<name>`` and in derived ids).
    name: str
    #: Logical input topic (``"pnl"``, ``"fills"``, ... as in ``schemas.topic_registry``).
    topic: str

    def key(self, record: R_contra) -> str:
        """The per-key identity of a record (account, component, symbol, source)."""
        ...

    def initial(self) -> S:
        """State of a key never seen before."""
        ...

    def step(
        self, state: S, record: R_contra, coords: Coordinates, ctx: Context
    ) -> tuple[S, Detection | None]:
        """Fold one record into the key's state; maybe detect."""
        ...

    def tick(
        self, state: S, key: str, watermark: datetime, ctx: Context
    ) -> tuple[S, Detection | None]:
        """Time moved to ``watermark`` (event time) with no record for this key: silence
        rules detect here; every other rule returns ``(state, None)``."""
        ...

    def dump(self, state: S) -> dict[str, Any]:
        """JSON-compatible form of ``state`` for table storage."""
        ...

    def load(self, data: dict[str, Any]) -> S:
        """Inverse of :meth:`dump`."""
        ...


def trip_command(detection: Detection) -> TripCommand:
    """The ``TripCommand`` for a detection. Its ``command_id`` is derived from the rule, the key
    and the triggering record's coordinates, so a re-detection after a restart, a replay, or a
    second detector group produces the *same* id and the processor records it once. A
    ``discriminator`` (only set on a deliberate re-detection after a reset) is appended."""
    trigger = detection.trigger
    parts: tuple[object, ...] = (
        "detector",
        detection.rule,
        detection.key,
        trigger.topic,
        trigger.partition,
        trigger.offset,
    )
    if detection.discriminator:
        parts = (*parts, detection.discriminator)
    return TripCommand(
        command_id=derive_id(*parts),
        reason=detection.reason,
        detail=detection.detail,
        source=f"detector:{detection.rule}",
        trigger=trigger,
        ts=trigger.event_ts,
    )

"""Building blocks shared by the rule families: time as integers, state (de)serialization,
exact sliding-window counting, the re-arm/latch convention and trigger construction.

Event time inside rule state is an ``int`` of microseconds since the Unix epoch: exact (no
float rounding at a window edge), cheap to compare, and JSON-native.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from ess.rules.base import Context, Coordinates, Detection
from schemas import ReasonCode, TriggerRef

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
SECOND_US = 1_000_000
#: Longest ``detail`` a trip command accepts (``schemas.records.Text``).
MAX_DETAIL = 4096

#: Separator of compound keys (``account|symbol``, ``component|operation``). A part holding
#: the separator is escaped, so two different pairs never share a key.
KEY_SEP = "|"


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact integer arithmetic)."""
    return (moment - _EPOCH) // _US


def from_us(micros: int) -> datetime:
    """Inverse of :func:`to_us` (UTC)."""
    return _EPOCH + timedelta(microseconds=micros)


def sec_to_us(seconds: float) -> int:
    """A configured duration in seconds as whole microseconds."""
    return round(seconds * SECOND_US)


def compound_key(first: str, second: str) -> str:
    """``first|second``, escaping ``\\`` and ``|`` inside the parts (rare, so checked first)."""
    if KEY_SEP in first or "\\" in first:
        first = first.replace("\\", "\\\\").replace(KEY_SEP, "\\" + KEY_SEP)
    if KEY_SEP in second or "\\" in second:
        second = second.replace("\\", "\\\\").replace(KEY_SEP, "\\" + KEY_SEP)
    return first + KEY_SEP + second


def fmt_sec(micros: int) -> str:
    """A duration for humans: ``90s``, ``1.5s``."""
    return f"{micros / SECOND_US:g}s"


def trigger_ref(coords: Coordinates, event_ts: datetime) -> TriggerRef:
    """The contract's trigger: where the crossing record sits, and its event time."""
    return TriggerRef(
        topic=coords.topic, partition=coords.partition, offset=coords.offset, event_ts=event_ts
    )


# --------------------------------------------------------------------------- state codec

S = TypeVar("S")


def dump_state(state: object) -> dict[str, Any]:
    """A frozen state dataclass as a JSON-compatible dict (tuples become lists)."""
    return {f.name: _thaw(getattr(state, f.name)) for f in fields(state)}  # type: ignore[arg-type]


def load_state(cls: type[S], data: dict[str, Any]) -> S:
    """Inverse of :func:`dump_state`: lists come back as tuples, unknown keys are refused."""
    return cls(**{name: _freeze(value) for name, value in data.items()})


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


class StateCodec:
    """``dump``/``load`` for rules whose state is one frozen dataclass (``state_type``)."""

    state_type: ClassVar[type[Any]]

    def dump(self, state: Any) -> dict[str, Any]:
        """JSON-compatible form of ``state`` for table storage."""
        return dump_state(state)

    def load(self, data: dict[str, Any]) -> Any:
        """Inverse of :meth:`dump`."""
        return load_state(self.state_type, data)


# --------------------------------------------------------------------------- count windows


@dataclass(frozen=True, slots=True)
class WindowState:
    """Exact event list of one key of a "more than N in any T" rule.

    ``times`` is sorted and ``ids`` is aligned with it: the window doubles as the dedupe set
    (a redelivered record is either still in it, or older than anything it could still count
    towards). ``newest`` is the newest event time seen (also while latched), ``floor`` the
    newest event time seen before the epoch changed: records at or before it belong to the
    previous epoch and are ignored (a reset acknowledged them; a redelivery must not re-trip).
    """

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    times: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()


EMPTY_WINDOW = WindowState()


def rearm_window(state: WindowState, epoch: int) -> WindowState:
    """The state of a key in a new epoch: cleared window, latch off, floor at ``newest``."""
    return WindowState(epoch=epoch, newest=state.newest, floor=state.newest)


def densest(times: tuple[int, ...], index: int, span: int) -> tuple[int, int]:
    """The most events in any closed interval of length ``span`` holding ``times[index]``,
    and the index of that interval's first event.

    Every earlier interval had at most the limit (or the rule would have fired and latched),
    so only intervals holding the new event can newly exceed it. Such an interval can be slid
    right until it starts at an event, hence only starts in ``[t - span, t]`` are tried.
    """
    moment = times[index]
    first = bisect_left(times, moment - span, 0, index)
    best, best_start = 0, first
    for start in range(first, index + 1):
        count = bisect_right(times, times[start] + span, start) - start
        if count > best:
            best, best_start = count, start
    return best, best_start


def window_add(
    state: WindowState,
    moment: int,
    event_id: str,
    ctx: Context,
    *,
    span: int,
    lateness: int,
    limit: int,
) -> tuple[WindowState, int, int]:
    """Fold one event at ``moment`` into a "more than ``limit`` in any ``span``" window.

    Returns the new state (the same object when nothing changed), the densest count of an
    interval holding the event and that interval's first event time. The count is 0 when the
    event does not count: a duplicate, too late (older than ``lateness`` behind the newest
    event), from before the epoch floor, or the key is latched. A count above ``limit`` means
    the rule fires; the returned state is then latched.
    """
    if ctx.epoch > state.epoch:
        state = rearm_window(state, ctx.epoch)
    newest = state.newest
    if newest is None or moment > newest:
        newest = moment
    floor = state.floor
    times = state.times
    horizon = newest - span - lateness
    if (
        state.fired
        or (floor is not None and moment <= floor)
        or moment < horizon
        or event_id in state.ids
    ):
        if newest != state.newest:
            state = WindowState(state.epoch, state.fired, newest, floor, times, state.ids)
        return state, 0, 0
    ids = state.ids
    # Keep only what an interval holding a record up to ``lateness`` late could still reach.
    cut = bisect_left(times, horizon)
    if not times or moment >= times[-1]:
        # In order (the common case): one slice-and-append per tuple, and the interval ending
        # at the new event is the densest holding it.
        times = (*times[cut:], moment)
        ids = (*ids[cut:], event_id)
        start = bisect_left(times, moment - span)
        count = len(times) - start
    else:
        index = bisect_right(times, moment, cut) - cut
        times = (*times[cut : cut + index], moment, *times[cut + index :])
        ids = (*ids[cut : cut + index], event_id, *ids[cut + index :])
        count, start = densest(times, index, span)
    first = times[start]
    if count > limit:
        # Latched: the list is not needed until the epoch changes (then it is cleared).
        return WindowState(state.epoch, True, newest, floor, (), ()), count, first
    return WindowState(state.epoch, False, newest, floor, times, ids), count, first


# --------------------------------------------------------------------------- instant rules


@dataclass(frozen=True, slots=True)
class LatchState:
    """State of a rule that fires on one record: the latch and the epoch floor (see
    :class:`WindowState` for ``newest`` and ``floor``)."""

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None


EMPTY_LATCH = LatchState()


def latch_gate(state: LatchState, moment: int, ctx: Context) -> tuple[LatchState, bool]:
    """Advance an instant rule's state for a record at ``moment``; whether it may fire.

    It may not when latched in this epoch or when the record predates the epoch's floor.
    """
    if ctx.epoch > state.epoch:
        state = LatchState(ctx.epoch, False, state.newest, state.newest)
    if state.newest is None or moment > state.newest:
        state = LatchState(state.epoch, state.fired, moment, state.floor)
    armed = not state.fired and (state.floor is None or moment > state.floor)
    return state, armed


def fire_latch(state: LatchState) -> LatchState:
    """The latched version of ``state``."""
    return LatchState(state.epoch, True, state.newest, state.floor)


def detection(
    rule: str,
    reason: ReasonCode,
    key: str,
    detail: str,
    trigger: tuple[Coordinates, datetime],
    *,
    discriminator: str = "",
) -> Detection:
    """A :class:`Detection` whose trigger is the record at ``trigger = (coords, event_ts)``.

    ``detail`` is cut to the contract's 4,096 characters: it quotes record fields (ids,
    checks, free text), and an over-long detail must not make the trip command invalid.
    """
    coords, event_ts = trigger
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "\u2026"
    return Detection(rule, reason, key, detail, trigger_ref(coords, event_ts), discriminator)

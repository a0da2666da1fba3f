"""Silence as a signal: a key that stops producing records trips (``heartbeat_lost`` per
component, ``data_feed_stale`` per symbol). Shared by :mod:`ess.rules.system` and
:mod:`ess.rules.market`.

``step`` only remembers the newest record of the key (time and coordinates: a maximum, so
order and duplicates do not matter). A record's time is the earlier of its ``ts`` and the
broker's timestamp of it: a record stamped in the future (up to ``max_future_skew_sec`` is
accepted) would otherwise postpone the silence by that much. ``tick`` does the detecting:
when the watermark is more than ``timeout`` past the newest record, it fires with that
record as the trigger and ``event_ts = last + timeout`` -- the moment the silence became
too long -- so a live run, a replay and a second detector group agree on the decision
whatever their tick cadence.

Keys to watch: every key with state, plus :attr:`SilenceRule.required` keys before their
first record. For those there is no record: the silence clock starts at the first watermark
the rule is ticked with, and the trigger names the topic with partition 0, offset 0.

After a reset (epoch change) the rule re-arms and the silence clock restarts at
``ctx.epoch_started`` (else at the first watermark of the new epoch): a key still silent
trips again one ``timeout`` later. That re-detection has the same triggering record as the
first, so it carries a ``discriminator`` (``epoch:<n>``) to get a new command id; the
processor would otherwise drop it as the already-applied first trip.

Announced silence (``heartbeat_lost`` only: rules built with ``max_maintenance_sec``). The
newest record of a key also says what it announced (``HealthBeat.lifecycle``):

* ``retired``: the key is no longer watched (no detection) until a newer ``running`` record
  registers it again. A *required* key cannot retire itself: it stays watched (the operator
  declared it must beat; only the detection config can release it).
* ``maintenance``: the silence clock starts at ``maintenance_until`` instead of the record,
  but never later than ``max_maintenance_sec`` after the record: one announcement cannot
  disarm the check for longer than that.

Both come from the newest record only (by the same time as ``last``), so an older beat
delivered late never undoes a newer announcement, and order and duplicates still do not
matter. A key that falls silent without announcing anything trips as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, Protocol

from ess.rules._common import (
    StateCodec,
    detection,
    fmt_sec,
    from_us,
    sec_to_us,
    to_us,
)
from ess.rules.base import Context, Coordinates, Detection
from schemas import ComponentLifecycle, ReasonCode


class _Timed(Protocol):
    @property
    def ts(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class SilenceState:
    """Newest record of a key (``last`` and its coordinates) and the silence clock's
    ``anchor`` when that is later than ``last`` (a required key never seen; a re-arm).

    ``retired`` and ``until`` are what the newest record announced: retirement, or the end
    of a maintenance (already capped, microseconds). Both default to "nothing announced", so
    a state stored before they existed loads unchanged."""

    epoch: int = 0
    fired: bool = False
    last: int | None = None
    topic: str = ""
    partition: int = 0
    offset: int = 0
    anchor: int | None = None
    retired: bool = False
    until: int | None = None


_EMPTY_SILENCE = SilenceState()


class SilenceRule(StateCodec):
    """Fire when a key has been silent for longer than ``timeout_sec`` (event time)."""

    state_type = SilenceState
    #: Marks a rule whose ``tick`` detects (see :func:`ess.rules.catalog.is_silence_rule`).
    silence: ClassVar[bool] = True

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        reason: ReasonCode,
        what: str,
        key_field: str,
        timeout_sec: float,
        required: frozenset[str],
        ignore: frozenset[str],
        never_seen_topic: str,
        max_maintenance_sec: float | None = None,
    ) -> None:
        """``max_maintenance_sec``: read the records' announced lifecycle (``HealthBeat``),
        capping a maintenance at this long after its record; ``None`` for records that
        announce nothing (market ticks)."""
        self.name = name
        self.topic = topic
        self.reason = reason
        self.required = required
        self._what = what
        self._key_field = key_field
        self._timeout = sec_to_us(timeout_sec)
        self._ignore = ignore
        self._never_seen_topic = never_seen_topic
        self._max_maintenance = (
            None if max_maintenance_sec is None else sec_to_us(max_maintenance_sec)
        )

    def key(self, record: Any) -> str:
        """The component or symbol."""
        key: str = getattr(record, self._key_field)
        return key

    def initial(self) -> SilenceState:
        """Never seen."""
        return _EMPTY_SILENCE

    def step(
        self, state: SilenceState, record: Any, coords: Coordinates, ctx: Context
    ) -> tuple[SilenceState, Detection | None]:
        """Remember the newest record (never detects: records end silence).

        The epoch is left to :meth:`tick`: it re-arms and re-anchors in one place, so a late
        record arriving after a reset cannot re-arm the rule with the pre-reset silence
        clock (which would re-fire at once with the first trip's command id)."""
        if getattr(record, self._key_field) in self._ignore:
            return state, None
        moment = to_us(record.ts)
        if coords.logged_us is not None:
            # A ts ahead of the broker's clock (within the decoder's future skew) must not
            # push the silence deadline out: the record counts from when it was logged.
            moment = min(moment, coords.logged_us)
        last = state.last
        if last is not None and moment <= last:
            return state, None
        cap = self._max_maintenance
        retired, until = (False, None) if cap is None else _announced(record, moment, cap)
        return SilenceState(
            state.epoch,
            state.fired,
            moment,
            coords.topic,
            coords.partition,
            coords.offset,
            state.anchor,
            retired,
            until,
        ), None

    def tick(
        self, state: SilenceState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[SilenceState, Detection | None]:
        """Fire when ``watermark`` is more than the timeout past the newest record (or the
        clock's anchor, or the end of an announced maintenance, whichever is latest)."""
        if key in self._ignore:
            return state, None
        required = key in self.required
        if state.retired and not required:
            # Announced its retirement: not watched until a newer running record. The epoch
            # is left alone; the re-arm happens on the first tick after it registers again.
            return state, None
        now = to_us(watermark)
        last = state.last
        if ctx.epoch > state.epoch:
            start = now if ctx.epoch_started is None else to_us(ctx.epoch_started)
            anchor = start if last is None or start > last else None
            state = replace(state, epoch=ctx.epoch, fired=False, anchor=anchor)
        if state.fired:
            return state, None
        base, counted_from = _silence_start(state)
        if base is None:
            if not required:
                return state, None
            # A required key never seen: the clock starts now.
            return SilenceState(state.epoch, False, None, anchor=now), None
        if now - base <= self._timeout:
            return state, None
        event_ts = from_us(base + self._timeout)
        if last is None:
            coords = Coordinates(self._never_seen_topic, 0, 0)
            since = f"never seen since {from_us(base).isoformat()}"
        else:
            coords = Coordinates(state.topic, state.partition, state.offset)
            since = f"last record at {from_us(last).isoformat()}"
            if counted_from == "anchor":
                since += f", silence counted from {from_us(base).isoformat()} (reset)"
            elif counted_from == "until":
                since += (
                    f", silence counted from the end of its announced maintenance at "
                    f"{from_us(base).isoformat()} (at most {fmt_sec(self._max_maintenance or 0)}"
                    " after the announcement)"
                )
            if state.retired:
                since += "; it announced its retirement, but it is a required component"
        detail = (
            f"no {self._what} from {key} for more than {fmt_sec(self._timeout)} ({since}; "
            f"watermark {watermark.isoformat()})"
        )
        # Only a re-arm reuses a trigger of an earlier epoch. A maintenance end is later than
        # any trip of an earlier epoch on the same record (that trip came after the end, the
        # reset after the trip, and the new epoch's anchor after the reset).
        on_anchor = counted_from == "anchor"
        discriminator = f"epoch:{state.epoch}" if on_anchor and state.epoch else ""
        return replace(state, fired=True), detection(
            self.name, self.reason, key, detail, (coords, event_ts), discriminator=discriminator
        )


def _silence_start(state: SilenceState) -> tuple[int | None, str]:
    """Where the silence clock of ``state`` starts, and from what: the latest of the newest
    record (``last``), the re-arm or never-seen anchor (``anchor``) and the end of an
    announced maintenance (``until``). ``None`` when nothing started it."""
    base, counted_from = state.last, "last"
    anchor = state.anchor
    if anchor is not None and (base is None or anchor > base):
        base, counted_from = anchor, "anchor"
    until = state.until
    if base is not None and until is not None and until > base:
        base, counted_from = until, "until"
    return base, counted_from


def _announced(record: Any, moment: int, cap: int) -> tuple[bool, int | None]:
    """``(retired, until)`` announced by ``record`` (which counts from ``moment``): the end of
    a maintenance is capped at ``cap`` after ``moment``, and is ``None`` when it is not after
    ``moment`` (nothing to extend: a ``ts`` taken back to the broker's timestamp can only
    move ``moment`` earlier, so this is a guard, not a case)."""
    lifecycle = getattr(record, "lifecycle", ComponentLifecycle.RUNNING)
    if lifecycle is ComponentLifecycle.RETIRED:
        return True, None
    ends = getattr(record, "maintenance_until", None)
    if lifecycle is not ComponentLifecycle.MAINTENANCE or ends is None:
        return False, None
    until = min(to_us(ends), moment + cap)
    return False, (until if until > moment else None)

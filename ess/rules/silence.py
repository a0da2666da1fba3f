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
"""

from __future__ import annotations

from dataclasses import dataclass
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
from schemas import ReasonCode


class _Timed(Protocol):
    @property
    def ts(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class SilenceState:
    """Newest record of a key (``last`` and its coordinates) and the silence clock's
    ``anchor`` when that is later than ``last`` (a required key never seen; a re-arm)."""

    epoch: int = 0
    fired: bool = False
    last: int | None = None
    topic: str = ""
    partition: int = 0
    offset: int = 0
    anchor: int | None = None


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
    ) -> None:
        self.name = name
        self.topic = topic
        self.reason = reason
        self.required = required
        self._what = what
        self._key_field = key_field
        self._timeout = sec_to_us(timeout_sec)
        self._ignore = ignore
        self._never_seen_topic = never_seen_topic

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
        return SilenceState(
            state.epoch,
            state.fired,
            moment,
            coords.topic,
            coords.partition,
            coords.offset,
            state.anchor,
        ), None

    def tick(
        self, state: SilenceState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[SilenceState, Detection | None]:
        """Fire when ``watermark`` is more than the timeout past the newest record (or the
        clock's anchor, whichever is later)."""
        if key in self._ignore:
            return state, None
        now = to_us(watermark)
        last, anchor = state.last, state.anchor
        if ctx.epoch > state.epoch:
            start = now if ctx.epoch_started is None else to_us(ctx.epoch_started)
            anchor = start if last is None or start > last else None
            state = SilenceState(
                ctx.epoch, False, last, state.topic, state.partition, state.offset, anchor
            )
        if state.fired:
            return state, None
        if last is None and anchor is None:
            if key not in self.required:
                return state, None
            # A required key never seen: the clock starts now.
            return SilenceState(state.epoch, False, None, anchor=now), None
        if anchor is not None and (last is None or anchor > last):
            base, on_anchor = anchor, True
        elif last is not None:
            base, on_anchor = last, False
        else:  # unreachable: handled above; keeps the types exact without an assert
            return state, None
        silent = now - base
        if silent <= self._timeout:
            return state, None
        event_ts = from_us(base + self._timeout)
        if last is None:
            coords = Coordinates(self._never_seen_topic, 0, 0)
            since = f"never seen since {from_us(base).isoformat()}"
        else:
            coords = Coordinates(state.topic, state.partition, state.offset)
            since = f"last record at {from_us(last).isoformat()}"
            if on_anchor:
                since += f", silence counted from {from_us(base).isoformat()} (reset)"
        detail = (
            f"no {self._what} from {key} for more than {fmt_sec(self._timeout)} ({since}; "
            f"watermark {watermark.isoformat()})"
        )
        discriminator = f"epoch:{state.epoch}" if on_anchor and state.epoch else ""
        fired = SilenceState(
            state.epoch, True, last, state.topic, state.partition, state.offset, state.anchor
        )
        return fired, detection(
            self.name, self.reason, key, detail, (coords, event_ts), discriminator=discriminator
        )

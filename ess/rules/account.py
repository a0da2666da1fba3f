"""Account loss rules (topic ``pnl``, key ``account_id``): daily loss, drawdown, flash crash.

Each keeps a baseline (day-start equity, running peak, recent highs) that a reset
re-anchors: on the first tick of a new epoch the baseline starts afresh from that tick, and
ticks at or before the newest tick seen before the reset (the epoch ``floor``) are ignored,
so neither a redelivered nor a late pre-reset tick can re-trip on the old baseline. Equity
ticks are idempotent facts (a duplicate has the same time and equity), so these rules need
no id set: every aggregate they keep (earliest, minimum, maximum) ignores a repeat.

A baseline of zero or negative equity makes a loss ratio meaningless: no ratio is judged
against it (an account with no equity has nothing to lose; other rules still watch its
behaviour), and the daily loss rule re-anchors its day on the first positive tick.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ess.rules._common import (
    SECOND_US,
    StateCodec,
    detection,
    fmt_sec,
    from_us,
    sec_to_us,
    to_us,
)
from ess.rules.base import Context, Coordinates, Detection
from ess.rules.config import DetectionConfig, day_bounds
from schemas import PnlTick, ReasonCode

_DAY_US = 86_400 * SECOND_US


class _PnlRule(StateCodec):
    topic = "pnl"

    def key(self, record: PnlTick) -> str:
        """The account."""
        return record.account_id

    def tick(
        self, state: object, key: str, watermark: datetime, ctx: Context
    ) -> tuple[object, None]:
        """Not a silence rule."""
        return state, None


# --------------------------------------------------------------------------- daily loss


@dataclass(frozen=True, slots=True)
class DailyLossState:
    """The current trading day of one account.

    ``anchor`` is the equity of the earliest tick of the day (``anchor_ts``) in this epoch, so
    a tick of the day that arrives late but is earlier becomes the anchor; ``low`` is the
    lowest equity of the day. Once the day's first tick has arrived, both are
    order-independent, so whether the rule fires does not depend on the order of the rest
    (the triggering tick is the one whose arrival made the loss reach the limit). Ticks that
    arrive before the day's first tick anchor the day provisionally, and a loss judged
    against such an anchor stands: a kill switch cannot wait for late data. While the anchor
    is zero or negative nothing can be judged (:attr:`judged` is false), so the first tick
    with positive equity re-anchors the day: one tick at or below zero at the start of the
    day must not switch the rule off until midnight.
    ``day_start``/``day_end`` bound the day (cached: computing them for an IANA zone is the
    expensive part). A tick of an earlier day than the current one is too late: that day is
    closed and the tick is ignored.
    """

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    day_start: int | None = None
    day_end: int | None = None
    anchor: float = 0.0
    anchor_ts: int = 0
    low: float = 0.0

    @property
    def judged(self) -> bool:
        """Whether losses are judged: the day has an anchor with positive equity."""
        return self.anchor > 0


_EMPTY_DAILY = DailyLossState()


class DailyLossRule(_PnlRule):
    """``daily_loss``: equity at or below ``(1 - daily_loss)`` times the day-start equity.

    The day starts at midnight of :attr:`DetectionConfig.day_boundary` (UTC by default);
    the day-start equity is the first tick of the day, or the first tick after a reset.
    """

    name = "daily_loss"
    reason = ReasonCode.DAILY_LOSS
    state_type = DailyLossState

    def __init__(self, config: DetectionConfig) -> None:
        zone = config.day_zone
        # A fixed offset (UTC included) gives days by integer arithmetic; zones with daylight
        # saving need the calendar, done once per day per account thanks to the cached bounds.
        offset = zone.utcoffset(None) if isinstance(zone, timezone) else None
        self._offset_us = None if offset is None else offset // timedelta(microseconds=1)
        self._zone = zone
        self._default = config.account.daily_loss
        self._overrides = {a: config.limits_for(a).daily_loss for a in config.account_overrides}

    def initial(self) -> DailyLossState:
        """No day yet."""
        return _EMPTY_DAILY

    def _bounds(self, moment: int) -> tuple[int, int]:
        if self._offset_us is not None:
            start = (moment + self._offset_us) // _DAY_US * _DAY_US - self._offset_us
            return start, start + _DAY_US
        start_dt, end_dt = day_bounds(from_us(moment), self._zone)
        return to_us(start_dt), to_us(end_dt)

    def step(
        self, state: DailyLossState, record: PnlTick, coords: Coordinates, ctx: Context
    ) -> tuple[DailyLossState, Detection | None]:
        """Fold the tick into the day; fire when the day's loss reaches the limit."""
        moment = to_us(record.ts)
        equity = record.equity
        epoch, fired, newest, floor = state.epoch, state.fired, state.newest, state.floor
        day_start, day_end = state.day_start, state.day_end
        anchor, anchor_ts, low = state.anchor, state.anchor_ts, state.low
        if ctx.epoch > epoch:
            # Re-anchor from the next tick: forget the day, ignore anything up to ``newest``.
            epoch, fired, floor, day_start, day_end = ctx.epoch, False, newest, None, None
        if newest is None or moment > newest:
            newest = moment
        if (floor is not None and moment <= floor) or (
            day_start is not None and moment < day_start
        ):
            return _daily(state, epoch, fired, newest, floor), None
        if day_start is None or day_end is None or moment >= day_end:
            day_start, day_end = self._bounds(moment)
            anchor, anchor_ts, low = equity, moment, equity
        elif anchor <= 0 < equity:
            # No equity to lose from yet: the first positive tick anchors the day.
            anchor, anchor_ts, low = equity, moment, equity
        elif anchor > 0 >= equity and moment < anchor_ts:
            pass  # before the anchor and nothing to lose: neither anchor nor loss
        else:
            if moment < anchor_ts:
                anchor, anchor_ts = equity, moment
            low = min(low, equity)
        new = DailyLossState(
            epoch, fired, newest, floor, day_start, day_end, anchor, anchor_ts, low
        )
        if fired or anchor <= 0:
            return new, None
        limit = self._overrides.get(record.account_id, self._default)
        loss = (anchor - low) / anchor
        if loss < limit:
            return new, None
        detail = (
            f"equity of account {record.account_id} fell to {low:,.2f}, {loss:.2%} below the "
            f"day-start equity {anchor:,.2f} (day from {from_us(day_start).isoformat()}): "
            f"limit {limit:.2%}"
        )
        return _fired_daily(new), detection(
            self.name, self.reason, record.account_id, detail, (coords, record.ts)
        )


def _daily(
    state: DailyLossState, epoch: int, fired: bool, newest: int | None, floor: int | None
) -> DailyLossState:
    if (epoch, fired, newest, floor) == (state.epoch, state.fired, state.newest, state.floor):
        return state
    if epoch != state.epoch:
        return DailyLossState(epoch, fired, newest, floor)
    return DailyLossState(
        epoch,
        fired,
        newest,
        floor,
        state.day_start,
        state.day_end,
        state.anchor,
        state.anchor_ts,
        state.low,
    )


def _fired_daily(state: DailyLossState) -> DailyLossState:
    return DailyLossState(
        state.epoch,
        True,
        state.newest,
        state.floor,
        state.day_start,
        state.day_end,
        state.anchor,
        state.anchor_ts,
        state.low,
    )


# --------------------------------------------------------------------------- drawdown


@dataclass(frozen=True, slots=True)
class DrawdownState:
    """The running peak equity of one account in this epoch (``None`` before a tick)."""

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    peak: float | None = None
    peak_ts: int = 0


_EMPTY_DRAWDOWN = DrawdownState()


class DrawdownRule(_PnlRule):
    """``equity_drawdown``: equity at or below ``(1 - drawdown)`` times the running peak.

    The peak is the highest equity seen in this epoch, judged in arrival order: a late low
    tick is compared with a peak that may postdate it. That is the conservative choice for a
    kill switch (an exact event-time peak needs the whole history), and it only differs from
    event-time order when equity swung by the whole drawdown limit within the lateness.
    """

    name = "equity_drawdown"
    reason = ReasonCode.EQUITY_DRAWDOWN
    state_type = DrawdownState

    def __init__(self, config: DetectionConfig) -> None:
        self._default = config.account.drawdown
        self._overrides = {a: config.limits_for(a).drawdown for a in config.account_overrides}

    def initial(self) -> DrawdownState:
        """No peak yet."""
        return _EMPTY_DRAWDOWN

    def step(
        self, state: DrawdownState, record: PnlTick, coords: Coordinates, ctx: Context
    ) -> tuple[DrawdownState, Detection | None]:
        """Raise the peak or measure the drop from it."""
        moment = to_us(record.ts)
        equity = record.equity
        epoch, fired, newest, floor = state.epoch, state.fired, state.newest, state.floor
        peak, peak_ts = state.peak, state.peak_ts
        if ctx.epoch > epoch:
            epoch, fired, floor, peak = ctx.epoch, False, newest, None
        if newest is None or moment > newest:
            newest = moment
        if floor is not None and moment <= floor:
            if epoch == state.epoch and newest == state.newest:
                return state, None
            return DrawdownState(epoch, fired, newest, floor, peak, peak_ts), None
        if peak is None or equity > peak:
            peak, peak_ts = equity, moment
        if fired or peak <= 0:
            return DrawdownState(epoch, fired, newest, floor, peak, peak_ts), None
        limit = self._overrides.get(record.account_id, self._default)
        drop = (peak - equity) / peak
        if drop < limit:
            if (epoch, newest, peak) == (state.epoch, state.newest, state.peak):
                return state, None
            return DrawdownState(epoch, False, newest, floor, peak, peak_ts), None
        detail = (
            f"equity of account {record.account_id} fell to {equity:,.2f}, {drop:.2%} below "
            f"its peak {peak:,.2f} of {from_us(peak_ts).isoformat()}: limit {limit:.2%}"
        )
        return DrawdownState(epoch, True, newest, floor, peak, peak_ts), detection(
            self.name, self.reason, record.account_id, detail, (coords, record.ts)
        )


# --------------------------------------------------------------------------- flash crash

#: Points kept per account before thinning (see :class:`FlashCrashState`).
MAX_FLASH_POINTS = 2048


@dataclass(frozen=True, slots=True)
class FlashCrashState:
    """The ``(ts, equity)`` points of one account within the crash window plus the
    out-of-order tolerance, sorted by time (``times`` and ``equities`` aligned).

    With the points, a tick is judged exactly in event time whatever the arrival order: a
    late low tick against the highs of the window before it, a late high tick against the
    lows of the window after it. Above :data:`MAX_FLASH_POINTS` (a tick more often than every
    45 ms with the defaults) the points are thinned (see :func:`_thin`): exact for in-order
    ticks while dominated points suffice, conservative (may fire early) beyond that, and no
    longer exact for late ticks at that rate.
    """

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    times: tuple[int, ...] = ()
    equities: tuple[float, ...] = ()


_EMPTY_FLASH = FlashCrashState()


class FlashCrashRule(_PnlRule):
    """``flash_crash``: equity at or below ``(1 - flash_crash)`` times the highest equity
    observed within the preceding ``flash_crash_window_sec`` (event time, inclusive)."""

    name = "flash_crash"
    reason = ReasonCode.FLASH_CRASH
    state_type = FlashCrashState

    def __init__(self, config: DetectionConfig) -> None:
        def limits(drop: float, window: float) -> tuple[float, int]:
            return drop, sec_to_us(window)

        acct = config.account
        self._default = limits(acct.flash_crash, acct.flash_crash_window_sec)
        self._overrides = {
            a: limits(lim.flash_crash, lim.flash_crash_window_sec)
            for a in config.account_overrides
            for lim in (config.limits_for(a),)
        }
        self._lateness = sec_to_us(config.max_lateness_sec)

    def initial(self) -> FlashCrashState:
        """No points."""
        return _EMPTY_FLASH

    def step(
        self, state: FlashCrashState, record: PnlTick, coords: Coordinates, ctx: Context
    ) -> tuple[FlashCrashState, Detection | None]:
        """Insert the point; fire when it completes a drop of the limit within the window."""
        moment = to_us(record.ts)
        equity = record.equity
        epoch, fired, newest, floor = state.epoch, state.fired, state.newest, state.floor
        times, equities = state.times, state.equities
        if ctx.epoch > epoch:
            epoch, fired, floor, times, equities = ctx.epoch, False, newest, (), ()
        if newest is None or moment > newest:
            newest = moment
        limit, span = self._overrides.get(record.account_id, self._default)
        horizon = newest - span - self._lateness
        index = bisect_left(times, moment)
        if (
            fired
            or (floor is not None and moment <= floor)
            or moment < horizon
            or (index < len(times) and times[index] == moment and equities[index] == equity)
        ):
            if epoch == state.epoch and newest == state.newest:
                return state, None
            return FlashCrashState(epoch, fired, newest, floor, times, equities), None
        times = (*times[:index], moment, *times[index:])
        equities = (*equities[:index], equity, *equities[index:])
        hit = self._crash(times, equities, index, span, limit)
        if hit is None:
            cut = bisect_left(times, horizon)
            if cut:
                times, equities = times[cut:], equities[cut:]
            if len(times) > MAX_FLASH_POINTS:
                times, equities = _thin(times, equities)
            return FlashCrashState(epoch, False, newest, floor, times, equities), None
        high, high_ts, low, low_ts = hit
        drop = (high - low) / high
        detail = (
            f"equity of account {record.account_id} fell {drop:.2%} from {high:,.2f} at "
            f"{from_us(high_ts).isoformat()} to {low:,.2f} at {from_us(low_ts).isoformat()}, "
            f"within {fmt_sec(low_ts - high_ts)}: limit {limit:.2%} within {fmt_sec(span)}"
        )
        # Latched: the points are not needed until the epoch changes (then they are cleared).
        return FlashCrashState(epoch, True, newest, floor), detection(
            self.name, self.reason, record.account_id, detail, (coords, record.ts)
        )

    @staticmethod
    def _crash(
        times: tuple[int, ...], equities: tuple[float, ...], index: int, span: int, limit: float
    ) -> tuple[float, int, float, int] | None:
        """A (high, its time, low, its time) pair with the new point at ``index`` on either
        side, the high no more than ``span`` before the low, dropping by ``limit``; or None.
        Only pairs holding the new point can be new (every other pair was judged before)."""
        moment, equity = times[index], equities[index]
        # The new point as the low: the highest point in [moment - span, moment] (points at
        # the same time included, wherever they sit, so ties judge the same in any order).
        first = bisect_left(times, moment - span, 0, index)
        end = bisect_right(times, moment, index)
        high = max(equities[first:end])
        if high > 0 and (high - equity) / high >= limit:
            at = first + equities[first:end].index(high)
            return high, times[at], equity, moment
        # The new point as the high (only when it arrived late: later points exist).
        if equity > 0 and index + 1 < len(times):
            last = bisect_right(times, moment + span, index)
            low = min(equities[index + 1 : last], default=equity)
            if (equity - low) / equity >= limit:
                at = index + 1 + equities[index + 1 : last].index(low)
                return equity, moment, low, times[at]
        return None


def _thin(
    times: tuple[int, ...], equities: tuple[float, ...]
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Make room: first keep only points no later point equals or exceeds (the suffix maxima:
    the highest point of any window ending at or after the newest point is among them). If
    that is not enough (a long steady fall), merge neighbours pairwise into the higher
    equity at the later time: windows then see a high up to one tick spacing longer than it
    lasted, which can only make the rule fire earlier, never miss a crash."""
    kept_t: list[int] = []
    kept_e: list[float] = []
    best = float("-inf")
    for moment, equity in zip(reversed(times), reversed(equities), strict=True):
        if equity > best:
            best = equity
            kept_t.append(moment)
            kept_e.append(equity)
    kept_t.reverse()
    kept_e.reverse()
    if len(kept_t) > MAX_FLASH_POINTS // 2:
        # Pair from the newest backwards so the newest point stays exact.
        merged_t: list[int] = []
        merged_e: list[float] = []
        for at in range(len(kept_t) - 1, -1, -2):
            if at == 0:
                merged_t.append(kept_t[0])
                merged_e.append(kept_e[0])
            else:
                merged_t.append(kept_t[at])
                merged_e.append(max(kept_e[at], kept_e[at - 1]))
        merged_t.reverse()
        merged_e.reverse()
        return tuple(merged_t), tuple(merged_e)
    return tuple(kept_t), tuple(kept_e)

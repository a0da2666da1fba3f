"""Market-data rules (topic ``market``, key ``symbol``): corrupt feed and stale feed.

A tick is *corrupt* when a price is not positive, the book is crossed (``bid > ask``), or
``last`` jumps by more than ``max_tick_jump`` from the previous good tick (by event time).
A record of the topic that fails schema validation counts as a corrupt tick of its symbol
when the runtime can still read the symbol: see :meth:`CorruptFeedRule.invalid` ("a high
bad-record rate is itself the ``data_feed_corrupt`` trigger").
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace
from datetime import datetime

from ess.rules._common import (
    StateCodec,
    detection,
    from_us,
    to_us,
)
from ess.rules.base import Context, Coordinates, Detection
from ess.rules.config import DetectionConfig
from ess.rules.silence import SilenceRule
from schemas import MarketTick, ReasonCode


@dataclass(frozen=True, slots=True)
class FeedState:
    """The newest ``corrupt_window_ticks`` ticks of one symbol by event time: ``times``,
    ``ids`` and ``lasts`` aligned (``lasts`` is the good tick's ``last`` price, 0.0 for a
    corrupt one), ``bad`` the number of corrupt ones. ``good_ts``/``good_last`` is the
    newest good tick seen, the jump reference when none precedes a tick in the window."""

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    times: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()
    lasts: tuple[float, ...] = ()
    bad: int = 0
    good_ts: int | None = None
    good_last: float = 0.0


_EMPTY_FEED = FeedState()


class CorruptFeedRule(StateCodec):
    """``data_feed_corrupt``: more than ``corrupt_share`` of the newest
    ``corrupt_window_ticks`` ticks of a symbol are corrupt, judged once the window holds at
    least ``corrupt_min_ticks`` (so a feed's very first bad tick alone does not trip).

    Each tick is classified once, on arrival, against the good tick preceding it in event
    time as known then. A reset clears the window (the counts start afresh) but keeps the
    jump reference: prices do not reset.
    """

    name = "data_feed_corrupt"
    topic = "market"
    reason = ReasonCode.DATA_FEED_CORRUPT
    state_type = FeedState

    def __init__(self, config: DetectionConfig) -> None:
        self._share = config.corrupt_share
        self._size = config.corrupt_window_ticks
        self._min = config.corrupt_min_ticks
        self._jump = config.max_tick_jump

    def key(self, record: MarketTick) -> str:
        """The symbol."""
        return record.symbol

    def initial(self) -> FeedState:
        """No ticks."""
        return _EMPTY_FEED

    def step(
        self, state: FeedState, record: MarketTick, coords: Coordinates, ctx: Context
    ) -> tuple[FeedState, Detection | None]:
        """Classify the tick, slide the window, judge the corrupt share."""
        moment = to_us(record.ts)
        state, index = self._gate(state, moment, record.event_id, ctx)
        if index < 0:
            return state, None
        why = self._why(record, self._reference(state, index, moment))
        return self._insert(
            state,
            index,
            (moment, record.event_id, 0.0 if why else record.last),
            why,
            (record.symbol, coords, record.ts),
        )

    def invalid(
        self, state: FeedState, key: str, coords: Coordinates, event_ts: datetime, ctx: Context
    ) -> tuple[FeedState, Detection | None]:
        """Count a record of the topic that failed validation as a corrupt tick of ``key``.

        ``event_ts`` is the record's own ``ts`` if it parses, else its Kafka timestamp. Its id
        is its coordinates, so a redelivery of the same bad record is not counted twice.
        """
        moment = to_us(event_ts)
        event_id = f"invalid@{coords.topic}/{coords.partition}/{coords.offset}"
        state, index = self._gate(state, moment, event_id, ctx)
        if index < 0:
            return state, None
        return self._insert(
            state,
            index,
            (moment, event_id, 0.0),
            "record failed schema validation",
            (key, coords, event_ts),
        )

    def tick(
        self, state: FeedState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[FeedState, Detection | None]:
        """Not a silence rule."""
        return state, None

    def _gate(
        self, state: FeedState, moment: int, event_id: str, ctx: Context
    ) -> tuple[FeedState, int]:
        """Advance epoch and newest; the insertion index, or -1 when the record does not
        count (latched, before the epoch floor, older than the whole window, duplicate)."""
        newest = state.newest
        if ctx.epoch > state.epoch:
            state = FeedState(
                ctx.epoch, False, newest, newest, good_ts=state.good_ts, good_last=state.good_last
            )
        times = state.times
        index = bisect_right(times, moment)
        if (
            state.fired
            or (state.floor is not None and moment <= state.floor)
            or (index == 0 and len(times) >= self._size)  # older than the newest `size`
            or event_id in state.ids
        ):
            if newest is None or moment > newest:
                state = replace(state, newest=moment)
            return state, -1
        return state, index

    @staticmethod
    def _reference(state: FeedState, index: int, moment: int) -> float | None:
        """``last`` of the good tick preceding ``moment``: in the window, else the newest
        good tick if it is older, else none (the first tick of a symbol cannot jump)."""
        lasts = state.lasts
        for at in range(index - 1, -1, -1):
            if lasts[at] > 0:
                return lasts[at]
        if state.good_ts is not None and state.good_ts < moment:
            return state.good_last
        return None

    def _why(self, tick: MarketTick, reference: float | None) -> str | None:
        """Why the tick is corrupt, or None when it is good."""
        bid, ask, last = tick.bid, tick.ask, tick.last
        if bid <= 0 or ask <= 0 or last <= 0:
            return f"non-positive price (bid {bid:g}, ask {ask:g}, last {last:g})"
        if bid > ask:
            return f"crossed book (bid {bid:g} > ask {ask:g})"
        if reference is not None and abs(last / reference - 1.0) > self._jump:
            return f"last {last:g} jumped {last / reference - 1.0:+.1%} from {reference:g}"
        return None

    def _insert(
        self,
        state: FeedState,
        index: int,
        entry: tuple[int, str, float],
        why: str | None,
        origin: tuple[str, Coordinates, datetime],
    ) -> tuple[FeedState, Detection | None]:
        """Insert ``entry = (time, id, last or 0.0)`` at ``index``, slide, judge."""
        moment, event_id, last = entry
        good_ts, good_last = state.good_ts, state.good_last
        if why is None and (good_ts is None or moment >= good_ts):
            good_ts, good_last = moment, last
        times, ids, lasts = state.times, state.ids, state.lasts
        bad = state.bad + (why is not None)
        # Drop the oldest when full (``index`` > 0 here: an older tick was refused).
        cut = 1 if len(times) >= self._size else 0
        if cut:
            bad -= lasts[0] == 0.0
        if index == len(times):
            times, ids, lasts = (*times[cut:], moment), (*ids[cut:], event_id), (*lasts[cut:], last)
        else:
            times = (*times[cut:index], moment, *times[index:])
            ids = (*ids[cut:index], event_id, *ids[index:])
            lasts = (*lasts[cut:index], last, *lasts[index:])
        count = len(times)
        epoch, floor = state.epoch, state.floor
        newest = moment if state.newest is None or moment > state.newest else state.newest
        # Judged on every tick, good ones too: a good tick can complete the minimum count.
        if count < self._min or bad / count <= self._share:
            return FeedState(
                epoch, False, newest, floor, times, ids, lasts, bad, good_ts, good_last
            ), None
        symbol, coords, event_ts = origin
        detail = (
            f"{bad} of the newest {count} ticks of {symbol} are corrupt ({bad / count:.0%}, "
            f"since {from_us(times[0]).isoformat()}): limit {self._share:.0%} of the newest "
            f"{self._size}; this one: {why or 'good'}"
        )
        # Latched: the window is not needed until the epoch changes (then it is cleared).
        latched = FeedState(epoch, True, newest, floor, good_ts=good_ts, good_last=good_last)
        return latched, detection(self.name, self.reason, symbol, detail, (coords, event_ts))


def stale_feed(config: DetectionConfig) -> SilenceRule:
    """``data_feed_stale``: no tick for a seen or required symbol for longer than
    ``data_feed_stale_sec``."""
    return SilenceRule(
        name="data_feed_stale",
        topic="market",
        reason=ReasonCode.DATA_FEED_STALE,
        what="market tick",
        key_field="symbol",
        timeout_sec=config.data_feed_stale_sec,
        required=config.required_symbols,
        ignore=frozenset(),
        never_seen_topic=config.market_topic,
    )

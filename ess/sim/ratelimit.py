"""Binance-style request-weight and order-count budgets, with counters tests can assert on.

Binance limits each IP's request *weight* per minute and each account's *order count* per
10 seconds (and per minute on futures), separately for spot and futures; a request over budget is
answered HTTP 429 with code -1003, and repeated violations earn an IP ban (HTTP 418). USD-M
futures, COIN-M futures and spot are budgeted separately, as Binance does.

The simulator counts in **sliding** windows where Binance uses fixed ones (counters reset at the
start of each minute). A sliding count is never below the fixed one at the same moment, so a
client proven to stay within these budgets also stays within Binance's: the check errs on the
strict side. Every admitted request is counted, including ones that then fail or get a fault
(Binance counts those too); requests refused for being over budget are not, so a window's total
never exceeds its budget and ``peak_*`` shows how close a client came. Clients on loopback share
one IP, so the weight budget is per venue; order budgets are per account and venue.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from ess.sim.book import ApiError
from ess.sim.markets import Venue

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_WEIGHTS",
    "ORDER_ENDPOINTS",
    "RateCounters",
    "RateLimiter",
    "RateLimits",
    "SlidingWindow",
]


@dataclass(frozen=True)
class RateLimits:
    """One venue's budgets. ``None`` disables a budget; window lengths are configurable so tests
    can watch a budget recover without waiting a minute. ``ban_after`` violations (within the
    weight window) turn 429 into 418 for ``ban_s`` seconds; ``None`` never bans."""

    weight_per_window: int | None = 2400
    weight_window_s: float = 60.0
    orders_per_10s: int | None = 300
    orders_10s_window_s: float = 10.0
    orders_per_minute: int | None = 1200
    orders_minute_window_s: float = 60.0
    ban_after: int | None = None
    ban_s: float = 120.0


#: Binance's published budgets: USD-M futures 2400 weight/min, 300 orders/10 s, 1200
#: orders/min; spot 6000 weight/min, 100 orders/10 s; COIN-M futures 2400 weight/min and 1200
#: orders/min (its ``exchangeInfo`` lists no 10 s order limit).
DEFAULT_LIMITS: Final[Mapping[Venue, RateLimits]] = {
    Venue.FUTURES: RateLimits(),
    Venue.SPOT: RateLimits(weight_per_window=6000, orders_per_10s=100, orders_per_minute=None),
    Venue.COINM: RateLimits(orders_per_10s=None),
}

#: Request weights from Binance's API docs (USD-M and COIN-M futures, spot and the two
#: ``/sapi`` reads ccxt's ``load_markets`` makes with keys set), as
#: ``(weight with symbol, weight without)``. Unlisted routes weigh 1.
DEFAULT_WEIGHTS: Final[Mapping[tuple[str, str], tuple[int, int]]] = {
    ("GET", "/fapi/v1/ping"): (1, 1),
    ("GET", "/fapi/v1/time"): (1, 1),
    ("GET", "/fapi/v1/exchangeInfo"): (1, 1),
    ("GET", "/fapi/v2/account"): (5, 5),
    ("GET", "/fapi/v3/account"): (5, 5),
    ("GET", "/fapi/v2/positionRisk"): (5, 5),
    ("GET", "/fapi/v3/positionRisk"): (5, 5),
    ("GET", "/fapi/v1/leverageBracket"): (1, 1),
    ("GET", "/fapi/v1/openOrders"): (1, 40),
    ("GET", "/fapi/v1/order"): (1, 1),
    ("POST", "/fapi/v1/order"): (0, 0),
    ("DELETE", "/fapi/v1/order"): (1, 1),
    ("DELETE", "/fapi/v1/allOpenOrders"): (1, 1),
    ("DELETE", "/fapi/v1/batchOrders"): (1, 1),
    ("POST", "/fapi/v1/countdownCancelAll"): (10, 10),
    ("POST", "/fapi/v1/algoOrder"): (0, 0),
    ("GET", "/fapi/v1/algoOrder"): (1, 1),
    ("DELETE", "/fapi/v1/algoOrder"): (1, 1),
    ("GET", "/fapi/v1/openAlgoOrders"): (1, 40),
    ("DELETE", "/fapi/v1/algoOpenOrders"): (1, 1),
    ("GET", "/fapi/v1/positionSide/dual"): (30, 30),
    ("POST", "/fapi/v1/positionSide/dual"): (1, 1),
    ("GET", "/api/v3/ping"): (1, 1),
    ("GET", "/api/v3/time"): (1, 1),
    ("GET", "/api/v3/exchangeInfo"): (20, 20),
    ("GET", "/api/v3/account"): (20, 20),
    ("GET", "/api/v3/openOrders"): (6, 80),
    ("DELETE", "/api/v3/openOrders"): (1, 1),
    ("POST", "/api/v3/order"): (1, 1),
    ("GET", "/api/v3/order"): (4, 4),
    ("DELETE", "/api/v3/order"): (1, 1),
    ("GET", "/sapi/v1/capital/config/getall"): (10, 10),
    ("GET", "/sapi/v1/margin/allPairs"): (1, 1),
    ("GET", "/sapi/v1/margin/isolated/allPairs"): (10, 10),
    ("GET", "/dapi/v1/ping"): (1, 1),
    ("GET", "/dapi/v1/time"): (1, 1),
    ("GET", "/dapi/v1/exchangeInfo"): (1, 1),
    ("GET", "/dapi/v1/account"): (5, 5),
    ("GET", "/dapi/v1/positionRisk"): (1, 1),
    ("GET", "/dapi/v2/leverageBracket"): (1, 2),
    ("GET", "/dapi/v1/openOrders"): (1, 40),
    ("GET", "/dapi/v1/order"): (1, 1),
    ("POST", "/dapi/v1/order"): (0, 0),
    ("DELETE", "/dapi/v1/order"): (1, 1),
    ("DELETE", "/dapi/v1/allOpenOrders"): (1, 1),
    ("DELETE", "/dapi/v1/batchOrders"): (1, 1),
    ("POST", "/dapi/v1/countdownCancelAll"): (10, 10),
    ("POST", "/dapi/v1/algoOrder"): (0, 0),
    ("GET", "/dapi/v1/algoOrder"): (1, 1),
    ("DELETE", "/dapi/v1/algoOrder"): (1, 1),
    ("GET", "/dapi/v1/openAlgoOrders"): (1, 40),
    ("DELETE", "/dapi/v1/algoOpenOrders"): (1, 1),
    ("GET", "/dapi/v1/positionSide/dual"): (30, 30),
    ("POST", "/dapi/v1/positionSide/dual"): (1, 1),
}

#: Routes that count against the order budgets.
ORDER_ENDPOINTS: Final = frozenset(
    {
        ("POST", "/fapi/v1/order"),
        ("POST", "/fapi/v1/algoOrder"),
        ("POST", "/api/v3/order"),
        ("POST", "/dapi/v1/order"),
        ("POST", "/dapi/v1/algoOrder"),
    }
)


class SlidingWindow:
    """A running sum over the last ``length_s`` seconds, and the highest it has been."""

    def __init__(self, length_s: float) -> None:
        self.length_s = length_s
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0
        self.peak = 0

    def used(self, now: float) -> int:
        horizon = now - self.length_s
        while self._events and self._events[0][0] <= horizon:
            self._total -= self._events.popleft()[1]
        return self._total

    def add(self, now: float, amount: int) -> int:
        total = self.used(now) + amount
        if amount:
            self._events.append((now, amount))
            self._total = total
        self.peak = max(self.peak, total)
        return total


@dataclass(frozen=True)
class RateCounters:
    """A snapshot of one venue's (and optionally one account's) rate-limit accounting.

    ``peak_*`` are the highest window totals ever reached, counting only requests that were
    admitted; a client that never exceeded a budget has ``rejected == 0`` and peaks at or below
    the limits. ``banned`` counts requests answered 418; ``ban_remaining_s`` is the time left
    on a current ban.
    """

    venue: Venue
    requests: int
    total_weight: int
    used_weight: int
    peak_weight: int
    orders_10s: int
    peak_orders_10s: int
    orders_minute: int
    peak_orders_minute: int
    rejected: int
    banned: int
    ban_remaining_s: float


class _VenueState:
    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.weight = SlidingWindow(limits.weight_window_s)
        self.violations: deque[float] = deque()
        self.banned_until = 0.0
        self.requests = 0
        self.total_weight = 0
        self.rejected = 0
        self.banned = 0


class RateLimiter:
    """Admits or refuses requests against :class:`RateLimits`, per venue (and account).

    The defaults are Binance's; another simulator family passes its own budgets, weights and
    ``order_endpoints`` (the routes that count against the order budgets). Refusals are
    :class:`ApiError` in the engine's (Binance's) codes, which the family translates:
    status 418 while banned, -1015 over an order budget, -1003 over the weight budget."""

    def __init__(
        self,
        limits: Mapping[Venue, RateLimits] | None = None,
        weights: Mapping[tuple[str, str], tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        order_endpoints: frozenset[tuple[str, str]] = ORDER_ENDPOINTS,
    ) -> None:
        merged = {**DEFAULT_LIMITS, **(limits or {})}
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.order_endpoints = order_endpoints
        self._clock = clock
        self._venues = {venue: _VenueState(merged[venue]) for venue in Venue}
        self._orders: dict[tuple[Venue, str | None], tuple[SlidingWindow, SlidingWindow]] = {}

    def weight_of(self, method: str, path: str, params: Mapping[str, str]) -> int:
        with_symbol, without = self.weights.get((method, path), (1, 1))
        return with_symbol if params.get("symbol") else without

    def _order_windows(
        self, venue: Venue, account: str | None
    ) -> tuple[SlidingWindow, SlidingWindow]:
        key = (venue, account)
        if key not in self._orders:
            limits = self._venues[venue].limits
            self._orders[key] = (
                SlidingWindow(limits.orders_10s_window_s),
                SlidingWindow(limits.orders_minute_window_s),
            )
        return self._orders[key]

    def admit(
        self,
        venue: Venue,
        account: str | None,
        method: str,
        path: str,
        params: Mapping[str, str],
    ) -> tuple[int, ApiError | None]:
        """Count the request; return its weight and, if it is refused, the error to answer."""
        now = self._clock()
        state = self._venues[venue]
        limits = state.limits
        state.requests += 1
        weight = self.weight_of(method, path, params)
        if now < state.banned_until:
            state.banned += 1
            until_ms = int((time.time() + state.banned_until - now) * 1000)
            return weight, ApiError(
                -1003,
                f"Way too much request weight used; IP banned until {until_ms}. "
                "Please use WebSocket Streams for live updates to avoid bans.",
                status=418,
            )
        refusal: ApiError | None = None
        used = state.weight.used(now)
        if limits.weight_per_window is not None and used + weight > limits.weight_per_window:
            refusal = ApiError(
                -1003,
                "Too many requests; current limit of IP(127.0.0.1) request weight per minute "
                f"is {limits.weight_per_window}. Please use WebSocket Streams for live "
                "updates to avoid polling the API.",
                status=429,
            )
        is_order = (method, path) in self.order_endpoints
        if refusal is None and is_order:
            ten, minute = self._order_windows(venue, account)
            if limits.orders_per_10s is not None and ten.used(now) + 1 > limits.orders_per_10s:
                refusal = ApiError(
                    -1015,
                    f"Too many new orders; current limit is {limits.orders_per_10s} "
                    "orders per TEN_SECONDS.",
                    status=429,
                )
            elif (
                limits.orders_per_minute is not None
                and minute.used(now) + 1 > limits.orders_per_minute
            ):
                refusal = ApiError(
                    -1015,
                    f"Too many new orders; current limit is {limits.orders_per_minute} "
                    "orders per MINUTE.",
                    status=429,
                )
        if refusal is not None:
            state.rejected += 1
            self._violation(state, now)
            return weight, refusal
        state.weight.add(now, weight)
        state.total_weight += weight
        if is_order:
            ten, minute = self._order_windows(venue, account)
            ten.add(now, 1)
            minute.add(now, 1)
        return weight, None

    @staticmethod
    def _violation(state: _VenueState, now: float) -> None:
        limits = state.limits
        state.violations.append(now)
        while state.violations and state.violations[0] <= now - limits.weight_window_s:
            state.violations.popleft()
        if limits.ban_after is not None and len(state.violations) >= limits.ban_after:
            state.banned_until = now + limits.ban_s
            state.violations.clear()

    def headers(self, venue: Venue, account: str | None) -> dict[str, str]:
        """Binance's usage headers (``X-MBX-USED-WEIGHT-1M``, ``X-MBX-ORDER-COUNT-*``; no
        10 s count where the venue has no 10 s order budget, as on COIN-M)."""
        now = self._clock()
        ten, minute = self._order_windows(venue, account)
        headers = {
            "X-MBX-USED-WEIGHT-1M": str(self._venues[venue].weight.used(now)),
            "X-MBX-ORDER-COUNT-10S": str(ten.used(now)),
            "X-MBX-ORDER-COUNT-1M": str(minute.used(now)),
        }
        if venue is Venue.COINM and self._venues[venue].limits.orders_per_10s is None:
            del headers["X-MBX-ORDER-COUNT-10S"]
        return headers

    def counters(self, venue: Venue, account: str | None = None) -> RateCounters:
        """Usage of ``venue``; order figures are ``account``'s, or summed over all accounts."""
        now = self._clock()
        state = self._venues[venue]
        keys = [k for k in self._orders if k[0] is venue and (account is None or k[1] == account)]
        windows = [self._orders[k] for k in keys]
        return RateCounters(
            venue=venue,
            requests=state.requests,
            total_weight=state.total_weight,
            used_weight=state.weight.used(now),
            peak_weight=state.weight.peak,
            orders_10s=sum(ten.used(now) for ten, _ in windows),
            peak_orders_10s=max((ten.peak for ten, _ in windows), default=0),
            orders_minute=sum(minute.used(now) for _, minute in windows),
            peak_orders_minute=max((minute.peak for _, minute in windows), default=0),
            rejected=state.rejected,
            banned=state.banned,
            ban_remaining_s=max(0.0, state.banned_until - now),
        )

    def limits(self, venue: Venue) -> RateLimits:
        return self._venues[venue].limits

    def exchange_info_limits(self, venue: Venue) -> list[dict[str, object]]:
        """The ``rateLimits`` array of ``exchangeInfo``, reflecting the configured budgets."""
        limits = self._venues[venue].limits
        rows: list[dict[str, object]] = []
        for kind, amount, seconds in (
            ("REQUEST_WEIGHT", limits.weight_per_window, limits.weight_window_s),
            ("ORDERS", limits.orders_per_10s, limits.orders_10s_window_s),
            ("ORDERS", limits.orders_per_minute, limits.orders_minute_window_s),
        ):
            if amount is None:
                continue
            interval, num = ("MINUTE", seconds / 60) if seconds >= 60 else ("SECOND", seconds)
            rows.append(
                {
                    "rateLimitType": kind,
                    "interval": interval,
                    "intervalNum": max(1, round(num)),
                    "limit": amount,
                }
            )
        return rows

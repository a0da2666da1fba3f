"""A client-side rate budget: request weight per minute, orders per 10 s, requests in flight.

Binance refuses requests over its budgets (HTTP 429, then an IP ban with 418), and the executor
shares the IP's weight budget with the trading services, so it must never be the one to push
the venue over. :class:`RateBudget` makes each call wait until sending it keeps the totals
within the configured budget, which replaces ccxt's own throttle (a leaky bucket that delays
every request by its cost, even when the budget is nowhere near used).

The windows slide. Binance counts in fixed windows (reset at each minute), and a sliding total is
never below the fixed one at the same moment, so staying within a sliding budget stays within
Binance's. A request counts from the moment it is sent until one window length after it
*completed*: the venue counted it on arrival, which lies somewhere in between, and counting from
completion is the only instant the client knows to be no earlier than that.

Exchanges count request weight per IP but orders per account. Several accounts of one exchange
leaving through the same egress IP therefore spend one weight budget between them, while each
keeps its own order budget: their :class:`RateBudget` objects share one :class:`WeightWindow`
(``shared_weight=``), and each keeps its own order window and in-flight limit. Budgets that
counted weight separately would each stay within the figure and together exceed it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from math import inf

__all__ = ["RateBudget", "WeightWindow"]


@dataclass
class _Sent:
    """One admitted request; ``done_at`` is ``None`` while it is in flight."""

    weight: int
    orders: int
    done_at: float | None = None

    def counts(self, now: float, window_s: float) -> bool:
        return self.done_at is None or self.done_at > now - window_s

    def expires(self, window_s: float) -> float:
        return inf if self.done_at is None else self.done_at + window_s


class WeightWindow:
    """A sliding request-weight budget, on its own or shared by the :class:`RateBudget` of
    every account that leaves through one IP (the venue counts weight per IP).

    Requests are admitted strictly in arrival order across all sharing budgets (one FIFO lock,
    held by the request at the head of the line while it waits). ``clock`` is the one every
    sharing budget uses: a request's completion time is compared with this clock's "now".
    """

    def __init__(
        self,
        weight_per_minute: int,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if weight_per_minute < 1:
            raise ValueError("budgets and max_in_flight must be positive")
        if window_s <= 0:
            raise ValueError("window lengths must be positive")
        self.weight_per_minute = weight_per_minute
        self.window_s = window_s
        self.clock = clock
        self._sent: list[_Sent] = []
        self._turn = asyncio.Lock()
        self._completed = asyncio.Event()

    def sent_weight(self) -> int:
        """Weight counted now (in flight, or completed within the window), by every sharer."""
        now = self.clock()
        return sum(s.weight for s in self._sent if s.counts(now, self.window_s))

    async def _admit(self, sent: _Sent, sleep: Callable[[float], Awaitable[None]]) -> bool:
        """Wait until ``sent.weight`` fits, then count it; returns whether it had to wait.
        Cancelled while waiting, nothing is counted."""
        waited = self._turn.locked()
        async with self._turn:
            while (delay := self._delay(sent.weight)) > 0:
                waited = True
                if delay == inf:
                    # Only a request finishing (on any sharing budget) can make room.
                    self._completed.clear()
                    await self._completed.wait()
                else:
                    await sleep(delay)
            self._sent.append(sent)
        return waited

    def _done(self) -> None:
        self._completed.set()

    def _delay(self, weight: int) -> float:
        now = self.clock()
        self._sent = [s for s in self._sent if s.counts(now, self.window_s)]
        fits_at = _fits_at(
            self._sent,
            now,
            weight,
            limit=self.weight_per_minute,
            window_s=self.window_s,
            size=_weight,
        )
        return max(0.0, fits_at - now)


class RateBudget:
    """Admits requests within a weight budget, an order budget and a concurrency limit.

    Waiters are served strictly in arrival order (one FIFO lock, held by the request at the
    head of the line while it waits), so a large request is never starved by a stream of small
    ones. ``clock`` and ``sleep`` are injectable so unit tests can run on fake time.

    ``shared_weight`` puts the weight budget in a :class:`WeightWindow` shared with other
    accounts' budgets (``weight_per_minute`` must then be the window's, and ``clock``, if
    given, its clock); the order budget and ``max_in_flight`` stay this account's own. A
    request first waits for room in its own account (in flight, orders), then, still at the
    head of its account's line, for weight in the shared window.
    """

    def __init__(
        self,
        weight_per_minute: int,
        orders_per_10s: int,
        max_in_flight: int,
        *,
        shared_weight: WeightWindow | None = None,
        weight_window_s: float | None = None,
        orders_window_s: float = 10.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if weight_per_minute < 1 or orders_per_10s < 1 or max_in_flight < 1:
            raise ValueError("budgets and max_in_flight must be positive")
        if orders_window_s <= 0 or (weight_window_s is not None and weight_window_s <= 0):
            raise ValueError("window lengths must be positive")
        if shared_weight is None:
            shared_weight = WeightWindow(
                weight_per_minute,
                window_s=60.0 if weight_window_s is None else weight_window_s,
                clock=clock or time.monotonic,
            )
        elif weight_per_minute != shared_weight.weight_per_minute:
            raise ValueError(
                f"weight_per_minute {weight_per_minute} differs from the shared window's "
                f"{shared_weight.weight_per_minute}"
            )
        elif weight_window_s is not None and weight_window_s != shared_weight.window_s:
            raise ValueError("weight_window_s differs from the shared window's")
        elif clock is not None and clock != shared_weight.clock:
            raise ValueError("a budget sharing a weight window must use the window's clock")
        self._weight = shared_weight
        self.weight_per_minute = weight_per_minute
        self.orders_per_10s = orders_per_10s
        self.max_in_flight = max_in_flight
        self.weight_window_s = shared_weight.window_s
        self.orders_window_s = orders_window_s
        self._clock = shared_weight.clock
        self._sleep = sleep
        self._sent: list[_Sent] = []
        self._turn = asyncio.Lock()
        self._completed = asyncio.Event()
        self._in_flight = 0
        #: How many requests had to wait (in line, or for room) before being sent (metrics).
        self.waits = 0

    @property
    def weight_window(self) -> WeightWindow:
        """The weight budget: this budget's own, or the one it shares with other accounts."""
        return self._weight

    @asynccontextmanager
    async def request(self, weight: int, orders: int = 0) -> AsyncIterator[None]:
        """Wait until a request of ``weight`` (placing ``orders`` orders) fits, then count it
        as sent for the duration of the ``async with`` body and one window after.

        A request larger than a whole budget could never be sent: ``ValueError``.
        """
        if weight < 0 or orders < 0:
            raise ValueError("weight and orders must be >= 0")
        if weight > self.weight_per_minute or orders > self.orders_per_10s:
            raise ValueError(
                f"request of weight {weight} and {orders} orders exceeds the whole budget "
                f"({self.weight_per_minute} weight, {self.orders_per_10s} orders)"
            )
        sent = _Sent(weight, orders)
        waited = self._turn.locked()  # queued behind another request
        async with self._turn:
            # Room in this account first: while this request holds the account's turn, no
            # other request of the account is admitted, so that room cannot shrink while it
            # then waits for shared weight.
            while (delay := self._delay(orders)) > 0:
                waited = True
                if delay == inf:
                    # Only a request finishing can free a slot.
                    self._completed.clear()
                    await self._completed.wait()
                else:
                    await self._sleep(delay)
            waited = await self._weight._admit(sent, self._sleep) or waited
            if waited:
                self.waits += 1
            self._in_flight += 1
            self._sent.append(sent)
        try:
            yield
        finally:
            sent.done_at = self._clock()
            self._in_flight -= 1
            self._completed.set()
            self._weight._done()

    def sent_weight_in_window(self) -> int:
        """Weight counted against the budget now (in flight, or completed within the window);
        with a shared window, every sharing account's."""
        return self._weight.sent_weight()

    def sent_orders_in_window(self) -> int:
        """Orders counted against this account's order budget now."""
        now = self._clock()
        return sum(s.orders for s in self._sent if s.counts(now, self.orders_window_s))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _delay(self, orders: int) -> float:
        """Seconds until this account has room for a request placing ``orders``: 0 now,
        ``inf`` if only a completion can make room (a free slot, or in-flight orders that
        must finish before they expire)."""
        now = self._clock()
        self._sent = [s for s in self._sent if s.counts(now, self.orders_window_s)]
        if self._in_flight >= self.max_in_flight:
            return inf
        fits_at = _fits_at(
            self._sent,
            now,
            orders,
            limit=self.orders_per_10s,
            window_s=self.orders_window_s,
            size=_orders,
        )
        return max(0.0, fits_at - now)


def _fits_at(
    sent: Iterable[_Sent],
    now: float,
    amount: int,
    *,
    limit: int,
    window_s: float,
    size: Callable[[_Sent], int],
) -> float:
    """When ``amount`` more fits under ``limit``: once enough of the oldest requests left the
    window (``amount <= limit``, so dropping all of them always makes room)."""
    counted = sorted(
        (s for s in sent if s.counts(now, window_s)), key=lambda s: s.expires(window_s)
    )
    used = sum(size(s) for s in counted)
    fits_at = now
    for item in counted:
        if used + amount <= limit:
            break
        used -= size(item)
        fits_at = item.expires(window_s)
    return fits_at


def _weight(sent: _Sent) -> int:
    return sent.weight


def _orders(sent: _Sent) -> int:
    return sent.orders

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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from math import inf

__all__ = ["RateBudget"]


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


class RateBudget:
    """Admits requests within a weight budget, an order budget and a concurrency limit.

    Waiters are served strictly in arrival order (one FIFO lock, held by the request at the
    head of the line while it waits), so a large request is never starved by a stream of small
    ones. ``clock`` and ``sleep`` are injectable so unit tests can run on fake time.
    """

    def __init__(
        self,
        weight_per_minute: int,
        orders_per_10s: int,
        max_in_flight: int,
        *,
        weight_window_s: float = 60.0,
        orders_window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if weight_per_minute < 1 or orders_per_10s < 1 or max_in_flight < 1:
            raise ValueError("budgets and max_in_flight must be positive")
        if weight_window_s <= 0 or orders_window_s <= 0:
            raise ValueError("window lengths must be positive")
        self.weight_per_minute = weight_per_minute
        self.orders_per_10s = orders_per_10s
        self.max_in_flight = max_in_flight
        self.weight_window_s = weight_window_s
        self.orders_window_s = orders_window_s
        self._clock = clock
        self._sleep = sleep
        self._sent: list[_Sent] = []
        self._turn = asyncio.Lock()
        self._completed = asyncio.Event()
        self._in_flight = 0
        #: How many requests had to wait (in line, or for room) before being sent (metrics).
        self.waits = 0

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
            while (delay := self._delay(weight, orders)) > 0:
                waited = True
                if delay == inf:
                    # Only a request finishing can free a slot or in-flight budget.
                    self._completed.clear()
                    await self._completed.wait()
                else:
                    await self._sleep(delay)
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

    def sent_weight_in_window(self) -> int:
        """Weight counted against the budget now (in flight, or completed within the window)."""
        now = self._clock()
        return sum(s.weight for s in self._sent if s.counts(now, self.weight_window_s))

    def sent_orders_in_window(self) -> int:
        """Orders counted against the order budget now."""
        now = self._clock()
        return sum(s.orders for s in self._sent if s.counts(now, self.orders_window_s))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _delay(self, weight: int, orders: int) -> float:
        """Seconds until a request of this size fits: 0 now, ``inf`` if only a completion can
        make room (a free slot, or in-flight requests that must finish before they expire)."""
        now = self._clock()
        longest = max(self.weight_window_s, self.orders_window_s)
        self._sent = [s for s in self._sent if s.counts(now, longest)]
        if self._in_flight >= self.max_in_flight:
            return inf
        fits_at = max(
            self._fits_at(now, weight, self.weight_per_minute, self.weight_window_s, _weight),
            self._fits_at(now, orders, self.orders_per_10s, self.orders_window_s, _orders),
        )
        return max(0.0, fits_at - now)

    def _fits_at(
        self, now: float, amount: int, limit: int, window_s: float, size: Callable[[_Sent], int]
    ) -> float:
        """When ``amount`` more fits under ``limit``: once enough of the oldest requests left
        the window (``amount <= limit``, so dropping all of them always makes room)."""
        counted = sorted(
            (s for s in self._sent if s.counts(now, window_s)), key=lambda s: s.expires(window_s)
        )
        used = sum(size(s) for s in counted)
        fits_at = now
        for sent in counted:
            if used + amount <= limit:
                break
            used -= size(sent)
            fits_at = sent.expires(window_s)
        return fits_at


def _weight(sent: _Sent) -> int:
    return sent.weight


def _orders(sent: _Sent) -> int:
    return sent.orders

"""A hand-written in-memory venue for the flatten engine's tests (no mocks).

:class:`FakeVenue` implements :class:`~ess.venues.ports.VenuePort` with the venue behaviour
the engine depends on: reduce-only closes that never flip a position, client order ids that
can be used once, spot sells limited to the balance not locked by resting sells, and
scriptable faults (errors, lost answers, stale reads, orders that expire unfilled, fills that
race a cancel). Every call is recorded with logical start/end ticks so that a test can check
which calls overlapped and how deep the chain of sequential round trips was.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from ess.core.flatten import (
    CancelStep,
    CloseStep,
    MarketKind,
    OrderView,
    PositionView,
    VenueSnapshot,
)
from ess.settings import ExecuteSettings
from ess.venues.ports import VenueError, VenueErrorKind

__all__ = ["Call", "FakeOrder", "FakeVenue", "call_depths"]

#: Executor settings for tests without a broker: fast rounds, no status server.
FAST_SETTINGS = ExecuteSettings(
    flatten_deadline_sec=5.0,
    enforce_interval_sec=0.01,
    backoff_initial_sec=0.01,
    backoff_max_sec=0.05,
    status_port=-1,
)


@dataclass(frozen=True, slots=True)
class FakeOrder:
    """A resting order; only spot sells matter for the balance they lock."""

    symbol: str
    order_id: str
    side: Literal["buy", "sell"]
    amount: Decimal
    conditional: bool


@dataclass(slots=True)
class Call:
    """One venue call. ``start`` and ``end`` are ticks of one counter per venue (logical time:
    two calls overlapped iff neither ended before the other started); ``at`` is the monotonic
    time it started; ``error`` what it raised."""

    method: str
    args: tuple[object, ...]
    start: int
    at: float
    end: int | None = None
    error: Exception | None = None


def call_depths(calls: Sequence[Call]) -> list[int]:
    """For each call, the length of the longest chain of calls, each started after the
    previous one ended, that ends with it: the number of sequential round trips so far."""
    depths: list[int] = []
    for index, call in enumerate(calls):
        before = [
            depths[i]
            for i, other in enumerate(calls[:index])
            if other.end is not None and other.end < call.start
        ]
        depths.append(1 + max(before, default=0))
    return depths


class FakeVenue:
    """An in-memory venue account. Mutate ``positions``/``orders`` freely from a test.

    Futures positions are signed; spot positions are balances of the base asset (> 0).
    ``remembers_ids=False`` models Binance, where a client order id is unique only among
    *open* orders: a filled market close's id can be used again.
    """

    def __init__(
        self,
        name: str = "fake-futures",
        *,
        kind: MarketKind = MarketKind.FUTURES,
        account: str = "main",
        latency: float = 0.0,
        remembers_ids: bool = True,
    ) -> None:
        self._name = name
        self._kind = kind
        self._account = account
        self.latency = latency
        self.remembers_ids = remembers_ids
        self.positions: dict[str, Decimal] = {}
        self.orders: dict[str, FakeOrder] = {}
        self.dust: dict[str, Decimal] = {}
        #: Client order ids the venue has seen (refused when used again).
        self.client_ids: set[str] = set()
        #: Every close the venue accepted, and the subset that executed (others expired).
        self.accepted: list[CloseStep] = []
        self.executed: list[CloseStep] = []
        #: ``(symbol, quantity)`` after every position change, to check nothing ever flipped.
        self.history: list[tuple[str, Decimal]] = []
        self.countdowns: dict[str, int] = {}
        self.opened = False
        self.calls: list[Call] = []
        self.counts: Counter[str] = Counter()
        self._ticks = itertools.count()
        self._order_ids = itertools.count(1)
        self._faults: dict[str, deque[Exception]] = {}
        self._broken: dict[str, Exception] = {}
        self._lost_answers = 0
        self._expiring = 0
        self._late_fills: dict[str, Decimal] = {}
        self._stale: deque[VenueSnapshot] = deque()

    # ------------------------------------------------------------------ VenuePort

    @property
    def name(self) -> str:
        return self._name

    @property
    def account(self) -> str:
        return self._account

    @property
    def kind(self) -> MarketKind:
        return self._kind

    @property
    def supports_countdown(self) -> bool:
        return self._kind is MarketKind.FUTURES

    async def open(self) -> None:
        async with self._call("open"):
            self.opened = True

    async def snapshot(self) -> VenueSnapshot:
        async with self._call("snapshot"):
            if self._stale:
                return self._stale.popleft()
            return self.current()

    async def cancel_all(self, step: CancelStep) -> None:
        async with self._call("cancel_all", step.symbol, step.conditional):
            for order_id, order in list(self.orders.items()):
                if order.symbol == step.symbol and order.conditional == step.conditional:
                    del self.orders[order_id]
            late = self._late_fills.pop(step.symbol, None)
            if late is not None:
                self._move(step.symbol, late)

    async def close(self, step: CloseStep) -> None:
        async with self._call("close", step.symbol, step.client_order_id):
            if step.client_order_id in self.client_ids:
                raise VenueError(
                    VenueErrorKind.DUPLICATE_ID, "ClientOrderId is duplicated", code=-4116
                )
            delta = self._close_delta(step)
            if self.remembers_ids:
                self.client_ids.add(step.client_order_id)
            self.accepted.append(step)
            if self._expiring:
                self._expiring -= 1  # accepted, then expired unfilled: nothing moves
                return
            self._move(step.symbol, delta)
            self.executed.append(step)
            if self._lost_answers:
                self._lost_answers -= 1
                raise VenueError(VenueErrorKind.TIMEOUT, "executed, but the answer was lost")

    async def arm_countdown(self, symbol: str, countdown_ms: int) -> None:
        async with self._call("arm_countdown", symbol, countdown_ms):
            self.countdowns[symbol] = countdown_ms

    async def aclose(self) -> None:
        self.opened = False

    # ------------------------------------------------------------------ set-up

    def add_order(
        self,
        symbol: str,
        *,
        side: Literal["buy", "sell"] = "buy",
        amount: Decimal = Decimal(1),
        conditional: bool = False,
    ) -> str:
        """A resting order (a rogue bot's, or one left by the strategy); returns its id."""
        order_id = str(next(self._order_ids))
        self.orders[order_id] = FakeOrder(symbol, order_id, side, amount, conditional)
        return order_id

    def fail(self, method: str, error: Exception, *, times: int | None = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error`` (before doing anything);
        ``times=None``: every call until :meth:`heal`."""
        if times is None:
            self._broken[method] = error
        else:
            self._faults.setdefault(method, deque()).extend([error] * times)

    def heal(self) -> None:
        """Drop every scripted fault."""
        self._faults.clear()
        self._broken.clear()

    def lose_answers(self, times: int = 1) -> None:
        """The next ``times`` closes execute, then raise TIMEOUT (the answer was lost)."""
        self._lost_answers += times

    def expire_closes(self, times: int = 1) -> None:
        """The next ``times`` closes are accepted (their ids used) but expire unfilled."""
        self._expiring += times

    def late_fill(self, symbol: str, quantity: Decimal) -> None:
        """The next cancel on ``symbol`` comes too late for an order that fills meanwhile:
        ``quantity`` (signed) is added to the position as the cancel returns."""
        self._late_fills[symbol] = quantity

    def serve_stale(self, times: int) -> None:
        """The next ``times`` reads return what the account holds *now*, whatever happens
        meanwhile (an eventually consistent position endpoint)."""
        self._stale.extend([self.current()] * times)

    # ------------------------------------------------------------------ inspection

    def current(self) -> VenueSnapshot:
        """What the account holds, as a complete read would return it."""
        return VenueSnapshot(
            positions=tuple(
                PositionView(symbol, quantity)
                for symbol, quantity in sorted(self.positions.items())
                if quantity
            ),
            orders=tuple(
                OrderView(order.symbol, order.order_id, order.conditional)
                for order in self.orders.values()
            ),
            dust=tuple(PositionView(s, q) for s, q in sorted(self.dust.items())),
        )

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    # ------------------------------------------------------------------ internals

    @contextlib.asynccontextmanager
    async def _call(self, method: str, *args: object) -> AsyncIterator[None]:
        call = Call(method, args, next(self._ticks), time.monotonic())
        self.calls.append(call)
        self.counts[method] += 1
        try:
            # Always yield to the loop, so that concurrent calls really overlap.
            await asyncio.sleep(self.latency)
            fault = self._broken.get(method)
            queued = self._faults.get(method)
            if fault is None and queued:
                fault = queued.popleft()
            if fault is not None:
                raise fault
            yield
        except Exception as exc:
            call.error = exc
            raise
        finally:
            call.end = next(self._ticks)

    def _close_delta(self, step: CloseStep) -> Decimal:
        """The position change ``step`` makes, or the venue's refusal."""
        held = self.positions.get(step.symbol, Decimal(0))
        signed = step.amount if step.side == "buy" else -step.amount
        if self._kind is MarketKind.SPOT:
            locked = sum(
                (
                    o.amount
                    for o in self.orders.values()
                    if o.symbol == step.symbol and o.side == "sell"
                ),
                Decimal(0),
            )
            if step.side != "sell" or step.amount > held - locked:
                raise VenueError(
                    VenueErrorKind.REJECTED, "Account has insufficient balance", code=-2010
                )
            return signed
        if not step.reduce_only:
            return signed
        if held == 0 or (held > 0) == (step.side == "buy"):
            raise VenueError(
                VenueErrorKind.REDUCE_ONLY_REJECTED, "ReduceOnly Order is rejected", code=-2022
            )
        # Reduce-only clips to the position: it can reach zero, never cross it.
        return max(signed, -held) if held > 0 else min(signed, -held)

    def _move(self, symbol: str, delta: Decimal) -> None:
        quantity = self.positions.get(symbol, Decimal(0)) + delta
        if quantity:
            self.positions[symbol] = quantity
        else:
            self.positions.pop(symbol, None)
        self.history.append((symbol, quantity))

"""Flatten planning: from what a venue says it holds to the steps that make it flat. Pure.

The executor reads a venue (:class:`VenueSnapshot`), asks :func:`plan_flatten` what to do,
does it, and reads again; it repeats until a complete read shows nothing. Three decisions live
here rather than in the I/O code, because they are what makes a retry safe:

* **Cancel before close, per symbol.** On spot a resting sell locks the balance it would sell;
  on futures a cancelled reduce-only order frees the quantity a close needs. So each symbol's
  cancels come first and its close after; symbols are independent and run in parallel.
* **Closes can only reduce.** Futures closes are reduce-only market orders for exactly the
  observed size in the opposite direction: even if one is sent twice, the venue can never flip
  the position. Spot has no short side, so selling at most the held balance cannot flip either.
* **Client order ids derive from the activation and the observation.** The id of a close is a
  hash of (activation, venue, symbol, observed signed quantity, attempt). A retry of the same
  close after a timeout carries the same id, so while the first copy is still open at the
  venue a second one is refused (duplicate client order id); a changed position (the first
  copy did execute, or a late fill moved it) yields a new id. ``attempt`` only moves on when
  the venue says the id was already used but the position is unchanged (the earlier order
  expired unfilled), which a restarted executor discovers the same way. Binance only keeps
  ids unique among *open* orders, so a filled market close frees its id again: what makes a
  retry safe there is reduce-only (futures) or selling at most the held balance (spot),
  always planned from a fresh read. The ids make every close traceable to its activation.

What a spot venue sells is a policy of the venue (:data:`SpotPolicy`), applied here to the
snapshot the planner sees (:func:`apply_spot_policy`), so that both adapters and the planner
agree on it and it never depends on which adapter read the venue.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from ess.core.ids import derive_id

__all__ = [
    "CancelStep",
    "CloseStep",
    "FlattenPlan",
    "MarketKind",
    "OrderView",
    "PositionView",
    "SpotPolicy",
    "SymbolPlan",
    "VenueSnapshot",
    "apply_spot_policy",
    "close_order_id",
    "plan_flatten",
    "quantity_text",
]

#: What a flatten does with a spot account's balances: ``sell`` every asset with a market in
#: the quote currency (except the kept ones), or ``cancel_only``: cancel the orders and sell
#: nothing, leaving every such balance in place as reported, never-flat exposure.
SpotPolicy = Literal["sell", "cancel_only"]

#: Binance allows 36 characters ``[.A-Z:/a-z0-9_-]`` in a client order id: "ess-" + 32 hex.
_CLIENT_ID_PREFIX = "ess-"


class MarketKind(StrEnum):
    """How a venue holds risk: futures positions (signed, closed reduce-only) or spot
    balances (long only, closed by selling)."""

    FUTURES = "futures"
    SPOT = "spot"


@dataclass(frozen=True, slots=True)
class PositionView:
    """Exposure on one symbol (the venue's market id, e.g. ``BTCUSDT``).

    Futures: the signed position size (> 0 long, < 0 short). Spot: the base-asset balance
    (free plus locked) held against the configured quote currency, always > 0.
    """

    symbol: str
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class OrderView:
    """One open order; ``conditional`` orders (stops, take-profits) live in a separate book on
    Binance futures and need their own cancel call."""

    symbol: str
    order_id: str
    conditional: bool = False


@dataclass(frozen=True, slots=True)
class VenueSnapshot:
    """A complete read of one venue account: every read it is built from succeeded and was
    well-formed. An adapter that cannot build a complete snapshot raises instead; there is no
    "partial" snapshot, because a missing part must never look like "nothing there".

    ``dust`` lists exposure too small to trade (below the venue's minimum quantity or
    notional): reported, but not counted against "flat", since no order can remove it.
    ``stranded`` lists exposure of a size that matters but that no order on this venue can
    remove (a spot asset without a market in the quote currency), or that the venue's spot
    policy leaves in place (see :func:`apply_spot_policy`): it is never "flat", so the
    flatten keeps reporting it (``stalled``) until a human moves it.
    """

    positions: tuple[PositionView, ...] = ()
    orders: tuple[OrderView, ...] = ()
    dust: tuple[PositionView, ...] = ()
    stranded: tuple[PositionView, ...] = ()

    @property
    def flat(self) -> bool:
        """No open order (regular or conditional), no position a close could reduce and no
        stranded exposure."""
        return (
            not self.orders
            and not self.stranded
            and not any(position.quantity for position in self.positions)
        )


@dataclass(frozen=True, slots=True)
class CancelStep:
    """Cancel every open order of ``symbol`` in one call (the conditional book if set)."""

    symbol: str
    conditional: bool


@dataclass(frozen=True, slots=True)
class CloseStep:
    """A market order that removes the observed exposure on ``symbol``."""

    symbol: str
    side: Literal["buy", "sell"]
    amount: Decimal
    client_order_id: str
    reduce_only: bool
    observed: Decimal


@dataclass(frozen=True, slots=True)
class SymbolPlan:
    """What to do on one symbol, in order: the cancels, then the close (if any)."""

    symbol: str
    cancels: tuple[CancelStep, ...]
    close: CloseStep | None


@dataclass(frozen=True, slots=True)
class FlattenPlan:
    """Per-symbol plans; symbols are independent of each other."""

    symbols: tuple[SymbolPlan, ...]

    @property
    def empty(self) -> bool:
        return not self.symbols

    @property
    def cancels(self) -> int:
        return sum(len(plan.cancels) for plan in self.symbols)

    @property
    def closes(self) -> int:
        return sum(plan.close is not None for plan in self.symbols)


def quantity_text(quantity: Decimal) -> str:
    """A canonical decimal text (``0.50`` and ``0.5`` are the same observation)."""
    text = f"{quantity.normalize():f}"
    return "0" if text in {"-0", "0"} else text


def close_order_id(
    activation_id: str, venue: str, symbol: str, observed: Decimal, attempt: int = 0
) -> str:
    """The client order id of the close for ``observed`` on ``symbol`` (36 characters)."""
    digest = derive_id("close", activation_id, venue, symbol, quantity_text(observed), attempt)
    return _CLIENT_ID_PREFIX + uuid.UUID(digest).hex


def apply_spot_policy(snapshot: VenueSnapshot, policy: SpotPolicy) -> VenueSnapshot:
    """The snapshot of a spot venue as the planner must see it under ``policy``.

    ``sell`` changes nothing: every position is a balance :func:`plan_flatten` sells.
    ``cancel_only`` moves every position to ``stranded``, so the plan holds the cancels and
    no sell. The balances stay exposure: the venue is never read as flat while one is held
    (a balance ESS should ignore belongs in ``keep_assets``), and since the executor's reports
    name stranded exposure by symbol and quantity only, the name carries the reason, e.g.
    ``BTCUSDT (not sold: spot_policy=cancel_only)``, so that the ``stalled`` report says the
    balance was left on purpose and not that a sell failed. Dust stays dust: no order could
    sell it under either policy.
    """
    if policy == "sell":
        return snapshot
    left = tuple(
        PositionView(f"{position.symbol} (not sold: spot_policy={policy})", position.quantity)
        for position in snapshot.positions
        if position.quantity
    )
    return replace(snapshot, positions=(), stranded=(*snapshot.stranded, *left))


def plan_flatten(
    snapshot: VenueSnapshot,
    *,
    activation_id: str,
    venue: str,
    kind: MarketKind,
    attempts: Mapping[tuple[str, str], int] | None = None,
) -> FlattenPlan:
    """The steps that take the venue from ``snapshot`` to flat.

    ``attempts`` maps ``(symbol, quantity_text(observed))`` to the attempt number of its close
    (default 0); see the module docstring. Symbols come out sorted, so the same snapshot always
    gives the same plan.
    """
    attempts = attempts or {}
    conditional_by_symbol: dict[str, set[bool]] = {}
    for order in snapshot.orders:
        conditional_by_symbol.setdefault(order.symbol, set()).add(order.conditional)
    exposure = {
        position.symbol: position.quantity for position in snapshot.positions if position.quantity
    }
    plans: list[SymbolPlan] = []
    for symbol in sorted(set(conditional_by_symbol) | set(exposure)):
        books = sorted(conditional_by_symbol.get(symbol, ()))
        cancels = tuple(CancelStep(symbol, conditional) for conditional in books)
        close: CloseStep | None = None
        observed = exposure.get(symbol)
        if observed is not None and (kind is MarketKind.FUTURES or observed > 0):
            attempt = attempts.get((symbol, quantity_text(observed)), 0)
            close = CloseStep(
                symbol=symbol,
                side="sell" if observed > 0 else "buy",
                amount=abs(observed),
                client_order_id=close_order_id(activation_id, venue, symbol, observed, attempt),
                reduce_only=kind is MarketKind.FUTURES,
                observed=observed,
            )
        if cancels or close is not None:
            plans.append(SymbolPlan(symbol, cancels, close))
    return FlattenPlan(tuple(plans))

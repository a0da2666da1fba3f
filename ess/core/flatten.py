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

**Hedge (two-sided) mode.** A futures account in hedge mode holds a long and a short position
on the same symbol at once, each with its own position side (:data:`PositionSide`). They are
two exposures: each gets its own close, carrying its side, sized to that side's observed
quantity, and its own client order id (the side is part of the derivation). The close of a
side can only reduce that side: how an adapter says so is the venue's business (Binance
refuses ``reduceOnly`` with a ``positionSide``; the side itself makes the order closing-only).
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
    "PositionSide",
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

#: The side of a position in hedge (two-sided) mode; ``None`` stands for one-way mode and spot.
PositionSide = Literal["long", "short"]

#: The order of a symbol's closes in a plan (one-way mode has one close per symbol).
_SIDE_ORDER: dict[PositionSide | None, int] = {None: 0, "long": 1, "short": 2}

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

    ``side`` is set only in hedge (two-sided) mode, where a symbol can hold a long and a short
    position at once: ``long`` with ``quantity`` > 0, ``short`` with ``quantity`` < 0.
    """

    symbol: str
    quantity: Decimal
    side: PositionSide | None = None

    @property
    def label(self) -> str:
        """How reports name the exposure: the symbol, and the side in hedge mode."""
        return self.symbol if self.side is None else f"{self.symbol} {self.side}"


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
    """A market order that removes the observed exposure on ``symbol``.

    ``reduce_only`` says the order must only be able to reduce (every futures close): the
    adapter expresses it the way the venue needs. ``position_side`` is the hedge-mode side the
    close reduces (``None`` in one-way mode and on spot).
    """

    symbol: str
    side: Literal["buy", "sell"]
    amount: Decimal
    client_order_id: str
    reduce_only: bool
    observed: Decimal
    position_side: PositionSide | None = None


@dataclass(frozen=True, slots=True)
class SymbolPlan:
    """What to do on one symbol, in order: the cancels, then the closes (none, one, or in
    hedge mode one per position side, independent of each other)."""

    symbol: str
    cancels: tuple[CancelStep, ...]
    closes: tuple[CloseStep, ...] = ()


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
        return sum(len(plan.closes) for plan in self.symbols)


def quantity_text(quantity: Decimal) -> str:
    """A canonical decimal text (``0.50`` and ``0.5`` are the same observation)."""
    text = f"{quantity.normalize():f}"
    return "0" if text in {"-0", "0"} else text


def close_order_id(
    activation_id: str,
    venue: str,
    symbol: str,
    observed: Decimal,
    attempt: int = 0,
    *,
    position_side: PositionSide | None = None,
) -> str:
    """The client order id of the close for ``observed`` on ``symbol`` (36 characters).

    A hedge-mode close also derives from its position side; a one-way close's id is what it
    always was, so a restarted executor of a newer release finds its predecessor's closes.
    """
    parts: tuple[str | int, ...] = (activation_id, venue, symbol, quantity_text(observed), attempt)
    if position_side is not None:
        parts = (*parts, position_side)
    digest = derive_id("close", *parts)
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
        PositionView(f"{position.label} (not sold: spot_policy={policy})", position.quantity)
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
    (default 0); see the module docstring. The two sides of a hedge-mode symbol never share a
    key: a long is observed > 0 and a short < 0. Symbols come out sorted, and a symbol's closes
    by side (one-way, then long, then short), so the same snapshot always gives the same plan.
    """
    attempts = attempts or {}
    conditional_by_symbol: dict[str, set[bool]] = {}
    for order in snapshot.orders:
        conditional_by_symbol.setdefault(order.symbol, set()).add(order.conditional)
    exposure: dict[str, list[PositionView]] = {}
    for position in snapshot.positions:
        if position.quantity and (kind is MarketKind.FUTURES or position.quantity > 0):
            exposure.setdefault(position.symbol, []).append(position)
    plans: list[SymbolPlan] = []
    for symbol in sorted(set(conditional_by_symbol) | set(exposure)):
        books = sorted(conditional_by_symbol.get(symbol, ()))
        cancels = tuple(CancelStep(symbol, conditional) for conditional in books)
        held = sorted(exposure.get(symbol, ()), key=lambda position: _SIDE_ORDER[position.side])
        closes = tuple(
            _close_step(position, activation_id, venue, kind, attempts) for position in held
        )
        if cancels or closes:
            plans.append(SymbolPlan(symbol, cancels, closes))
    return FlattenPlan(tuple(plans))


def _close_step(
    position: PositionView,
    activation_id: str,
    venue: str,
    kind: MarketKind,
    attempts: Mapping[tuple[str, str], int],
) -> CloseStep:
    """The close of one exposure: the opposite direction, exactly the observed size."""
    observed = position.quantity
    attempt = attempts.get((position.symbol, quantity_text(observed)), 0)
    return CloseStep(
        symbol=position.symbol,
        side="sell" if observed > 0 else "buy",
        amount=abs(observed),
        client_order_id=close_order_id(
            activation_id, venue, position.symbol, observed, attempt, position_side=position.side
        ),
        reduce_only=kind is MarketKind.FUTURES,
        observed=observed,
        position_side=position.side,
    )

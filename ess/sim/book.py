"""Per-account exchange state and the trading rules the simulator enforces.

Everything here is synchronous and free of HTTP: the server parses a request into plain
strings, calls :class:`Engine`, and renders the resulting :class:`Order` objects (see
:mod:`ess.sim.payloads`). Rule violations raise :class:`ApiError` carrying the Binance error code
and message, which the server returns as ``{"code": ..., "msg": ...}``.

Quantities and prices are :class:`~decimal.Decimal` throughout, so closing a position with an
order for exactly its size leaves exactly zero (no float dust that a verifier would read as
"not flat").

There is no matching engine: market orders fill at once at the symbol's mark price, limit and
conditional orders rest until a test fills them (:meth:`Engine.fill_resting`) or a fault does.
That keeps every outcome decided by the test, not by a race with a price feed.

Derivative orders work on either derivative book (:data:`~ess.sim.markets.DERIVATIVE_VENUES`):
USD-M (linear: quantity in the base coin, PnL in USDT into ``futures_wallet``) and COIN-M
(inverse: quantity in contracts of ``contract_size`` USD, entry price averaged harmonically,
PnL ``contracts x contract_size x (1/entry - 1/exit)`` in the base coin into
``coinm_wallet``). Derivative symbols are unique across the two books, so positions are kept
by symbol in one dict.

**Position modes.** An account is in one-way mode (one net position per symbol, ``side``
``BOTH``, kept in :attr:`Account.positions`) or in hedge (two-sided) mode
(:attr:`Account.hedge_mode`: a ``LONG`` and a ``SHORT`` position per symbol, kept apart in
:attr:`Account.hedge_positions`). ``qty`` is signed in both (a ``SHORT`` one is negative). In
hedge mode every derivative order names the side it acts on (``positionSide``): BUY+LONG and
SELL+SHORT open or grow that side, SELL+LONG and BUY+SHORT close it. A close is refused
(-2022) when its side is flat and its fill is clipped to that side's size, at placement and at
every later fill (resting, partial or late): closing one side can never open the other or flip
it. Binance refuses ``reduceOnly`` in hedge mode (-1106); families whose exchange accepts it
there (Bybit) say so (``reduce_only_in_hedge``). The mode is one switch for every derivative
book and family of an account; like the exchanges, the simulator only switches it while the
account holds no position and no open derivative order (:meth:`Account.mode_switch_blocker`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Final

from ess.errors import EssError
from ess.sim.markets import DERIVATIVE_VENUES, Market, Venue, fmt

__all__ = [
    "Account",
    "ApiError",
    "Engine",
    "Fill",
    "Order",
    "Position",
]

ZERO: Final = Decimal(0)
#: ``positionSide`` of a one-way position or order, and the two sides of hedge mode.
ONE_WAY: Final = "BOTH"
HEDGE_SIDES: Final = ("LONG", "SHORT")
OPEN_STATUSES: Final = frozenset({"NEW", "PARTIALLY_FILLED"})
#: Internal status of an order taken off the book by a cancel whose late fill is pending.
PENDING_FILL: Final = "PENDING_FILL"
#: Binance's pattern for client order ids (futures and spot alike).
_CLIENT_ID: Final = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_DECIMAL_TEXT: Final = re.compile(r"^\d{1,20}(\.\d{1,20})?$")
#: Futures types that Binance moved to the algo-order API (``POST /fapi/v1/algoOrder``).
CONDITIONAL_TYPES: Final = frozenset(
    {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)
#: Parameters ``POST /api/v3/order`` reads; anything else is answered with -1104 like Binance
#: does, which is how a stray ``reduceOnly`` on spot shows up.
_SPOT_ORDER_PARAMS: Final = frozenset(
    {
        "symbol", "side", "type", "timeInForce", "quantity", "quoteOrderQty", "price",
        "newClientOrderId", "strategyId", "strategyType", "stopPrice", "trailingDelta",
        "icebergQty", "newOrderRespType", "selfTradePreventionMode", "recvWindow", "timestamp",
    }
)  # fmt: skip


class ApiError(EssError):
    """A request the exchange rejects: ``code``/``msg`` and the HTTP status to use.

    Codes are the engine's native ones (Binance's), which each simulator family translates
    into its exchange's own; ``native=True`` marks an error a family raised in its own codes,
    passed through untranslated.
    """

    def __init__(self, code: int, msg: str, status: int = 400, *, native: bool = False) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.native = native


def missing(name: str) -> ApiError:
    """Binance's answer to an absent mandatory parameter."""
    return ApiError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


@dataclass
class Order:
    """A regular or conditional (algo) order on either venue.

    ``orig_qty`` is what was asked for. ``executed_qty`` can end lower than that for a market
    order: a clipped reduce-only close or a partial-fill fault. Such an order ends ``FILLED``
    when it did all it was allowed to (the clipped size) and ``EXPIRED`` otherwise.
    """

    order_id: int
    venue: Venue
    symbol: str
    side: str
    type: str
    orig_qty: Decimal
    price: Decimal
    client_order_id: str
    time_ms: int
    reduce_only: bool = False
    conditional: bool = False
    trigger_price: Decimal = ZERO
    time_in_force: str = "GTC"
    close_position: bool = False
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    #: COIN-M: the filled value in the base coin (``qty x contract_size / price`` summed).
    cum_base: Decimal = ZERO
    status: str = "NEW"
    update_ms: int = 0
    #: ``BOTH`` (one-way mode) or the hedge-mode side the order acts on, ``LONG``/``SHORT``.
    position_side: str = ONE_WAY

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def closes_side(self) -> bool:
        """A hedge-mode order that reduces its side (SELL+LONG, BUY+SHORT): it is clipped to
        that side's size like a reduce-only order, so it can never open the other side."""
        return closes_side(self.side, self.position_side)

    @property
    def limited(self) -> bool:
        """Whether fills are clipped to a position: reduce-only, or a hedge-mode close."""
        return self.reduce_only or self.closes_side

    @property
    def public_status(self) -> str:
        """The status the API reports: an order waiting for its late fill shows as
        ``CANCELED``, which is what the client was told, until the fill lands."""
        return "CANCELED" if self.status == PENDING_FILL else self.status

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def avg_price(self) -> Decimal:
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO


@dataclass
class Position:
    """A futures position: ``qty`` is signed (negative is short).

    ``side`` is ``BOTH`` for a one-way-mode position, ``LONG`` or ``SHORT`` for one side of a
    hedge-mode symbol (a ``LONG`` one has ``qty > 0``, a ``SHORT`` one ``qty < 0``).
    """

    symbol: str
    qty: Decimal = ZERO
    entry_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    update_ms: int = 0
    side: str = ONE_WAY


@dataclass(frozen=True)
class Fill:
    """One execution. ``late`` marks fills injected after a cancel (the late-fill fault)."""

    account: str
    venue: Venue
    symbol: str
    order_id: int
    side: str
    qty: Decimal
    price: Decimal
    time_ms: int
    realized_pnl: Decimal = ZERO
    late: bool = False
    #: The order's position side: ``BOTH`` in one-way mode, ``LONG``/``SHORT`` in hedge mode
    #: (replaying fills per ``(symbol, position_side)`` rebuilds every position).
    position_side: str = ONE_WAY


@dataclass
class Account:
    """One API key's state on every venue (a Binance key trades spot, USD-M and COIN-M alike)."""

    name: str
    api_key: str
    secret: str = field(repr=False)
    futures_wallet: Decimal = Decimal(10_000)
    #: COIN-M wallets by margin asset (``BTC``...): seeded amount plus realized inverse PnL.
    coinm_wallet: dict[str, Decimal] = field(default_factory=dict)
    #: One-way-mode positions by symbol.
    positions: dict[str, Position] = field(default_factory=dict)
    #: Hedge-mode positions by ``(symbol, "LONG"/"SHORT")``; empty unless ``hedge_mode``.
    hedge_positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    spot_free: dict[str, Decimal] = field(default_factory=dict)
    spot_locked: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    algo_orders: dict[int, Order] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    leverage: int = 20
    #: Futures position mode of every derivative book and family: hedge (two-sided) when
    #: set, one-way otherwise (see the module docstring).
    hedge_mode: bool = False
    #: The API passphrase some exchanges require besides key and secret (OKX's
    #: ``OK-ACCESS-PASSPHRASE``); an account without one cannot use such a family.
    passphrase: str | None = field(default=None, repr=False)

    def open_orders(
        self, venue: Venue, symbol: str | None = None, *, conditional: bool = False
    ) -> list[Order]:
        book = self.algo_orders if conditional else self.orders
        return [
            order
            for order in book.values()
            if order.is_open and order.venue is venue and (symbol is None or order.symbol == symbol)
        ]

    def position_qty(self, symbol: str) -> Decimal:
        """The one-way-mode position of ``symbol`` (0 when flat)."""
        position = self.positions.get(symbol)
        return position.qty if position else ZERO

    def position(self, symbol: str, side: str = ONE_WAY) -> Position | None:
        """The open position of ``symbol`` on ``side`` (``BOTH``: the one-way one)."""
        if side == ONE_WAY:
            return self.positions.get(symbol)
        return self.hedge_positions.get((symbol, side))

    def side_qty(self, symbol: str, side: str = ONE_WAY) -> Decimal:
        """The signed size of ``symbol`` on ``side`` (0 when flat)."""
        position = self.position(symbol, side)
        return position.qty if position else ZERO

    def store_position(self, position: Position) -> None:
        """Keep ``position`` in the book of its side, or drop it once flat."""
        if position.side == ONE_WAY:
            if position.qty:
                self.positions[position.symbol] = position
            else:
                self.positions.pop(position.symbol, None)
            return
        key = (position.symbol, position.side)
        if position.qty:
            self.hedge_positions[key] = position
        else:
            self.hedge_positions.pop(key, None)

    def all_positions(self) -> list[Position]:
        """Every open position, one-way and hedge, by symbol then side (``LONG`` first)."""
        found = [*self.positions.values(), *self.hedge_positions.values()]
        order = {ONE_WAY: 0, "LONG": 1, "SHORT": 2}
        return sorted((p for p in found if p.qty), key=lambda p: (p.symbol, order[p.side]))

    def mode_switch_blocker(self) -> str | None:
        """Why the position mode cannot be switched now (``"position"``: a futures position is
        open, ``"orders"``: a derivative order is open), or ``None``: exchanges refuse the switch
        in both cases, and so does the simulator, so no order or position ever belongs to the
        other mode."""
        if self.all_positions():
            return "position"
        live = {*OPEN_STATUSES, PENDING_FILL}  # a pending late fill still acts on its side
        for order in (*self.orders.values(), *self.algo_orders.values()):
            if order.status in live and order.venue in DERIVATIVE_VENUES:
                return "orders"
        return None


def closes_side(side: str, position_side: str) -> bool:
    """Whether an order of ``side`` (BUY/SELL) on hedge side ``position_side`` reduces it."""
    return (side, position_side) in {("SELL", "LONG"), ("BUY", "SHORT")}


def parse_decimal(name: str, text: str | None) -> Decimal:
    """A positive-or-zero decimal parameter in Binance's accepted text form."""
    if text is None or text == "":
        raise missing(name)
    if not _DECIMAL_TEXT.match(text):
        raise ApiError(
            -1100,
            f"Illegal characters found in parameter '{name}'; "
            "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.",
        )
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise missing(name) from exc


def parse_bool(text: str | None) -> bool:
    return (text or "").lower() == "true"


def floor_to_step(qty: Decimal, step: Decimal) -> Decimal:
    return (qty / step).to_integral_value(rounding=ROUND_DOWN) * step


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


#: COIN-M amounts in the base coin are kept to Binance's 8 decimals.
_COIN: Final = Decimal("1e-8")


def _inverse_pnl(usd: Decimal, entry: Decimal, exit_price: Decimal, direction: int) -> Decimal:
    """Realized PnL in the base coin of closing ``usd`` worth of contracts of a position
    (``direction`` 1 long, -1 short) entered at ``entry``, at ``exit_price``."""
    return (usd * (1 / entry - 1 / exit_price) * direction).quantize(_COIN)


class Engine:
    """Order placement, fills, cancels and position arithmetic for all accounts.

    ``marks`` is shared with the simulator, which updates it on ``set_mark_price``; market
    orders fill at ``marks[(venue, symbol)]``.
    """

    def __init__(
        self,
        markets: Mapping[Venue, Mapping[str, Market]],
        marks: dict[tuple[Venue, str], Decimal],
        now_ms: Callable[[], int],
    ) -> None:
        self.markets = markets
        self.marks = marks
        self.now_ms = now_ms
        self._order_ids = itertools.count(1_000_001)
        self._algo_ids = itertools.count(5_000_001)
        self._client_ids = itertools.count(1)

    # -- lookups ---------------------------------------------------------------------------

    def market(self, venue: Venue, symbol: str | None) -> Market:
        if not symbol:
            raise missing("symbol")
        market = self.markets[venue].get(symbol)
        if market is None:
            raise ApiError(-1121, "Invalid symbol.")
        return market

    def mark(self, venue: Venue, symbol: str) -> Decimal:
        return self.marks[(venue, symbol)]

    def find_order(
        self,
        account: Account,
        venue: Venue,
        symbol: str,
        *,
        order_id: str | None,
        client_id: str | None,
        conditional: bool = False,
    ) -> Order | None:
        book = account.algo_orders if conditional else account.orders
        for order in book.values():
            if order.venue is not venue or order.symbol != symbol:
                continue
            if order_id is not None and str(order.order_id) == order_id:
                return order
            if order_id is None and client_id is not None and order.client_order_id == client_id:
                return order
        return None

    # -- order creation --------------------------------------------------------------------

    def _client_id(self, account: Account, venue: Venue, given: str | None) -> str:
        if given is None:
            return f"sim-{next(self._client_ids)}"
        if not _CLIENT_ID.match(given):
            raise ApiError(-4015, "Client order id is not valid.")
        duplicate = any(
            o.client_order_id == given and o.venue is venue
            for o in (*account.orders.values(), *account.algo_orders.values())
            if o.is_open
        )
        if duplicate:
            if venue in DERIVATIVE_VENUES:
                raise ApiError(-4116, "ClientOrderId is duplicated.")
            raise ApiError(-2010, "Duplicate order sent.")
        return given

    def _check_qty(self, market: Market, qty: Decimal) -> None:
        if market.venue is Venue.SPOT:
            if qty <= 0 or qty < market.min_qty or qty % market.step_size:
                raise ApiError(-1013, "Filter failure: LOT_SIZE")
            return
        if qty <= 0:
            raise ApiError(-4003, "Quantity less than or equal to zero.")
        if qty % market.step_size:
            raise ApiError(-1111, "Precision is over the maximum defined for this asset.")
        if qty < market.min_qty:
            raise ApiError(-4004, "Quantity less than or equal to minimum quantity.")
        if qty > market.max_qty:
            raise ApiError(-4005, "Quantity greater than maximum quantity.")

    def _check_price(self, market: Market, price: Decimal) -> None:
        if price <= 0:
            raise ApiError(-4001, "Price less than 0.")
        if price % market.tick_size:
            raise ApiError(-4014, "Price not increased by tick size.")

    def _check_reduce_only(
        self, account: Account, symbol: str, side: str, position_side: str = ONE_WAY
    ) -> None:
        """Reject a reduce-only order (or a hedge-mode close) that could only open or grow a
        position (-2022): in hedge mode, one that is not a close of its side, or whose side is
        flat."""
        if position_side != ONE_WAY:
            if not closes_side(side, position_side) or not account.side_qty(symbol, position_side):
                raise ApiError(-2022, "ReduceOnly Order is rejected.")
            return
        position = account.position_qty(symbol)
        direction = 1 if side == "BUY" else -1
        if position == 0 or _sign(position) == direction:
            raise ApiError(-2022, "ReduceOnly Order is rejected.")

    @staticmethod
    def _position_side(
        account: Account, params: Mapping[str, str], *, reduce_only_in_hedge: bool
    ) -> str:
        """The ``positionSide`` of an order, checked against the account's position mode:
        one-way takes ``BOTH`` (or none), hedge mode ``LONG`` or ``SHORT`` (-4061 otherwise);
        ``reduceOnly`` sent in hedge mode is -1106 unless the family's exchange accepts it
        there (``reduce_only_in_hedge``)."""
        side = params.get("positionSide") or ONE_WAY
        if side not in {ONE_WAY, *HEDGE_SIDES} or (side != ONE_WAY) != account.hedge_mode:
            raise ApiError(-4061, "Order's position side does not match user's setting.")
        if account.hedge_mode and "reduceOnly" in params and not reduce_only_in_hedge:
            raise ApiError(-1106, "Parameter 'reduceOnly' sent when not required.")
        return side

    def place_futures(
        self,
        account: Account,
        params: Mapping[str, str],
        *,
        fill_ratio: Decimal | None = None,
        venue: Venue = Venue.FUTURES,
        reduce_only_in_hedge: bool = False,
    ) -> Order:
        """``POST /fapi/v1/order`` (or ``/dapi/v1/order`` with ``venue=Venue.COINM``): MARKET
        fills now at the mark, LIMIT rests.

        ``positionSide`` must match the account's position mode (see the module docstring):
        in hedge mode a close of a side (SELL+LONG, BUY+SHORT) is checked and clipped exactly
        like a reduce-only order.

        A reduce-only order is checked against the position *before* anything happens
        (-2022 if it could only open or grow it) and its fill is clipped to the position, so
        it can close a position but never flip it, even when sized larger than the position
        (which is what a kill switch does when its view of the position is stale).
        ``fill_ratio`` (the partial-fill fault) fills only that share, rounded down to the lot
        step.

        USD-M refuses conditional types here (-4120: they moved to the algo-order API). COIN-M
        still takes them on its order endpoint (``stopPrice``): they rest, untriggered, in the
        regular book, beside the algo book ccxt uses for them.
        """
        market = self.market(self._derivative(venue), params.get("symbol"))
        side = self._side(params)
        order_type = params.get("type") or ""
        legacy_conditional = venue is Venue.COINM and order_type in CONDITIONAL_TYPES
        if order_type in CONDITIONAL_TYPES and not legacy_conditional:
            raise ApiError(
                -4120,
                "Order type not supported for this endpoint. "
                "Please use the Algo Order API endpoints instead.",
            )
        if order_type not in {"MARKET", "LIMIT"} and not legacy_conditional:
            raise ApiError(-1116, "Invalid orderType.")
        position_side = self._position_side(
            account, params, reduce_only_in_hedge=reduce_only_in_hedge
        )
        qty = parse_decimal("quantity", params.get("quantity"))
        self._check_qty(market, qty)
        price = ZERO
        if order_type in {"LIMIT", "STOP", "TAKE_PROFIT"}:
            price = parse_decimal("price", params.get("price"))
            self._check_price(market, price)
        if order_type == "LIMIT" and not params.get("timeInForce"):
            raise missing("timeInForce")
        trigger = ZERO
        if legacy_conditional and order_type != "TRAILING_STOP_MARKET":
            trigger = parse_decimal("stopPrice", params.get("stopPrice"))
            self._check_price(market, trigger)
        reduce_only = parse_bool(params.get("reduceOnly"))
        if reduce_only or closes_side(side, position_side):
            self._check_reduce_only(account, market.symbol, side, position_side)
        order = Order(
            order_id=next(self._order_ids),
            venue=market.venue,
            symbol=market.symbol,
            side=side,
            type=order_type,
            orig_qty=qty,
            price=price,
            client_order_id=self._client_id(account, market.venue, params.get("newClientOrderId")),
            time_ms=self.now_ms(),
            reduce_only=reduce_only,
            trigger_price=trigger,
            time_in_force=params.get("timeInForce", "GTC"),
            position_side=position_side,
        )
        order.update_ms = order.time_ms
        account.orders[order.order_id] = order
        if order_type == "MARKET":
            target = self._reducible(account, order, qty) if order.limited else qty
            wanted = target
            if fill_ratio is not None:
                wanted = floor_to_step(target * fill_ratio, market.step_size)
            if wanted > 0:
                self._fill_futures(account, order, wanted, self.mark(market.venue, market.symbol))
            order.status = "FILLED" if order.executed_qty == target else "EXPIRED"
        elif fill_ratio is not None and order_type == "LIMIT":
            self.fill_resting(account, order, floor_to_step(qty * fill_ratio, market.step_size))
        return order

    def place_algo(
        self,
        account: Account,
        params: Mapping[str, str],
        *,
        venue: Venue = Venue.FUTURES,
        reduce_only_in_hedge: bool = False,
    ) -> Order:
        """``POST /fapi/v1/algoOrder`` (``/dapi/v1/algoOrder`` with ``venue=Venue.COINM``;
        ``algoType=CONDITIONAL``): the order rests untriggered. ``positionSide`` follows the
        position mode as in :meth:`place_futures`; a hedge-mode close (other than a
        ``closePosition`` one) needs a position on its side."""
        market = self.market(self._derivative(venue), params.get("symbol"))
        side = self._side(params)
        if params.get("algoType") != "CONDITIONAL":
            raise missing("algoType")
        order_type = params.get("type") or ""
        if order_type not in CONDITIONAL_TYPES:
            raise ApiError(-1116, "Invalid orderType.")
        position_side = self._position_side(
            account, params, reduce_only_in_hedge=reduce_only_in_hedge
        )
        close_position = parse_bool(params.get("closePosition"))
        qty = ZERO
        if not close_position:
            qty = parse_decimal("quantity", params.get("quantity"))
            self._check_qty(market, qty)
        trigger = ZERO
        if order_type != "TRAILING_STOP_MARKET":
            trigger = parse_decimal("triggerPrice", params.get("triggerPrice"))
            self._check_price(market, trigger)
        price = ZERO
        if order_type in {"STOP", "TAKE_PROFIT"}:
            price = parse_decimal("price", params.get("price"))
            self._check_price(market, price)
        reduce_only = parse_bool(params.get("reduceOnly"))
        if reduce_only or (closes_side(side, position_side) and not close_position):
            self._check_reduce_only(account, market.symbol, side, position_side)
        order = Order(
            order_id=next(self._algo_ids),
            venue=market.venue,
            symbol=market.symbol,
            side=side,
            type=order_type,
            orig_qty=qty,
            price=price,
            client_order_id=self._client_id(account, market.venue, params.get("clientAlgoId")),
            time_ms=self.now_ms(),
            reduce_only=reduce_only,
            conditional=True,
            trigger_price=trigger,
            close_position=close_position,
            time_in_force=params.get("timeInForce", "GTC"),
            position_side=position_side,
        )
        order.update_ms = order.time_ms
        account.algo_orders[order.order_id] = order
        return order

    def place_spot(
        self, account: Account, params: Mapping[str, str], *, fill_ratio: Decimal | None = None
    ) -> Order:
        """``POST /api/v3/order``: MARKET trades against the mark price, LIMIT locks funds.

        Spot has no positions and no reduce-only: flattening spot means selling the free base
        balance. Unknown parameters (such as a ``reduceOnly`` ccxt passes through) are refused
        with -1104 as Binance does.
        """
        unread = [key for key in params if key not in _SPOT_ORDER_PARAMS and key != "signature"]
        if unread:
            sent = len(params)
            raise ApiError(
                -1104,
                f"Not all sent parameters were read; read '{sent - len(unread)}' "
                f"parameter(s) but was sent '{sent}'.",
            )
        market = self.market(Venue.SPOT, params.get("symbol"))
        side = self._side(params)
        order_type = params.get("type") or ""
        if order_type not in {"MARKET", "LIMIT"}:
            raise ApiError(-1116, "Invalid orderType.")
        mark = self.mark(Venue.SPOT, market.symbol)
        price = ZERO
        if order_type == "MARKET" and "quantity" not in params and side == "BUY":
            quote = parse_decimal("quoteOrderQty", params.get("quoteOrderQty"))
            qty = floor_to_step(quote / mark, market.step_size)
        else:
            qty = parse_decimal("quantity", params.get("quantity"))
        self._check_qty(market, qty)
        if order_type == "LIMIT":
            price = parse_decimal("price", params.get("price"))
            self._check_price(market, price)
            if not params.get("timeInForce"):
                raise missing("timeInForce")
        lock_asset, lock_amount = self._spot_cost(market, side, qty, price or mark)
        if account.spot_free.get(lock_asset, ZERO) < lock_amount:
            raise ApiError(-2010, "Account has insufficient balance for requested action.")
        order = Order(
            order_id=next(self._order_ids),
            venue=Venue.SPOT,
            symbol=market.symbol,
            side=side,
            type=order_type,
            orig_qty=qty,
            price=price,
            client_order_id=self._client_id(account, Venue.SPOT, params.get("newClientOrderId")),
            time_ms=self.now_ms(),
            time_in_force=params.get("timeInForce", "GTC") if order_type == "LIMIT" else "GTC",
        )
        order.update_ms = order.time_ms
        account.orders[order.order_id] = order
        if order_type == "MARKET":
            wanted = qty
            if fill_ratio is not None:
                wanted = floor_to_step(qty * fill_ratio, market.step_size)
            if wanted > 0:
                self._fill_spot(account, order, wanted, mark, locked=False)
            order.status = "FILLED" if order.executed_qty == qty else "EXPIRED"
        else:
            self._lock(account, lock_asset, lock_amount)
            if fill_ratio is not None:
                self.fill_resting(account, order, floor_to_step(qty * fill_ratio, market.step_size))
        return order

    @staticmethod
    def _derivative(venue: Venue) -> Venue:
        if venue not in DERIVATIVE_VENUES:
            raise ValueError(f"{venue} holds no positions")
        return venue

    @staticmethod
    def _side(params: Mapping[str, str]) -> str:
        side = params.get("side")
        if not side:
            raise missing("side")
        if side not in {"BUY", "SELL"}:
            raise ApiError(-1117, "Invalid side.")
        return side

    # -- seeding ---------------------------------------------------------------------------

    def seed_order(
        self,
        account: Account,
        venue: Venue,
        symbol: str,
        *,
        side: str,
        qty: Decimal,
        price: Decimal,
        order_type: str,
        reduce_only: bool,
        client_order_id: str | None,
        trigger_price: Decimal,
        position_side: str = ONE_WAY,
    ) -> Order:
        """An order that is already resting, bypassing the API's checks (not its bookkeeping:
        a spot order still locks its funds, so cancelling it gives them back).

        ``position_side`` must fit the account's position mode (``ValueError``): a hedge-mode
        account's derivative orders name their side, so their fills follow its arithmetic."""
        market = self.market(venue, symbol)
        conditional = order_type in CONDITIONAL_TYPES
        if conditional and venue is Venue.SPOT:
            raise ValueError("conditional orders are modelled on futures only")
        if side not in {"BUY", "SELL"}:
            raise ValueError(f"side must be BUY or SELL, not {side!r}")
        if venue is Venue.SPOT:
            if position_side != ONE_WAY:
                raise ValueError("spot orders have no position side")
        elif account.hedge_mode and position_side not in HEDGE_SIDES:
            raise ValueError("a hedge-mode account's order needs position_side LONG or SHORT")
        elif not account.hedge_mode and position_side != ONE_WAY:
            raise ValueError("a one-way-mode account's order takes no position_side")
        order = Order(
            order_id=next(self._algo_ids if conditional else self._order_ids),
            venue=venue,
            symbol=market.symbol,
            side=side,
            type=order_type,
            orig_qty=qty,
            price=price,
            client_order_id=client_order_id or f"seed-{next(self._client_ids)}",
            time_ms=self.now_ms(),
            reduce_only=reduce_only,
            conditional=conditional,
            trigger_price=trigger_price,
            position_side=position_side,
        )
        order.update_ms = order.time_ms
        if venue is Venue.SPOT:
            asset, amount = self._spot_cost(market, side, qty, price or self.mark(venue, symbol))
            if account.spot_free.get(asset, ZERO) < amount:
                raise ValueError(f"not enough free {asset} to lock {fmt(amount)} for the order")
            self._lock(account, asset, amount)
        (account.algo_orders if conditional else account.orders)[order.order_id] = order
        return order

    # -- fills -----------------------------------------------------------------------------

    def fill_resting(
        self,
        account: Account,
        order: Order,
        qty: Decimal | None = None,
        price: Decimal | None = None,
        *,
        late: bool = False,
    ) -> Fill | None:
        """Fill a resting order (``qty`` defaults to all that remains, ``price`` to its limit).

        A reduce-only order (and a hedge-mode close) is clipped to the position (its side's)
        at fill time, and whatever is left of it once the position is closed ends (``FILLED``
        if it did anything, else ``EXPIRED``): a late or rogue fill can never flip a position,
        nor open the other side, through such an order. With ``late`` (the order was taken off
        the book by a cancel) a remainder is cancelled.
        """
        wanted = order.remaining if qty is None else min(qty, order.remaining)
        price = price or order.price or self.mark(order.venue, order.symbol)
        fill: Fill | None = None
        clipped = False
        if order.venue is Venue.SPOT:
            if wanted > 0:
                fill = self._fill_spot(account, order, wanted, price, locked=True, late=late)
        else:
            allowed = self._reducible(account, order, wanted) if order.limited else wanted
            clipped = allowed < wanted
            if allowed > 0:
                fill = self._fill_futures(account, order, allowed, price, late=late)
        if order.executed_qty >= order.orig_qty:
            order.status = "FILLED"
        elif clipped:
            order.status = "FILLED" if order.executed_qty > 0 else "EXPIRED"
        elif late:
            self.cancel(account, order)
        elif order.executed_qty > 0:
            order.status = "PARTIALLY_FILLED"
        order.update_ms = self.now_ms()
        return fill

    def _reducible(self, account: Account, order: Order, qty: Decimal) -> Decimal:
        """How much of ``qty`` a reduce-only order or hedge-mode close may fill now: at most
        the size of the position (of its side) it reduces, nothing if it would open or grow."""
        if order.position_side != ONE_WAY:
            if not order.closes_side:
                return ZERO
            return min(qty, abs(account.side_qty(order.symbol, order.position_side)))
        position = account.position_qty(order.symbol)
        direction = 1 if order.side == "BUY" else -1
        if position == 0 or _sign(position) == direction:
            return ZERO
        return min(qty, abs(position))

    def _fill_futures(
        self, account: Account, order: Order, qty: Decimal, price: Decimal, *, late: bool = False
    ) -> Fill:
        now = self.now_ms()
        market = self.market(order.venue, order.symbol)
        side = order.position_side
        position = account.position(order.symbol, side) or Position(order.symbol, side=side)
        signed = qty if order.side == "BUY" else -qty
        realized = ZERO
        old = position.qty
        if order.closes_side and qty > abs(old):
            # Callers clip hedge closes (_reducible): one past its side would open the other.
            raise RuntimeError(f"hedge close of {qty} exceeds the {side} side's {abs(old)}")
        if old == 0 or _sign(old) == _sign(signed):
            total = abs(old) + qty
            if old == 0:
                position.entry_price = price
            elif market.inverse:  # contracts are USD amounts: the average is harmonic
                position.entry_price = total / (abs(old) / position.entry_price + qty / price)
            else:
                position.entry_price = (abs(old) * position.entry_price + qty * price) / total
        else:
            closing = min(qty, abs(old))
            if market.inverse:
                realized = _inverse_pnl(
                    closing * market.contract_size, position.entry_price, price, _sign(old)
                )
            else:
                realized = (price - position.entry_price) * closing * _sign(old)
            if qty > abs(old):  # crossed through zero: the rest opens at the fill price
                position.entry_price = price
        position.qty = old + signed
        if position.qty == 0:
            position.entry_price = ZERO
        position.realized_pnl += realized
        position.update_ms = now
        if market.inverse:
            asset = market.margin_asset
            account.coinm_wallet[asset] = account.coinm_wallet.get(asset, ZERO) + realized
            order.cum_base += qty * market.contract_size / price
        else:
            account.futures_wallet += realized
        account.store_position(position)
        return self._record(
            account, order, qty=qty, price=price, realized=realized, late=late, now=now
        )

    def _fill_spot(
        self,
        account: Account,
        order: Order,
        qty: Decimal,
        price: Decimal,
        *,
        locked: bool,
        late: bool = False,
    ) -> Fill:
        market = self.market(Venue.SPOT, order.symbol)
        notional = qty * price
        if order.side == "SELL":
            self._debit(account, market.base, qty, locked=locked)
            self._credit(account, market.quote, notional)
        else:
            reserved = qty * (order.price if locked else price)
            self._debit(account, market.quote, reserved, locked=locked)
            self._credit(account, market.quote, reserved - notional)
            self._credit(account, market.base, qty)
        return self._record(
            account, order, qty=qty, price=price, realized=ZERO, late=late, now=self.now_ms()
        )

    def _record(
        self,
        account: Account,
        order: Order,
        *,
        qty: Decimal,
        price: Decimal,
        realized: Decimal,
        late: bool,
        now: int,
    ) -> Fill:
        order.executed_qty += qty
        order.cum_quote += qty * price
        order.update_ms = now
        fill = Fill(
            account=account.name,
            venue=order.venue,
            symbol=order.symbol,
            order_id=order.order_id,
            side=order.side,
            qty=qty,
            price=price,
            time_ms=now,
            realized_pnl=realized,
            late=late,
            position_side=order.position_side,
        )
        account.fills.append(fill)
        return fill

    # -- cancels ---------------------------------------------------------------------------

    def cancel(self, account: Account, order: Order) -> None:
        """Cancel an open order; a spot order releases what it still has locked."""
        if order.venue is Venue.SPOT:
            market = self.market(Venue.SPOT, order.symbol)
            asset, amount = self._spot_cost(market, order.side, order.remaining, order.price)
            self._unlock(account, asset, amount)
        order.status = "CANCELED"
        order.update_ms = self.now_ms()

    def detach(self, order: Order) -> None:
        """Take an order off the book without cancelling it: the late-fill fault's first half.

        The client sees it gone (as after a cancel); its funds stay locked until the late fill
        arrives.
        """
        order.status = PENDING_FILL
        order.update_ms = self.now_ms()

    # -- spot balances ---------------------------------------------------------------------

    @staticmethod
    def _spot_cost(market: Market, side: str, qty: Decimal, price: Decimal) -> tuple[str, Decimal]:
        return (market.base, qty) if side == "SELL" else (market.quote, qty * price)

    @staticmethod
    def _lock(account: Account, asset: str, amount: Decimal) -> None:
        account.spot_free[asset] = account.spot_free.get(asset, ZERO) - amount
        account.spot_locked[asset] = account.spot_locked.get(asset, ZERO) + amount

    @staticmethod
    def _unlock(account: Account, asset: str, amount: Decimal) -> None:
        account.spot_locked[asset] = account.spot_locked.get(asset, ZERO) - amount
        account.spot_free[asset] = account.spot_free.get(asset, ZERO) + amount

    @staticmethod
    def _debit(account: Account, asset: str, amount: Decimal, *, locked: bool) -> None:
        book = account.spot_locked if locked else account.spot_free
        book[asset] = book.get(asset, ZERO) - amount

    @staticmethod
    def _credit(account: Account, asset: str, amount: Decimal) -> None:
        account.spot_free[asset] = account.spot_free.get(asset, ZERO) + amount

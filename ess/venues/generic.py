"""The generic adapter of :class:`~ess.venues.ports.VenuePort`: any ccxt exchange, through
ccxt's unified API only.

Where :mod:`ess.venues.binance` reads Binance's raw endpoints and codes, this adapter uses
``load_markets``, ``fetch_positions`` / ``fetch_balance``, ``fetch_open_orders`` (and, where
ccxt's ``features`` say the venue keeps trigger orders in a book of their own,
``fetch_open_orders(params={"trigger": True})``), ``cancel_all_orders`` (or ``cancel_orders``
/ ``cancel_order`` by id), ``create_order`` and ``cancel_all_orders_after``. Where one such
call does not give a complete answer on a venue, a table below says what is added and why
(OKX's algo book listed per order type, Bybit's open orders paged through, the market types
loaded, OKX's client-id alphabet). The same safety rules hold:

* **A venue that lacks something a flatten needs is refused at open.**
  :func:`check_capabilities` lists what is missing from ccxt's ``has`` flags, ``features`` and
  the loaded markets; :meth:`CcxtVenue.open` raises ``UNSUPPORTED`` naming all of it, which
  makes the executor refuse to start.
* **Nothing unverified reads as "nothing".** ccxt parses an empty or unparseable HTTP 200 into
  "no positions"; a hook on ccxt's ``handle_errors`` turns such an answer into
  ``MALFORMED`` before ccxt sees it, and every unified structure is checked for the fields
  used (symbol, id, side, size) before a snapshot is built from it.
* **Closes never flip.** Derivative closes are market orders with ``reduceOnly`` for the
  size read; spot closes sell at most the balance the snapshot held. In hedge (two-sided)
  mode each side is closed on its own side, named the venue's way (:data:`_HEDGE_CLOSES`:
  Binance ``positionSide``, Bybit ``positionIdx``, OKX ``posSide``); an account in hedge mode
  on an exchange missing from that table is refused (``UNSUPPORTED``). Client order ids
  are the derived ones of :class:`~ess.core.flatten.CloseStep` (ccxt's ``clientOrderId``).
* **Errors by ccxt's unified classes** (:data:`_KIND_BY_CCXT_ERROR`), with the HTTP status and
  ``Retry-After`` of the failed answer attached by the same hook (HTTP 418 is ``BANNED``).

Symbols are ccxt's unified symbols (``BTC/USDT:USDT``, ``BTC/USDT``). ccxt's throttle is off
(it charges Binance's weights as ``cost x rateLimit`` of waiting, so one account-wide
open-order read queues every later call for ~2 s, past the timeout); instead every unified
call waits in a :class:`~ess.venues.budget.RateBudget` counting one request (and one order
per ``create_order``) against the config's ``weight_per_minute``/``orders_per_10s``, whose
generic defaults derive from ccxt's ``rateLimit`` for the exchange.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import ccxt.async_support as ccxt_async
from ccxt.base import errors as ccxt_errors
from loguru import logger

from ess.core.flatten import (
    CancelStep,
    CloseStep,
    MarketKind,
    OrderView,
    PositionSide,
    PositionView,
    VenueSnapshot,
    apply_spot_policy,
    quantity_text,
)
from ess.venues import answers
from ess.venues.budget import RateBudget
from ess.venues.ccxt_client import Answer, hook_answers, localize_urls
from ess.venues.config import (
    COUNTDOWN_UNUSABLE,
    OKX_IDS,
    VenueConfig,
    VenueCredentials,
    ccxt_has,
)
from ess.venues.ports import VenueError, VenueErrorKind

__all__ = ["CcxtVenue", "check_capabilities"]

#: ccxt's unified exception classes -> kind, most specific first (an exception matches the
#: first class it is an instance of). Anything else ccxt raises is ``REJECTED``.
_KIND_BY_CCXT_ERROR: Final[tuple[tuple[type[Exception], VenueErrorKind], ...]] = (
    (ccxt_errors.RequestTimeout, VenueErrorKind.TIMEOUT),
    (ccxt_errors.RateLimitExceeded, VenueErrorKind.RATE_LIMITED),
    (ccxt_errors.DDoSProtection, VenueErrorKind.RATE_LIMITED),
    (ccxt_errors.ExchangeNotAvailable, VenueErrorKind.UNAVAILABLE),  # incl. OnMaintenance
    (ccxt_errors.InvalidNonce, VenueErrorKind.UNAVAILABLE),  # clock skew: retry
    # The connection broke in some other way: the request may have been executed.
    (ccxt_errors.NetworkError, VenueErrorKind.TIMEOUT),
    (ccxt_errors.BadResponse, VenueErrorKind.MALFORMED),  # incl. NullResponse
    (ccxt_errors.AuthenticationError, VenueErrorKind.AUTH),  # incl. PermissionDenied
    (ccxt_errors.DuplicateOrderId, VenueErrorKind.DUPLICATE_ID),
    (ccxt_errors.NotSupported, VenueErrorKind.UNSUPPORTED),
)
#: A refused close that says the position (or hedge-mode side) is already smaller or gone:
#: "reduce only" in the venue's words (Binance -2022, Bybit 110017), or OKX's 51169 ("you
#: don't have any positions in this direction ... to reduce or close"), which ccxt leaves a
#: plain ``ExchangeError``.
_REDUCE_ONLY: Final = re.compile(
    r"""reduce[\s_-]?only|["']sCode["']\s*:\s*["']51169["']""", re.IGNORECASE
)
#: The venue's numeric error code inside ccxt's message, when it quotes the JSON body.
_CODE: Final = re.compile(r"""["']?(?:code|retCode|error_code)["']?\s*[:=]\s*["']?(-?\d+)""")
#: Slack of the outer ``asyncio.timeout`` over ccxt's per-request timeout.
_TIMEOUT_GRACE_S: Final = 0.5
#: Client options that keep ccxt from refusing or warning on account-wide reads.
_DEFAULT_OPTIONS: Final[Mapping[str, Any]] = {"warnOnFetchOpenOrdersWithoutSymbol": False}
_DERIVATIVE_TYPES: Final = ("swap", "future")
#: ccxt exchanges whose client order ids take letters and digits only, up to 32 characters
#: (OKX's ``clOrdId``; anything else is refused with 51000): ESS's derived ``ess-<32 hex>``
#: is sent there as ``ess<29 hex>``, still derived, so a retry carries the same id.
_ALNUM_32_CLIENT_IDS: Final = frozenset(OKX_IDS)
#: Ids per ``cancel_orders`` call where a venue has no cancel-all (OKX takes 20 per batch).
_CANCEL_BATCH: Final = 10
#: How the trigger-order book is listed: one ``fetch_open_orders`` per entry. ccxt's
#: ``{"trigger": True}`` covers it on most venues; OKX lists its algo book per ``ordType``
#: and ccxt asks for ``trigger`` only, so a stop-loss / take-profit (``conditional``), an OCO,
#: a trailing stop, an iceberg or a TWAP would be neither seen nor cancelled without a listing
#: of its own (OKX accepts ``conditional`` and ``oco`` together, every other type alone).
_TRIGGER_LISTINGS: Final[Mapping[str, tuple[Mapping[str, Any], ...]]] = {
    okx: tuple(
        {"trigger": True, "ordType": kinds}
        for kinds in ("trigger", "conditional,oco", "move_order_stop", "iceberg", "twap")
    )
    for okx in OKX_IDS
}
#: Attempts of one read of a snapshot whose failure is transient (the answer was lost or
#: mangled, or the venue briefly unavailable): a snapshot is several reads (OKX's: seven), and
#: one lost answer should not cost the whole snapshot a round. Rate limits and refusals are
#: not retried here: the engine backs off for those.
_READ_ATTEMPTS: Final = 3
_RETRIED_READS: Final = frozenset(
    {VenueErrorKind.TIMEOUT, VenueErrorKind.UNAVAILABLE, VenueErrorKind.MALFORMED}
)
#: The market types ``load_markets`` fetches, per exchange and book, where ccxt loads more by
#: default (Bybit: spot, linear, inverse and six option coins, twelve requests; OKX: spot,
#: futures, swaps and options): a flatten needs its own book's markets only, and every extra
#: request at open is one more that can fail while the venue is struggling.
_MARKET_TYPES: Final[Mapping[tuple[str, MarketKind], list[str]]] = {
    ("bybit", MarketKind.FUTURES): ["linear", "inverse"],
    ("bybit", MarketKind.SPOT): ["spot"],
    **{(okx, MarketKind.FUTURES): ["swap", "future"] for okx in OKX_IDS},
    **{(okx, MarketKind.SPOT): ["spot"] for okx in OKX_IDS},
}
_ONE_TRIGGER_LISTING: Final[tuple[Mapping[str, Any], ...]] = ({"trigger": True},)
#: Parameters of every open-order listing, per venue: Bybit pages open orders (20 rows by
#: default), and a read that stops at the first page is not a complete read. (Passed per
#: call: ccxt's paginating call re-enters the method, which would page again, endlessly, if
#: the flag came from the client's options.)
_LISTING_PARAMS: Final[Mapping[str, Mapping[str, Any]]] = {"bybit": {"paginate": True}}


@dataclass(frozen=True, slots=True)
class _HedgeClose:
    """How an exchange's order names the hedge-mode position side it closes: ``param`` with
    ``long``/``short`` as values. A sell on the long side (a buy on the short side) can only
    reduce that side there, so ``reduceOnly`` is sent beside it only where the venue takes it
    (Binance refuses it with -1106; OKX ignores it outside net mode)."""

    param: str
    long: str | int
    short: str | int
    reduce_only: bool

    def params(self, side: PositionSide) -> dict[str, Any]:
        value = self.long if side == "long" else self.short
        return {self.param: value, **({"reduceOnly": True} if self.reduce_only else {})}


_BINANCE_HEDGE: Final = _HedgeClose("positionSide", "LONG", "SHORT", reduce_only=False)
#: The exchanges whose hedge-mode positions ESS can close, and how (see :class:`_HedgeClose`).
_HEDGE_CLOSES: Final[Mapping[str, _HedgeClose]] = {
    "binanceusdm": _BINANCE_HEDGE,
    "binancecoinm": _BINANCE_HEDGE,
    "bybit": _HedgeClose("positionIdx", 1, 2, reduce_only=True),
    **{okx: _HedgeClose("posSide", "long", "short", reduce_only=False) for okx in OKX_IDS},
}


# -- capabilities -------------------------------------------------------------------------------


def check_capabilities(exchange: Any, kind: MarketKind) -> list[str]:
    """What a flatten of a ``kind`` account needs and ``exchange`` lacks, by name (empty: all
    there). Pure over ``exchange.has``, ``exchange.features`` and ``exchange.markets`` (loaded
    markets; ``None`` or empty reports ``markets``).

    Futures need ``fetchPositions``, ``fetchOpenOrders`` over all symbols, a way to cancel
    (``cancelAllOrders`` or ``cancelOrder``), ``createOrder`` with ``createReduceOnlyOrder``,
    and, where the venue accepts trigger orders (``features.<type>.createOrder.triggerPrice``),
    a listing of them (``features.<type>.fetchOpenOrders.trigger``): a stop the adapter cannot
    see is a stop it cannot cancel. Spot needs ``fetchBalance``, ``fetchOpenOrders`` over all
    symbols, a way to cancel and ``createOrder`` with ``createMarketOrder``. Spot trigger
    orders are assumed to be listed with the regular ones unless the features give them a
    book of their own (then it is read too).
    """
    has: Mapping[str, Any] = getattr(exchange, "has", None) or {}
    missing: list[str] = []

    def need(*names: str) -> None:
        for name in names:
            if has.get(name) is not True:
                missing.append(name)

    need("fetchMarkets")
    markets = _markets_of(exchange, kind)
    if not markets:
        missing.append(f"markets ({kind.value})")
    if kind is MarketKind.FUTURES:
        need("fetchPositions", "fetchOpenOrders")
    else:
        need("fetchBalance", "fetchOpenOrders")
    if has.get("cancelAllOrders") is not True and has.get("cancelOrder") is not True:
        missing.append("cancelAllOrders or cancelOrder")
    need("createOrder")
    need("createReduceOnlyOrder" if kind is MarketKind.FUTURES else "createMarketOrder")
    for feature in _features_of(exchange, kind, markets):
        listing = feature.get("fetchOpenOrders")
        if isinstance(listing, Mapping) and listing.get("symbolRequired") is True:
            _add(missing, "fetchOpenOrders without a symbol")
        if (
            kind is MarketKind.FUTURES
            and _accepts_triggers(feature)
            and not _lists_triggers(feature)
        ):
            _add(missing, "fetchOpenOrders(trigger)")
    return missing


def _add(missing: list[str], name: str) -> None:
    if name not in missing:
        missing.append(name)


def _markets_of(exchange: Any, kind: MarketKind) -> list[Mapping[str, Any]]:
    markets = getattr(exchange, "markets", None)
    if not isinstance(markets, Mapping):
        return []
    return [
        market
        for market in markets.values()
        if isinstance(market, Mapping) and _market_kind(market) is kind
    ]


def _market_kind(market: Mapping[str, Any]) -> MarketKind | None:
    if market.get("spot") is True or market.get("type") == "spot":
        return MarketKind.SPOT
    if market.get("type") in _DERIVATIVE_TYPES or market.get("swap") or market.get("future"):
        return MarketKind.FUTURES
    return None  # options, margin-only and the like: not served


def _features_of(
    exchange: Any, kind: MarketKind, markets: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """ccxt's ``features`` entries of the market types in ``markets`` (``{}`` for a type the
    features do not describe: nothing is then known, so nothing is claimed)."""
    features = getattr(exchange, "features", None)
    if not isinstance(features, Mapping):
        return [{}]
    if kind is MarketKind.SPOT:
        spot = features.get("spot")
        return [spot if isinstance(spot, Mapping) else {}]
    found: list[Mapping[str, Any]] = []
    for type_, sub in sorted(
        {(str(m.get("type")), "inverse" if m.get("inverse") else "linear") for m in markets}
    ):
        by_sub = features.get(type_)
        entry = by_sub.get(sub) if isinstance(by_sub, Mapping) else None
        found.append(entry if isinstance(entry, Mapping) else {})
    return found


def _accepts_triggers(feature: Mapping[str, Any]) -> bool:
    create = feature.get("createOrder")
    if not isinstance(create, Mapping):
        return True  # unknown: a trigger order may exist
    return any(bool(create.get(key)) for key in ("triggerPrice", "stopLossPrice"))


def _lists_triggers(feature: Mapping[str, Any]) -> bool:
    listing = feature.get("fetchOpenOrders")
    return isinstance(listing, Mapping) and listing.get("trigger") is True


# -- the adapter ----------------------------------------------------------------------------------


class CcxtVenue:
    """One account on any ccxt exchange, futures (derivative positions) or spot (balances),
    as a :class:`~ess.venues.ports.VenuePort`.

    ``options`` are merged into the ccxt client's options (e.g. to keep ``load_markets`` to
    the market types served). ``budget`` defaults to one built from the config (each unified
    call counts 1; pass one to share it). The client is built in :meth:`open`, inside the
    event loop.
    """

    def __init__(
        self,
        config: VenueConfig,
        credentials: VenueCredentials,
        *,
        options: Mapping[str, Any] | None = None,
        budget: RateBudget | None = None,
    ) -> None:
        exchange_class = getattr(ccxt_async, config.exchange, None)
        if exchange_class is None:
            raise ValueError(f"{config.name}: ccxt has no exchange {config.exchange!r}")
        self._config = config
        self._credentials = credentials
        self._class = exchange_class
        types = _MARKET_TYPES.get((config.exchange, config.market_kind))
        self._options = {
            **_DEFAULT_OPTIONS,
            **({"fetchMarkets": {"types": types}} if types else {}),
            **(options or {}),
        }
        self._timeout_s = config.timeout_ms / 1000 + _TIMEOUT_GRACE_S
        self._budget = budget or RateBudget(
            config.weight_per_minute, config.orders_per_10s, config.max_in_flight
        )
        self._log = logger.bind(venue=config.name, account=config.account)
        self._exchange: Any = None
        self._opened = False
        #: Whether trigger orders have a book of their own (read and cancelled separately).
        self._trigger_book = False
        #: Whether the class advertises a ``cancelAllOrdersAfter`` ESS can use (known before
        #: opening; see :data:`ess.venues.config.COUNTDOWN_UNUSABLE`).
        self._countdown = (
            ccxt_has(config.exchange, "cancelAllOrdersAfter")
            and config.exchange not in COUNTDOWN_UNUSABLE
        )
        #: The params of the read of the regular book, and of each read of the trigger book.
        self._listing: Mapping[str, Any] = _LISTING_PARAMS.get(config.exchange, {})
        #: Open order ids of the last snapshot by (symbol, conditional): what a cancel step
        #: planned from it cancels where the venue has no cancel-all.
        self._known_orders: dict[tuple[str, bool], list[str]] = {}
        self._trigger_listings = tuple(
            {**self._listing, **params}
            for params in _TRIGGER_LISTINGS.get(config.exchange, _ONE_TRIGGER_LISTING)
        )

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def account(self) -> str:
        return self._config.account

    @property
    def kind(self) -> MarketKind:
        return self._config.market_kind

    @property
    def supports_countdown(self) -> bool:
        return self._countdown

    @property
    def budget(self) -> RateBudget:
        return self._budget

    async def open(self) -> None:
        """Build the client, load markets and check capabilities, once: after a success
        further calls return at once. A venue lacking what a flatten needs raises
        ``UNSUPPORTED`` naming every missing capability."""
        if self._opened:
            return
        await self._load_markets()
        missing = check_capabilities(self._exchange, self.kind)
        if missing:
            raise self._failed(
                VenueError(
                    VenueErrorKind.UNSUPPORTED,
                    f"ccxt's {self._config.exchange} lacks what a {self.kind.value} flatten "
                    f"needs: {', '.join(missing)}",
                ),
                "capabilities",
            )
        self._trigger_book = any(
            _lists_triggers(feature)
            for feature in _features_of(
                self._exchange, self.kind, _markets_of(self._exchange, self.kind)
            )
        )
        self._opened = True
        self._log.bind(trigger_book=self._trigger_book).info("venue open")

    async def snapshot(self) -> VenueSnapshot:
        if self.kind is MarketKind.FUTURES:
            snapshot = await self._futures_snapshot()
        else:
            snapshot = await self._spot_snapshot()
        known: dict[tuple[str, bool], list[str]] = {}
        for order in snapshot.orders:
            known.setdefault((order.symbol, order.conditional), []).append(order.order_id)
        self._known_orders = known
        self._log.bind(
            positions=len(snapshot.positions), orders=len(snapshot.orders), dust=len(snapshot.dust)
        ).debug("venue snapshot")
        return snapshot

    async def cancel_all(self, step: CancelStep) -> None:
        if step.conditional and not self._trigger_book:
            raise VenueError(
                VenueErrorKind.REJECTED, f"no separate conditional order book on {self.name}"
            )
        exchange = self._client()
        if exchange.has.get("cancelAllOrders") is True:
            params: dict[str, Any] = {"trigger": True} if step.conditional else {}
            await self._call(
                "cancel", exchange.cancel_all_orders, step.symbol, params, nothing_ok=True
            )
        else:
            await self._cancel_each(step)
        self._log.bind(symbol=step.symbol, conditional=step.conditional).info("cancelled all")

    async def _cancel_each(self, step: CancelStep) -> None:
        """Where the venue has no cancel-all: cancel the symbol's orders of the book by id, in
        batches where ccxt can. The ids are those of the snapshot the step was planned from
        (a fresh complete read: an order placed since is in the next round's verifying
        read); without one, the book is listed first (every listing of the trigger book)."""
        exchange = self._client()
        ids = self._known_orders.pop((step.symbol, step.conditional), None)
        if ids is None:
            listings = self._trigger_listings if step.conditional else (self._listing,)
            replies = await self._read(
                [
                    ("orders", exchange.fetch_open_orders, (step.symbol, None, None, dict(p)))
                    for p in listings
                ]
            )
            ids = [
                answers.order_id(row, "id", "open order")
                for reply in replies
                for row in answers.rows(reply, "open orders")
            ]
        params = {"trigger": True} if step.conditional else {}
        if exchange.has.get("cancelOrders") is True:  # one request per batch of ids
            calls = [
                self._call(
                    "cancel",
                    exchange.cancel_orders,
                    ids[start : start + _CANCEL_BATCH],
                    step.symbol,
                    params,
                    nothing_ok=True,
                )
                for start in range(0, len(ids), _CANCEL_BATCH)
            ]
        else:
            calls = [
                self._call(
                    "cancel", exchange.cancel_order, id_, step.symbol, params, nothing_ok=True
                )
                for id_ in ids
            ]
        await asyncio.gather(*calls)

    async def close(self, step: CloseStep) -> None:
        """A market order for ``step.amount`` cut to the market's precision (nothing if that is
        below the minimum): reduce-only on futures, where it can never flip a position. On spot,
        the amount is the balance the snapshot held (the cancels just freed what orders had
        locked): selling at most what is held cannot go short. A sell the venue refuses for
        want of balance (part of it still locked) is sent again for the free balance, read
        then."""
        exchange = self._client()
        market = exchange.markets.get(step.symbol) if exchange.markets else None
        if market is None:
            await self._load_markets()  # listed since we opened?
            market = (exchange.markets or {}).get(step.symbol)
        if market is None:
            raise VenueError(VenueErrorKind.REJECTED, f"no market {step.symbol}")
        wanted = step.amount
        params: dict[str, Any] = {
            "clientOrderId": _venue_client_id(self._config.exchange, step.client_order_id)
        }
        if step.position_side is not None:
            params.update(self._hedge_close().params(step.position_side))
        elif self.kind is MarketKind.FUTURES:
            params["reduceOnly"] = True
        amount = self._tradable(step.symbol, wanted)
        log = self._log.bind(
            symbol=step.symbol, side=step.side, client_order_id=step.client_order_id
        )
        if not amount:
            log.bind(amount=str(wanted)).info("close below the lot size: nothing to send")
            return
        try:
            row = await self._send_close(step, amount, params)
        except VenueError as exc:
            if self.kind is MarketKind.FUTURES or not isinstance(
                exc.__cause__, ccxt_errors.InsufficientFunds
            ):
                raise
            # Part of the balance is still locked (an order in a book no listing shows):
            # sell what is free now rather than nothing.
            balance = answers.mapping(
                await self._call("balance", exchange.fetch_balance), "balance"
            )
            free = answers.mapping(balance.get("free"), "balance.free")
            amount = self._tradable(
                step.symbol, min(wanted, _decimal(free.get(market["base"], 0), "free balance"))
            )
            if not amount:
                raise
            log.bind(amount=quantity_text(amount)).warning("spot close cut to the free balance")
            row = await self._send_close(step, amount, params)
        log.bind(amount=quantity_text(amount), status=row.get("status")).info("close sent")

    async def _send_close(
        self, step: CloseStep, amount: Decimal, params: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """The market order of a close; the venue's answer, checked for an order id."""
        order = await self._call(
            "order",
            self._client().create_order,
            step.symbol,
            "market",
            step.side,
            float(amount / self._contract_size(step.symbol)),  # ccxt counts contracts
            None,
            dict(params),
        )
        row = answers.mapping(order, "order")
        answers.order_id(row, "id", "order")
        return row

    async def arm_countdown(self, symbol: str, countdown_ms: int) -> None:
        """ccxt's ``cancelAllOrdersAfter`` is account-wide: ``symbol`` only names the
        request in logs."""
        if not self.supports_countdown:
            raise VenueError(VenueErrorKind.REJECTED, f"no cancelAllOrdersAfter on {self.name}")
        exchange = self._client()
        await self._call("countdown", exchange.cancel_all_orders_after, countdown_ms)
        self._log.bind(symbol=symbol, countdown_ms=countdown_ms).debug("countdown armed")

    async def aclose(self) -> None:
        exchange, self._exchange = self._exchange, None
        self._opened = False
        if exchange is None:
            return
        try:
            await exchange.close()
        except Exception as exc:  # best effort by contract: never raises
            self._log.bind(error=repr(exc)).warning("closing the ccxt client failed")

    # -- reads -------------------------------------------------------------------------------

    async def _load_markets(self) -> None:
        if self._exchange is None:
            self._exchange = self._build()
        # reload: ccxt caches the result of the first load, even an empty one.
        markets = await self._read_one("markets", self._exchange.load_markets, (True,))
        if not isinstance(markets, dict) or not markets:
            raise self._failed(answers.malformed("markets: no markets listed"), "markets")

    def _build(self) -> Any:
        config: dict[str, Any] = {
            "enableRateLimit": False,
            "timeout": self._config.timeout_ms,
            "apiKey": self._credentials.api_key.get_secret_value(),
            "secret": self._credentials.secret.get_secret_value(),
            "options": {
                "defaultType": "swap" if self.kind is MarketKind.FUTURES else "spot",
                **self._options,
            },
        }
        if self._credentials.passphrase is not None:  # OKX, KuCoin, Bitget: ccxt's password
            config["password"] = self._credentials.passphrase.get_secret_value()
        exchange = self._class(config)
        exchange.timeout_on_exit = 0
        if self._config.base_url is not None:
            localize_urls(exchange, self._config.base_url)
        _annotate_errors(exchange)
        return exchange

    async def _futures_snapshot(self) -> VenueSnapshot:
        exchange = self._client()
        reads: list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]] = [
            ("positions", exchange.fetch_positions, ()),
            self._orders_read(),
        ]
        if self._trigger_book:
            reads += self._trigger_reads()
        replies = await self._read(reads)
        sizes: dict[tuple[str, PositionSide | None], Decimal] = {}
        for row in answers.rows(replies[0], "positions"):
            symbol = answers.text(row, "symbol", "position")
            contracts = _decimal(row.get("contracts"), f"position {symbol} contracts")
            if not contracts:
                continue
            side = row.get("side")
            if side not in {"long", "short"}:
                raise answers.malformed(f"position {symbol}: side {side!r}")
            if row.get("hedged") is True:
                self._hedge_close()  # refused here if ESS cannot close a side on this venue
            key = (symbol, side if row.get("hedged") is True else None)
            size = abs(contracts) * self._contract_size(symbol)  # base units, as the port says
            signed = size if side == "long" else -size
            if abs(signed) > abs(sizes.get(key, Decimal(0))):
                sizes[key] = signed
        views = _orders(replies[1], conditional=False)
        for reply in replies[2:]:
            views += _orders(reply, conditional=True)
        return self._build_snapshot(sizes, views)

    async def _spot_snapshot(self) -> VenueSnapshot:
        exchange = self._client()
        reads: list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]] = [
            ("balance", exchange.fetch_balance, ()),
            self._orders_read(),
        ]
        if self._trigger_book:
            reads += self._trigger_reads()
        balance, orders, *triggers = await self._read(reads)
        total = answers.mapping(answers.mapping(balance, "balance").get("total"), "balance.total")
        keep = {self._config.quote, *self._config.keep_assets}
        by_base = {
            market["base"]: market["symbol"]
            for market in _markets_of(exchange, MarketKind.SPOT)
            if market.get("quote") == self._config.quote and market.get("active") is not False
        }
        held: dict[tuple[str, PositionSide | None], Decimal] = {}
        stranded: dict[str, Decimal] = {}
        for asset, amount in total.items():
            quantity = _decimal(amount, f"balance of {asset}")
            if asset in keep or not quantity:
                continue
            symbol = by_base.get(asset)
            if symbol is None:
                # Held, but no <asset>/<quote> market to sell it on: exposure, never "flat".
                stranded[asset] = stranded.get(asset, Decimal(0)) + quantity
            else:
                held[(symbol, None)] = held.get((symbol, None), Decimal(0)) + quantity
        views = _orders(orders, conditional=False)
        for reply in triggers:
            views += _orders(reply, conditional=True)
        snapshot = self._build_snapshot(held, views)
        stranded_views = tuple(PositionView(asset, qty) for asset, qty in sorted(stranded.items()))
        # cancel_only: what would be sold is left in place, reported as stranded exposure.
        return apply_spot_policy(
            replace(snapshot, stranded=stranded_views), self._config.spot_policy
        )

    def _orders_read(self) -> tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]:
        """The account-wide read of the regular book."""
        return ("orders", self._client().fetch_open_orders, (None, None, None, dict(self._listing)))

    def _trigger_reads(self) -> list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]]:
        """One account-wide read per listing of the trigger book."""
        exchange = self._client()
        return [
            ("trigger orders", exchange.fetch_open_orders, (None, None, None, dict(params)))
            for params in self._trigger_listings
        ]

    async def _read(
        self, reads: list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]]
    ) -> list[Any]:
        """The reads, concurrently, each tried up to :data:`_READ_ATTEMPTS` times on a
        transient failure; the first failure left cancels the others and is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._read_one(name, method, args))
                    for name, method, args in reads
                ]
        except ExceptionGroup as failed:
            first = failed.exceptions[0]
        else:
            return [task.result() for task in tasks]
        raise first

    async def _read_one(
        self, name: str, method: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> Any:
        for attempt in range(1, _READ_ATTEMPTS + 1):
            try:
                return await self._call(name, method, *args)
            except VenueError as error:
                if error.kind not in _RETRIED_READS or attempt == _READ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _hedge_close(self) -> _HedgeClose:
        """How this exchange closes a hedge-mode side; ``UNSUPPORTED`` where ESS does not know
        (an account in hedge mode there could not be flattened: fail loudly, not by guessing)."""
        hedge = _HEDGE_CLOSES.get(self._config.exchange)
        if hedge is None:
            raise VenueError(
                VenueErrorKind.UNSUPPORTED,
                f"the account is in hedge (two-sided) mode, and ESS does not know how "
                f"{self._config.exchange} names the side a close reduces: switch it to one-way "
                "mode",
            )
        return hedge

    def _build_snapshot(
        self, exposure: Mapping[tuple[str, PositionSide | None], Decimal], orders: list[OrderView]
    ) -> VenueSnapshot:
        """Split exposure (by symbol and hedge-mode side) into positions and dust (no order
        could remove it). A symbol without a known market is kept as a position: unknown is
        never assumed to be small."""
        positions: list[PositionView] = []
        dust: list[PositionView] = []
        for (symbol, side), quantity in sorted(exposure.items(), key=answers.exposure_order):
            if not quantity:
                continue
            tradable = self._tradable(symbol, abs(quantity), unknown_is_tradable=True)
            (positions if tradable else dust).append(PositionView(symbol, quantity, side))
        orders = sorted(orders, key=lambda o: (o.symbol, o.conditional, o.order_id))
        return VenueSnapshot(tuple(positions), tuple(orders), tuple(dust))

    def _tradable(
        self, symbol: str, amount: Decimal, *, unknown_is_tradable: bool = False
    ) -> Decimal:
        """``amount`` (base units) cut to the market's precision by ccxt (truncated, never
        rounded up; in contracts where the market counts them); 0 if below the market's
        minimum."""
        exchange = self._client()
        market = (exchange.markets or {}).get(symbol)
        if market is None:
            return amount if unknown_is_tradable else Decimal(0)
        size = self._contract_size(symbol)
        try:
            cut = Decimal(str(exchange.amount_to_precision(symbol, float(amount / size))))
        except ccxt_errors.InvalidOrder:  # below the precision: rounds to nothing
            return Decimal(0)
        except (ccxt_errors.BaseError, ArithmeticError, TypeError, ValueError):
            return amount if unknown_is_tradable else Decimal(0)
        minimum = ((market.get("limits") or {}).get("amount") or {}).get("min")
        floor = Decimal(str(minimum)) if isinstance(minimum, int | float) else Decimal(0)
        return cut * size if cut > 0 and cut >= floor else Decimal(0)

    def _contract_size(self, symbol: str) -> Decimal:
        """Base units per contract of a linear contract market (OKX swaps: ``ctVal``), where
        ccxt's amounts and position sizes are counted in contracts; 1 elsewhere. An inverse
        market's ``contractSize`` is in the quote currency (Binance COIN-M: 100 USD), so no
        base size exists: its exposure stays in contracts, which is what its closes send."""
        market = (self._client().markets or {}).get(symbol) or {}
        size = market.get("contractSize")
        inverse = market.get("inverse") is True
        if market.get("contract") is not True or inverse or isinstance(size, bool):
            return Decimal(1)
        if not isinstance(size, int | float) or size <= 0 or size == 1:
            return Decimal(1)
        return Decimal(str(size))

    # -- calls ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._exchange is None:
            raise RuntimeError("CcxtVenue.open() must be called first")
        return self._exchange

    async def _call(
        self,
        name: str,
        method: Callable[..., Awaitable[Any]],
        *args: Any,
        nothing_ok: bool = False,
    ) -> Any:
        """One unified call within ``max_in_flight`` and the timeout; every failure comes out
        as a :class:`VenueError`. ``nothing_ok``: ``OrderNotFound`` (nothing left to cancel)
        is success and returns ``None``."""
        async with self._budget.request(1, 1 if name == "order" else 0):
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await method(*args)
            except TimeoutError as exc:
                error = VenueError(VenueErrorKind.TIMEOUT, f"{name}: no answer")
                raise self._failed(error, name) from exc
            except ccxt_errors.OrderNotFound as exc:
                if nothing_ok:
                    return None
                raise self._failed(_from_ccxt(exc, name), name) from exc
            except ccxt_errors.BaseError as exc:
                raise self._failed(_from_ccxt(exc, name), name) from exc
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                # ccxt parses answers itself and fails with plain Python errors on a mangled
                # document.
                error = answers.malformed(f"{name}: unparseable answer ({type(exc).__name__})")
                raise self._failed(error, name) from exc

    def _failed(self, error: VenueError, call: str) -> VenueError:
        self._log.bind(call=call, kind=error.kind.value, code=error.code).warning(
            "venue call failed: {}", str(error)
        )
        return error


# -- transport hooks ------------------------------------------------------------------------------


def _annotate_errors(exchange: Any) -> None:
    """An empty or unparseable 2xx body raises ``NullResponse`` (ccxt would read it as
    "nothing"), and every exception ccxt raises for an error answer carries that answer's
    HTTP status and ``Retry-After``."""

    def annotate(answer: Answer, ccxt_handling: Callable[[], Any]) -> Any:
        status = answer.status
        try:
            result = ccxt_handling()
            if status >= 400:
                exchange.handle_http_status_code(
                    status, answer.reason, answer.url, answer.method, answer.body
                )
        except ccxt_errors.BaseError as exc:
            exc.ess_status = status
            exc.ess_retry_after = answers.retry_after(answer.headers)
            raise
        if 200 <= status < 300 and status != 204 and answer.response is None:
            what = "an empty body" if not answer.body.strip() else "an unparseable body"
            raise ccxt_errors.NullResponse(
                f"{answer.method} {answer.url} answered HTTP {status} with {what}"
            )
        return result

    hook_answers(exchange, annotate)


def _venue_client_id(exchange_id: str, client_id: str) -> str:
    """``client_id`` in the alphabet and length the exchange accepts (unchanged elsewhere)."""
    if exchange_id in _ALNUM_32_CLIENT_IDS:
        return re.sub(r"[^A-Za-z0-9]", "", client_id)[:32]
    return client_id


def _from_ccxt(exc: ccxt_errors.BaseError, call: str) -> VenueError:
    """The :class:`VenueError` of a ccxt exception. Its message may hold the request URL: the
    query string (signatures, on some venues the key) is cut."""
    status = getattr(exc, "ess_status", None)
    kind = next(
        (k for cls, k in _KIND_BY_CCXT_ERROR if isinstance(exc, cls)), VenueErrorKind.REJECTED
    )
    text = answers.QUERY.sub("", str(exc))
    if kind is VenueErrorKind.RATE_LIMITED and status == 418:
        kind = VenueErrorKind.BANNED
    elif kind is VenueErrorKind.REJECTED and call == "order" and _REDUCE_ONLY.search(text):
        kind = VenueErrorKind.REDUCE_ONLY_REJECTED
    code = None
    match = _CODE.search(text)
    if match:
        code = int(match.group(1))
    status_text = f" (HTTP {status})" if status is not None else ""
    return VenueError(
        kind,
        f"{call}: {type(exc).__name__}{status_text}: {text[:300]}",
        code=code,
        retry_after=getattr(exc, "ess_retry_after", None)
        if kind in {VenueErrorKind.RATE_LIMITED, VenueErrorKind.BANNED}
        else None,
    )


# -- shape validation -----------------------------------------------------------------------------


def _decimal(value: Any, what: str) -> Decimal:
    """A number as ccxt gives it (float, int or decimal string); ``None`` is malformed."""
    try:
        number = (
            Decimal(str(value))
            if isinstance(value, int | float | str) and not isinstance(value, bool)
            else None
        )
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise answers.malformed(f"{what}: bad number {value!r:.40}")
    return number


def _orders(answer: Any, *, conditional: bool) -> list[OrderView]:
    what = "trigger orders" if conditional else "open orders"
    return [
        OrderView(
            answers.text(row, "symbol", what),
            answers.order_id(row, "id", what),
            conditional=conditional,
        )
        for row in answers.rows(answer, what)
    ]

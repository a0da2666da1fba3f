"""The Binance adapters of :class:`~ess.venues.ports.VenuePort`: USD-M futures and spot.

One class serves both markets; what differs is data (:data:`_CALLS`) and the two snapshot
readers. Decisions that make it safe to build a kill switch on:

* **Raw endpoints, strict shapes.** Every call is one of ccxt's implicit API methods, which
  return the venue's parsed JSON as is. ccxt's unified methods turn an empty or unparseable
  HTTP 200 into "no positions" or an order with ``id=None``; here any answer that is not the
  expected structure raises :class:`VenueError` ``MALFORMED``, so a snapshot is only ever built
  from reads that all succeeded and all made sense.
* **Errors by the venue's code.** ccxt picks its exception class from tables chosen by host
  name, matches some messages before codes (dropping the code from the exception), and reports
  HTTP 418 and 429 as the same class. The adapter instead hooks ccxt's ``handle_errors`` (called
  synchronously with the HTTP status, headers and body of that very response) and raises a
  :class:`VenueError` classified from Binance's ``{"code", "msg"}`` and the HTTP status, with
  ``Retry-After`` when the venue sends it. Only transport failures (timeouts, refused
  connections) are classified by ccxt's exception class.
* **Our own rate budget.** ccxt's throttle is off; every call waits in a :class:`RateBudget`
  with the endpoint's Binance weight, and is bounded by a timeout slightly above ccxt's.
* **No credential leaves the client.** Messages are built from method, path (never the query
  string), status, code and the venue's message; the API key travels only in a header and
  the secret never travels.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Final, cast
from urllib.parse import urlparse

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
from ess.venues.ccxt_client import Answer, ExchangeKind, hook_answers, make_exchange
from ess.venues.config import VenueConfig, VenueCredentials
from ess.venues.ports import VenueError, VenueErrorKind

__all__ = ["BinanceVenue"]

#: Binance error codes with a meaning the engine acts on; any other code is ``REJECTED``.
_KIND_BY_CODE: Final[Mapping[int, VenueErrorKind]] = {
    -1003: VenueErrorKind.RATE_LIMITED,  # too much request weight
    -1015: VenueErrorKind.RATE_LIMITED,  # too many new orders
    -1001: VenueErrorKind.UNAVAILABLE,  # internal error, "try again"
    -1008: VenueErrorKind.UNAVAILABLE,  # server overloaded
    -2015: VenueErrorKind.AUTH,  # invalid key, IP or permissions
    -2014: VenueErrorKind.AUTH,  # key format invalid
    -1022: VenueErrorKind.AUTH,  # signature invalid
    -2008: VenueErrorKind.AUTH,  # invalid key id
    -2022: VenueErrorKind.REDUCE_ONLY_REJECTED,
    -4116: VenueErrorKind.DUPLICATE_ID,  # futures: ClientOrderId is duplicated
}
#: Codes Binance reuses for unrelated refusals: (code, text in the message) -> kind. Spot
#: answers -2010 both for "Duplicate order sent." and for insufficient balance.
_KIND_BY_CODE_AND_TEXT: Final[Mapping[tuple[int, str], VenueErrorKind]] = {
    (-2010, "duplicate"): VenueErrorKind.DUPLICATE_ID,
}
#: HTTP statuses that decide the kind before the code: 418 carries -1003 like a plain 429.
_KIND_BY_STATUS_FIRST: Final[Mapping[int, VenueErrorKind]] = {418: VenueErrorKind.BANNED}
#: HTTP statuses that decide the kind when the code does not.
_KIND_BY_STATUS: Final[Mapping[int, VenueErrorKind]] = {429: VenueErrorKind.RATE_LIMITED}
#: Failures ccxt raises before any answer was read, most specific first.
_KIND_BY_CCXT_ERROR: Final[tuple[tuple[type[Exception], VenueErrorKind], ...]] = (
    (ccxt_errors.RequestTimeout, VenueErrorKind.TIMEOUT),
    (ccxt_errors.ExchangeNotAvailable, VenueErrorKind.UNAVAILABLE),
    (ccxt_errors.BadResponse, VenueErrorKind.MALFORMED),  # includes NullResponse
    (ccxt_errors.NetworkError, VenueErrorKind.TIMEOUT),
    # Raised locally, e.g. when no key is configured.
    (ccxt_errors.AuthenticationError, VenueErrorKind.AUTH),
)
#: Binance's -2011 "Unknown order sent.": on a cancel it means nothing was left to cancel.
_NOTHING_TO_CANCEL: Final = frozenset({-2011})
#: Slack of the outer ``asyncio.timeout`` over ccxt's own per-request timeout.
_TIMEOUT_GRACE_S: Final = 0.5


@dataclass(frozen=True)
class _Call:
    """One REST call: the ccxt method making it, its Binance weight and order count, and the
    error codes that mean "nothing to do" (the call then returns ``None``)."""

    method: str
    weight: int
    orders: int = 0
    done_codes: frozenset[int] = frozenset()


#: Every call the adapter makes, with weights from Binance's REST docs (as called: the
#: open-order reads go without a symbol, which is what makes them heavy).
_CALLS: Final[Mapping[MarketKind, Mapping[str, _Call]]] = {
    MarketKind.FUTURES: {
        "markets": _Call("load_markets", 1),  # GET /fapi/v1/exchangeInfo
        "positions": _Call("fapiPrivateV3GetPositionRisk", 5),
        "account": _Call("fapiPrivateV3GetAccount", 5),
        "orders": _Call("fapiPrivateGetOpenOrders", 40),
        "conditional_orders": _Call("fapiPrivateGetOpenAlgoOrders", 40),
        "cancel": _Call("fapiPrivateDeleteAllOpenOrders", 1, done_codes=_NOTHING_TO_CANCEL),
        "cancel_conditional": _Call(
            "fapiPrivateDeleteAlgoOpenOrders", 1, done_codes=_NOTHING_TO_CANCEL
        ),
        "order": _Call("fapiPrivatePostOrder", 0, orders=1),
        "countdown": _Call("fapiPrivatePostCountdownCancelAll", 10),
    },
    MarketKind.SPOT: {
        "markets": _Call("load_markets", 20),  # GET /api/v3/exchangeInfo
        "account": _Call("privateGetAccount", 20),
        "orders": _Call("privateGetOpenOrders", 80),
        "cancel": _Call("privateDeleteOpenOrders", 1, done_codes=_NOTHING_TO_CANCEL),
        "order": _Call("privatePostOrder", 1, orders=1),
    },
}


@dataclass(frozen=True)
class _Lot:
    """A market's quantity rules: the step amounts are truncated to, and the minimum."""

    step: Decimal
    minimum: Decimal

    def tradable(self, amount: Decimal) -> Decimal:
        """``amount`` truncated to the step (never rounded up); 0 if below the minimum."""
        truncated = (amount / self.step).to_integral_value(rounding=ROUND_DOWN) * self.step
        return truncated if truncated >= self.minimum and truncated > 0 else Decimal(0)


class BinanceVenue:
    """One Binance account, futures (``binanceusdm``) or spot (``binance``), as a
    :class:`~ess.venues.ports.VenuePort`.

    ``budget`` defaults to one built from the config's ``weight_per_minute``,
    ``orders_per_10s`` and ``max_in_flight``; pass one to share it, or to shorten its windows
    in tests. The ccxt client is built in :meth:`open`, inside the running event loop.
    """

    def __init__(
        self,
        config: VenueConfig,
        credentials: VenueCredentials,
        *,
        budget: RateBudget | None = None,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._budget = budget or RateBudget(
            config.weight_per_minute, config.orders_per_10s, config.max_in_flight
        )
        self._calls = _CALLS[config.market_kind]
        too_heavy = [
            name
            for name, call in self._calls.items()
            if call.weight > self._budget.weight_per_minute
            or call.orders > self._budget.orders_per_10s
        ]
        if too_heavy:
            raise ValueError(f"{config.name}: budget too small for {', '.join(too_heavy)}")
        self._timeout_s = config.timeout_ms / 1000 + _TIMEOUT_GRACE_S
        self._log = logger.bind(venue=config.name, account=config.account)
        self._exchange: Any = None
        #: Market id -> quantity rules; filled by :meth:`open`.
        self._lots: dict[str, _Lot] = {}
        #: Spot: base asset id -> id of its market against ``config.quote``.
        self._spot_symbols: dict[str, str] = {}

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
        return self.kind is MarketKind.FUTURES

    @property
    def budget(self) -> RateBudget:
        return self._budget

    async def open(self) -> None:
        """Build the client and load markets (one ``exchangeInfo`` request), once: after a
        success further calls return at once, so the service can open a venue early (to arm
        its countdown) without costing the flatten a round trip. A market listed later is
        loaded when a close needs it."""
        if self._lots:
            return
        await self._load_markets()

    async def _load_markets(self) -> None:
        if self._exchange is None:
            self._exchange = make_exchange(
                cast(ExchangeKind, self._config.exchange),  # the config allows only these two
                self._config.base_url,
                self._credentials.api_key.get_secret_value(),
                self._credentials.secret.get_secret_value(),
                enable_rate_limit=False,
                timeout_ms=self._config.timeout_ms,
            )
            _classify_http_errors(self._exchange)
        try:
            # reload: ccxt caches the result of the first load, even an empty one.
            markets = await self._call("markets", True)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # ccxt parses exchangeInfo itself and fails with plain Python errors on a mangled
            # document (the budget's ValueError cannot happen: checked in __init__).
            error = answers.malformed(f"markets: unparseable exchangeInfo ({exc!r})")
            raise self._failed(error, "markets") from exc
        if not isinstance(markets, dict) or not markets:
            raise self._failed(answers.malformed("markets: no markets listed"), "markets")
        self._index_markets(markets.values())
        self._log.bind(markets=len(self._lots)).info("venue open")

    async def snapshot(self) -> VenueSnapshot:
        if self.kind is MarketKind.FUTURES:
            snapshot = await self._futures_snapshot()
        else:
            snapshot = await self._spot_snapshot()
        self._log.bind(
            positions=len(snapshot.positions), orders=len(snapshot.orders), dust=len(snapshot.dust)
        ).debug("venue snapshot")
        return snapshot

    async def cancel_all(self, step: CancelStep) -> None:
        call = "cancel_conditional" if step.conditional else "cancel"
        if call not in self._calls:
            raise VenueError(
                VenueErrorKind.REJECTED, f"no conditional order book on {self.kind.value}"
            )
        answer = await self._call(call, {"symbol": step.symbol})
        if answer is not None:  # None: nothing was open (-2011), which is what a cancel wants
            if self.kind is MarketKind.SPOT:
                answers.rows(answer, call)  # the cancelled orders
            else:  # {"code": 200, "msg": "The operation of cancel all..."}
                answers.mapping(answer, call)
        self._log.bind(symbol=step.symbol, conditional=step.conditional).info("cancelled all")

    async def close(self, step: CloseStep) -> None:
        """Market order for ``step.amount`` truncated to the market's step (nothing if that is
        0 or below the minimum); reduce-only on futures, where it can never flip a position.
        Spot has no reduce-only flag (Binance rejects unknown parameters): selling at most the
        held balance cannot go short."""
        lot = self._lots.get(step.symbol)
        if lot is None:
            await self._load_markets()  # listed since we opened?
            lot = self._lots.get(step.symbol)
        if lot is None:
            raise VenueError(VenueErrorKind.REJECTED, f"no market {step.symbol}")
        amount = lot.tradable(step.amount)
        log = self._log.bind(
            symbol=step.symbol, side=step.side, client_order_id=step.client_order_id
        )
        if not amount:
            log.bind(amount=str(step.amount)).info("close below the lot size: nothing to send")
            return
        params = {
            "symbol": step.symbol,
            "side": step.side.upper(),
            "type": "MARKET",
            "quantity": quantity_text(amount),
            "newClientOrderId": step.client_order_id,
            "newOrderRespType": "RESULT",
        }
        if step.position_side is not None:
            # Hedge mode: the side makes the order closing-only, and Binance refuses a
            # reduceOnly beside it (-1106); an oversized close is refused, never flips.
            params["positionSide"] = step.position_side.upper()
        elif self.kind is MarketKind.FUTURES:
            params["reduceOnly"] = "true"
        answer = await self._call("order", params)
        row = answers.mapping(answer, "order")
        answers.order_id(row, "orderId", "order")
        log.bind(amount=params["quantity"], status=row.get("status")).info("close sent")

    async def arm_countdown(self, symbol: str, countdown_ms: int) -> None:
        if not self.supports_countdown:
            raise VenueError(VenueErrorKind.REJECTED, "no countdown on spot")
        answer = await self._call("countdown", {"symbol": symbol, "countdownTime": countdown_ms})
        answers.text(answers.mapping(answer, "countdown"), "symbol", "countdown")
        self._log.bind(symbol=symbol, countdown_ms=countdown_ms).debug("countdown armed")

    async def aclose(self) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is None:
            return
        try:
            await exchange.close()
        except Exception as exc:  # best effort by contract: never raises
            self._log.bind(error=repr(exc)).warning("closing the ccxt client failed")

    # -- reads -------------------------------------------------------------------------------

    async def _futures_snapshot(self) -> VenueSnapshot:
        risk, account, orders, conditional = await self._read(
            "positions", "account", "orders", "conditional_orders"
        )
        rows = [
            *answers.rows(risk, "positionRisk"),
            *answers.rows(
                answers.mapping(account, "account").get("positions"), "account.positions"
            ),
        ]
        # Two independent reads of the same positions: a stale or partial one must not hide
        # exposure the other shows, so the larger size wins. In hedge mode a symbol has a
        # LONG and a SHORT row, two positions each closed on its own side.
        sizes: dict[tuple[str, PositionSide | None], Decimal] = {}
        for row in rows:
            symbol = answers.text(row, "symbol", "position")
            quantity = _decimal(row, "positionAmt", "position")
            key = (symbol, _position_side(row, quantity))
            if abs(quantity) > abs(sizes.get(key, Decimal(0))):
                sizes[key] = quantity
        views = [
            OrderView(
                answers.text(row, "symbol", "order"), answers.order_id(row, "orderId", "order")
            )
            for row in answers.rows(orders, "openOrders")
        ]
        views += [
            OrderView(
                answers.text(row, "symbol", "algo order"),
                answers.order_id(row, "algoId", "algo order"),
                conditional=True,
            )
            for row in answers.rows(conditional, "openAlgoOrders")
        ]
        return self._build(sizes, views)

    async def _spot_snapshot(self) -> VenueSnapshot:
        account, orders = await self._read("account", "orders")
        keep = {self._config.quote, *self._config.keep_assets}
        held: dict[tuple[str, PositionSide | None], Decimal] = {}
        stranded: dict[str, Decimal] = {}
        for row in answers.rows(answers.mapping(account, "account").get("balances"), "balances"):
            asset = answers.text(row, "asset", "balance")
            total = _decimal(row, "free", "balance") + _decimal(row, "locked", "balance")
            if asset in keep or not total:
                continue
            symbol = self._spot_symbols.get(asset)
            if symbol is None:
                # Held, but no <asset><quote> market to sell it on: exposure all the same,
                # never "flat" (list it in keep_assets if it is held on purpose).
                stranded[asset] = stranded.get(asset, Decimal(0)) + total
            else:
                held[(symbol, None)] = held.get((symbol, None), Decimal(0)) + total
        views = [
            OrderView(
                answers.text(row, "symbol", "order"), answers.order_id(row, "orderId", "order")
            )
            for row in answers.rows(orders, "openOrders")
        ]
        snapshot = self._build(held, views)
        stranded_views = tuple(PositionView(asset, qty) for asset, qty in sorted(stranded.items()))
        # cancel_only: what would be sold is left in place, reported as stranded exposure.
        return apply_spot_policy(
            replace(snapshot, stranded=stranded_views), self._config.spot_policy
        )

    async def _read(self, *calls: str) -> list[Any]:
        """Make the reads concurrently. The first failure cancels the others (a snapshot
        missing one read is worthless, and orphaned reads would only burn budget) and is
        raised as is."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._call(call)) for call in calls]
        except ExceptionGroup as failed:
            first = failed.exceptions[0]
        else:
            return [task.result() for task in tasks]
        raise first

    def _build(
        self,
        exposure: Mapping[tuple[str, PositionSide | None], Decimal],
        orders: list[OrderView],
    ) -> VenueSnapshot:
        """Split exposure (by symbol and hedge-mode side) into positions and dust (no order
        could remove it). A symbol without a known market is kept as a position: unknown is
        never assumed to be small."""
        positions: list[PositionView] = []
        dust: list[PositionView] = []
        for (symbol, side), quantity in sorted(exposure.items(), key=answers.exposure_order):
            if not quantity:
                continue
            lot = self._lots.get(symbol)
            tradable = lot is None or bool(lot.tradable(abs(quantity)))
            (positions if tradable else dust).append(PositionView(symbol, quantity, side))
        orders = sorted(orders, key=lambda o: (o.symbol, o.conditional, o.order_id))
        return VenueSnapshot(tuple(positions), tuple(orders), tuple(dust))

    def _index_markets(self, markets: Any) -> None:
        lots: dict[str, _Lot] = {}
        spot_symbols: dict[str, str] = {}
        for market in markets:
            market_id = market["id"]
            step = market["precision"]["amount"]  # a step size: ccxt's Binance uses TICK_SIZE
            minimum = market["limits"]["amount"]["min"]
            if step:
                lots[market_id] = _Lot(Decimal(str(step)), Decimal(str(minimum or 0)))
            if market.get("spot") and market["quoteId"] == self._config.quote:
                spot_symbols[market["baseId"]] = market_id
        self._lots, self._spot_symbols = lots, spot_symbols

    # -- calls ---------------------------------------------------------------------------------

    async def _call(self, name: str, *args: Any) -> Any:
        """Make one REST call within the budget and the timeout; every failure comes out as a
        :class:`VenueError` (and is logged without the request's query string)."""
        if self._exchange is None:
            raise RuntimeError("BinanceVenue.open() must be called first")
        call = self._calls[name]
        method = getattr(self._exchange, call.method)
        async with self._budget.request(call.weight, call.orders):
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await method(*args)
            except VenueError as exc:
                if exc.code in call.done_codes:
                    return None
                raise self._failed(exc, name) from None
            except TimeoutError as exc:
                raise self._failed(
                    VenueError(VenueErrorKind.TIMEOUT, f"{name}: no answer"), name
                ) from exc
            except ccxt_errors.BaseError as exc:
                raise self._failed(_from_ccxt(exc, name), name) from exc

    def _failed(self, error: VenueError, call: str) -> VenueError:
        self._log.bind(call=call, kind=error.kind.value, code=error.code).warning(
            "venue call failed: {}", str(error)
        )
        return error


# -- error classification -------------------------------------------------------------------


def _classify_http_errors(exchange: Any) -> None:
    """Raise a :class:`VenueError` for every error answer, before ccxt's own tables see it;
    non-error answers go on to ccxt unchanged."""

    def classify(answer: Answer, ccxt_handling: Callable[[], Any]) -> Any:
        where = f"{answer.method} {urlparse(answer.url).path}"
        error = _error_answer(answer.status, where, answer.headers, answer.response)
        if error is not None:
            raise error
        return ccxt_handling()

    hook_answers(exchange, classify)


def _error_answer(
    status: int, where: str, headers: Mapping[str, str], response: Any
) -> VenueError | None:
    """The :class:`VenueError` an answer stands for, or ``None`` if it is not an error.

    Binance errors are ``{"code": <negative>, "msg": ...}``, usually with HTTP 4xx but
    sometimes with 200 (and successes may carry ``"code": 200``)."""
    code: int | None = None
    msg = ""
    if isinstance(response, dict):
        with contextlib.suppress(ValueError):
            code = int(str(response.get("code")))
        msg = str(response.get("msg", ""))
    if code is not None and code >= 0:  # {"code": 200, "msg": "success"} is no error
        code = None
    if code is None and status < 400:
        return None
    kind = (
        _KIND_BY_STATUS_FIRST.get(status)
        or _kind_by_code(code, msg)
        or _KIND_BY_STATUS.get(status)
        or (VenueErrorKind.UNAVAILABLE if status >= 500 else VenueErrorKind.REJECTED)
    )
    detail = f": {msg}" if msg else ""
    return VenueError(
        kind,
        f"{where} answered HTTP {status}{detail}",
        code=code,
        retry_after=answers.retry_after(headers)
        if kind in {VenueErrorKind.RATE_LIMITED, VenueErrorKind.BANNED}
        else None,
    )


def _kind_by_code(code: int | None, msg: str) -> VenueErrorKind | None:
    if code is None:
        return None
    if code in _KIND_BY_CODE:
        return _KIND_BY_CODE[code]
    text = msg.lower()
    for (known, marker), kind in _KIND_BY_CODE_AND_TEXT.items():
        if known == code and marker in text:
            return kind
    return None


def _from_ccxt(exc: ccxt_errors.BaseError, call: str) -> VenueError:
    """A failure ccxt raised without an error answer (timeouts, refused connections, local
    checks). Its message may hold the request URL: the query string is cut."""
    kind = next(
        (k for cls, k in _KIND_BY_CCXT_ERROR if isinstance(exc, cls)), VenueErrorKind.REJECTED
    )
    return VenueError(kind, f"{call}: {type(exc).__name__}: {answers.QUERY.sub('', str(exc))}")


# -- shape validation -------------------------------------------------------------------------


#: Binance's ``positionSide`` of a position row: ``BOTH`` in one-way mode.
_SIDES: dict[str, PositionSide | None] = {"BOTH": None, "LONG": "long", "SHORT": "short"}


def _position_side(row: Mapping[str, Any], quantity: Decimal) -> PositionSide | None:
    """The hedge-mode side of a position row (``None`` in one-way mode, and when Binance
    leaves the field out); an unknown side or one the size contradicts is malformed."""
    value = row.get("positionSide", "BOTH")
    if value not in _SIDES:
        raise answers.malformed(f"position: bad 'positionSide' in {row!r:.200}")
    return answers.position_side(_SIDES[value], quantity, "position")


def _decimal(row: Mapping[str, Any], key: str, what: str) -> Decimal:
    """A quantity as Binance sends it (a decimal string; an integer is accepted too)."""
    value = row.get(key)
    try:
        number = Decimal(value) if isinstance(value, str | int) and value is not True else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or isinstance(value, bool):
        raise answers.malformed(f"{what}: bad {key!r} in {row!r:.200}")
    return number

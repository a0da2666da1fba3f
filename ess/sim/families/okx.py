"""The OKX v5 family: USDT-margined perpetual swaps and spot under ``/api/v5``.

What is modelled, over the shared engine (``docs/sim-okx.md`` has the endpoint table):

* **Instruments.** The engine's futures markets are OKX ``SWAP`` instruments (``BTC-USDT-SWAP``,
  linear, settled in USDT), its spot markets ``SPOT`` instruments (``BTC-USDT``). Swaps trade
  in *contracts*: ``ctVal`` is the engine market's quantity step and ``lotSz``/``minSz`` are
  one contract, so every size in the swap API (``sz``, ``pos``, ``accFillSz``) is a whole
  number of contracts and ``contracts x ctVal`` is exactly the engine's base quantity (a
  contract size other than 1 exercises the contracts/base conversion of every client, yet
  nothing is ever rounded). Spot sizes are base units. Dated futures and options are listed
  as empty (ccxt asks for them by default).
* **One unified trading account** (``acctLv`` 2, single-currency margin) in ``net_mode`` or
  ``long_short_mode`` (``/account/config``'s ``posMode``; switched by
  ``POST /account/set-position-mode``, ccxt's ``set_position_mode``, or
  :meth:`~ess.sim.server.ExchangeSimulator.set_hedge_mode`, refused with 59000 while a position
  or an order is open; one setting for every family of the account). In net mode a position
  reads ``posSide`` ``"net"`` with a signed ``pos`` and an order carrying ``posSide``
  long/short is refused with 51000. In long/short mode a position reads ``posSide``
  ``"long"``/``"short"`` with a positive ``pos``, and every swap order, algo orders included,
  must carry ``posSide`` long or short (51000 "Parameter posSide error" otherwise): buy+long
  and sell+short open, sell+long and buy+short close, refused with 51169 when that side is flat
  and clipped to its size (a close never opens the other side). ``reduceOnly`` is accepted and
  ignored there: OKX documents it for net mode only ("only applicable to ... FUTURES/SWAP
  orders in net mode"), and ccxt leaves it out of a hedged close.
* **Balance.** ``/account/balance`` derives the account from the engine's: per currency,
  spot free plus locked is the cash balance, locked is frozen; USDT
  also holds the futures wallet (its cash) and the swaps' unrealized PnL (its ``upl``), with
  the positions' initial margin frozen. ``availEq`` is empty (as OKX reports it in that
  account mode), so ccxt reads ``free = availBal``, ``used = frozenBal``, ``total = eq``.
* **Orders.** ``market``, ``limit`` and ``post_only`` on the regular book (``ioc``, ``fok``
  and the like are refused: there is no matching to model them), reduce-only on swaps
  (clipped so it never flips, refused with 51205 when it could only open or grow a
  position), client order ids checked against OKX's rule (letters and digits, 1 to 32).
  The algo book holds swap ``trigger`` and ``conditional`` orders (the engine's conditional
  book); spot algo orders, ``oco``, trailing, iceberg and TWAP orders are not modelled.
  Orders seeded with the engine's stop types read as ``trigger`` orders (a trailing stop as
  ``move_order_stop``). ``orders-algo-pending`` needs ``ordType`` and lists only the types
  asked for, as OKX does: ccxt's ``fetch_open_orders(params={'trigger': True})`` asks for
  ``trigger`` only, so a ``conditional`` (stop-loss/take-profit) order is not in it.
* **Cancels.** OKX has no cancel-all of regular orders: ``cancel-order`` and
  ``cancel-batch-orders`` (what ccxt's ``cancel_order``/``cancel_orders`` call) and
  ``cancel-algos`` for the algo book. Batch answers carry a per-item ``sCode``/``sMsg`` and
  the top-level code ``0`` (all done), ``2`` (some failed) or ``1`` (all failed).
* **The dead-man's switch** ``cancel-all-after``: ``timeOut`` in seconds, 0 disarms, else
  within [:attr:`OkxFamily.cancel_after_min_s` (10, as OKX), 120]; it covers the regular
  orders of every instrument of the account, swap and spot alike (not the algo book).
* **Signing.** ``OK-ACCESS-KEY`` (unknown: 50111), ``OK-ACCESS-PASSPHRASE`` (must be the
  account's: 50105; an account without one cannot use this family),
  ``OK-ACCESS-TIMESTAMP`` (ISO 8601 UTC with milliseconds; malformed: 50112; more than 30 s
  from the server clock: 50102), ``OK-ACCESS-SIGN`` = base64(HMAC-SHA256(secret, timestamp +
  method + request path with its query + body)) (50113).
* **Rate limits** are per endpoint, as OKX publishes them (:data:`ENDPOINT_LIMITS`: e.g.
  positions and balance 10 per 2 s per user, pending orders 60 per 2 s, placing and
  cancelling 60 per 2 s per user and instrument, instruments 20 per 2 s per IP and
  ``instType``), counted in sliding windows (never below OKX's fixed ones, so the check errs
  on the strict side), plus the sub-account's 1000 order requests per 2 s as the order budget.
  Over a limit: HTTP 429 ``{"code":"50011","msg":"Too Many Requests"}`` (ccxt:
  ``RateLimitExceeded``). OKX documents no rate-limit headers on REST answers and no
  ``Retry-After``, so none are sent.
* **Errors** in OKX's codes and shapes: request-level ``{"code":"5xxxx","msg":...,"data":[]}``
  (auth 401, rate 429, parameters 400), order-level ``{"code":"1","data":[{"sCode":...}]}``
  with HTTP 200. In net mode the reduce-only refusal is 51205 "Reduce Only is not
  available", because ccxt 4.5.90 maps it to ``InvalidOrder``; real OKX answers 51169 when
  there is no position to reduce, which ccxt does not map (a plain ``ExchangeError``). In
  long/short mode a close of a flat side is 51169, as OKX answers it.

Not modelled, and why: isolated margin (``tdMode`` isolated is accepted and treated as
cross), margin trading and borrowing, dated futures and options
(listed empty), amend endpoints, fees (always 0), order history beyond what the engine keeps,
and a matching engine (limit orders rest until a test fills them): none of it changes what a
kill switch must do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, Final

from aiohttp import web

from ess.sim.book import ZERO, Account, ApiError, Order
from ess.sim.families.base import Ctx, Family, Handler, Route
from ess.sim.faults import FaultKind
from ess.sim.markets import Market, Venue, fmt
from ess.sim.ratelimit import RateLimiter, RateLimits, SlidingWindow

if TYPE_CHECKING:
    from ess.sim.server import ExchangeSimulator

__all__ = ["ENDPOINT_LIMITS", "EndpointLimit", "OkxFamily", "OkxRateLimiter"]

_V5: Final = "/api/v5"
#: The timestamp window: OKX refuses a request more than 30 s from its clock (50102).
TIMESTAMP_WINDOW_MS: Final = 30_000
#: OKX's ``clOrdId``/``algoClOrdId`` rule: letters and digits, 1 to 32 characters.
_CLIENT_ID: Final = re.compile(r"^[A-Za-z0-9]{1,32}$")
_ISO_MS: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
#: The longest ``cancel-all-after`` countdown OKX accepts, in seconds.
_MAX_CANCEL_AFTER_S: Final = 120
#: Items per batch request OKX accepts.
_BATCH_MAX: Final = 20
#: The engine's books OKX serves: USD-M as swaps, and spot (other books, e.g. COIN-M, are not
#: listed, and their positions and orders are not shown).
_OKX_VENUES: Final = (Venue.FUTURES, Venue.SPOT)

# -- rate limits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointLimit:
    """One endpoint's published limit: ``count`` requests per ``window_s``, counted per user
    (``per_user``; else per IP, i.e. for everyone on loopback) and per value of each of
    ``keys`` (request parameters, e.g. ``instId``)."""

    count: int
    window_s: float = 2.0
    per_user: bool = True
    keys: tuple[str, ...] = ()


#: OKX's published REST limits of the endpoints served (docs-v5, each endpoint's "Rate Limit").
#: The batch endpoints' limits are in orders; they are counted per request here, exact for
#: ccxt's ``create_order`` (one order per batch), laxer than OKX for larger batches.
ENDPOINT_LIMITS: Final[Mapping[tuple[str, str], EndpointLimit]] = {
    ("GET", f"{_V5}/public/time"): EndpointLimit(10, per_user=False),
    ("GET", f"{_V5}/public/instruments"): EndpointLimit(20, per_user=False, keys=("instType",)),
    ("GET", f"{_V5}/asset/currencies"): EndpointLimit(6, window_s=1.0),
    ("GET", f"{_V5}/account/config"): EndpointLimit(5),
    ("POST", f"{_V5}/account/set-position-mode"): EndpointLimit(5),
    ("GET", f"{_V5}/account/balance"): EndpointLimit(10),
    ("GET", f"{_V5}/account/positions"): EndpointLimit(10),
    ("GET", f"{_V5}/trade/orders-pending"): EndpointLimit(60),
    ("GET", f"{_V5}/trade/orders-algo-pending"): EndpointLimit(20),
    ("GET", f"{_V5}/trade/order"): EndpointLimit(60, keys=("instId",)),
    ("GET", f"{_V5}/trade/order-algo"): EndpointLimit(20),
    ("POST", f"{_V5}/trade/order"): EndpointLimit(60, keys=("instId",)),
    ("POST", f"{_V5}/trade/batch-orders"): EndpointLimit(300, keys=("instId",)),
    ("POST", f"{_V5}/trade/order-algo"): EndpointLimit(20),
    ("POST", f"{_V5}/trade/cancel-order"): EndpointLimit(60, keys=("instId",)),
    ("POST", f"{_V5}/trade/cancel-batch-orders"): EndpointLimit(300, keys=("instId",)),
    ("POST", f"{_V5}/trade/cancel-algos"): EndpointLimit(20),
    ("POST", f"{_V5}/trade/cancel-all-after"): EndpointLimit(1, window_s=1.0),
}

#: The sub-account budget of order requests (1000 per 2 s over all instruments); there is no
#: IP-wide weight budget on OKX (``weight_per_window=None``).
DEFAULT_LIMITS: Final[Mapping[Venue, RateLimits]] = {
    venue: RateLimits(
        weight_per_window=None,
        weight_window_s=2.0,
        orders_per_10s=1000,
        orders_10s_window_s=2.0,
        orders_per_minute=None,
    )
    for venue in Venue
}

_TOO_MANY: Final = "Too Many Requests"


class OkxRateLimiter(RateLimiter):
    """The shared :class:`RateLimiter` (order budgets, counters) plus OKX's per-endpoint
    limits (:data:`ENDPOINT_LIMITS`), each in a sliding window of its own. A request over an
    endpoint's limit is refused (and counted as rejected) before the shared budgets see it."""

    def __init__(
        self,
        limits: Mapping[Venue, RateLimits] | None = None,
        endpoint_limits: Mapping[tuple[str, str], EndpointLimit] | None = None,
        *,
        order_endpoints: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        super().__init__({**DEFAULT_LIMITS, **(limits or {})}, {}, order_endpoints=order_endpoints)
        self.endpoint_limits = dict(ENDPOINT_LIMITS if endpoint_limits is None else endpoint_limits)
        self._endpoint_windows: dict[tuple[Any, ...], SlidingWindow] = {}

    def _endpoint_window(
        self, account: str | None, method: str, path: str, params: Mapping[str, str]
    ) -> tuple[SlidingWindow, EndpointLimit] | None:
        rule = self.endpoint_limits.get((method, path))
        if rule is None:
            return None
        key = (
            method,
            path,
            account if rule.per_user else None,
            *(params.get(name, "") for name in rule.keys),
        )
        window = self._endpoint_windows.get(key)
        if window is None:
            window = self._endpoint_windows[key] = SlidingWindow(rule.window_s)
        return window, rule

    def admit(
        self,
        venue: Venue,
        account: str | None,
        method: str,
        path: str,
        params: Mapping[str, str],
    ) -> tuple[int, ApiError | None]:
        found = self._endpoint_window(account, method, path, params)
        now = self._clock()
        if found is not None and found[0].used(now) + 1 > found[1].count:
            state = self._venues[venue]
            state.requests += 1
            state.rejected += 1
            self._violation(state, now)
            return 1, ApiError(50011, _TOO_MANY, 429, native=True)
        weight, refusal = super().admit(venue, account, method, path, params)
        if refusal is None and found is not None:
            found[0].add(now, 1)
        return weight, refusal

    def headers(self, venue: Venue, account: str | None) -> dict[str, str]:
        """OKX documents no rate-limit headers on REST answers."""
        return {}


# -- shapes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inst:
    """One OKX instrument over one engine market; ``ct_val`` is 1 on spot (base units)."""

    inst_id: str
    market: Market
    venue: Venue
    ct_val: Decimal

    @property
    def inst_type(self) -> str:
        return "SWAP" if self.venue is Venue.FUTURES else "SPOT"

    def contracts(self, base_qty: Decimal) -> Decimal:
        return base_qty / self.ct_val


@dataclass(frozen=True)
class _Partial:
    """A batch answer where some items failed: top-level code ``2``."""

    data: list[dict[str, Any]]


class _BatchFailed(ApiError):
    """Every item of a batch failed: top-level code ``1`` with the items' codes."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        first = items[0] if items else {}
        super().__init__(
            int(first.get("sCode") or 1), str(first.get("sMsg") or ""), 200, native=True
        )
        self.items = items


_BAD_BODY: Final = object()

#: Order state by the engine's status (an order that expired with part done reads canceled).
_STATE: Final = {
    "NEW": "live",
    "PARTIALLY_FILLED": "partially_filled",
    "FILLED": "filled",
    "CANCELED": "canceled",
    "EXPIRED": "canceled",
}
_ALGO_STATE: Final = {"NEW": "live", "FILLED": "effective", "CANCELED": "canceled"}
_ORD_TYPE_BY_TIF: Final = {"GTX": "post_only", "IOC": "ioc", "FOK": "fok"}
#: Order-level routes: their business errors are answered per item with HTTP 200.
_ITEM_ROUTES: Final = frozenset(
    f"{_V5}/trade/{name}"
    for name in (
        "order",
        "batch-orders",
        "order-algo",
        "cancel-order",
        "cancel-batch-orders",
        "cancel-algos",
    )
)
_BATCH_ROUTES: Final = frozenset(
    f"{_V5}/trade/{name}" for name in ("batch-orders", "cancel-batch-orders", "cancel-algos")
)
_AUTH_CODES: Final = frozenset(range(50100, 50120))
#: ``posMode`` by the account's hedge mode, and the engine's position side by ``posSide``.
_POS_MODE: Final = {False: "net_mode", True: "long_short_mode"}
_SIDE_BY_POS_SIDE: Final = {"long": "LONG", "short": "SHORT"}
_POS_SIDE: Final = {"BOTH": "net", "LONG": "long", "SHORT": "short"}
#: OKX's refusal of a close (long/short mode) whose side holds nothing.
_NO_POSITION: Final = (
    51169,
    "Order failed because you don't have any positions in this direction for this contract to "
    "reduce or close.",
)

#: What a fault of each "instead of the exchange" kind answers. ``unknown_order`` and
#: ``reduce_only_rejected`` are given in the engine's codes: which OKX code they become
#: depends on the endpoint (51603 on a query, 51400 on a cancel; 51205 on an order).
CANNED: Final[Mapping[FaultKind, ApiError]] = {
    FaultKind.HTTP_429: ApiError(50011, _TOO_MANY, 429, native=True),
    FaultKind.HTTP_418: ApiError(50011, _TOO_MANY, 418, native=True),
    FaultKind.RATE_LIMIT_CODE: ApiError(50011, _TOO_MANY, 200, native=True),
    FaultKind.INVALID_KEY: ApiError(50111, "Invalid OK-ACCESS-KEY", 401, native=True),
    FaultKind.UNKNOWN_ORDER: ApiError(-2011, "Unknown order sent."),
    FaultKind.REDUCE_ONLY_REJECTED: ApiError(-2022, "ReduceOnly Order is rejected."),
}

#: Engine (Binance) codes -> OKX code and message, where the translation is fixed.
_TRANSLATED: Final[Mapping[int, tuple[int, str]]] = {
    -1003: (50011, _TOO_MANY),
    -1015: (50011, _TOO_MANY),
    -2014: (50103, "Request header OK-ACCESS-KEY cannot be empty."),
    -2015: (50111, "Invalid OK-ACCESS-KEY"),
    -1022: (50113, "Invalid Sign"),
    -1021: (50102, "Timestamp request expired"),
    -2022: (51205, "Reduce Only is not available."),
    -1121: (51001, "Instrument ID does not exist."),
    -4116: (51016, "Duplicated clOrdId"),
    -1111: (51121, "Order quantity must be a multiple of the lot size."),
    -1013: (51121, "Order quantity must be a multiple of the lot size."),
    -4004: (51020, "Order quantity must be greater than the minimum order quantity."),
    -4005: (51202, "Market order amount exceeds the maximum amount."),
    -4003: (51000, "Parameter sz error"),
    -4001: (51000, "Parameter px error"),
    -4014: (51000, "Parameter px error"),
    -4015: (51000, "Parameter clOrdId error"),
    -4061: (51000, "Parameter posSide error"),
    -1116: (51000, "Parameter ordType error"),
    -1117: (51000, "Parameter side error"),
    -1000: (50026, "System error. Try again later."),
}
#: Engine parameter names -> OKX's, for "Parameter {0} error" messages.
_PARAM_NAMES: Final = {
    "symbol": "instId",
    "side": "side",
    "type": "ordType",
    "quantity": "sz",
    "quoteOrderQty": "sz",
    "price": "px",
    "timeInForce": "ordType",
    "newClientOrderId": "clOrdId",
    "triggerPrice": "triggerPx",
}


def _text(value: Any) -> str:
    """A JSON value as request-log text (``true``/``false`` as JSON writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _param_error(name: str) -> ApiError:
    return ApiError(51000, f"Parameter {name} error", 400, native=True)


def _empty_param(name: str) -> ApiError:
    return ApiError(50014, f"Parameter {name} can not be empty.", 400, native=True)


def _bool(value: Any, name: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise _param_error(name)


def _positive(value: Any, name: str) -> Decimal:
    """A positive decimal sent as a JSON string or number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        raise _param_error(name)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _param_error(name) from None
    if not number.is_finite() or number <= 0:
        raise _param_error(name)
    return number


def _ms(value: int) -> str:
    return str(value)


class OkxFamily(Family):
    """OKX v5; see the module docstring."""

    name: ClassVar[str] = "okx"
    mangled_body: ClassVar[str] = '{"code":"0","msg":"","data":[{"instId":"BTC-USDT-SWAP","pos":"1'
    default_limits: ClassVar[Mapping[Venue, RateLimits]] = DEFAULT_LIMITS
    order_endpoints: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("POST", f"{_V5}/trade/order"),
            ("POST", f"{_V5}/trade/batch-orders"),
            ("POST", f"{_V5}/trade/order-algo"),
        }
    )

    @classmethod
    def make_limiter(
        cls,
        limits: Mapping[Venue, RateLimits] | None = None,
        endpoint_limits: Mapping[tuple[str, str], EndpointLimit] | None = None,
    ) -> RateLimiter:
        """OKX's limiter: per-endpoint limits (``endpoint_limits`` replacing
        :data:`ENDPOINT_LIMITS` if given) and the order budget (``limits`` per book)."""
        return OkxRateLimiter(limits, endpoint_limits, order_endpoints=cls.order_endpoints)

    def __init__(self, sim: ExchangeSimulator, limiter: RateLimiter) -> None:
        self._insts: dict[str, _Inst] = {}
        self._by_market: dict[tuple[Venue, str], _Inst] = {}
        for venue in _OKX_VENUES:
            for market in sim.markets_by_venue[venue].values():
                pair = f"{market.base}-{market.quote}"
                inst = (
                    _Inst(f"{pair}-SWAP", market, venue, market.step_size)
                    if venue is Venue.FUTURES
                    else _Inst(pair, market, venue, Decimal(1))
                )
                self._insts[inst.inst_id] = inst
                self._by_market[(venue, market.symbol)] = inst
        #: The shortest ``cancel-all-after`` countdown accepted, in seconds (OKX: 10). Tests
        #: lower it to watch a countdown expire quickly; ccxt sends whole seconds.
        self.cancel_after_min_s = 10
        #: OKX ``ordType`` of algo orders placed through this family, by algo id.
        self._algo_kinds: dict[int, str] = {}
        super().__init__(sim, limiter)

    def inst_id(self, symbol: str, venue: Venue = Venue.FUTURES) -> str:
        """OKX's instrument id of the engine market ``symbol`` (``BTCUSDT`` ->
        ``BTC-USDT-SWAP`` on futures, ``BTC-USDT`` on spot)."""
        return self._by_market[(venue, symbol)].inst_id

    def contract_value(self, symbol: str) -> Decimal:
        """``ctVal`` of the swap over the engine's futures market ``symbol``."""
        return self._by_market[(Venue.FUTURES, symbol)].ct_val

    # -- request handling --------------------------------------------------------------------

    def owns(self, path: str) -> bool:
        return path.startswith(f"{_V5}/")

    async def parse(self, request: web.Request, ctx: Ctx) -> None:
        """Query parameters, then the JSON body's fields (an array body's items merged: each
        field's distinct values joined with commas) as the request-log parameters."""
        params: dict[str, str] = {}
        for key, value in request.rel_url.query.items():
            params[key] = value
        body: Any = None
        if ctx.raw_body.strip():
            try:
                body = json.loads(ctx.raw_body)
            except ValueError:
                body = _BAD_BODY
        ctx.body = body
        items = body if isinstance(body, list) else [body] if isinstance(body, dict) else []
        merged: dict[str, list[str]] = {}
        for item in items:
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                values = merged.setdefault(str(key), [])
                text = _text(value)
                if text not in values:
                    values.append(text)
        for key, values in merged.items():
            params[key] = ",".join(values)
        ctx.params = params
        ctx.api_key = request.headers.get("OK-ACCESS-KEY")
        ctx.signature = request.headers.get("OK-ACCESS-SIGN")

    def venue_of(self, ctx: Ctx) -> Venue | None:
        """The instrument's book (``instId``, else ``instType``); account-wide requests
        (balance, positions, every pending order, the countdown) count on the swap book."""
        inst_id = ctx.params.get("instId", "").split(",")[0]
        if inst_id:
            inst = self._insts.get(inst_id)
            if inst is not None:
                return inst.venue
            return Venue.FUTURES if inst_id.count("-") >= 2 else Venue.SPOT
        inst_type = ctx.params.get("instType", "")
        if inst_type == "SPOT":
            return Venue.SPOT
        return Venue.FUTURES

    def authenticate(self, ctx: Ctx) -> Account:
        sim = self.sim
        headers = ctx.headers
        if not ctx.api_key:
            raise ApiError(50103, "Request header OK-ACCESS-KEY cannot be empty.", 401, native=True)
        passphrase = headers.get("OK-ACCESS-PASSPHRASE")
        if not passphrase:
            raise ApiError(
                50104, "Request header OK-ACCESS-PASSPHRASE cannot be empty.", 401, native=True
            )
        if not ctx.signature:
            raise ApiError(
                50106, "Request header OK-ACCESS-SIGN cannot be empty.", 401, native=True
            )
        stamp = headers.get("OK-ACCESS-TIMESTAMP")
        if not stamp:
            raise ApiError(
                50107, "Request header OK-ACCESS-TIMESTAMP cannot be empty.", 401, native=True
            )
        if not _ISO_MS.match(stamp):
            raise ApiError(50112, "Invalid OK-ACCESS-TIMESTAMP", 401, native=True)
        account = sim.account_by_key(ctx.api_key)
        if account is None:
            raise ApiError(50111, "Invalid OK-ACCESS-KEY", 401, native=True)
        if sim.check_recv_window:
            sent_ms = int(datetime.fromisoformat(stamp).timestamp() * 1000)
            if abs(sim.now_ms() - sent_ms) > TIMESTAMP_WINDOW_MS:
                raise ApiError(50102, "Timestamp request expired", 401, native=True)
        if account.passphrase is None or not hmac.compare_digest(
            account.passphrase.encode(), passphrase.encode()
        ):
            raise ApiError(
                50105, "Request header OK-ACCESS-PASSPHRASE incorrect.", 401, native=True
            )
        if sim.verify_signatures:
            query = f"?{ctx.raw_query}" if ctx.raw_query else ""
            payload = f"{stamp}{ctx.method}{ctx.path}{query}{ctx.raw_body}"
            expected = base64.b64encode(
                hmac.new(account.secret.encode(), payload.encode(), hashlib.sha256).digest()
            ).decode()
            if not hmac.compare_digest(expected, ctx.signature):
                raise ApiError(50113, "Invalid Sign", 401, native=True)
        return account

    def render(self, ctx: Ctx, payload: Any) -> tuple[int, Any]:
        if isinstance(payload, _Partial):
            return 200, {
                "code": "2",
                "msg": "Bulk operation partially succeeded.",
                "data": payload.data,
            }
        return 200, {"code": "0", "msg": "", "data": payload}

    def render_error(self, ctx: Ctx, err: ApiError) -> tuple[int, Any]:
        if isinstance(err, _BatchFailed):
            return 200, {"code": "1", "msg": "All operations failed", "data": err.items}
        code, msg, status = self._translate(ctx, err)
        if ctx.path in _ITEM_ROUTES and ctx.method == "POST" and 51000 <= code < 60000:
            items = [self._error_item(ctx, each, code, msg) for each in self._items(ctx)]
            batch = ctx.path in _BATCH_ROUTES
            top = "All operations failed" if batch else "Operation failed."
            return 200, {
                "code": "1",
                "msg": top,
                "data": items or [{"sCode": str(code), "sMsg": msg}],
            }
        return status, {"code": str(code), "msg": msg, "data": []}

    def canned(self, kind: FaultKind) -> ApiError:
        return CANNED[kind]

    def _translate(self, ctx: Ctx, err: ApiError) -> tuple[int, str, int]:
        """OKX code, message and HTTP status of ``err`` (engine codes translated)."""
        if err.native:
            return err.code, err.msg, err.status
        code = err.code
        if code in {-2011, -2013}:
            if ctx.method == "GET":
                return 51603, "Order does not exist", 200
            return (
                51400,
                "Order cancellation failed as the order has been filled, canceled or does not "
                "exist.",
                200,
            )
        if code == -2010:
            if "Duplicate" in err.msg:
                return 51016, "Duplicated clOrdId", 200
            return 51008, "Order failed. Insufficient balance.", 200
        if code in {-1003, -1015}:
            return 50011, _TOO_MANY, err.status if err.status in {418, 429} else 429
        known = _TRANSLATED.get(code)
        if code == -2022 and ctx.account is not None and ctx.account.hedge_mode:
            known = _NO_POSITION
        if known is None:
            found = re.search(r"'(\w+)'", err.msg)
            name = _PARAM_NAMES.get(found.group(1), found.group(1)) if found else "request"
            known = (51000, f"Parameter {name} error")
        okx, msg = known
        if okx in _AUTH_CODES:
            return okx, msg, 401
        if okx == 50011:
            return okx, msg, 429
        if okx == 50026:
            return okx, msg, 500
        return okx, msg, 400 if okx == 51000 and ctx.method == "GET" else 200

    @staticmethod
    def _items(ctx: Ctx) -> list[Mapping[str, Any]]:
        body = ctx.body
        if isinstance(body, list):
            return [item for item in body if isinstance(item, dict)]
        if isinstance(body, dict):
            return [body]
        return []

    def _error_item(self, ctx: Ctx, item: Mapping[str, Any], code: int, msg: str) -> dict[str, Any]:
        base = {"sCode": str(code), "sMsg": msg, "ts": _ms(self.sim.now_ms())}
        if ctx.path.endswith(("/order-algo", "/cancel-algos")):
            return {
                "algoId": _text(item.get("algoId")),
                "algoClOrdId": _text(item.get("algoClOrdId")),
                "clOrdId": _text(item.get("clOrdId")),
                "tag": _text(item.get("tag")),
                **base,
            }
        return {
            "clOrdId": _text(item.get("clOrdId")),
            "ordId": _text(item.get("ordId")),
            "tag": _text(item.get("tag")),
            **base,
        }

    # -- routes ----------------------------------------------------------------------------

    def build_routes(self) -> dict[tuple[str, str], Route]:
        public: dict[tuple[str, str], Handler] = {
            ("GET", f"{_V5}/public/time"): self._time,
            ("GET", f"{_V5}/public/instruments"): self._instruments,
        }
        signed: dict[tuple[str, str], Handler] = {
            ("GET", f"{_V5}/asset/currencies"): self._currencies,
            ("GET", f"{_V5}/account/config"): self._config,
            ("POST", f"{_V5}/account/set-position-mode"): self._set_position_mode,
            ("GET", f"{_V5}/account/balance"): self._balance,
            ("GET", f"{_V5}/account/positions"): self._positions,
            ("GET", f"{_V5}/trade/orders-pending"): self._orders_pending,
            ("GET", f"{_V5}/trade/orders-algo-pending"): self._algo_pending,
            ("GET", f"{_V5}/trade/order"): self._get_order,
            ("GET", f"{_V5}/trade/order-algo"): self._get_algo,
            ("POST", f"{_V5}/trade/order"): self._place_one,
            ("POST", f"{_V5}/trade/batch-orders"): self._place_batch,
            ("POST", f"{_V5}/trade/order-algo"): self._place_algo,
            ("POST", f"{_V5}/trade/cancel-order"): self._cancel_one,
            ("POST", f"{_V5}/trade/cancel-batch-orders"): self._cancel_batch,
            ("POST", f"{_V5}/trade/cancel-algos"): self._cancel_algos,
            ("POST", f"{_V5}/trade/cancel-all-after"): self._cancel_all_after,
        }
        routes = {key: Route(handler, signed=False) for key, handler in public.items()}
        routes |= {key: Route(handler, signed=True) for key, handler in signed.items()}
        return routes

    # -- helpers ---------------------------------------------------------------------------

    def _inst(self, inst_id: Any) -> _Inst:
        if not inst_id:
            raise _empty_param("instId")
        inst = self._insts.get(str(inst_id))
        if inst is None:
            raise ApiError(51001, "Instrument ID does not exist.", 200, native=True)
        return inst

    @staticmethod
    def _object(ctx: Ctx) -> Mapping[str, Any]:
        body = ctx.body
        if body is _BAD_BODY:
            raise ApiError(50002, "Json data format error", 400, native=True)
        if not isinstance(body, dict):
            raise ApiError(50000, "Body can not be empty", 400, native=True)
        return body

    @staticmethod
    def _array(ctx: Ctx) -> list[Mapping[str, Any]]:
        body = ctx.body
        if body is _BAD_BODY:
            raise ApiError(50002, "Json data format error", 400, native=True)
        if not isinstance(body, list) or not body:
            raise ApiError(50000, "Body can not be empty", 400, native=True)
        if len(body) > _BATCH_MAX or not all(isinstance(item, dict) for item in body):
            raise ApiError(51000, "Parameter body error", 400, native=True)
        return body

    def _mark(self, inst: _Inst) -> Decimal:
        return self.sim.marks[(inst.venue, inst.market.symbol)]

    def _inst_of(self, order: Order) -> _Inst:
        return self._by_market[(order.venue, order.symbol)]

    @staticmethod
    def _filter(ctx: Ctx, key: str) -> set[str] | None:
        text = ctx.params.get(key)
        return set(text.split(",")) if text else None

    # -- public ----------------------------------------------------------------------------

    async def _time(self, ctx: Ctx) -> Any:
        return [{"ts": _ms(self.sim.now_ms())}]

    async def _instruments(self, ctx: Ctx) -> Any:
        inst_type = ctx.params.get("instType")
        if not inst_type:
            raise _empty_param("instType")
        if inst_type not in {"SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"}:
            raise _param_error("instType")
        if inst_type == "OPTION" and not (ctx.params.get("uly") or ctx.params.get("instFamily")):
            raise ApiError(
                50015, "Either parameter uly or instFamily is required.", 400, native=True
            )
        wanted = {"SPOT": Venue.SPOT, "SWAP": Venue.FUTURES}.get(inst_type)
        only = ctx.params.get("instId")
        return [
            self._instrument(inst)
            for inst in self._insts.values()
            if inst.venue is wanted and (not only or inst.inst_id == only)
        ]

    @staticmethod
    def _instrument(inst: _Inst) -> dict[str, Any]:
        market = inst.market
        common: dict[str, Any] = {
            "instType": inst.inst_type,
            "instId": inst.inst_id,
            "tickSz": fmt(market.tick_size),
            "state": "live",
            "listTime": "1569398400000",
            "contTdSwTime": "",
            "expTime": "",
            "optType": "",
            "stk": "",
            "alias": "",
            "category": "1",
            "ruleType": "normal",
            "openType": "",
            "auctionEndTime": "",
        }
        if inst.venue is Venue.FUTURES:
            max_contracts = fmt(inst.contracts(market.max_qty))
            return common | {
                "uly": f"{market.base}-{market.quote}",
                "instFamily": f"{market.base}-{market.quote}",
                "baseCcy": "",
                "quoteCcy": "",
                "settleCcy": market.quote,
                "ctVal": fmt(inst.ct_val),
                "ctMult": "1",
                "ctValCcy": market.base,
                "ctType": "linear",
                "lever": "100",
                "lotSz": "1",
                "minSz": "1",
                "maxLmtSz": max_contracts,
                "maxMktSz": max_contracts,
                "maxTriggerSz": max_contracts,
                "maxStopSz": max_contracts,
                "maxLmtAmt": "20000000",
                "maxMktAmt": "",
            }
        return common | {
            "uly": "",
            "instFamily": "",
            "baseCcy": market.base,
            "quoteCcy": market.quote,
            "settleCcy": "",
            "ctVal": "",
            "ctMult": "",
            "ctValCcy": "",
            "ctType": "",
            "lever": "",
            "lotSz": fmt(market.step_size),
            "minSz": fmt(market.min_qty),
            "maxLmtSz": fmt(market.max_qty),
            "maxMktSz": "1000000",
            "maxTriggerSz": fmt(market.max_qty),
            "maxStopSz": "1000000",
            "maxLmtAmt": "20000000",
            "maxMktAmt": "1000000",
        }

    # -- account ---------------------------------------------------------------------------

    async def _currencies(self, ctx: Ctx) -> Any:
        """Every currency of a listed market, and whatever the account holds."""
        account = ctx.acct
        codes = {c for inst in self._insts.values() for c in (inst.market.base, inst.market.quote)}
        codes |= set(account.spot_free) | set(account.spot_locked)
        only = self._filter(ctx, "ccy")
        return [
            {
                "ccy": code,
                "chain": f"{code}-{code}",
                "name": code,
                "logoLink": "",
                "canDep": True,
                "canWd": True,
                "canInternal": True,
                "depQuotaFixed": "",
                "minDep": "0.00000001",
                "minWd": "0.0001",
                "maxWd": "1000000",
                "wdTickSz": "8",
                "wdQuota": "10000000",
                "usedWdQuota": "0",
                "minFee": "0",
                "maxFee": "0",
                "mainNet": True,
                "needTag": False,
                "minDepArrivalConfirm": "1",
                "minWdUnlockConfirm": "1",
            }
            for code in sorted(codes)
            if only is None or code in only
        ]

    async def _set_position_mode(self, ctx: Ctx) -> Any:
        """``POST /account/set-position-mode`` (ccxt's ``set_position_mode``): ``posMode``
        ``net_mode`` or ``long_short_mode``; 59000 while a position or an order is open."""
        item = self._object(ctx)
        mode = item.get("posMode")
        if not mode:
            raise _empty_param("posMode")
        if mode not in _POS_MODE.values():
            raise _param_error("posMode")
        account = ctx.acct
        wanted = mode == _POS_MODE[True]
        if wanted != account.hedge_mode:
            if account.mode_switch_blocker() is not None:
                raise ApiError(
                    59000,
                    "Your settings failed as you have positions or open orders.",
                    200,
                    native=True,
                )
            account.hedge_mode = wanted
        return [{"posMode": mode}]

    async def _config(self, ctx: Ctx) -> Any:
        account = ctx.acct
        uid = str(zlib.crc32(account.name.encode()))
        return [
            {
                "uid": uid,
                "mainUid": uid,
                "acctLv": "2",
                "acctStpMode": "cancel_maker",
                "posMode": _POS_MODE[account.hedge_mode],
                "autoLoan": False,
                "greeksType": "PA",
                "level": "Lv1",
                "levelTmp": "",
                "ctIsoMode": "automatic",
                "mgnIsoMode": "automatic",
                "spotOffsetType": "",
                "roleType": "0",
                "traderInsts": [],
                "spotRoleType": "0",
                "spotTraderInsts": [],
                "opAuth": "0",
                "kycLv": "1",
                "label": account.name,
                "ip": "",
                "perm": "read_only,trade",
                "liquidationGear": "-1",
                "enableSpotBorrow": False,
                "spotBorrowAutoRepay": False,
                "type": "0",
                "feeType": "0",
                "settleCcy": "USDT",
                "settleCcyList": ["USDT"],
            }
        ]

    def _margins(self, account: Account) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """Unrealized PnL, initial margin, maintenance margin and notional of the swaps."""
        upl = imr = mmr = notional = ZERO
        for position in account.all_positions():
            symbol = position.symbol
            if (Venue.FUTURES, symbol) not in self._by_market:
                continue
            mark = self.sim.marks[(Venue.FUTURES, symbol)]
            value = abs(position.qty) * mark
            upl += (mark - position.entry_price) * position.qty
            imr += value / account.leverage
            mmr += value * Decimal("0.004")
            notional += value
        return upl, imr, mmr, notional

    async def _balance(self, ctx: Ctx) -> Any:
        """The unified trading account (see the module docstring for the derivation)."""
        account = ctx.acct
        now = _ms(self.sim.now_ms())
        upl, imr, mmr, notional = self._margins(account)
        only = self._filter(ctx, "ccy")
        details = []
        total_usd = ZERO
        for ccy in sorted(set(account.spot_free) | set(account.spot_locked) | {"USDT"}):
            free = account.spot_free.get(ccy, ZERO)
            locked = account.spot_locked.get(ccy, ZERO)
            cash, frozen, ccy_upl, ccy_imr, ccy_mmr = free + locked, locked, ZERO, ZERO, ZERO
            if ccy == "USDT":
                cash += account.futures_wallet
                frozen += imr
                ccy_upl, ccy_imr, ccy_mmr = upl, imr, mmr
            equity = cash + ccy_upl
            if not cash and not ccy_upl:
                continue
            spot = self._by_market.get((Venue.SPOT, f"{ccy}USDT"))
            price = Decimal(1) if ccy == "USDT" else self._mark(spot) if spot else ZERO
            total_usd += equity * price
            if only is not None and ccy not in only:
                continue
            details.append(
                {
                    "ccy": ccy,
                    "eq": fmt(equity),
                    "cashBal": fmt(cash),
                    "availBal": fmt(cash - frozen),
                    "frozenBal": fmt(frozen),
                    "ordFrozen": fmt(locked),
                    "availEq": "",
                    "disEq": fmt(equity * price),
                    "eqUsd": fmt(equity * price),
                    "upl": fmt(ccy_upl),
                    "uplLiab": "0",
                    "imr": fmt(ccy_imr),
                    "mmr": fmt(ccy_mmr),
                    "mgnRatio": "",
                    "notionalLever": "",
                    "isoEq": "0",
                    "isoUpl": "0",
                    "isoLiab": "",
                    "liab": "",
                    "crossLiab": "",
                    "interest": "",
                    "maxLoan": "",
                    "stgyEq": "0",
                    "twap": "0",
                    "spotInUseAmt": "",
                    "uTime": now,
                }
            )
        return [
            {
                "adjEq": "",
                "borrowFroz": "",
                "details": details,
                "imr": fmt(imr),
                "mmr": fmt(mmr),
                "isoEq": "0",
                "mgnRatio": "",
                "notionalUsd": fmt(notional),
                "ordFroz": "",
                "totalEq": fmt(total_usd),
                "upl": fmt(upl),
                "uTime": now,
            }
        ]

    async def _positions(self, ctx: Ctx) -> Any:
        """Swap positions (net mode: ``posSide`` net, signed ``pos``; long/short mode: one row
        per open side, ``posSide`` long/short, positive ``pos``); flat ones are left out, as OKX
        does."""
        account = ctx.acct
        inst_type = ctx.params.get("instType")
        if inst_type and inst_type not in {"MARGIN", "SWAP", "FUTURES", "OPTION"}:
            raise _param_error("instType")
        only = self._filter(ctx, "instId")
        rows = []
        for position in account.all_positions():
            symbol = position.symbol
            inst = self._by_market.get((Venue.FUTURES, symbol))
            if inst is None or not position.qty or inst_type not in {None, "SWAP"}:
                continue
            if only is not None and inst.inst_id not in only:
                continue
            mark = self._mark(inst)
            size = abs(position.qty)
            value = size * mark
            upl = (mark - position.entry_price) * position.qty
            imr = value / account.leverage
            rows.append(
                {
                    "instType": "SWAP",
                    "instId": inst.inst_id,
                    "mgnMode": "cross",
                    "posId": str(
                        zlib.crc32(f"{account.name}:{inst.inst_id}:{position.side}".encode())
                    ),
                    "posSide": _POS_SIDE[position.side],
                    "pos": fmt(inst.contracts(position.qty if position.side == "BOTH" else size)),
                    "posCcy": "",
                    "availPos": "",
                    "avgPx": fmt(position.entry_price),
                    "markPx": fmt(mark),
                    "last": fmt(mark),
                    "idxPx": fmt(mark),
                    "upl": fmt(upl),
                    "uplRatio": fmt(upl / imr) if imr else "0",
                    "lever": str(account.leverage),
                    "liqPx": "",
                    "imr": fmt(imr),
                    "margin": "",
                    "mmr": fmt(value * Decimal("0.004")),
                    "mgnRatio": "",
                    "notionalUsd": fmt(value),
                    "ccy": inst.market.quote,
                    "liab": "",
                    "liabCcy": "",
                    "interest": "0",
                    "adl": "1",
                    "realizedPnl": fmt(position.realized_pnl),
                    "pnl": fmt(position.realized_pnl),
                    "fee": "0",
                    "fundingFee": "0",
                    "optVal": "",
                    "tradeId": "",
                    "cTime": _ms(position.update_ms),
                    "uTime": _ms(position.update_ms),
                    "pTime": _ms(position.update_ms),
                    "bizRefId": "",
                    "bizRefType": "",
                    "closeOrderAlgo": [],
                    "deltaBS": "",
                    "deltaPA": "",
                    "gammaBS": "",
                    "gammaPA": "",
                    "thetaBS": "",
                    "thetaPA": "",
                    "vegaBS": "",
                    "vegaPA": "",
                }
            )
        return rows

    # -- orders: reads ---------------------------------------------------------------------

    def _order_row(self, order: Order) -> dict[str, Any]:
        inst = self._inst_of(order)
        swap = inst.venue is Venue.FUTURES
        ord_type = (
            "market"
            if order.type == "MARKET"
            else _ORD_TYPE_BY_TIF.get(order.time_in_force, "limit")
        )
        return {
            "instType": inst.inst_type,
            "instId": inst.inst_id,
            "ordId": str(order.order_id),
            "clOrdId": order.client_order_id,
            "tag": "",
            "px": fmt(order.price) if order.price else "",
            "sz": fmt(inst.contracts(order.orig_qty)),
            "ordType": ord_type,
            "side": order.side.lower(),
            "posSide": _POS_SIDE[order.position_side] if swap else "",
            "tdMode": "cross" if swap else "cash",
            "tgtCcy": "" if swap else "base_ccy",
            "ccy": "",
            "lever": "20" if swap else "",
            "accFillSz": fmt(inst.contracts(order.executed_qty)),
            "avgPx": fmt(order.avg_price) if order.executed_qty else "",
            "fillPx": "",
            "fillSz": "",
            "fillTime": "",
            "tradeId": "",
            "state": _STATE.get(order.public_status, "canceled"),
            "reduceOnly": "true" if order.reduce_only else "false",
            "fee": "0",
            "feeCcy": inst.market.quote,
            "rebate": "0",
            "rebateCcy": inst.market.quote,
            "pnl": "0",
            "category": "normal",
            "source": "",
            "cancelSource": "",
            "stpMode": "cancel_maker",
            "attachAlgoOrds": [],
            "tpTriggerPx": "",
            "tpOrdPx": "",
            "slTriggerPx": "",
            "slOrdPx": "",
            "cTime": _ms(order.time_ms),
            "uTime": _ms(order.update_ms),
        }

    def _algo_kind(self, order: Order) -> str:
        kind = self._algo_kinds.get(order.order_id)
        if kind is not None:
            return kind
        return "move_order_stop" if order.type == "TRAILING_STOP_MARKET" else "trigger"

    def _algo_row(self, order: Order) -> dict[str, Any]:
        inst = self._inst_of(order)
        kind = self._algo_kind(order)
        order_px = fmt(order.price) if order.price else "-1"
        trigger = fmt(order.trigger_price) if order.trigger_price else ""
        row: dict[str, Any] = {
            "instType": inst.inst_type,
            "instId": inst.inst_id,
            "algoId": str(order.order_id),
            "algoClOrdId": order.client_order_id,
            "clOrdId": "",
            "ordId": "",
            "ordIdList": [],
            "ordType": kind,
            "side": order.side.lower(),
            "posSide": _POS_SIDE[order.position_side],
            "tdMode": "cross",
            "tgtCcy": "",
            "ccy": "",
            "lever": "20",
            "sz": fmt(inst.contracts(order.orig_qty)),
            "closeFraction": "1" if order.close_position else "",
            "state": _ALGO_STATE.get(order.public_status, "canceled"),
            "reduceOnly": "true" if order.reduce_only else "false",
            "triggerPx": "",
            "triggerPxType": "",
            "orderPx": "",
            "ordPx": "",
            "tpTriggerPx": "",
            "tpTriggerPxType": "",
            "tpOrdPx": "",
            "slTriggerPx": "",
            "slTriggerPxType": "",
            "slOrdPx": "",
            "moveTriggerPx": "",
            "callbackRatio": "",
            "callbackSpread": "",
            "activePx": "",
            "actualSz": "",
            "actualPx": "",
            "actualSide": "",
            "triggerTime": "",
            "failCode": "",
            "last": fmt(self._mark(inst)),
            "tag": "",
            "cTime": _ms(order.time_ms),
            "uTime": _ms(order.update_ms),
        }
        if kind == "trigger":
            row |= {
                "triggerPx": trigger,
                "triggerPxType": "last",
                "orderPx": order_px,
                "ordPx": order_px,
            }
        elif kind == "conditional":
            leg = "tp" if order.type.startswith("TAKE_PROFIT") else "sl"
            row |= {
                f"{leg}TriggerPx": trigger,
                f"{leg}TriggerPxType": "last",
                f"{leg}OrdPx": order_px,
            }
        else:
            row["moveTriggerPx"] = trigger
        return row

    async def _orders_pending(self, ctx: Ctx) -> Any:
        """Open regular orders of every instrument, filtered by ``instType``/``instId``/
        ``ordType``, newest first (as OKX lists them)."""
        account = ctx.acct
        types = self._filter(ctx, "instType")
        insts = self._filter(ctx, "instId")
        ord_types = self._filter(ctx, "ordType")
        rows = []
        for order in sorted(account.orders.values(), key=lambda o: -o.order_id):
            if not order.is_open or (order.venue, order.symbol) not in self._by_market:
                continue
            row = self._order_row(order)
            if types is not None and row["instType"] not in types:
                continue
            if insts is not None and row["instId"] not in insts:
                continue
            if ord_types is not None and row["ordType"] not in ord_types:
                continue
            rows.append(row)
        return rows

    async def _algo_pending(self, ctx: Ctx) -> Any:
        """Open algo orders of the ``ordType``s asked for (required, as on OKX)."""
        account = ctx.acct
        kinds = self._filter(ctx, "ordType")
        if kinds is None:
            raise _empty_param("ordType")
        types = self._filter(ctx, "instType")
        insts = self._filter(ctx, "instId")
        rows = []
        for order in sorted(account.algo_orders.values(), key=lambda o: -o.order_id):
            if not order.is_open or (order.venue, order.symbol) not in self._by_market:
                continue
            if self._algo_kind(order) not in kinds:
                continue
            inst = self._inst_of(order)
            if types is not None and inst.inst_type not in types:
                continue
            if insts is not None and inst.inst_id not in insts:
                continue
            rows.append(self._algo_row(order))
        return rows

    def _find(
        self, ctx: Ctx, inst: _Inst, order_id: Any, client_id: Any, *, conditional: bool
    ) -> Order | None:
        if not order_id and not client_id:
            raise ApiError(
                51003, "Either client order ID or order ID is required.", 200, native=True
            )
        return self.sim.engine.find_order(
            ctx.acct,
            inst.venue,
            inst.market.symbol,
            order_id=str(order_id) if order_id else None,
            client_id=str(client_id) if client_id else None,
            conditional=conditional,
        )

    async def _get_order(self, ctx: Ctx) -> Any:
        inst = self._inst(ctx.params.get("instId"))
        order = self._find(
            ctx, inst, ctx.params.get("ordId"), ctx.params.get("clOrdId"), conditional=False
        )
        if order is None:
            raise ApiError(51603, "Order does not exist", 200, native=True)
        return [self._order_row(order)]

    async def _get_algo(self, ctx: Ctx) -> Any:
        algo_id = ctx.params.get("algoId")
        client_id = ctx.params.get("algoClOrdId")
        if not algo_id and not client_id:
            raise ApiError(
                50015, "Either parameter algoId or algoClOrdId is required.", 400, native=True
            )
        for order in ctx.acct.algo_orders.values():
            if (order.venue, order.symbol) not in self._by_market:
                continue
            if (algo_id and str(order.order_id) == algo_id) or (
                not algo_id and order.client_order_id == client_id
            ):
                return [self._algo_row(order)]
        raise ApiError(51603, "Order does not exist", 200, native=True)

    # -- orders: placement -----------------------------------------------------------------

    @staticmethod
    def _client_id(item: Mapping[str, Any], *keys: str) -> str | None:
        for key in keys:
            value = item.get(key)
            if value not in {None, ""}:
                text = str(value)
                if not _CLIENT_ID.match(text):
                    raise _param_error(key)
                return text
        return None

    @staticmethod
    def _common(item: Mapping[str, Any], inst: _Inst, account: Account) -> tuple[str, bool, str]:
        """Side, reduce-only and position side (the engine's) of an order item, after OKX's
        own checks: ``posSide`` must fit the account's position mode (net or none in net mode,
        long/short in long/short mode, where ``reduceOnly`` is ignored)."""
        side = item.get("side")
        if side not in {"buy", "sell"}:
            raise _param_error("side")
        td_mode = item.get("tdMode")
        if not td_mode:
            raise _empty_param("tdMode")
        if inst.venue is Venue.SPOT and td_mode != "cash":
            raise _param_error("tdMode")  # margin trading is not modelled
        if inst.venue is Venue.FUTURES and td_mode not in {"cross", "isolated"}:
            raise _param_error("tdMode")
        reduce_only = _bool(item.get("reduceOnly"), "reduceOnly")
        pos_side = item.get("posSide")
        position_side = "BOTH"
        if inst.venue is Venue.FUTURES and account.hedge_mode:
            if pos_side not in _SIDE_BY_POS_SIDE:
                raise _param_error("posSide")
            position_side = _SIDE_BY_POS_SIDE[pos_side]
            reduce_only = False  # net mode only: a close of a side is reduce-only already
        elif pos_side not in {None, "", "net"}:
            raise _param_error("posSide")
        if reduce_only and inst.venue is Venue.SPOT:
            raise ApiError(
                51139,
                "Reduce-only feature is unavailable for the spot transactions by simple account.",
                200,
                native=True,
            )
        return side.upper(), reduce_only, position_side

    def _contracts_to_base(self, inst: _Inst, sz: Decimal) -> Decimal:
        """Swap ``sz`` (contracts, whole lots of 1, at least ``minSz``) in base units."""
        if sz % 1:
            raise ApiError(
                51121, "Order quantity must be a multiple of the lot size.", 200, native=True
            )
        return sz * inst.ct_val

    def _place(self, ctx: Ctx, item: Mapping[str, Any], fill_ratio: Decimal | None) -> Order:
        inst = self._inst(item.get("instId"))
        side, reduce_only, position_side = self._common(item, inst, ctx.acct)
        ord_type = item.get("ordType")
        if ord_type not in {"market", "limit", "post_only"}:
            raise _param_error("ordType")  # ioc, fok, optimal_limit_ioc...: not modelled
        sz = _positive(item.get("sz"), "sz")
        client_id = self._client_id(item, "clOrdId")
        params: dict[str, str] = {
            "symbol": inst.market.symbol,
            "side": side,
            "type": "MARKET" if ord_type == "market" else "LIMIT",
        }
        if ord_type != "market":
            params["price"] = fmt(_positive(item.get("px"), "px"))
            params["timeInForce"] = "GTX" if ord_type == "post_only" else "GTC"
        if client_id is not None:
            params["newClientOrderId"] = client_id
        engine = self.sim.engine
        if inst.venue is Venue.FUTURES:
            params["quantity"] = fmt(self._contracts_to_base(inst, sz))
            params["reduceOnly"] = "true" if reduce_only else "false"
            params["positionSide"] = position_side
            return engine.place_futures(
                ctx.acct, params, fill_ratio=fill_ratio, reduce_only_in_hedge=True
            )
        target = item.get("tgtCcy") or "base_ccy"
        if target not in {"base_ccy", "quote_ccy"}:
            raise _param_error("tgtCcy")
        if target == "quote_ccy":
            if (ord_type, side) != ("market", "BUY"):
                raise _param_error("tgtCcy")  # only a market buy can be sized in quote
            params["quoteOrderQty"] = fmt(sz)
        else:
            params["quantity"] = fmt(sz)
        return engine.place_spot(ctx.acct, params, fill_ratio=fill_ratio)

    def _placed(self, order: Order, item: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "clOrdId": order.client_order_id if item.get("clOrdId") else "",
            "ordId": str(order.order_id),
            "tag": _text(item.get("tag")),
            "ts": _ms(order.time_ms),
            "sCode": "0",
            "sMsg": "Order placed",
        }

    def _fill_ratio(self, ctx: Ctx) -> Decimal | None:
        fault = self.sim.take_fault(ctx, {FaultKind.PARTIAL_FILL}, exclude=False)
        return fault.fill_ratio if fault else None

    async def _place_one(self, ctx: Ctx) -> Any:
        item = self._object(ctx)
        order = self._place(ctx, item, self._fill_ratio(ctx))
        return [self._placed(order, item)]

    async def _place_batch(self, ctx: Ctx) -> Any:
        """``batch-orders``: what ccxt's ``create_order`` calls, with a one-item array."""
        items = self._array(ctx)
        ratio = self._fill_ratio(ctx)
        answers: list[dict[str, Any]] = []
        failed = 0
        for item in items:
            try:
                answers.append(self._placed(self._place(ctx, item, ratio), item))
            except ApiError as err:
                code, msg, _ = self._translate(ctx, err)
                answers.append(self._error_item(ctx, item, code, msg))
                failed += 1
        return self._batch(answers, failed)

    @staticmethod
    def _batch(answers: list[dict[str, Any]], failed: int) -> Any:
        if failed == len(answers):
            raise _BatchFailed(answers)
        return _Partial(answers) if failed else answers

    async def _place_algo(self, ctx: Ctx) -> Any:
        """``order-algo``: swap ``trigger`` and ``conditional`` orders (one stop-loss or one
        take-profit leg); the order rests untriggered in the engine's conditional book."""
        item = self._object(ctx)
        inst = self._inst(item.get("instId"))
        if inst.venue is not Venue.FUTURES:
            raise _param_error("instId")  # spot algo orders are not modelled
        side, reduce_only, position_side = self._common(item, inst, ctx.acct)
        kind = item.get("ordType")
        price: Any
        if kind == "trigger":
            trigger, price = item.get("triggerPx"), item.get("orderPx")
            stop = "STOP"
        elif kind == "conditional":
            has_sl = item.get("slTriggerPx") not in {None, ""}
            has_tp = item.get("tpTriggerPx") not in {None, ""}
            if has_sl == has_tp:
                raise _param_error("slTriggerPx")  # one leg only: two legs make an oco
            leg = "sl" if has_sl else "tp"
            trigger, price = item.get(f"{leg}TriggerPx"), item.get(f"{leg}OrdPx")
            stop = "STOP" if has_sl else "TAKE_PROFIT"
        else:
            raise _param_error("ordType")  # oco, move_order_stop, iceberg, twap
        at_market = str(price) in {"-1", "", "None"}
        params: dict[str, str] = {
            "symbol": inst.market.symbol,
            "side": side,
            "algoType": "CONDITIONAL",
            "type": f"{stop}_MARKET" if at_market else stop,
            "quantity": fmt(self._contracts_to_base(inst, _positive(item.get("sz"), "sz"))),
            "triggerPrice": fmt(
                _positive(trigger, f"{'trigger' if kind == 'trigger' else 'sl'}Px")
            ),
            "reduceOnly": "true" if reduce_only else "false",
            "positionSide": position_side,
        }
        if not at_market:
            params["price"] = fmt(_positive(price, "orderPx"))
        client_id = self._client_id(item, "algoClOrdId", "clOrdId")
        if client_id is not None:
            params["clientAlgoId"] = client_id
        order = self.sim.engine.place_algo(ctx.acct, params, reduce_only_in_hedge=True)
        self._algo_kinds[order.order_id] = str(kind)
        return [
            {
                "algoId": str(order.order_id),
                "algoClOrdId": _text(item.get("algoClOrdId")),
                "clOrdId": _text(item.get("clOrdId")),
                "tag": _text(item.get("tag")),
                "sCode": "0",
                "sMsg": "",
            }
        ]

    # -- orders: cancels -------------------------------------------------------------------

    def _cancel_target(self, ctx: Ctx, item: Mapping[str, Any]) -> tuple[Order | None, _Inst]:
        inst = self._inst(item.get("instId"))
        order = self._find(ctx, inst, item.get("ordId"), item.get("clOrdId"), conditional=False)
        return (order if order is not None and order.is_open else None), inst

    @staticmethod
    def _cancelled(order: Order, item: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "clOrdId": _text(item.get("clOrdId")) or order.client_order_id,
            "ordId": str(order.order_id),
            "ts": _ms(order.update_ms),
            "sCode": "0",
            "sMsg": "",
        }

    async def _cancel_one(self, ctx: Ctx) -> Any:
        item = self._object(ctx)
        order, _ = self._cancel_target(ctx, item)
        if order is None:
            raise ApiError(-2011, "Unknown order sent.")
        self.sim.cancel_orders(ctx, [order])
        return [self._cancelled(order, item)]

    async def _cancel_batch(self, ctx: Ctx) -> Any:
        """``cancel-batch-orders`` (ccxt's ``cancel_orders``): one cancel call for every
        open order found, so a ``late_fill`` fault takes them all."""
        items = self._array(ctx)
        found: list[tuple[Mapping[str, Any], Order | None, ApiError | None]] = []
        for item in items:
            try:
                order, _ = self._cancel_target(ctx, item)
            except ApiError as err:
                found.append((item, None, err))
                continue
            error = ApiError(-2011, "Unknown order sent.") if order is None else None
            found.append((item, order, error))
        orders = [order for _, order, _ in found if order is not None]
        unique = list({order.order_id: order for order in orders}.values())
        self.sim.cancel_orders(ctx, unique)
        answers = []
        failed = 0
        for item, order, error in found:
            if order is not None:
                answers.append(self._cancelled(order, item))
                continue
            assert error is not None
            code, msg, _ = self._translate(ctx, error)
            answers.append(self._error_item(ctx, item, code, msg))
            failed += 1
        return self._batch(answers, failed)

    async def _cancel_algos(self, ctx: Ctx) -> Any:
        """``cancel-algos`` (ccxt's ``cancel_order``/``cancel_orders`` with ``trigger``)."""
        items = self._array(ctx)
        account = ctx.acct
        answers = []
        failed = 0
        for item in items:
            try:
                inst = self._inst(item.get("instId"))
                algo_id = item.get("algoId")
                if not algo_id:
                    raise _empty_param("algoId")
                order = account.algo_orders.get(int(algo_id)) if str(algo_id).isdigit() else None
                if order is None or not order.is_open or order.symbol != inst.market.symbol:
                    raise ApiError(-2011, "Unknown order sent.")
            except ApiError as err:
                code, msg, _ = self._translate(ctx, err)
                answers.append(self._error_item(ctx, item, code, msg))
                failed += 1
                continue
            self.sim.engine.cancel(account, order)
            answers.append({"algoId": str(order.order_id), "sCode": "0", "sMsg": ""})
        return self._batch(answers, failed)

    # -- the dead-man's switch -------------------------------------------------------------

    async def _cancel_all_after(self, ctx: Ctx) -> Any:
        """OKX's dead-man's switch: (re)arm, or with ``timeOut`` 0 disarm, one countdown for
        the account's regular orders of every instrument (swap and spot books alike)."""
        item = self._object(ctx)
        value = item.get("timeOut")
        if value is None or value == "":
            raise _empty_param("timeOut")
        text = str(value)
        if isinstance(value, bool) or not text.isdigit():
            raise _param_error("timeOut")
        seconds = int(text)
        if seconds and not self.cancel_after_min_s <= seconds <= _MAX_CANCEL_AFTER_S:
            raise _param_error("timeOut")
        name = ctx.acct.name
        for venue in _OKX_VENUES:
            self.sim.arm_switch(name, self.name, venue, None, seconds * 1000)
        now = self.sim.now_ms()
        return [
            {
                "triggerTime": _ms(now + seconds * 1000) if seconds else "0",
                "tag": _text(item.get("tag")),
                "ts": _ms(now),
            }
        ]

"""The Bybit v5 family: USDT perpetuals (``category=linear``) and spot under ``/v5``.

What is modelled, for a unified trading account (UTA 2.0) in one-way or hedge position mode:

* **Markets** (``GET /v5/market/instruments-info``): the engine's USD-M markets as
  ``LinearPerpetual`` instruments and its spot markets, with the filters ccxt turns into
  precision and limits (``qtyStep``/``basePrecision``, ``tickSize``, minimums). ``inverse`` and
  ``option`` are listed empty (ccxt's default ``load_markets`` asks for both), and so is a
  ``status=PreLaunch`` query. ``GET /v5/market/time`` is the server clock.
* **Account** (signed): ``/v5/asset/coin/query-info`` (the currencies ccxt loads with keys
  set), ``/v5/user/query-api`` and ``/v5/account/info`` (what ccxt's ``is_unified_enabled``
  reads: ``uta=1``, ``unifiedMarginStatus=5``), ``/v5/account/wallet-balance`` with
  ``accountType=UNIFIED`` only.
* **The unified wallet** is derived from the engine's account: every spot asset with a
  balance is a coin whose ``walletBalance`` is spot free plus locked and whose ``locked`` is
  what resting spot orders hold; USDT adds the futures wallet (seeded USDT plus realized PnL)
  to its spot amount, and carries the linear positions' ``unrealisedPnl``, ``totalPositionIM``
  (notional at the mark / leverage) and ``totalOrderIM`` (resting opening orders / leverage).
  ``availableToWithdraw`` is ``""`` as on UTA 2.0 (deprecated there), so ccxt computes
  ``free = walletBalance - locked - totalPositionIM - totalOrderIM``: the spot coins' ``free``
  is the engine's free balance. COIN-M wallets are not part of it (inverse is not modelled).
* **Positions** (``/v5/position/list``, ``category=linear``): in one-way mode one row per
  symbol, ``positionIdx`` 0; in hedge mode (both-sides mode, ``POST /v5/position/switch-mode``
  ``mode`` 3, or :meth:`~ess.sim.server.ExchangeSimulator.set_hedge_mode`) one row per side,
  ``positionIdx`` 1 (the long side, ``side`` ``Buy``) and 2 (the short side, ``Sell``), ``size``
  positive in both. Querying by ``settleCoin`` lists open positions only; by ``symbol`` the
  row (each side's, in hedge mode) is there even when flat (``side`` ``""``).
* **Position mode**: ``POST /v5/position/switch-mode`` (ccxt's ``set_position_mode``),
  ``category=linear``, ``mode`` 0 (merged single) or 3 (both sides), with ``coin`` or
  ``symbol``; refused with 110024 while a position is open, 110028 while an order is, 110025
  when nothing changes. The simulator keeps one mode per account, for every symbol and every
  family (Bybit keeps it per coin or symbol). Linear orders must carry the ``positionIdx`` of the
  mode (0 or none one-way, 1 or 2 in hedge mode; 10001 "position idx not match position mode"
  otherwise). In hedge mode ``positionIdx`` 1 acts on the long side and 2 on the short side: Buy
  on 1 and Sell on 2 open, Sell on 1 and Buy on 2 close, refused with 110017 when the side is
  flat and clipped to its size (a close never opens the other side). ``reduceOnly`` is accepted
  in hedge mode (Sell + ``positionIdx`` 1 + ``reduceOnly`` closes the long; an opening one is
  110017), which is also what ccxt's ``{'hedged': True, 'reduceOnly': True}`` sends, minus the
  ``reduceOnly``.
* **Orders**: ``/v5/order/create`` (market and limit, ``reduceOnly``, ``orderLinkId``,
  ``timeInForce``; on linear a ``triggerPrice`` with ``triggerDirection`` makes a conditional
  order, which rests untriggered in the engine's conditional (algo) book), ``/v5/order/cancel``,
  ``/v5/order/cancel-all``, ``/v5/order/cancel-batch``, ``/v5/order/realtime`` (open orders,
  one order by ``orderId``/``orderLinkId`` whatever its status, ``openOnly=1`` for closed ones).
  ``orderFilter`` picks the book: ``Order`` the regular one, ``StopOrder`` and ``tpslOrder`` the
  conditional one. Without it a UTA **reads every kind** (both books) on linear and spot, and
  ``cancel-all`` **cancels every kind on linear** but only regular orders on spot, as Bybit
  documents. Spot market orders are sized in ``marketUnit`` (``baseCoin``, or ``quoteCoin``,
  Bybit's default for a market buy); spot ignores ``reduceOnly``; spot conditional and TP/SL
  orders and attached TP/SL are refused (not modelled). Lists page like Bybit's: default 20
  rows, at most 50 (200 for positions), with an opaque ``nextPageCursor``.
* **The dead-man's switch** (``POST /v5/order/disconnected-cancel-all``, ccxt's
  ``cancel_all_orders_after``): ``timeWindow`` in seconds (3..300; 0 disarms) per ``product``
  (``DERIVATIVES``, ``SPOT``; ``OPTIONS``, Bybit's default, is accepted and covers nothing).
  Bybit starts that window when the account's private websocket disconnects; the simulator has
  no websockets and runs it as a countdown re-armed by each call
  (:meth:`~ess.sim.server.ExchangeSimulator.arm_switch`), cancelling regular orders only.
* **Signing**: ``X-BAPI-API-KEY`` (unknown key: 10003), ``X-BAPI-TIMESTAMP`` within
  ``X-BAPI-RECV-WINDOW`` (default 5000) of the server clock, ``server - window <= t < server +
  1000`` (else 10002), ``X-BAPI-SIGN`` = hex HMAC-SHA256 of timestamp + key + recv window +
  the raw query string (GET) or the raw JSON body (POST) (else 10004). The 10004 answer leaves
  out the signed string Bybit echoes (it contains the key).
* **Answers** are ``{"retCode", "retMsg", "result", "retExtInfo", "time"}``; errors are HTTP 200
  with a non-zero ``retCode`` (Bybit's HTTP-code table lists 401 for key, signature and
  timestamp failures; ccxt reads ``retCode`` first either way), except the IP limit and IP ban
  (HTTP 403, a non-JSON body: ccxt raises ``RateLimitExceeded``) and the system-level
  protection of the ``http429`` fault (HTTP 429). The engine's (Binance's) codes are
  translated: -2022 -> 110017 (reduce-only would open or grow: ccxt ``InvalidOrder``),
  -2011/-2013 -> 110001 (linear) / 170213 (spot) (``OrderNotFound``), -2015 -> 10003, -1022 ->
  10004, -1021 -> 10002, -1015 -> 10006, insufficient spot balance -> 170131, duplicate
  ``orderLinkId`` -> 110072 / 170141, -1000 -> 10016, anything else -> 10001.
* **Rate limits**: the IP limit, 600 requests per 5 s, is the limiter's request budget (every
  route weighs 1); over it is HTTP 403. The per-UID limit of ``/v5/order/create`` (10/s linear,
  20/s spot) is the order budget; over it is 10006 "Too many visits!" with HTTP 200. Every
  signed answer carries ``X-Bapi-Limit``, ``X-Bapi-Limit-Status`` (what is left) and
  ``X-Bapi-Limit-Reset-Timestamp`` for the order budget on ``/v5/order/create`` and for the
  IP budget elsewhere. Not modelled: the other per-endpoint UID limits, the 10-minute IP ban
  (configure ``ban_after``/``ban_s``), and one IP budget across books (the limiter counts linear
  and spot requests apart; requests without a category count as linear).

Not modelled, by choice: inverse and option trading, margin trading
(``isLeverage=1``), TP/SL attached to orders, amending, order history beyond the engine's books.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl

from aiohttp import web

from ess.sim.book import ZERO, Account, ApiError, Order, Position
from ess.sim.families.base import Ctx, Family, Handler, Route
from ess.sim.faults import FaultKind
from ess.sim.markets import Market, Venue, fmt
from ess.sim.ratelimit import RateLimits

__all__ = ["BybitFamily"]

#: Bybit's categories and the engine book each one trades (``None``: listed, nothing in it).
CATEGORIES: Final[Mapping[str, Venue | None]] = {
    "linear": Venue.FUTURES,
    "spot": Venue.SPOT,
    "inverse": None,
    "option": None,
}
#: ``orderFilter`` values that select the conditional book (the rest: the regular one).
_CONDITIONAL_FILTERS: Final = frozenset({"StopOrder", "tpslOrder"})
_ORDER_FILTERS: Final = frozenset({"Order", *_CONDITIONAL_FILTERS})
#: The DCP products and the book each one covers.
_PRODUCTS: Final[Mapping[str, Venue | None]] = {
    "DERIVATIVES": Venue.FUTURES,
    "SPOT": Venue.SPOT,
    "OPTIONS": None,
}
_DCP_WINDOW_S: Final = (3, 300)
#: Bybit's ``timeInForce`` values and the engine's.
_TIF_IN: Final[Mapping[str, str]] = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "PostOnly": "GTX"}
_TIF_OUT: Final[Mapping[str, str]] = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "GTX": "PostOnly"}
_MARKET_TYPES: Final = frozenset(
    {"MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)
#: Page sizes: (default, most) rows per page.
_ORDER_PAGE: Final = (20, 50)
_POSITION_PAGE: Final = (20, 200)
_BATCH_MAX: Final = 20
_LINK_ID_MAX: Final = 36
_RECV_WINDOW_DEFAULT: Final = "5000"
#: ``positionIdx`` -> the engine's position side, and back.
_SIDE_BY_IDX: Final[Mapping[str, str]] = {"0": "BOTH", "1": "LONG", "2": "SHORT"}
_IDX_BY_SIDE: Final[Mapping[str, int]] = {"BOTH": 0, "LONG": 1, "SHORT": 2}
#: ``switch-mode`` modes: 0 merged single (one-way), 3 both sides (hedge).
_MODES: Final[Mapping[str, bool]] = {"0": False, "3": True}

#: What a fault of each "instead of the exchange" kind answers. ``native`` ones are already
#: Bybit's; the others are the engine's codes, translated by :meth:`BybitFamily.render_error`
#: like any engine error (an unknown order reads 110001 on linear, 170213 on spot).
CANNED: Final[Mapping[FaultKind, ApiError]] = {
    FaultKind.HTTP_429: ApiError(10006, "System level frequency protection.", 429, native=True),
    FaultKind.HTTP_418: ApiError(10018, "access too frequent", 403, native=True),
    FaultKind.RATE_LIMIT_CODE: ApiError(10006, "Too many visits!", 200, native=True),
    FaultKind.INVALID_KEY: ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 200),
    FaultKind.UNKNOWN_ORDER: ApiError(-2011, "Unknown order sent.", 200),
    FaultKind.REDUCE_ONLY_REJECTED: ApiError(-2022, "ReduceOnly Order is rejected.", 200),
}

#: HTTP statuses whose answer is a gateway's, not the API's: a non-JSON-object body (ccxt
#: then classifies by status) and no rate-limit headers.
_GATEWAY_STATUSES: Final = frozenset({403, 429})


def _fail(code: int, msg: str) -> ApiError:
    """An error in Bybit's own codes (HTTP 200, passed through untranslated)."""
    return ApiError(code, msg, 200, native=True)


def _params_error(msg: str) -> ApiError:
    return _fail(10001, msg)


def _text(value: Any) -> str:
    """A JSON body value as the flattened text the request log and faults match on."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _decimal(name: str, text: str | None, *, required: bool = True) -> Decimal | None:
    """A positive decimal parameter (``None`` when absent and not ``required``)."""
    if text is None or text == "":
        if required:
            raise _params_error(f"params error: {name} is empty")
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _params_error(f"params error: {name} invalid") from None
    if not value.is_finite() or value <= 0:
        raise _params_error(f"params error: {name} invalid")
    return value


def _ms(value: int) -> str:
    return str(value)


@dataclass(frozen=True)
class _Answer:
    """A successful answer: ``result``, and the ``retMsg``/``retExtInfo`` that go with it."""

    result: Any
    ret_msg: str = "OK"
    ext: Any = field(default_factory=dict)


@dataclass
class _Extra:
    """What Bybit reports about an order that the engine does not keep."""

    trigger_direction: int = 0
    market_unit: str = ""
    #: A spot market order sized in the quote coin: the quote amount asked for.
    quote_qty: Decimal | None = None
    time_in_force: str | None = None


class BybitFamily(Family):
    """Bybit v5 (linear perpetuals and spot, unified account); see the module docstring."""

    name: ClassVar[str] = "bybit"
    mangled_body: ClassVar[str] = (
        '{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[{"symbol":"BTCUSDT"'
    )
    #: Bybit's published limits: 600 requests per 5 s per IP; ``/v5/order/create`` 10/s per
    #: UID on linear and 20/s on spot. The IP ban (10 minutes) is off by default.
    default_limits: ClassVar[Mapping[Venue, RateLimits]] = {
        Venue.FUTURES: RateLimits(
            weight_per_window=600,
            weight_window_s=5.0,
            orders_per_10s=10,
            orders_10s_window_s=1.0,
            orders_per_minute=None,
            ban_s=600.0,
        ),
        Venue.SPOT: RateLimits(
            weight_per_window=600,
            weight_window_s=5.0,
            orders_per_10s=20,
            orders_10s_window_s=1.0,
            orders_per_minute=None,
            ban_s=600.0,
        ),
    }
    #: Bybit counts requests: every route weighs 1.
    default_weights: ClassVar[Mapping[tuple[str, str], tuple[int, int]]] = {}
    order_endpoints: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {("POST", "/v5/order/create")}
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._extras: dict[int, _Extra] = {}

    def owns(self, path: str) -> bool:
        return path.startswith("/v5/")

    def venue_of(self, ctx: Ctx) -> Venue | None:
        """The book a request counts against: ``category=spot`` (or DCP ``product=SPOT``) is
        spot, everything else (linear, and requests without a category) USD-M."""
        if ctx.params.get("category") == "spot" or ctx.params.get("product") == "SPOT":
            return Venue.SPOT
        return Venue.FUTURES

    async def parse(self, request: web.Request, ctx: Ctx) -> None:
        params = dict(parse_qsl(ctx.raw_query, keep_blank_values=True))
        if ctx.raw_body.strip():
            try:
                body = json.loads(ctx.raw_body)
            except ValueError:
                body = None
            if isinstance(body, dict):
                ctx.body = body
                params.update({str(key): _text(value) for key, value in body.items()})
        ctx.params = params
        ctx.api_key = request.headers.get("X-BAPI-API-KEY")
        ctx.signature = request.headers.get("X-BAPI-SIGN")

    def authenticate(self, ctx: Ctx) -> Account:
        sim = self.sim
        api_key = ctx.api_key or ""
        account = sim.account_by_key(api_key) if api_key else None
        if account is None:
            raise ApiError(-2015, "API key is invalid.", 200)
        stamp_text = ctx.headers.get("X-BAPI-TIMESTAMP", "")
        window_header = ctx.headers.get("X-BAPI-RECV-WINDOW", "")
        window_text = window_header or _RECV_WINDOW_DEFAULT
        if sim.check_recv_window:
            now = sim.now_ms()
            expired = ApiError(
                -1021,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{stamp_text}],server_timestamp[{now}],"
                f"recv_window[{window_text}]",
                200,
            )
            try:
                stamp, window = int(stamp_text), int(window_text)
            except ValueError:
                raise expired from None
            if not now - window <= stamp < now + 1000:
                raise expired
        if sim.verify_signatures:
            signed = ctx.raw_query if ctx.method == "GET" else ctx.raw_body
            payload = stamp_text + api_key + window_header + signed
            expected = hmac.new(
                account.secret.encode(), payload.encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(expected, (ctx.signature or "").lower()):
                raise ApiError(
                    -1022, "error sign! origin_string[<timestamp><key><recv_window><params>]", 200
                )
        return account

    def render(self, ctx: Ctx, payload: Any) -> tuple[int, Any]:
        answer = payload if isinstance(payload, _Answer) else _Answer(payload)
        return 200, {
            "retCode": 0,
            "retMsg": answer.ret_msg,
            "result": answer.result,
            "retExtInfo": answer.ext,
            "time": self.sim.now_ms(),
        }

    def render_error(self, ctx: Ctx, err: ApiError) -> tuple[int, Any]:
        status, code, msg = self._translate(ctx, err)
        if status in _GATEWAY_STATUSES:
            return status, msg  # a JSON string, not an object: ccxt goes by the status
        return status, {
            "retCode": code,
            "retMsg": msg,
            "result": {},
            "retExtInfo": {},
            "time": self.sim.now_ms(),
        }

    def _translate(self, ctx: Ctx, err: ApiError) -> tuple[int, int, str]:
        """``(HTTP status, retCode, retMsg)`` of an error in the engine's or Bybit's codes."""
        if err.native:
            return err.status, err.code, err.msg
        code = err.code
        spot = ctx.venue is Venue.SPOT
        if err.status == 418 or code == -1003:  # the IP limit, or its ban
            return 403, 10018, "access too frequent"
        by_code: dict[int, tuple[int, str]] = {
            -1015: (10006, "Too many visits!"),
            -2014: (10003, "API key is invalid."),
            -2015: (10003, "API key is invalid."),
            -1022: (10004, err.msg),
            -1021: (10002, err.msg),
            -1121: (10001, "Not supported symbols"),
            -4116: (110072, "OrderLinkedID is duplicate"),
            -1000: (10016, "Internal System Error."),
            -1013: (170137, "Order quantity has too many decimals or is below the minimum."),
        }
        if code in by_code:
            ret_code, msg = by_code[code]
            return 200, ret_code, msg
        if code == -2022:
            return 200, 110017, self._reduce_only_message(ctx)
        if code in {-2011, -2013}:
            if spot:
                return 200, 170213, "Order does not exist."
            return 200, 110001, "order not exists or too late to cancel"
        if code == -2010:
            if "insufficient" in err.msg.lower():
                return 200, 170131, "Insufficient balance."
            return 200, 170141, "Duplicate clientOrderId."
        return 200, 10001, f"params error: {err.msg}"

    def _reduce_only_message(self, ctx: Ctx) -> str:
        symbol = ctx.params.get("symbol", "")
        side = _SIDE_BY_IDX.get(ctx.params.get("positionIdx") or "0", "BOTH")
        if ctx.account is not None and ctx.account.side_qty(symbol, side) != 0:
            return "reduce-only rule not satisfied"
        return "current position is zero, cannot fix reduce-only order qty"

    def canned(self, kind: FaultKind) -> ApiError:
        return CANNED[kind]

    def headers(self, ctx: Ctx, *, refused: ApiError | None = None) -> dict[str, str]:
        """Bybit's per-UID usage headers on signed answers: the order budget on
        ``/v5/order/create``, the IP request budget elsewhere (none on a gateway's 403/429)."""
        account = ctx.entry.account
        if account is None or ctx.entry.status in _GATEWAY_STATUSES:
            return {}
        venue = ctx.venue or Venue.FUTURES
        limits = self.limiter.limits(venue)
        counters = self.limiter.counters(venue, account)
        if (ctx.method, ctx.path) in self.order_endpoints and limits.orders_per_10s is not None:
            limit, used, window_s = (
                limits.orders_per_10s,
                counters.orders_10s,
                limits.orders_10s_window_s,
            )
        elif limits.weight_per_window is not None:
            limit, used, window_s = (
                limits.weight_per_window,
                counters.used_weight,
                limits.weight_window_s,
            )
        else:
            return {}
        return {
            "X-Bapi-Limit": str(limit),
            "X-Bapi-Limit-Status": str(max(0, limit - used)),
            "X-Bapi-Limit-Reset-Timestamp": str(self.sim.now_ms() + int(window_s * 1000)),
        }

    # -- routes ----------------------------------------------------------------------------

    def build_routes(self) -> dict[tuple[str, str], Route]:
        public: dict[tuple[str, str], Handler] = {
            ("GET", "/v5/market/time"): self._time,
            ("GET", "/v5/market/instruments-info"): self._instruments,
        }
        signed: dict[tuple[str, str], Handler] = {
            ("GET", "/v5/asset/coin/query-info"): self._coins,
            ("GET", "/v5/user/query-api"): self._query_api,
            ("GET", "/v5/account/info"): self._account_info,
            ("GET", "/v5/account/wallet-balance"): self._wallet_balance,
            ("GET", "/v5/position/list"): self._positions,
            ("POST", "/v5/position/switch-mode"): self._switch_mode,
            ("GET", "/v5/order/realtime"): self._realtime,
            ("POST", "/v5/order/create"): self._create,
            ("POST", "/v5/order/cancel"): self._cancel,
            ("POST", "/v5/order/cancel-all"): self._cancel_all,
            ("POST", "/v5/order/cancel-batch"): self._cancel_batch,
            ("POST", "/v5/order/disconnected-cancel-all"): self._disconnected_cancel_all,
        }
        routes = {key: Route(handler, signed=False) for key, handler in public.items()}
        routes |= {key: Route(handler, signed=True) for key, handler in signed.items()}
        return routes

    # -- shared helpers --------------------------------------------------------------------

    @staticmethod
    def _json_body(ctx: Ctx) -> Mapping[str, Any]:
        if not isinstance(ctx.body, dict):
            raise _params_error("params error: the request body must be a JSON object")
        return ctx.body

    @staticmethod
    def _category(ctx: Ctx, allowed: Iterable[str] = CATEGORIES) -> str:
        category = ctx.params.get("category", "")
        if category not in set(allowed):
            raise _params_error("Illegal category")
        return category

    def _market(self, venue: Venue | None, symbol: str | None) -> Market:
        if not symbol:
            raise _params_error("params error: symbol is empty")
        market = self.sim.markets_by_venue[venue].get(symbol) if venue is not None else None
        if market is None:
            raise ApiError(-1121, "Invalid symbol.", 200)
        return market

    @staticmethod
    def _scope(ctx: Ctx, category: str) -> tuple[str | None, str | None, str | None]:
        """``(symbol, baseCoin, settleCoin)`` of a list or cancel-all request; linear needs
        one of them."""
        symbol = ctx.params.get("symbol") or None
        base = ctx.params.get("baseCoin") or None
        settle = ctx.params.get("settleCoin") or None
        if category == "linear" and symbol is None and base is None and settle is None:
            raise _params_error(
                "Missing some parameters that must be filled in, symbol or settleCoin or baseCoin"
            )
        return symbol, base, settle

    def _in_scope(
        self, order_or_symbol: str, venue: Venue, scope: tuple[str | None, str | None, str | None]
    ) -> bool:
        symbol, base, settle = scope
        market = self.sim.markets_by_venue[venue].get(order_or_symbol)
        if market is None:
            return False
        return (
            (symbol is None or market.symbol == symbol)
            and (base is None or market.base == base)
            and (settle is None or market.quote == settle)
        )

    @staticmethod
    def _page(
        ctx: Ctx, rows: list[dict[str, Any]], sizes: tuple[int, int]
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of ``rows`` and the cursor of the next (``""``: none)."""
        default, most = sizes
        try:
            limit = int(ctx.params.get("limit") or default)
            cursor = ctx.params.get("cursor") or ""
            start = int(cursor.removeprefix("cursor-")) if cursor else 0
        except ValueError:
            raise _params_error("params error: limit or cursor invalid") from None
        if not 1 <= limit <= most or start < 0:
            raise _params_error("params error: limit or cursor invalid")
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return page, f"cursor-{start + limit}" if more else ""

    # -- public ----------------------------------------------------------------------------

    async def _time(self, ctx: Ctx) -> Any:
        now = self.sim.now_ms()
        return {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}

    async def _instruments(self, ctx: Ctx) -> Any:
        category = self._category(ctx)
        venue = CATEGORIES[category]
        rows: list[dict[str, Any]] = []
        symbol = ctx.params.get("symbol") or None
        base = ctx.params.get("baseCoin") or None
        if venue is not None and ctx.params.get("status", "Trading") == "Trading":
            for market in self.sim.markets_by_venue[venue].values():
                if (symbol is None or market.symbol == symbol) and (
                    base is None or market.base == base
                ):
                    rows.append(_instrument(market))
        return {"category": category, "list": rows, "nextPageCursor": ""}

    # -- account ---------------------------------------------------------------------------

    async def _coins(self, ctx: Ctx) -> Any:
        wanted = ctx.params.get("coin") or None
        coins = sorted(
            {m.base for b in self.sim.markets_by_venue.values() for m in b.values()}
            | {m.quote for b in self.sim.markets_by_venue.values() for m in b.values()}
        )
        rows = [
            {"name": coin, "coin": coin, "remainAmount": "1000000", "chains": []}
            for coin in coins
            if wanted is None or coin == wanted
        ]
        return {"rows": rows}

    async def _query_api(self, ctx: Ctx) -> Any:
        account = ctx.acct
        user_id = int(hashlib.sha256(account.name.encode()).hexdigest()[:7], 16)
        return {
            "id": str(user_id % 100_000),
            "note": "ess-sim",
            "apiKey": account.api_key[:4] + "***",  # Bybit echoes the key; the simulator masks it
            "readOnly": 0,
            "secret": "",
            "permissions": {
                "ContractTrade": ["Order", "Position"],
                "Spot": ["SpotTrade"],
                "Wallet": ["AccountTransfer", "SubMemberTransfer"],
                "Options": ["OptionsTrade"],
                "Derivatives": [],
                "CopyTrading": [],
                "BlockTrade": [],
                "Exchange": [],
                "NFT": [],
                "Affiliate": [],
                "Earn": [],
            },
            "ips": ["*"],
            "type": 1,
            "deadlineDay": 90,
            "expiredAt": "2099-01-01T00:00:00Z",
            "createdAt": "2024-01-01T00:00:00Z",
            "unified": 0,
            "uta": 1,
            "userID": user_id,
            "inviterID": 0,
            "vipLevel": "No VIP",
            "mktMakerLevel": "0",
            "affiliateID": 0,
            "rsaPublicKey": "",
            "isMaster": True,
            "parentUid": "0",
            "kycLevel": "LEVEL_DEFAULT",
            "kycRegion": "",
        }

    async def _account_info(self, ctx: Ctx) -> Any:
        return {
            "marginMode": "REGULAR_MARGIN",
            "updatedTime": _ms(self.sim.now_ms()),
            "unifiedMarginStatus": 5,
            "dcpStatus": "ON",
            "timeWindow": 10,
            "smpGroup": 0,
            "isMasterTrader": False,
            "spotHedgingStatus": "OFF",
        }

    async def _wallet_balance(self, ctx: Ctx) -> Any:
        if ctx.params.get("accountType") != "UNIFIED":
            raise _params_error("accountType only support UNIFIED.")
        wanted = {c for c in (ctx.params.get("coin") or "").split(",") if c}
        account = ctx.acct
        marks = self.sim.marks
        linear = self.sim.markets_by_venue[Venue.FUTURES]
        upnl = position_im = position_mm = order_im = ZERO
        for position in account.all_positions():
            symbol = position.symbol
            if symbol not in linear:
                continue
            mark = marks[(Venue.FUTURES, symbol)]
            upnl += (mark - position.entry_price) * position.qty
            notional = abs(position.qty) * mark
            position_im += notional / account.leverage
            position_mm += notional * Decimal("0.005")
        for order in account.open_orders(Venue.FUTURES):
            if not order.limited:
                price = order.price or marks[(Venue.FUTURES, order.symbol)]
                order_im += order.remaining * price / account.leverage
        assets = {*account.spot_free, *account.spot_locked, "USDT"}
        coins: list[dict[str, Any]] = []
        for asset in sorted(assets):
            free = account.spot_free.get(asset, ZERO)
            locked = account.spot_locked.get(asset, ZERO)
            wallet = free + locked
            coin_upnl = coin_im = coin_mm = coin_order_im = realized = ZERO
            if asset == "USDT":
                wallet += account.futures_wallet
                coin_upnl, coin_im, coin_mm, coin_order_im = (
                    upnl,
                    position_im,
                    position_mm,
                    order_im,
                )
                realized = sum((p.realized_pnl for p in account.all_positions()), ZERO)
            if (wanted and asset not in wanted) or (not wallet and asset != "USDT"):
                continue
            usd = wallet * self._usd_price(asset)
            coins.append(
                {
                    "coin": asset,
                    "equity": fmt(wallet + coin_upnl),
                    "usdValue": fmt(usd),
                    "walletBalance": fmt(wallet),
                    "locked": fmt(locked),
                    "spotHedgingQty": "0",
                    "borrowAmount": "0",
                    "accruedInterest": "0",
                    "totalOrderIM": fmt(coin_order_im),
                    "totalPositionIM": fmt(coin_im),
                    "totalPositionMM": fmt(coin_mm),
                    "unrealisedPnl": fmt(coin_upnl),
                    "cumRealisedPnl": fmt(realized),
                    "bonus": "0",
                    "marginCollateral": True,
                    "collateralSwitch": True,
                    "availableToWithdraw": "",
                    "availableToBorrow": "",
                }
            )
        equity = sum((Decimal(c["usdValue"]) for c in coins), ZERO) + upnl
        total_wallet = sum((Decimal(c["usdValue"]) for c in coins), ZERO)
        initial = position_im + order_im
        row = {
            "accountType": "UNIFIED",
            "accountLTV": "0",
            "accountIMRate": fmt(initial / equity) if equity > 0 else "0",
            "accountMMRate": fmt(position_mm / equity) if equity > 0 else "0",
            "totalEquity": fmt(equity),
            "totalWalletBalance": fmt(total_wallet),
            "totalMarginBalance": fmt(equity),
            "totalAvailableBalance": fmt(equity - initial),
            "totalPerpUPL": fmt(upnl),
            "totalInitialMargin": fmt(initial),
            "totalMaintenanceMargin": fmt(position_mm),
            "coin": coins,
        }
        return {"list": [row]}

    def _usd_price(self, asset: str) -> Decimal:
        if asset in {"USDT", "USDC", "USD"}:
            return Decimal(1)
        mark = self.sim.marks.get((Venue.SPOT, f"{asset}USDT"))
        return mark if mark is not None else ZERO

    # -- positions -------------------------------------------------------------------------

    async def _positions(self, ctx: Ctx) -> Any:
        category = self._category(ctx, ("linear", "inverse", "option"))
        rows: list[dict[str, Any]] = []
        if category == "linear":
            scope = self._scope(ctx, category)
            symbol = scope[0]
            if symbol is not None:
                self._market(Venue.FUTURES, symbol)
            account = ctx.acct
            sides = ("LONG", "SHORT") if account.hedge_mode else ("BOTH",)
            for market in self.sim.markets_by_venue[Venue.FUTURES].values():
                if not self._in_scope(market.symbol, Venue.FUTURES, scope):
                    continue
                for side in sides:
                    position = account.position(market.symbol, side)
                    if position is None or not position.qty:
                        if symbol is None:
                            continue  # by settle or base coin: open positions only
                        position = Position(market.symbol, side=side)
                    rows.append(self._position_row(account, market, position))
        page, cursor = self._page(ctx, rows, _POSITION_PAGE)
        return {"category": category, "list": page, "nextPageCursor": cursor}

    async def _switch_mode(self, ctx: Ctx) -> Any:
        """``POST /v5/position/switch-mode`` (ccxt's ``set_position_mode``): ``mode`` 0 one-way,
        3 hedge, for the account (see the module docstring)."""
        self._json_body(ctx)
        category = self._category(ctx, ("linear", "inverse"))
        if category != "linear":
            raise _params_error("params error: inverse is not modelled by the simulator")
        params = ctx.params
        symbol = params.get("symbol") or None
        if symbol is not None:
            self._market(Venue.FUTURES, symbol)
        elif not params.get("coin"):
            raise _params_error("params error: symbol or coin is required")
        wanted = _MODES.get(params.get("mode", ""))
        if wanted is None:
            raise _params_error("params error: mode invalid")
        account = ctx.acct
        if wanted == account.hedge_mode:
            raise _fail(110025, "Position mode is not modified")
        blocker = account.mode_switch_blocker()
        if blocker == "position":
            raise _fail(
                110024, "You have an existing position, so position mode cannot be switched"
            )
        if blocker == "orders":
            raise _fail(110028, "Open orders exist, so you cannot change position mode")
        account.hedge_mode = wanted
        return {}

    def _position_row(self, account: Account, market: Market, position: Position) -> Any:
        mark = self.sim.marks[(Venue.FUTURES, market.symbol)]
        size = abs(position.qty)
        value = size * position.entry_price
        im = size * mark / account.leverage
        side = "Buy" if position.qty > 0 else "Sell" if position.qty < 0 else ""
        created = position.update_ms or self.sim.now_ms()
        return {
            "positionIdx": _IDX_BY_SIDE[position.side],
            "riskId": 1,
            "riskLimitValue": "2000000",
            "symbol": market.symbol,
            "side": side,
            "size": fmt(size),
            "avgPrice": fmt(position.entry_price),
            "positionValue": fmt(value),
            "tradeMode": 0,
            "positionStatus": "Normal",
            "autoAddMargin": 0,
            "adlRankIndicator": 2 if size else 0,
            "leverage": str(account.leverage),
            "positionBalance": fmt(im),
            "markPrice": fmt(mark),
            "liqPrice": "",
            "bustPrice": "",
            "positionMM": fmt(size * mark * Decimal("0.005")),
            "positionIM": fmt(im),
            "tpslMode": "Full",
            "takeProfit": "0",
            "stopLoss": "0",
            "trailingStop": "0",
            "unrealisedPnl": fmt((mark - position.entry_price) * position.qty),
            "curRealisedPnl": fmt(position.realized_pnl),
            "cumRealisedPnl": fmt(position.realized_pnl),
            "seq": position.update_ms,
            "isReduceOnly": False,
            "mmrSysUpdatedTime": "",
            "leverageSysUpdatedTime": "",
            "sessionAvgPrice": "",
            "createdTime": _ms(created),
            "updatedTime": _ms(created),
        }

    # -- orders: reads ---------------------------------------------------------------------

    def _books(self, category: str, order_filter: str | None, *, cancel: bool) -> tuple[bool, ...]:
        """Which books (``conditional`` flags) an ``orderFilter`` selects."""
        if order_filter is None:
            if category == "spot" and cancel:
                return (False,)  # spot cancel-all: regular orders unless told otherwise
            return (False, True)  # a UTA reads (and linear cancels) every kind
        if order_filter not in _ORDER_FILTERS:
            raise _fail(170202, "Invalid orderFilter parameter.")
        return (order_filter in _CONDITIONAL_FILTERS,)

    def _orders_of(self, account: Account, venue: Venue, books: Iterable[bool]) -> list[Order]:
        found: list[Order] = []
        for conditional in books:
            book = account.algo_orders if conditional else account.orders
            found.extend(order for order in book.values() if order.venue is venue)
        return found

    async def _realtime(self, ctx: Ctx) -> Any:
        category = self._category(ctx)
        venue = CATEGORIES[category]
        rows: list[dict[str, Any]] = []
        if venue is not None:
            scope = self._scope(ctx, category)
            if scope[0] is not None:
                self._market(venue, scope[0])
            books = self._books(category, ctx.params.get("orderFilter") or None, cancel=False)
            order_id = ctx.params.get("orderId") or None
            link_id = ctx.params.get("orderLinkId") or None
            closed = ctx.params.get("openOnly") == "1"
            orders = []
            for order in self._orders_of(ctx.acct, venue, books):
                if not self._in_scope(order.symbol, venue, scope):
                    continue
                if order_id is not None or link_id is not None:
                    if order_id is not None and str(order.order_id) != order_id:
                        continue
                    if link_id is not None and order.client_order_id != link_id:
                        continue
                elif order.is_open == closed:
                    continue
                orders.append(order)
            orders.sort(key=lambda o: (o.time_ms, o.order_id), reverse=True)
            rows = [self._order_row(order) for order in orders]
        page, cursor = self._page(ctx, rows, _ORDER_PAGE)
        return {"category": category, "list": page, "nextPageCursor": cursor}

    def _order_row(self, order: Order) -> dict[str, Any]:
        spot = order.venue is Venue.SPOT
        extra = self._extras.get(order.order_id, _Extra())
        market_type = order.type in _MARKET_TYPES
        executed = order.executed_qty
        status = self._status(order)
        is_open = order.is_open
        if order.conditional:
            direction = extra.trigger_direction or (
                1 if order.trigger_price > self.sim.marks[(order.venue, order.symbol)] else 2
            )
            stop_type = "TrailingStop" if order.type == "TRAILING_STOP_MARKET" else "Stop"
            trigger = fmt(order.trigger_price)
            trigger_by = "LastPrice"
        else:
            direction, stop_type, trigger, trigger_by = 0, "", "", ""
        if market_type:
            time_in_force = "IOC"
        else:
            time_in_force = extra.time_in_force or _TIF_OUT.get(order.time_in_force, "GTC")
        qty = fmt(extra.quote_qty) if extra.quote_qty is not None else fmt(order.orig_qty)
        row: dict[str, Any] = {
            "symbol": order.symbol,
            "orderType": "Market" if market_type else "Limit",
            "orderLinkId": order.client_order_id,
            "slLimitPrice": "0",
            "orderId": str(order.order_id),
            "cancelType": "CancelByUser" if status in {"Cancelled", "Deactivated"} else "UNKNOWN",
            "avgPrice": fmt(order.avg_price) if executed else "",
            "stopOrderType": stop_type,
            "lastPriceOnCreated": "",
            "orderStatus": status,
            "createType": "CreateByUser",
            "takeProfit": "",
            "cumExecValue": fmt(order.cum_quote),
            "smpType": "None",
            "triggerDirection": direction,
            "blockTradeId": "",
            "rejectReason": "EC_NoError",
            "isLeverage": "0" if spot else "",
            "price": fmt(order.price),
            "orderIv": "",
            "createdTime": _ms(order.time_ms),
            "tpTriggerBy": "",
            "positionIdx": _IDX_BY_SIDE[order.position_side],
            "timeInForce": time_in_force,
            "leavesValue": fmt(order.remaining * order.price) if is_open else "0",
            "updatedTime": _ms(order.update_ms or order.time_ms),
            "side": "Buy" if order.side == "BUY" else "Sell",
            "smpGroup": 0,
            "triggerPrice": trigger,
            "tpLimitPrice": "0",
            "cumExecFee": "0",
            "slTriggerBy": "",
            "leavesQty": fmt(order.remaining) if is_open else "0",
            "closeOnTrigger": False,
            "placeType": "",
            "cumExecQty": fmt(executed),
            "reduceOnly": order.reduce_only,
            "qty": qty,
            "stopLoss": "",
            "smpOrderId": "",
            "triggerBy": trigger_by,
        }
        if spot:
            row["marketUnit"] = extra.market_unit
        else:
            # ccxt tells contract orders from spot ones by this key when no market is given.
            row["tpslMode"] = ""
        return row

    @staticmethod
    def _status(order: Order) -> str:
        status = order.public_status
        if order.conditional:
            return {"NEW": "Untriggered", "FILLED": "Filled"}.get(status, "Deactivated")
        if status in {"CANCELED", "EXPIRED"}:
            return "PartiallyFilledCanceled" if order.executed_qty else "Cancelled"
        return {"NEW": "New", "PARTIALLY_FILLED": "PartiallyFilled", "FILLED": "Filled"}.get(
            status, "Cancelled"
        )

    # -- orders: create --------------------------------------------------------------------

    async def _create(self, ctx: Ctx) -> Any:
        body = self._json_body(ctx)
        category = self._category(ctx, ("linear", "spot", "inverse", "option"))
        venue = CATEGORIES[category]
        params = ctx.params
        market = self._market(venue, params.get("symbol"))
        side = {"Buy": "BUY", "Sell": "SELL"}.get(params.get("side", ""))
        if side is None:
            raise _params_error("params error: side invalid")
        order_type = params.get("orderType", "")
        if order_type not in {"Market", "Limit"}:
            raise _params_error("params error: orderType invalid")
        qty = _decimal("qty", params.get("qty"))
        assert qty is not None
        price = _decimal("price", params.get("price"), required=order_type == "Limit")
        tif_in = params.get("timeInForce") or ("IOC" if order_type == "Market" else "GTC")
        if tif_in not in _TIF_IN:
            raise _params_error("params error: timeInForce invalid")
        link_id = params.get("orderLinkId") or None
        if link_id is not None and len(link_id) > _LINK_ID_MAX:
            raise _params_error("params error: orderLinkId invalid")
        for attached in ("takeProfit", "stopLoss", "tpslMode"):
            if params.get(attached):
                raise _params_error(
                    f"params error: {attached} (attached TP/SL) is not modelled by the simulator"
                )
        engine: dict[str, str] = {
            "symbol": market.symbol,
            "side": side,
            "type": order_type.upper(),
        }
        if price is not None and order_type == "Limit":
            engine["price"] = fmt(price)
        if link_id is not None:
            engine["newClientOrderId"] = link_id
        extra = _Extra(time_in_force="PostOnly" if tif_in == "PostOnly" else None)
        fault = self.sim.take_fault(ctx, {FaultKind.PARTIAL_FILL}, exclude=False)
        ratio = fault.fill_ratio if fault else None
        if venue is Venue.SPOT:
            order = self._create_spot(
                ctx, engine=engine, qty=qty, tif_in=tif_in, extra=extra, ratio=ratio
            )
        else:
            order = self._create_linear(
                ctx, body=body, engine=engine, qty=qty, tif_in=tif_in, extra=extra, ratio=ratio
            )
        self._extras[order.order_id] = extra
        return {"orderId": str(order.order_id), "orderLinkId": order.client_order_id}

    def _create_linear(
        self,
        ctx: Ctx,
        *,
        body: Mapping[str, Any],
        engine: dict[str, str],
        qty: Decimal,
        tif_in: str,
        extra: _Extra,
        ratio: Decimal | None,
    ) -> Order:
        params = ctx.params
        side = _SIDE_BY_IDX.get(params.get("positionIdx") or "0")
        if side is None:
            raise _params_error("params error: positionIdx invalid")
        if (side != "BOTH") != ctx.acct.hedge_mode:
            raise _params_error("position idx not match position mode")
        reduce_only = _text(body.get("reduceOnly")).lower() in {"true", "1"}
        engine["quantity"] = fmt(qty)
        engine["reduceOnly"] = "true" if reduce_only else "false"
        engine["positionSide"] = side
        trigger = _decimal("triggerPrice", params.get("triggerPrice"), required=False)
        if trigger is None:
            engine["timeInForce"] = _TIF_IN[tif_in]
            return self.sim.engine.place_futures(
                ctx.acct, engine, fill_ratio=ratio, reduce_only_in_hedge=True
            )
        direction = params.get("triggerDirection", "")
        if direction not in {"1", "2"}:
            raise _params_error("params error: TriggerDirection invalid")
        extra.trigger_direction = int(direction)
        engine |= {
            "algoType": "CONDITIONAL",
            "type": "STOP_MARKET" if engine["type"] == "MARKET" else "STOP",
            "triggerPrice": fmt(trigger),
        }
        if "newClientOrderId" in engine:
            engine["clientAlgoId"] = engine.pop("newClientOrderId")
        return self.sim.engine.place_algo(ctx.acct, engine, reduce_only_in_hedge=True)

    def _create_spot(
        self,
        ctx: Ctx,
        *,
        engine: dict[str, str],
        qty: Decimal,
        tif_in: str,
        extra: _Extra,
        ratio: Decimal | None,
    ) -> Order:
        params = ctx.params
        if params.get("orderFilter", "Order") not in {"", "Order"} or params.get("triggerPrice"):
            raise _fail(170227, "This feature is not supported.")  # spot conditional orders
        if params.get("isLeverage", "0") not in {"", "0"}:
            raise _fail(
                170036,
                "You haven't enabled Cross Margin Trading yet. To do so, please head to the "
                "PC trading site or the Bybit app",
            )
        if engine["type"] == "MARKET":
            unit = params.get("marketUnit") or (
                "quoteCoin" if engine["side"] == "BUY" else "baseCoin"
            )
            if unit not in {"baseCoin", "quoteCoin"}:
                raise _params_error("params error: marketUnit invalid")
            extra.market_unit = params.get("marketUnit", "")
            if unit == "quoteCoin":
                if engine["side"] == "SELL":
                    mark = self.sim.marks[(Venue.SPOT, engine["symbol"])]
                    market = self.sim.markets_by_venue[Venue.SPOT][engine["symbol"]]
                    base_qty = (qty / mark).quantize(market.step_size, rounding=ROUND_DOWN)
                    engine["quantity"] = fmt(base_qty)
                else:
                    engine["quoteOrderQty"] = fmt(qty)
                extra.quote_qty = qty
            else:
                engine["quantity"] = fmt(qty)
        else:
            engine["quantity"] = fmt(qty)
            engine["timeInForce"] = "GTC" if tif_in == "PostOnly" else tif_in
        return self.sim.engine.place_spot(ctx.acct, engine, fill_ratio=ratio)

    # -- orders: cancels -------------------------------------------------------------------

    def _find(
        self,
        account: Account,
        venue: Venue,
        symbol: str,
        *,
        books: Iterable[bool],
        order_id: str | None,
        link_id: str | None,
    ) -> Order | None:
        """The order by id (or client id), an open one first; ``None`` if there is none."""
        if order_id is None and link_id is None:
            raise _params_error("params error: orderId or orderLinkId is required")
        candidates = [
            order
            for order in self._orders_of(account, venue, books)
            if order.symbol == symbol
            and (
                str(order.order_id) == order_id
                if order_id is not None
                else order.client_order_id == link_id
            )
        ]
        candidates.sort(key=lambda o: (o.is_open, o.time_ms), reverse=True)
        return candidates[0] if candidates else None

    def _cancel_now(self, ctx: Ctx, orders: list[Order]) -> None:
        """Cancel ``orders``: regular ones through the simulator (a ``late_fill`` fault may
        turn them into late fills), conditional ones at once."""
        regular = [order for order in orders if not order.conditional]
        self.sim.cancel_orders(ctx, regular)
        for order in orders:
            if order.conditional:
                self.sim.engine.cancel(ctx.acct, order)

    async def _cancel(self, ctx: Ctx) -> Any:
        self._json_body(ctx)
        category = self._category(ctx, ("linear", "spot", "inverse", "option"))
        venue = CATEGORIES[category]
        market = self._market(venue, ctx.params.get("symbol"))
        if venue is Venue.SPOT:
            books = self._books(category, ctx.params.get("orderFilter") or "Order", cancel=True)
        else:
            books = (False, True)  # linear: one id space for both kinds
        order = self._find(
            ctx.acct,
            market.venue,
            market.symbol,
            books=books,
            order_id=ctx.params.get("orderId") or None,
            link_id=ctx.params.get("orderLinkId") or None,
        )
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.", 200)
        self._cancel_now(ctx, [order])
        return {"orderId": str(order.order_id), "orderLinkId": order.client_order_id}

    async def _cancel_all(self, ctx: Ctx) -> Any:
        self._json_body(ctx)
        category = self._category(ctx)
        venue = CATEGORIES[category]
        cancelled: list[Order] = []
        if venue is not None:
            scope = self._scope(ctx, category)
            if scope[0] is not None:
                self._market(venue, scope[0])
            books = self._books(category, ctx.params.get("orderFilter") or None, cancel=True)
            cancelled = [
                order
                for order in self._orders_of(ctx.acct, venue, books)
                if order.is_open and self._in_scope(order.symbol, venue, scope)
            ]
            rows = [
                {"orderId": str(o.order_id), "orderLinkId": o.client_order_id} for o in cancelled
            ]
            self._cancel_now(ctx, cancelled)
        else:
            rows = []
        return {"list": rows, "success": "1"}

    async def _cancel_batch(self, ctx: Ctx) -> Any:
        body = self._json_body(ctx)
        category = self._category(ctx, ("linear", "spot", "option"))
        venue = CATEGORIES[category]
        requests = body.get("request")
        if not isinstance(requests, list) or not requests:
            raise _params_error("params error: request is empty")
        if len(requests) > _BATCH_MAX:
            raise _params_error(f"params error: at most {_BATCH_MAX} orders per batch")
        results: list[dict[str, Any]] = []
        codes: list[dict[str, Any]] = []
        found: list[Order] = []
        books = (False,) if venue is Venue.SPOT else (False, True)
        for item in requests:
            if not isinstance(item, dict):
                raise _params_error("params error: request invalid")
            symbol = _text(item.get("symbol"))
            order_id = _text(item.get("orderId")) or None
            link_id = _text(item.get("orderLinkId")) or None
            market = self._market(venue, symbol)
            order = self._find(
                ctx.acct,
                market.venue,
                market.symbol,
                books=books,
                order_id=order_id,
                link_id=link_id,
            )
            if order is None or not order.is_open or order in found:
                _, code, msg = self._translate(ctx, ApiError(-2011, "Unknown order sent.", 200))
                results.append(
                    {
                        "category": category,
                        "symbol": symbol,
                        "orderId": order_id or "",
                        "orderLinkId": link_id or "",
                    }
                )
                codes.append({"code": code, "msg": msg})
                continue
            found.append(order)
            results.append(
                {
                    "category": category,
                    "symbol": symbol,
                    "orderId": str(order.order_id),
                    "orderLinkId": order.client_order_id,
                }
            )
            codes.append({"code": 0, "msg": "OK"})
        self._cancel_now(ctx, found)
        return _Answer({"list": results}, ext={"list": codes})

    # -- the dead-man's switch -------------------------------------------------------------

    async def _disconnected_cancel_all(self, ctx: Ctx) -> Any:
        """Bybit's DCP: (re)arm, or with ``timeWindow=0`` disarm, a timer that cancels the
        product's open regular orders when it expires (see the module docstring)."""
        self._json_body(ctx)
        product = ctx.params.get("product") or "OPTIONS"
        if product not in _PRODUCTS:
            raise _params_error("params error: product invalid")
        try:
            window_s = int(ctx.params.get("timeWindow", ""))
        except ValueError:
            raise _params_error("params error: timeWindow invalid") from None
        low, high = _DCP_WINDOW_S
        if window_s != 0 and not low <= window_s <= high:
            raise _params_error(f"params error: timeWindow must be within [{low}, {high}]")
        venue = _PRODUCTS[product]
        if venue is not None:
            self.sim.arm_switch(ctx.acct.name, self.name, venue, None, window_s * 1000)
        return _Answer({}, ret_msg="success")


def _scale(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _instrument(market: Market) -> dict[str, Any]:
    """One ``instruments-info`` row of a linear perpetual or a spot pair."""
    if market.venue is Venue.SPOT:
        return {
            "symbol": market.symbol,
            "baseCoin": market.base,
            "quoteCoin": market.quote,
            "innovation": "0",
            "status": "Trading",
            "marginTrading": "none",
            "stTag": "0",
            "lotSizeFilter": {
                "basePrecision": fmt(market.step_size),
                "quotePrecision": "0.00000001",
                "minOrderQty": fmt(market.min_qty),
                "maxOrderQty": fmt(market.max_qty),
                "minOrderAmt": fmt(market.min_notional),
                "maxOrderAmt": "2000000",
            },
            "priceFilter": {"tickSize": fmt(market.tick_size)},
            "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.05"},
        }
    return {
        "symbol": market.symbol,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": market.base,
        "quoteCoin": market.quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(_scale(market.tick_size)),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {
            "minPrice": fmt(market.tick_size),
            "maxPrice": "1999999.80",
            "tickSize": fmt(market.tick_size),
        },
        "lotSizeFilter": {
            "maxOrderQty": fmt(market.max_qty),
            "maxMktOrderQty": fmt(market.max_qty),
            "minOrderQty": fmt(market.min_qty),
            "qtyStep": fmt(market.step_size),
            "postOnlyMaxOrderQty": fmt(market.max_qty),
            "minNotionalValue": fmt(market.min_notional),
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": market.quote,
        "copyTrading": "both",
        "upperFundingRate": "0.00375",
        "lowerFundingRate": "-0.00375",
        "isPreListing": False,
        "preListingInfo": None,
        "displayName": "",
    }

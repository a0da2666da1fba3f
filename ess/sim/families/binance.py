"""The Binance family: USD-M futures (``/fapi``), COIN-M futures (``/dapi``) and spot
(``/api/v3``) on one port.

ccxt's ``urls['api']`` entries for Binance differ in path, so rewriting only their host
(:func:`ess.venues.ccxt_client.make_exchange`) points every client at the same server without
collisions. Signed routes carry ``X-MBX-APIKEY`` (else -2015) and an HMAC-SHA256 of the query
string or form body before ``&signature=`` with that account's secret (else -1022), with the
``timestamp`` within ``recvWindow`` of the server clock (else -1021). Over budget is answered
429/-1003 (-1015 for orders) or 418 while banned, with ``Retry-After``. The engine's codes are
Binance's, so nothing is translated.

Hedge (two-sided) position mode is modelled on USD-M and COIN-M: ``GET``/``POST
.../positionSide/dual`` read and switch it (one setting for both books, and for the other
families: :meth:`~ess.sim.server.ExchangeSimulator.set_hedge_mode`; the switch is refused with
-4068 while a position is open, -4067 while an order is, -4059 when nothing changes). In hedge
mode ``positionRisk`` and ``account`` list one row per symbol and side (``positionSide``
``LONG``/``SHORT``, ``positionAmt`` signed: a ``SHORT`` one negative), every order, algo orders
included, must carry ``positionSide`` ``LONG``/``SHORT`` (else -4061, as must a one-way
account's be ``BOTH``), ``reduceOnly`` is refused (-1106), and SELL+LONG / BUY+SHORT close
their side: refused with -2022 when that side is flat, clipped to its size (never opening the
other side) at every fill.

The futures dead-man's switch (``countdownCancelAll``, on ``/fapi`` and ``/dapi``) is run by the
simulator itself: when an armed countdown expires without being refreshed, the symbol's open
regular orders are cancelled by the server, with no client involved.

COIN-M (``binancecoinm``, inverse perpetuals ``BTCUSD_PERP``...) is modelled as ccxt 4.5.90
uses it: ``exchangeInfo`` with ``contractSize``, base-coin ``marginAsset`` and
``contractStatus``; ``/dapi/v1/account`` with one asset per margin coin;
``/dapi/v1/positionRisk`` listing every symbol (contracts in ``positionAmt``, the side in the
sign of ``notionalValue``, in the base coin); ``/dapi/v2/leverageBracket`` (ccxt's first
position read); orders on ``/dapi/v1/order`` with ``cumBase``; and conditional orders in the
algo book (``/dapi/v1/algoOrder``, ``openAlgoOrders``, ``algoOpenOrders``), where ccxt sends
and lists them. Quantities are whole contracts of ``contractSize`` USD, and realized PnL is
credited to the coin's COIN-M wallet (:mod:`ess.sim.book`). The order endpoint also takes
conditional types with ``stopPrice`` (COIN-M's pre-algo API): they rest in the regular book.
Not modelled: delivery (dated) contracts, the ``pair``-keyed ``/dapi/v1/leverageBracket``,
funding, liquidation and margin checks (nothing here needs them to flatten an account).

With API keys set and its default options, ccxt's ``load_markets`` also reads
``/sapi/v1/capital/config/getall`` (and ``/sapi/v1/margin/allPairs``, plus
``isolated/allPairs`` on the spot class): they are served (the coins listed or held, and no
marginable pair), so a client built without simulator-specific options works unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl

from aiohttp import web

from ess.sim import payloads
from ess.sim.book import ZERO, Account, ApiError, Order, Position, missing
from ess.sim.families.base import Ctx, Family, Handler, Route
from ess.sim.faults import FaultKind
from ess.sim.markets import Market, Venue, exchange_info, fmt

__all__ = ["BinanceFamily"]

#: What a fault of each "instead of the exchange" kind answers (HTTP status, code, message).
CANNED: Final[Mapping[FaultKind, ApiError]] = {
    FaultKind.HTTP_429: ApiError(
        -1003,
        "Too many requests; current limit of IP(127.0.0.1) request weight per minute is 2400. "
        "Please use WebSocket Streams for live updates to avoid polling the API.",
        429,
    ),
    FaultKind.HTTP_418: ApiError(
        -1003,
        "Way too much request weight used; IP banned until 4102444800000. "
        "Please use WebSocket Streams for live updates to avoid bans.",
        418,
    ),
    FaultKind.RATE_LIMIT_CODE: ApiError(
        -1003, "Too much request weight used; current limit is 2400 request weight per 1 MINUTE."
    ),
    FaultKind.INVALID_KEY: ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401),
    FaultKind.UNKNOWN_ORDER: ApiError(-2011, "Unknown order sent."),
    FaultKind.REDUCE_ONLY_REJECTED: ApiError(-2022, "ReduceOnly Order is rejected."),
}

_CANCEL_ALL_DONE: Final = {"code": 200, "msg": "The operation of cancel all open order is done."}


def _id_list(ctx: Ctx, name: str) -> list[str] | None:
    """A JSON array parameter (``[1,2]`` or ``["a","b"]``), matched case-insensitively as
    Binance does (ccxt sends ``orderidlist``); ``None`` when absent."""
    text = next((v for k, v in ctx.params.items() if k.lower() == name.lower()), None)
    if not text:
        return None
    try:
        values = json.loads(text)
    except ValueError:
        values = None
    if not isinstance(values, list) or not values:
        raise ApiError(-1130, f"Data sent for parameter '{name}' is not valid.")
    return [str(value) for value in values]


def _strip_signature(raw: str) -> str:
    return "&".join(part for part in raw.split("&") if part and not part.startswith("signature="))


class BinanceFamily(Family):
    """Binance USD-M futures, COIN-M futures and spot; see the module docstring."""

    name: ClassVar[str] = "binance"
    mangled_body: ClassVar[str] = '{"symbol": "BTCUSDT", "orderId": 1'

    def owns(self, path: str) -> bool:
        return path.startswith(("/fapi/", "/dapi/", "/api/v3/", "/sapi/"))

    def venue_of(self, ctx: Ctx) -> Venue | None:
        if ctx.path.startswith("/fapi/"):
            return Venue.FUTURES
        if ctx.path.startswith("/dapi/"):
            return Venue.COINM
        return Venue.SPOT

    async def parse(self, request: web.Request, ctx: Ctx) -> None:
        params = dict(parse_qsl(ctx.raw_query, keep_blank_values=True))
        params.update(parse_qsl(ctx.raw_body, keep_blank_values=True))
        ctx.signature = params.pop("signature", None)
        ctx.params = params
        ctx.api_key = request.headers.get("X-MBX-APIKEY")

    def authenticate(self, ctx: Ctx) -> Account:
        sim = self.sim
        api_key, signature = ctx.api_key, ctx.signature
        if not api_key:
            raise ApiError(-2014, "API-key format invalid.", status=401)
        account = sim.account_by_key(api_key)
        if account is None:
            raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        if not ctx.params.get("timestamp"):
            raise missing("timestamp")
        if sim.verify_signatures:
            if signature is None:
                raise missing("signature")
            payload = _strip_signature(ctx.raw_query) + _strip_signature(ctx.raw_body)
            expected = hmac.new(
                account.secret.encode(), payload.encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(expected, signature.lower()):
                raise ApiError(-1022, "Signature for this request is not valid.")
        if sim.check_recv_window:
            try:
                stamp = int(ctx.params["timestamp"])
                window = int(ctx.params.get("recvWindow", "5000"))
            except ValueError:
                raise ApiError(
                    -1100, "Illegal characters found in parameter 'timestamp'."
                ) from None
            now = sim.now_ms()
            if stamp >= now + 1000:
                raise ApiError(
                    -1021, "Timestamp for this request was 1000ms ahead of the server's time."
                )
            if now - stamp > window:
                raise ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return account

    def render(self, ctx: Ctx, payload: Any) -> tuple[int, Any]:
        return 200, payload

    def render_error(self, ctx: Ctx, err: ApiError) -> tuple[int, Any]:
        return err.status, {"code": err.code, "msg": err.msg}

    def canned(self, kind: FaultKind) -> ApiError:
        return CANNED[kind]

    def headers(self, ctx: Ctx, *, refused: ApiError | None = None) -> dict[str, str]:
        assert ctx.venue is not None
        headers = self.limiter.headers(ctx.venue, ctx.entry.account)
        if refused is not None and refused.status in {418, 429}:
            window_s = self.limiter.limits(ctx.venue).weight_window_s
            headers["Retry-After"] = str(max(1, int(window_s)))
        return headers

    # -- routes ----------------------------------------------------------------------------

    def build_routes(self) -> dict[tuple[str, str], Route]:
        public: dict[tuple[str, str], Handler] = {
            ("GET", "/fapi/v1/ping"): self._ping,
            ("GET", "/fapi/v1/time"): self._time,
            ("GET", "/fapi/v1/exchangeInfo"): self._exchange_info,
            ("GET", "/dapi/v1/ping"): self._ping,
            ("GET", "/dapi/v1/time"): self._time,
            ("GET", "/dapi/v1/exchangeInfo"): self._exchange_info,
            ("GET", "/api/v3/ping"): self._ping,
            ("GET", "/api/v3/time"): self._time,
            ("GET", "/api/v3/exchangeInfo"): self._exchange_info,
        }
        # The order, open-order, cancel, algo-order and countdown routes are the same on USD-M
        # and COIN-M; the handlers act on the book of the request's path (``ctx.venue``).
        derivative: tuple[tuple[str, str, Handler], ...] = (
            ("GET", "openOrders", self._futures_open_orders),
            ("GET", "order", self._futures_get_order),
            ("POST", "order", self._futures_post_order),
            ("DELETE", "order", self._futures_cancel_order),
            ("DELETE", "allOpenOrders", self._futures_cancel_all),
            ("DELETE", "batchOrders", self._futures_cancel_batch),
            ("POST", "algoOrder", self._algo_post),
            ("GET", "algoOrder", self._algo_get),
            ("DELETE", "algoOrder", self._algo_cancel),
            ("GET", "openAlgoOrders", self._algo_open_orders),
            ("DELETE", "algoOpenOrders", self._algo_cancel_all),
            ("POST", "countdownCancelAll", self._countdown_cancel_all),
            ("GET", "positionSide/dual", self._position_mode_get),
            ("POST", "positionSide/dual", self._position_mode_post),
        )
        signed: dict[tuple[str, str], Handler] = {
            ("GET", "/fapi/v1/leverageBracket"): self._leverage_bracket,
            ("GET", "/fapi/v2/account"): self._futures_account,
            ("GET", "/fapi/v3/account"): self._futures_account,
            ("GET", "/fapi/v2/positionRisk"): self._position_risk_v2,
            ("GET", "/fapi/v3/positionRisk"): self._position_risk_v3,
            ("GET", "/dapi/v2/leverageBracket"): self._coinm_leverage_bracket,
            ("GET", "/dapi/v1/account"): self._coinm_account,
            ("GET", "/dapi/v1/positionRisk"): self._coinm_position_risk,
            ("GET", "/api/v3/account"): self._spot_account,
            ("GET", "/api/v3/openOrders"): self._spot_open_orders,
            ("DELETE", "/api/v3/openOrders"): self._spot_cancel_all,
            ("POST", "/api/v3/order"): self._spot_post_order,
            ("GET", "/api/v3/order"): self._spot_get_order,
            ("DELETE", "/api/v3/order"): self._spot_cancel_order,
            ("GET", "/sapi/v1/capital/config/getall"): self._capital_config,
            ("GET", "/sapi/v1/margin/allPairs"): self._margin_pairs,
            ("GET", "/sapi/v1/margin/isolated/allPairs"): self._margin_pairs,
        }
        for prefix in ("/fapi/v1/", "/dapi/v1/"):
            for method, name, handler in derivative:
                signed[(method, prefix + name)] = handler
        routes = {key: Route(handler, signed=False) for key, handler in public.items()}
        routes |= {key: Route(handler, signed=True) for key, handler in signed.items()}
        return routes

    async def _ping(self, ctx: Ctx) -> Any:
        return {}

    async def _time(self, ctx: Ctx) -> Any:
        return {"serverTime": self.sim.now_ms()}

    async def _exchange_info(self, ctx: Ctx) -> Any:
        venue = self._venue(ctx)
        return exchange_info(
            venue,
            self.sim.markets_by_venue[venue],
            self.limiter.exchange_info_limits(venue),
            self.sim.now_ms(),
        )

    @staticmethod
    def _venue(ctx: Ctx) -> Venue:
        assert ctx.venue is not None, "routed requests always have a venue"
        return ctx.venue

    def _market(self, ctx: Ctx, symbol: str) -> Market:
        return self.sim.markets_by_venue[self._venue(ctx)][symbol]

    def _order_doc(self, ctx: Ctx, order: Order) -> dict[str, Any]:
        """An order in the shape of the request's book (USD-M or COIN-M)."""
        if order.venue is Venue.COINM:
            return payloads.coinm_order(order, self._market(ctx, order.symbol))
        return payloads.futures_order(order)

    async def _leverage_bracket(self, ctx: Ctx) -> Any:
        symbol = ctx.params.get("symbol")
        if symbol:
            market = self.sim.engine.market(Venue.FUTURES, symbol)
            return payloads.leverage_brackets([market.symbol])[0]
        return payloads.leverage_brackets(self.sim.markets_by_venue[Venue.FUTURES])

    async def _coinm_leverage_bracket(self, ctx: Ctx) -> Any:
        """``/dapi/v2/leverageBracket``: a list, also for one symbol (unlike USD-M's)."""
        symbol = self._symbol_filter(ctx, Venue.COINM, required=False)
        markets = self.sim.markets_by_venue[Venue.COINM]
        return payloads.coinm_leverage_brackets([symbol] if symbol else markets)

    async def _futures_account(self, ctx: Ctx) -> Any:
        return payloads.futures_account(ctx.acct, self.sim.marks, self.sim.now_ms())

    async def _coinm_account(self, ctx: Ctx) -> Any:
        return payloads.coinm_account(
            ctx.acct, self.sim.markets_by_venue[Venue.COINM], self.sim.marks, self.sim.now_ms()
        )

    @staticmethod
    def _sides(account: Account) -> tuple[str, ...]:
        """The position sides of the account's mode: one row per symbol and side."""
        return ("LONG", "SHORT") if account.hedge_mode else ("BOTH",)

    def _position_rows(self, ctx: Ctx, *, v2: bool) -> list[dict[str, Any]]:
        """v3: the open positions; v2: every symbol (flat ones with ``entryPrice`` 0). In
        hedge mode one row per symbol and side, ``positionSide`` LONG/SHORT."""
        symbol = ctx.params.get("symbol")
        if symbol:
            self.sim.engine.market(Venue.FUTURES, symbol)
        account = ctx.acct
        listed = self.sim.markets_by_venue[Venue.FUTURES]
        rows = []
        for each in listed if v2 else sorted({p.symbol for p in account.all_positions()}):
            if (symbol and each != symbol) or each not in listed:
                continue
            for side in self._sides(account):
                position = account.position(each, side) or Position(each, side=side)
                if not v2 and position.qty == 0:
                    continue
                mark = self.sim.marks[(Venue.FUTURES, each)]
                rows.append(
                    payloads.position_risk(position, listed[each], mark, account.leverage, v2=v2)
                )
        return rows

    async def _position_risk_v3(self, ctx: Ctx) -> Any:
        return self._position_rows(ctx, v2=False)

    async def _position_risk_v2(self, ctx: Ctx) -> Any:
        return self._position_rows(ctx, v2=True)

    async def _coinm_position_risk(self, ctx: Ctx) -> Any:
        """``/dapi/v1/positionRisk``: every COIN-M symbol (flat ones with ``entryPrice`` 0),
        narrowed by ``marginAsset`` or ``pair`` when given."""
        account = ctx.acct
        asset, pair = ctx.params.get("marginAsset"), ctx.params.get("pair")
        rows = []
        for symbol, market in self.sim.markets_by_venue[Venue.COINM].items():
            if asset and market.margin_asset != asset:
                continue
            if pair and symbol.split("_")[0] != pair:
                continue
            mark = self.sim.marks[(Venue.COINM, symbol)]
            for side in self._sides(account):
                position = account.position(symbol, side) or Position(symbol, side=side)
                rows.append(payloads.coinm_position_risk(position, market, mark, account.leverage))
        return rows

    async def _position_mode_get(self, ctx: Ctx) -> Any:
        """``GET .../positionSide/dual`` (ccxt's ``fetch_position_mode``): the account's mode,
        shared by USD-M and COIN-M in the simulator."""
        return {"dualSidePosition": ctx.acct.hedge_mode}

    async def _position_mode_post(self, ctx: Ctx) -> Any:
        """``POST .../positionSide/dual`` (ccxt's ``set_position_mode``): switch the mode,
        refused as Binance does when nothing changes (-4059), with an open order (-4067) or
        with a position (-4068). It switches every derivative book and family of the account
        (one setting in the simulator)."""
        text = ctx.params.get("dualSidePosition")
        if text not in {"true", "false"}:
            raise missing("dualSidePosition")
        account = ctx.acct
        wanted = text == "true"
        if wanted == account.hedge_mode:
            raise ApiError(-4059, "No need to change position side.")
        blocker = account.mode_switch_blocker()
        if blocker == "position":
            raise ApiError(-4068, "Position side cannot be changed if there exists position.")
        if blocker == "orders":
            raise ApiError(-4067, "Position side cannot be changed if there exists open orders.")
        account.hedge_mode = wanted
        return {"code": 200, "msg": "success"}

    def _symbol_filter(self, ctx: Ctx, venue: Venue, *, required: bool) -> str | None:
        symbol = ctx.params.get("symbol")
        if symbol or required:
            return self.sim.engine.market(venue, symbol).symbol
        return None

    async def _futures_open_orders(self, ctx: Ctx) -> Any:
        venue = self._venue(ctx)
        symbol = self._symbol_filter(ctx, venue, required=False)
        return [self._order_doc(ctx, o) for o in ctx.acct.open_orders(venue, symbol)]

    def _lookup(self, ctx: Ctx, venue: Venue, *, conditional: bool = False) -> Order | None:
        symbol = self._symbol_filter(ctx, venue, required=True)
        assert symbol is not None
        id_key, client_key = (
            ("algoId", "clientAlgoId") if conditional else ("orderId", "origClientOrderId")
        )
        order_id = ctx.params.get(id_key)
        client_id = ctx.params.get(client_key)
        if order_id is None and client_id is None:
            raise ApiError(
                -1102, f"Param '{id_key}' or '{client_key}' must be sent, but both were empty/null!"
            )
        return self.sim.engine.find_order(
            ctx.acct, venue, symbol, order_id=order_id, client_id=client_id, conditional=conditional
        )

    async def _futures_get_order(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, self._venue(ctx))
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return self._order_doc(ctx, order)

    async def _futures_post_order(self, ctx: Ctx) -> Any:
        fault = self.sim.take_fault(ctx, {FaultKind.PARTIAL_FILL}, exclude=False)
        order = self.sim.engine.place_futures(
            ctx.acct,
            ctx.params,
            fill_ratio=fault.fill_ratio if fault else None,
            venue=self._venue(ctx),
        )
        return self._order_doc(ctx, order)

    async def _futures_cancel_order(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, self._venue(ctx))
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.")
        self.sim.cancel_orders(ctx, [order])
        return self._order_doc(ctx, dataclasses.replace(order, status="CANCELED"))

    async def _futures_cancel_all(self, ctx: Ctx) -> Any:
        venue = self._venue(ctx)
        symbol = self._symbol_filter(ctx, venue, required=True)
        self.sim.cancel_orders(ctx, ctx.acct.open_orders(venue, symbol))
        return _CANCEL_ALL_DONE

    async def _futures_cancel_batch(self, ctx: Ctx) -> Any:
        """``DELETE .../batchOrders`` (ccxt's ``cancel_orders``): up to 10 regular orders by
        ``orderIdList`` or ``origClientOrderIdList`` (JSON arrays); one element per id, the
        cancelled order or ``{"code": -2011, ...}`` for one not open."""
        venue = self._venue(ctx)
        symbol = self._symbol_filter(ctx, venue, required=True)
        assert symbol is not None
        by_id = _id_list(ctx, "orderIdList")
        by_client = _id_list(ctx, "origClientOrderIdList")
        if by_id is None and by_client is None:
            raise ApiError(
                -1102,
                "Param 'orderIdList' or 'origClientOrderIdList' must be sent, "
                "but both were empty/null!",
            )
        wanted = by_id if by_id is not None else by_client
        assert wanted is not None
        if len(wanted) > 10:
            raise ApiError(-4079, "Invalid orderIdList or origClientOrderIdList.")
        found = [
            self.sim.engine.find_order(
                ctx.acct,
                venue,
                symbol,
                order_id=each if by_id is not None else None,
                client_id=each if by_id is None else None,
            )
            for each in wanted
        ]
        cancelled = [order for order in found if order is not None and order.is_open]
        self.sim.cancel_orders(ctx, cancelled)
        ids = {order.order_id for order in cancelled}
        return [
            self._order_doc(ctx, dataclasses.replace(order, status="CANCELED"))
            if order is not None and order.order_id in ids
            else {"code": -2011, "msg": "Unknown order sent."}
            for order in found
        ]

    async def _algo_post(self, ctx: Ctx) -> Any:
        order = self.sim.engine.place_algo(ctx.acct, ctx.params, venue=self._venue(ctx))
        return payloads.algo_order(order)

    async def _algo_get(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, self._venue(ctx), conditional=True)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return payloads.algo_order(order)

    async def _algo_cancel(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, self._venue(ctx), conditional=True)
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.")
        self.sim.engine.cancel(ctx.acct, order)
        return {
            "algoId": order.order_id,
            "clientAlgoId": order.client_order_id,
            "code": "200",
            "msg": "success",
        }

    async def _algo_open_orders(self, ctx: Ctx) -> Any:
        venue = self._venue(ctx)
        symbol = self._symbol_filter(ctx, venue, required=False)
        orders = ctx.acct.open_orders(venue, symbol, conditional=True)
        return [payloads.algo_order(o) for o in orders]

    async def _algo_cancel_all(self, ctx: Ctx) -> Any:
        venue = self._venue(ctx)
        symbol = self._symbol_filter(ctx, venue, required=True)
        for order in ctx.acct.open_orders(venue, symbol, conditional=True):
            self.sim.engine.cancel(ctx.acct, order)
        return _CANCEL_ALL_DONE

    async def _spot_account(self, ctx: Ctx) -> Any:
        return payloads.spot_account(ctx.acct, self.sim.now_ms())

    async def _spot_open_orders(self, ctx: Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.SPOT, required=False)
        return [payloads.spot_order(o) for o in ctx.acct.open_orders(Venue.SPOT, symbol)]

    async def _spot_cancel_all(self, ctx: Ctx) -> Any:
        """Binance answers -2011 when nothing is open; ccxt raises ``OrderNotFound`` for it."""
        symbol = self._symbol_filter(ctx, Venue.SPOT, required=True)
        orders = ctx.acct.open_orders(Venue.SPOT, symbol)
        if not orders:
            raise ApiError(-2011, "Unknown order sent.")
        self.sim.cancel_orders(ctx, orders)
        return [payloads.spot_order(dataclasses.replace(o, status="CANCELED")) for o in orders]

    async def _spot_post_order(self, ctx: Ctx) -> Any:
        fault = self.sim.take_fault(ctx, {FaultKind.PARTIAL_FILL}, exclude=False)
        before = len(ctx.acct.fills)
        order = self.sim.engine.place_spot(
            ctx.acct, ctx.params, fill_ratio=fault.fill_ratio if fault else None
        )
        if ctx.params.get("newOrderRespType", "FULL") != "FULL":
            return payloads.spot_order(order)
        market = self.sim.markets_by_venue[Venue.SPOT][order.symbol]
        fills = [
            {
                "price": fmt(fill.price),
                "qty": fmt(fill.qty),
                "commission": "0",
                "commissionAsset": market.quote,
                "tradeId": index,
            }
            for index, fill in enumerate(ctx.acct.fills[before:], start=before + 1)
        ]
        return payloads.spot_order(order, fills=fills)

    async def _spot_get_order(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, Venue.SPOT)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return payloads.spot_order(order)

    async def _spot_cancel_order(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, Venue.SPOT)
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.")
        self.sim.cancel_orders(ctx, [order])
        return payloads.spot_order(dataclasses.replace(order, status="CANCELED"))

    # -- wallet reads ccxt's load_markets makes ---------------------------------------------

    async def _capital_config(self, ctx: Ctx) -> Any:
        """``/sapi/v1/capital/config/getall`` (ccxt's ``fetch_currencies`` with keys set):
        every coin the simulator lists or the account holds, with its spot balance."""
        account = ctx.acct
        coins = {m.base for m in self.sim.markets_by_venue[Venue.SPOT].values()}
        coins |= {m.quote for m in self.sim.markets_by_venue[Venue.SPOT].values()}
        coins |= {m.margin_asset for m in self.sim.markets_by_venue[Venue.COINM].values()}
        coins |= set(account.spot_free) | set(account.spot_locked) | set(account.coinm_wallet)
        return [
            payloads.capital_coin(
                coin, account.spot_free.get(coin, ZERO), account.spot_locked.get(coin, ZERO)
            )
            for coin in sorted(coins)
        ]

    async def _margin_pairs(self, ctx: Ctx) -> Any:
        """``/sapi/v1/margin/allPairs`` and ``isolated/allPairs``: no margin trading is
        modelled, so no pair is marginable."""
        return []

    # -- the dead-man's switch -------------------------------------------------------------

    async def _countdown_cancel_all(self, ctx: Ctx) -> Any:
        """Binance's dead-man's switch (USD-M and COIN-M alike): (re)arm, or with
        ``countdownTime=0`` disarm, a timer that cancels the symbol's open orders when it
        expires.

        Only the regular book is cancelled: Binance documents the countdown as cancelling
        "all open orders", and whether that covers the separate algo book is not something to
        rely on, so the simulator assumes it does not.
        """
        venue = self._venue(ctx)
        symbol = self._symbol_filter(ctx, venue, required=True)
        assert symbol is not None
        text = ctx.params.get("countdownTime")
        if not text:
            raise missing("countdownTime")
        try:
            countdown_ms = int(text)
        except ValueError:
            raise ApiError(
                -1100, "Illegal characters found in parameter 'countdownTime'."
            ) from None
        if countdown_ms < 0:
            raise missing("countdownTime")
        self.sim.arm_switch(ctx.acct.name, self.name, venue, symbol, countdown_ms)
        return {"symbol": symbol, "countdownTime": str(countdown_ms)}

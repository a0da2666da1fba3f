"""The Binance family: USD-M futures (``/fapi``) and spot (``/api/v3``) on one port.

ccxt's ``urls['api']`` entries for Binance differ in path, so rewriting only their host
(:func:`ess.venues.ccxt_client.make_exchange`) points every client at the same server without
collisions. Signed routes carry ``X-MBX-APIKEY`` (else -2015) and an HMAC-SHA256 of the query
string or form body before ``&signature=`` with that account's secret (else -1022), with the
``timestamp`` within ``recvWindow`` of the server clock (else -1021). Over budget is answered
429/-1003 (-1015 for orders) or 418 while banned, with ``Retry-After``. The engine's codes are
Binance's, so nothing is translated.

The futures dead-man's switch (``countdownCancelAll``) is run by the simulator itself: when an
armed countdown expires without being refreshed, the symbol's open regular orders are
cancelled by the server, with no client involved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl

from aiohttp import web

from ess.sim import payloads
from ess.sim.book import Account, ApiError, Order, Position, missing
from ess.sim.families.base import Ctx, Family, Handler, Route
from ess.sim.faults import FaultKind
from ess.sim.markets import Venue, exchange_info, fmt

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


def _strip_signature(raw: str) -> str:
    return "&".join(part for part in raw.split("&") if part and not part.startswith("signature="))


class BinanceFamily(Family):
    """Binance USD-M futures and spot; see the module docstring."""

    name: ClassVar[str] = "binance"
    mangled_body: ClassVar[str] = '{"symbol": "BTCUSDT", "orderId": 1'

    def owns(self, path: str) -> bool:
        return path.startswith(("/fapi/", "/api/v3/", "/sapi/"))

    def venue_of(self, ctx: Ctx) -> Venue | None:
        if ctx.path.startswith("/fapi/"):
            return Venue.FUTURES
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
            ("GET", "/fapi/v1/exchangeInfo"): self._futures_exchange_info,
            ("GET", "/api/v3/ping"): self._ping,
            ("GET", "/api/v3/time"): self._time,
            ("GET", "/api/v3/exchangeInfo"): self._spot_exchange_info,
        }
        signed: dict[tuple[str, str], Handler] = {
            ("GET", "/fapi/v1/leverageBracket"): self._leverage_bracket,
            ("GET", "/fapi/v2/account"): self._futures_account,
            ("GET", "/fapi/v3/account"): self._futures_account,
            ("GET", "/fapi/v2/positionRisk"): self._position_risk_v2,
            ("GET", "/fapi/v3/positionRisk"): self._position_risk_v3,
            ("GET", "/fapi/v1/openOrders"): self._futures_open_orders,
            ("GET", "/fapi/v1/order"): self._futures_get_order,
            ("POST", "/fapi/v1/order"): self._futures_post_order,
            ("DELETE", "/fapi/v1/order"): self._futures_cancel_order,
            ("DELETE", "/fapi/v1/allOpenOrders"): self._futures_cancel_all,
            ("POST", "/fapi/v1/algoOrder"): self._algo_post,
            ("GET", "/fapi/v1/algoOrder"): self._algo_get,
            ("DELETE", "/fapi/v1/algoOrder"): self._algo_cancel,
            ("GET", "/fapi/v1/openAlgoOrders"): self._algo_open_orders,
            ("DELETE", "/fapi/v1/algoOpenOrders"): self._algo_cancel_all,
            ("POST", "/fapi/v1/countdownCancelAll"): self._countdown_cancel_all,
            ("GET", "/api/v3/account"): self._spot_account,
            ("GET", "/api/v3/openOrders"): self._spot_open_orders,
            ("DELETE", "/api/v3/openOrders"): self._spot_cancel_all,
            ("POST", "/api/v3/order"): self._spot_post_order,
            ("GET", "/api/v3/order"): self._spot_get_order,
            ("DELETE", "/api/v3/order"): self._spot_cancel_order,
        }
        routes = {key: Route(handler, signed=False) for key, handler in public.items()}
        routes |= {key: Route(handler, signed=True) for key, handler in signed.items()}
        return routes

    async def _ping(self, ctx: Ctx) -> Any:
        return {}

    async def _time(self, ctx: Ctx) -> Any:
        return {"serverTime": self.sim.now_ms()}

    async def _futures_exchange_info(self, ctx: Ctx) -> Any:
        return exchange_info(
            Venue.FUTURES,
            self.sim.markets_by_venue[Venue.FUTURES],
            self.limiter.exchange_info_limits(Venue.FUTURES),
            self.sim.now_ms(),
        )

    async def _spot_exchange_info(self, ctx: Ctx) -> Any:
        return exchange_info(
            Venue.SPOT,
            self.sim.markets_by_venue[Venue.SPOT],
            self.limiter.exchange_info_limits(Venue.SPOT),
            self.sim.now_ms(),
        )

    async def _leverage_bracket(self, ctx: Ctx) -> Any:
        symbol = ctx.params.get("symbol")
        if symbol:
            market = self.sim.engine.market(Venue.FUTURES, symbol)
            return payloads.leverage_brackets([market.symbol])[0]
        return payloads.leverage_brackets(self.sim.markets_by_venue[Venue.FUTURES])

    async def _futures_account(self, ctx: Ctx) -> Any:
        return payloads.futures_account(ctx.acct, self.sim.marks, self.sim.now_ms())

    def _position_rows(self, ctx: Ctx, *, v2: bool) -> list[dict[str, Any]]:
        symbol = ctx.params.get("symbol")
        if symbol:
            self.sim.engine.market(Venue.FUTURES, symbol)
        account = ctx.acct
        symbols = self.sim.markets_by_venue[Venue.FUTURES] if v2 else sorted(account.positions)
        rows = []
        for each in symbols:
            if symbol and each != symbol:
                continue
            position = account.positions.get(each) or Position(each)
            if not v2 and position.qty == 0:
                continue
            market = self.sim.markets_by_venue[Venue.FUTURES][each]
            mark = self.sim.marks[(Venue.FUTURES, each)]
            rows.append(
                payloads.position_risk(
                    position, market, mark, account.leverage, v2=v2, hedge_mode=account.hedge_mode
                )
            )
        return rows

    async def _position_risk_v3(self, ctx: Ctx) -> Any:
        return self._position_rows(ctx, v2=False)

    async def _position_risk_v2(self, ctx: Ctx) -> Any:
        return self._position_rows(ctx, v2=True)

    def _symbol_filter(self, ctx: Ctx, venue: Venue, *, required: bool) -> str | None:
        symbol = ctx.params.get("symbol")
        if symbol or required:
            return self.sim.engine.market(venue, symbol).symbol
        return None

    async def _futures_open_orders(self, ctx: Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=False)
        return [payloads.futures_order(o) for o in ctx.acct.open_orders(Venue.FUTURES, symbol)]

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
        order = self._lookup(ctx, Venue.FUTURES)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return payloads.futures_order(order)

    async def _futures_post_order(self, ctx: Ctx) -> Any:
        fault = self.sim.take_fault(ctx, {FaultKind.PARTIAL_FILL}, exclude=False)
        order = self.sim.engine.place_futures(
            ctx.acct, ctx.params, fill_ratio=fault.fill_ratio if fault else None
        )
        return payloads.futures_order(order)

    async def _futures_cancel_order(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, Venue.FUTURES)
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.")
        self.sim.cancel_orders(ctx, [order])
        return payloads.futures_order(dataclasses.replace(order, status="CANCELED"))

    async def _futures_cancel_all(self, ctx: Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=True)
        self.sim.cancel_orders(ctx, ctx.acct.open_orders(Venue.FUTURES, symbol))
        return _CANCEL_ALL_DONE

    async def _algo_post(self, ctx: Ctx) -> Any:
        return payloads.algo_order(self.sim.engine.place_algo(ctx.acct, ctx.params))

    async def _algo_get(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, Venue.FUTURES, conditional=True)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return payloads.algo_order(order)

    async def _algo_cancel(self, ctx: Ctx) -> Any:
        order = self._lookup(ctx, Venue.FUTURES, conditional=True)
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
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=False)
        orders = ctx.acct.open_orders(Venue.FUTURES, symbol, conditional=True)
        return [payloads.algo_order(o) for o in orders]

    async def _algo_cancel_all(self, ctx: Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=True)
        for order in ctx.acct.open_orders(Venue.FUTURES, symbol, conditional=True):
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

    # -- the dead-man's switch -------------------------------------------------------------

    async def _countdown_cancel_all(self, ctx: Ctx) -> Any:
        """Binance's dead-man's switch: (re)arm, or with ``countdownTime=0`` disarm, a timer
        that cancels the symbol's open orders when it expires.

        Only the regular book is cancelled: Binance documents the countdown as cancelling
        "all open orders", and whether that covers the separate algo book is not something to
        rely on, so the simulator assumes it does not.
        """
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=True)
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
        self.sim.arm_switch(ctx.acct.name, self.name, Venue.FUTURES, symbol, countdown_ms)
        return {"symbol": symbol, "countdownTime": str(countdown_ms)}

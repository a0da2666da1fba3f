"""The exchange simulator: a Binance look-alike HTTP server on loopback for unmodified ccxt.

One :class:`ExchangeSimulator` serves both the USD-M futures API (``/fapi/...``) and the spot API
(``/api/v3/...``) on one port: ccxt's ``urls['api']`` entries differ in path, so rewriting only
their host (:func:`ess.venues.ccxt_client.make_exchange`) points every client at the same server
without collisions.

Every request goes through the same pipeline, in this order, and is appended to :attr:`log`:

1. rate limits (:mod:`ess.sim.ratelimit`): over budget is answered 429/-1003 (-1015 for orders),
   or 418 while banned;
2. a matching fault (:mod:`ess.sim.faults`) that replaces the answer, if any;
3. authentication of signed routes: known ``X-MBX-APIKEY`` (else -2015), HMAC-SHA256 of the query
   string or form body before ``&signature=`` with that account's secret (else -1022), and the
   ``timestamp`` within ``recvWindow`` of the server clock (else -1021);
4. the route's handler, which mutates the account's state;
5. a fault that mangles the answer after execution (``exec_then_hang``, ``empty``, ``bad_json``).

The simulator also runs Binance's futures dead-man's switch (``countdownCancelAll``) itself: when
an armed countdown expires without being refreshed, the symbol's open regular orders are
cancelled by the server, with no client involved.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import hmac
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl

from aiohttp import web
from loguru import logger

from ess.sim import payloads
from ess.sim.book import ZERO, Account, ApiError, Engine, Fill, Order, Position, missing
from ess.sim.faults import ENGINE_KINDS, POST_KINDS, Fault, FaultKind
from ess.sim.markets import (
    DEFAULT_MARKETS,
    Market,
    Venue,
    exchange_info,
    fmt,
    index_markets,
)
from ess.sim.ratelimit import RateCounters, RateLimiter, RateLimits

__all__ = ["ExchangeSimulator", "LoggedRequest", "SimEvent"]

_log = logger.bind(component="ess.sim")

#: What a fault of each "instead of the exchange" kind answers: HTTP status, Binance code
#: (``None``: a non-JSON body, as a gateway or load balancer would send) and message.
_CANNED: Final[Mapping[FaultKind, tuple[int, int | None, str]]] = {
    FaultKind.HTTP_429: (
        429,
        -1003,
        "Too many requests; current limit of IP(127.0.0.1) request weight per minute is 2400. "
        "Please use WebSocket Streams for live updates to avoid polling the API.",
    ),
    FaultKind.HTTP_418: (
        418,
        -1003,
        "Way too much request weight used; IP banned until 4102444800000. "
        "Please use WebSocket Streams for live updates to avoid bans.",
    ),
    FaultKind.HTTP_500: (500, None, "<html><body><h1>500 Internal Server Error</h1></body></html>"),
    FaultKind.HTTP_502: (502, None, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    FaultKind.HTTP_503: (503, None, "<html><body><h1>503 Service Unavailable</h1></body></html>"),
    FaultKind.RATE_LIMIT_CODE: (
        400,
        -1003,
        "Too much request weight used; current limit is 2400 request weight per 1 MINUTE.",
    ),
    FaultKind.INVALID_KEY: (401, -2015, "Invalid API-key, IP, or permissions for action."),
    FaultKind.UNKNOWN_ORDER: (400, -2011, "Unknown order sent."),
    FaultKind.REDUCE_ONLY_REJECTED: (400, -2022, "ReduceOnly Order is rejected."),
}

_CANCEL_ALL_DONE: Final = {"code": 200, "msg": "The operation of cancel all open order is done."}


@dataclass
class LoggedRequest:
    """One request as the simulator saw it (the signature is never kept).

    ``status`` is ``None`` for a request that was never answered (``hang``, or
    ``exec_then_hang`` until released); ``code`` is the Binance error code of an error answer.
    """

    ts: float
    method: str
    path: str
    params: dict[str, str]
    account: str | None
    venue: Venue | None
    weight: int = 0
    status: int | None = None
    code: int | None = None
    fault: FaultKind | None = None


@dataclass(frozen=True)
class SimEvent:
    """Something the simulator did on its own: ``countdown_cancel`` or ``late_fill``."""

    ts: float
    kind: str
    account: str
    symbol: str
    order_ids: tuple[int, ...] = ()


@dataclass
class _Ctx:
    """What a route handler gets: the parsed request and the authenticated account."""

    method: str
    path: str
    params: dict[str, str]
    entry: LoggedRequest
    raw_query: str = ""
    raw_body: str = ""
    signature: str | None = None
    api_key: str | None = None
    account: Account | None = None

    @property
    def acct(self) -> Account:
        assert self.account is not None, "signed routes always have an account"
        return self.account


Handler = Callable[[_Ctx], Awaitable[Any]]


@dataclass(frozen=True)
class _Route:
    handler: Handler
    signed: bool


@dataclass
class _Countdown:
    handle: asyncio.TimerHandle
    deadline: float


def _venue_of(path: str) -> Venue | None:
    if path.startswith("/fapi/"):
        return Venue.FUTURES
    if path.startswith(("/api/", "/sapi/")):
        return Venue.SPOT
    return None


def _strip_signature(raw: str) -> str:
    return "&".join(part for part in raw.split("&") if part and not part.startswith("signature="))


class ExchangeSimulator:
    """A stateful Binance (USD-M futures + spot) simulator served over loopback HTTP.

    Use as ``async with ExchangeSimulator() as sim:`` (or ``await sim.start()`` /
    ``await sim.stop()``), then point ccxt at :attr:`url` with
    :func:`ess.venues.ccxt_client.make_exchange`. Seed state with :meth:`add_account`,
    :meth:`seed_position`, :meth:`seed_order`, :meth:`seed_balance`, :meth:`set_mark_price`;
    inspect it with :meth:`positions`, :meth:`open_orders`, :meth:`fills`, :attr:`log`,
    :meth:`rate_counters`; act as the market with :meth:`fill_order`; break it with
    :meth:`add_fault`.

    ``latency_ms`` delays every answer by a simulated network round trip (half before the
    exchange acts, half after), so that concurrency pays off as it does against a real venue
    20-50 ms away; loopback alone answers in about a millisecond.

    ``seed`` drives the RNG behind probabilistic faults. ``verify_signatures`` and
    ``check_recv_window`` can be turned off for hand-made requests; ``clock_skew_ms`` shifts the
    server clock (``/time`` and the recvWindow check) to provoke -1021.
    """

    def __init__(
        self,
        *,
        markets: Iterable[Market] | None = None,
        rate_limits: Mapping[Venue, RateLimits] | None = None,
        weights: Mapping[tuple[str, str], tuple[int, int]] | None = None,
        seed: int = 0,
        verify_signatures: bool = True,
        check_recv_window: bool = True,
        clock_skew_ms: int = 0,
        latency_ms: float = 0.0,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        self.latency_ms = latency_ms
        self._markets = index_markets(DEFAULT_MARKETS if markets is None else markets)
        self._marks: dict[tuple[Venue, str], Decimal] = {
            (venue, symbol): market.mark_price
            for venue, book in self._markets.items()
            for symbol, market in book.items()
        }
        self._engine = Engine(self._markets, self._marks, self._now_ms)
        self._limiter = RateLimiter(rate_limits, weights)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fault schedule, not crypto
        self.verify_signatures = verify_signatures
        self.check_recv_window = check_recv_window
        self.clock_skew_ms = clock_skew_ms
        self._accounts: dict[str, Account] = {}
        self._by_key: dict[str, Account] = {}
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._events: list[SimEvent] = []
        self._countdowns: dict[tuple[str, str], _Countdown] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._routes: dict[tuple[str, str], _Route] = self._build_routes()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        """Listen on ``host:port`` (``port=0``: a free port, read it from :attr:`url`)."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._released = asyncio.Event()
        app = web.Application(client_max_size=1024**2)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"http://{bound_host}:{bound_port}"
        _log.bind(url=self._url).info("exchange simulator listening")
        return self

    async def stop(self) -> None:
        """Stop serving: hung requests are released at once, timers and countdowns dropped."""
        self._released.set()
        for countdown in self._countdowns.values():
            countdown.handle.cancel()
        self._countdowns.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            _log.bind(url=self._url).info("exchange simulator stopped")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (only after :meth:`start`)."""
        if self._url is None:
            raise RuntimeError("simulator not started")
        return self._url

    # -- accounts and seeding --------------------------------------------------------------

    def add_account(
        self,
        api_key: str,
        secret: str,
        *,
        name: str | None = None,
        futures_usdt: Decimal | str | int = 10_000,
        spot: Mapping[str, Decimal | str | int] | None = None,
    ) -> str:
        """Register an API key and its secret; return the account name used everywhere else.

        The name (default ``acct1``, ``acct2``...) is what logs and the request log show, so
        the API key itself never appears in them.
        """
        if api_key in self._by_key:
            raise ValueError("API key already registered")
        name = name or f"acct{len(self._accounts) + 1}"
        if name in self._accounts:
            raise ValueError(f"account {name!r} already exists")
        account = Account(
            name=name, api_key=api_key, secret=secret, futures_wallet=Decimal(futures_usdt)
        )
        for asset, amount in (spot or {}).items():
            account.spot_free[asset] = Decimal(amount)
        self._accounts[name] = account
        self._by_key[api_key] = account
        return name

    def account(self, name: str) -> Account:
        """The live state of account ``name`` (mutable; prefer the seeding helpers)."""
        try:
            return self._accounts[name]
        except KeyError:
            raise KeyError(f"unknown account {name!r}") from None

    def set_hedge_mode(self, account: str, hedge_mode: bool = True) -> None:
        """Switch the futures position mode of ``account`` (Binance's dual-side setting)."""
        self.account(account).hedge_mode = hedge_mode

    def seed_position(
        self, account: str, symbol: str, qty: Decimal | str | float, entry_price: Decimal | str
    ) -> None:
        """Set a futures position: ``qty`` signed (negative short), ``0`` removes it."""
        state = self.account(account)
        self._engine.market(Venue.FUTURES, symbol)
        amount = Decimal(str(qty))
        if amount == 0:
            state.positions.pop(symbol, None)
            return
        state.positions[symbol] = Position(
            symbol, amount, Decimal(str(entry_price)), update_ms=self._now_ms()
        )

    def seed_balance(
        self,
        account: str,
        asset: str,
        free: Decimal | str | int,
        *,
        locked: Decimal | str | int = 0,
        venue: Venue = Venue.SPOT,
    ) -> None:
        """Set a spot balance (free and locked), or the futures USDT wallet."""
        state = self.account(account)
        if venue is Venue.FUTURES:
            if asset != "USDT":
                raise ValueError("the futures wallet is USDT only")
            state.futures_wallet = Decimal(free)
            return
        state.spot_free[asset] = Decimal(free)
        state.spot_locked[asset] = Decimal(locked)

    def seed_order(
        self,
        account: str,
        symbol: str,
        side: str,
        qty: Decimal | str | float,
        price: Decimal | str | float | None = None,
        *,
        venue: Venue = Venue.FUTURES,
        order_type: str = "LIMIT",
        reduce_only: bool = False,
        client_order_id: str | None = None,
        trigger_price: Decimal | str | float | None = None,
    ) -> int:
        """Put a resting order on the book and return its id.

        ``order_type`` ``STOP_MARKET``/``TAKE_PROFIT_MARKET``/``STOP``/... makes it a conditional
        (algo) order, which lives in Binance's separate algo book: only
        ``cancel_all_orders(sym, {'trigger': True})`` removes it.
        """
        order = self._engine.seed_order(
            self.account(account),
            venue,
            symbol,
            side=side.upper(),
            qty=Decimal(str(qty)),
            price=Decimal(str(price)) if price is not None else ZERO,
            order_type=order_type.upper(),
            reduce_only=reduce_only,
            client_order_id=client_order_id,
            trigger_price=Decimal(str(trigger_price)) if trigger_price is not None else ZERO,
        )
        return order.order_id

    def set_mark_price(
        self, symbol: str, price: Decimal | str | float, *, venue: Venue | None = None
    ) -> None:
        """Set the price market orders fill at, on one venue or (default) on every venue
        that lists ``symbol``."""
        venues = [venue] if venue is not None else [v for v in Venue if symbol in self._markets[v]]
        if not venues:
            raise KeyError(f"unknown symbol {symbol!r}")
        for each in venues:
            self._engine.market(each, symbol)
            self._marks[(each, symbol)] = Decimal(str(price))

    def mark_price(self, symbol: str, venue: Venue = Venue.FUTURES) -> Decimal:
        """The current mark of ``symbol`` on ``venue``."""
        return self._marks[(venue, symbol)]

    def markets(self, venue: Venue) -> list[Market]:
        """The markets listed on ``venue``, in ``exchangeInfo`` order."""
        return list(self._markets[venue].values())

    def fill_order(
        self,
        account: str,
        order_id: int,
        qty: Decimal | str | float | None = None,
        price: Decimal | str | float | None = None,
    ) -> Fill | None:
        """Fill a resting order now (a counterparty traded against it); ``None`` if a
        reduce-only order found nothing to reduce."""
        state = self.account(account)
        order = state.orders.get(order_id)
        if order is None or not order.is_open:
            raise KeyError(f"no open regular order {order_id} in {account!r}")
        return self._engine.fill_resting(
            state,
            order,
            Decimal(str(qty)) if qty is not None else None,
            Decimal(str(price)) if price is not None else None,
        )

    # -- inspection ------------------------------------------------------------------------

    def positions(self, account: str) -> dict[str, Position]:
        """Open futures positions by symbol (copies; flat symbols are absent)."""
        return {s: copy.copy(p) for s, p in self.account(account).positions.items() if p.qty}

    def open_orders(
        self,
        account: str,
        *,
        venue: Venue | None = None,
        symbol: str | None = None,
        conditional: bool | None = None,
    ) -> list[Order]:
        """Open orders (copies), regular and conditional unless ``conditional`` says which."""
        state = self.account(account)
        books = {False: state.orders, True: state.algo_orders}
        return [
            copy.copy(order)
            for is_conditional, book in books.items()
            if conditional is None or conditional == is_conditional
            for order in book.values()
            if order.is_open
            and (venue is None or order.venue is venue)
            and (symbol is None or order.symbol == symbol)
        ]

    def order(self, account: str, order_id: int) -> Order:
        """Any order ever placed or seeded (regular or conditional), by id."""
        state = self.account(account)
        found = state.orders.get(order_id) or state.algo_orders.get(order_id)
        if found is None:
            raise KeyError(f"no order {order_id} in {account!r}")
        return copy.copy(found)

    def fills(self, account: str) -> list[Fill]:
        """Every execution of ``account``, oldest first (late fills have ``late=True``)."""
        return list(self.account(account).fills)

    def spot_balance(self, account: str, asset: str) -> tuple[Decimal, Decimal]:
        """``(free, locked)`` of a spot asset."""
        state = self.account(account)
        return state.spot_free.get(asset, ZERO), state.spot_locked.get(asset, ZERO)

    def futures_wallet(self, account: str) -> Decimal:
        """The USDT wallet balance: seeded amount plus realized PnL."""
        return self.account(account).futures_wallet

    @property
    def log(self) -> list[LoggedRequest]:
        """Every request received, in arrival order (live list; see :meth:`requests`)."""
        return self._log

    def requests(
        self, method: str | None = None, path: str | None = None, account: str | None = None
    ) -> list[LoggedRequest]:
        """The logged requests matching all given filters."""
        return [
            entry
            for entry in self._log
            if (method is None or entry.method == method.upper())
            and (path is None or entry.path == path)
            and (account is None or entry.account == account)
        ]

    def clear_log(self) -> None:
        """Forget the logged requests (rate counters are kept)."""
        self._log.clear()

    @property
    def events(self) -> list[SimEvent]:
        """Server-side actions: countdown cancels and late fills."""
        return self._events

    def rate_counters(self, venue: Venue, account: str | None = None) -> RateCounters:
        """Rate-limit usage of ``venue`` (order counts of ``account``, or of all accounts).

        To prove a client stayed within budget: ``rejected == 0`` and ``banned == 0``; the
        ``peak_*`` fields show the closest it came.
        """
        return self._limiter.counters(venue, account)

    def countdowns(self, account: str) -> dict[str, float]:
        """Armed ``countdownCancelAll`` timers of ``account``: symbol -> seconds left."""
        now = asyncio.get_running_loop().time()
        return {
            symbol: max(0.0, countdown.deadline - now)
            for (name, symbol), countdown in self._countdowns.items()
            if name == account
        }

    # -- faults ----------------------------------------------------------------------------

    def add_fault(
        self,
        method: str,
        path: str,
        kind: FaultKind | str,
        *,
        times: int | None = 1,
        probability: float = 1.0,
        account: str | None = None,
        params: Mapping[str, str] | None = None,
        fill_ratio: Decimal | str | float = Decimal("0.5"),
        delay_s: float | None = None,
        code: int = -1000,
        status: int = 400,
        msg: str = "An unknown error occured while processing the request.",
    ) -> Fault:
        """Inject a fault (see :mod:`ess.sim.faults`); the first matching live fault wins."""
        fault = Fault(
            kind=FaultKind(kind),
            method=method,
            path=path,
            times=times,
            probability=probability,
            account=account,
            params=dict(params or {}),
            fill_ratio=Decimal(str(fill_ratio)),
            delay_s=delay_s,
            code=code,
            status=status,
            msg=msg,
        )
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault, fired or not."""
        self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """The injected faults, in matching order (live list)."""
        return self._faults

    def _take_fault(
        self, ctx: _Ctx, kinds: Iterable[FaultKind] | None, exclude: bool
    ) -> Fault | None:
        wanted = set(kinds or ())
        account = ctx.entry.account
        for fault in self._faults:
            if fault.exhausted or (fault.kind in wanted) == exclude:
                continue
            if not fault.matches(ctx.method, ctx.path, account, ctx.params):
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            fault.hits += 1
            ctx.entry.fault = fault.kind
            return fault
        return None

    # -- request pipeline ------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_skew_ms

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.method.upper()
        path = request.path
        raw_query = request.rel_url.raw_query_string
        raw_body = (
            (await request.read()).decode("utf-8", "replace") if request.can_read_body else ""
        )
        params = dict(parse_qsl(raw_query, keep_blank_values=True))
        params.update(parse_qsl(raw_body, keep_blank_values=True))
        signature = params.pop("signature", None)
        api_key = request.headers.get("X-MBX-APIKEY")
        known = self._by_key.get(api_key) if api_key else None
        venue = _venue_of(path)
        entry = LoggedRequest(
            ts=time.time(),
            method=method,
            path=path,
            params=dict(params),
            account=known.name if known else None,
            venue=venue,
        )
        self._log.append(entry)
        ctx = _Ctx(
            method=method,
            path=path,
            params=params,
            entry=entry,
            raw_query=raw_query,
            raw_body=raw_body,
            signature=signature,
            api_key=api_key,
        )
        try:
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 2000)
            response = await self._pipeline(ctx, venue)
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 2000)
            return response
        finally:
            _log.bind(
                method=method,
                path=path,
                account=entry.account,
                status=entry.status,
                code=entry.code,
                fault=entry.fault,
                weight=entry.weight,
            ).debug("sim request")

    async def _pipeline(self, ctx: _Ctx, venue: Venue | None) -> web.StreamResponse:
        entry = ctx.entry
        route = self._routes.get((ctx.method, ctx.path))
        if route is None or venue is None:
            entry.status = 404
            return web.Response(status=404, text="<html><body>404 Not Found</body></html>")
        weight, refusal = self._limiter.admit(
            venue, entry.account, ctx.method, ctx.path, ctx.params
        )
        entry.weight = weight
        if refusal is not None:
            return self._error(ctx, venue, refusal, retry_after=True)
        fault = self._take_fault(ctx, ENGINE_KINDS, exclude=True)
        if fault is not None and fault.kind not in POST_KINDS:
            early = await self._pre_fault(ctx, venue, fault)
            if early is not None:
                return early
            fault = None  # a slow answer (hang with delay_s): now served normally
        try:
            if route.signed:
                ctx.account = self._authenticate(ctx)
            payload = await route.handler(ctx)
            response: web.StreamResponse = self._json(ctx, venue, 200, payload)
        except ApiError as err:
            response = self._error(ctx, venue, err)
        except Exception:  # a simulator bug: answer like Binance's catch-all, keep the trace
            _log.bind(method=ctx.method, path=ctx.path).exception("sim handler failed")
            unknown = ApiError(-1000, "An unknown error occured while processing the request.")
            response = self._error(ctx, venue, unknown)
        if fault is not None:
            return await self._post_fault(ctx, venue, fault, response)
        return response

    async def _pre_fault(self, ctx: _Ctx, venue: Venue, fault: Fault) -> web.StreamResponse | None:
        if fault.kind is FaultKind.HANG:
            released = await self._hold(fault.delay_s)
            if not released:
                return None
            ctx.entry.status = None
            return web.Response(status=503, text="simulator stopped")
        if fault.kind is FaultKind.ERROR:
            return self._error(ctx, venue, ApiError(fault.code, fault.msg, fault.status))
        status, code, msg = _CANNED[fault.kind]
        if code is None:
            ctx.entry.status = status
            return web.Response(status=status, text=msg, content_type="text/html")
        return self._error(
            ctx, venue, ApiError(code, msg, status), retry_after=status in {418, 429}
        )

    async def _post_fault(
        self, ctx: _Ctx, venue: Venue, fault: Fault, response: web.StreamResponse
    ) -> web.StreamResponse:
        if fault.kind is FaultKind.EXEC_THEN_HANG:
            answered = ctx.entry.status
            if await self._hold(fault.delay_s):
                ctx.entry.status = None
                return web.Response(status=503, text="simulator stopped")
            ctx.entry.status = answered
            return response
        ctx.entry.status = 200
        ctx.entry.code = None
        headers = self._limiter.headers(venue, ctx.entry.account)
        body = "" if fault.kind is FaultKind.EMPTY else '{"symbol": "BTCUSDT", "orderId": 1'
        return web.Response(status=200, text=body, content_type="application/json", headers=headers)

    async def _hold(self, delay_s: float | None) -> bool:
        """Wait ``delay_s`` (``None``: forever); ``True`` if released by :meth:`stop` first."""
        try:
            await asyncio.wait_for(self._released.wait(), timeout=delay_s)
        except TimeoutError:
            return False
        return True

    def _authenticate(self, ctx: _Ctx) -> Account:
        api_key, signature = ctx.api_key, ctx.signature
        if not api_key:
            raise ApiError(-2014, "API-key format invalid.", status=401)
        account = self._by_key.get(api_key)
        if account is None:
            raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        if not ctx.params.get("timestamp"):
            raise missing("timestamp")
        if self.verify_signatures:
            if signature is None:
                raise missing("signature")
            payload = _strip_signature(ctx.raw_query) + _strip_signature(ctx.raw_body)
            expected = hmac.new(
                account.secret.encode(), payload.encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(expected, signature.lower()):
                raise ApiError(-1022, "Signature for this request is not valid.")
        if self.check_recv_window:
            try:
                stamp = int(ctx.params["timestamp"])
                window = int(ctx.params.get("recvWindow", "5000"))
            except ValueError:
                raise ApiError(
                    -1100, "Illegal characters found in parameter 'timestamp'."
                ) from None
            now = self._now_ms()
            if stamp >= now + 1000:
                raise ApiError(
                    -1021, "Timestamp for this request was 1000ms ahead of the server's time."
                )
            if now - stamp > window:
                raise ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return account

    def _json(self, ctx: _Ctx, venue: Venue, status: int, payload: Any) -> web.Response:
        ctx.entry.status = status
        headers = self._limiter.headers(venue, ctx.entry.account)
        return web.Response(
            status=status,
            text=json.dumps(payload, separators=(",", ":")),
            content_type="application/json",
            headers=headers,
        )

    def _error(
        self, ctx: _Ctx, venue: Venue, err: ApiError, *, retry_after: bool = False
    ) -> web.Response:
        response = self._json(ctx, venue, err.status, {"code": err.code, "msg": err.msg})
        ctx.entry.code = err.code
        if retry_after:
            response.headers["Retry-After"] = str(
                max(1, int(self._limiter.limits(venue).weight_window_s))
            )
        return response

    # -- routes ----------------------------------------------------------------------------

    def _build_routes(self) -> dict[tuple[str, str], _Route]:
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
        routes = {key: _Route(handler, signed=False) for key, handler in public.items()}
        routes |= {key: _Route(handler, signed=True) for key, handler in signed.items()}
        return routes

    async def _ping(self, ctx: _Ctx) -> Any:
        return {}

    async def _time(self, ctx: _Ctx) -> Any:
        return {"serverTime": self._now_ms()}

    async def _futures_exchange_info(self, ctx: _Ctx) -> Any:
        return exchange_info(
            Venue.FUTURES,
            self._markets[Venue.FUTURES],
            self._limiter.exchange_info_limits(Venue.FUTURES),
            self._now_ms(),
        )

    async def _spot_exchange_info(self, ctx: _Ctx) -> Any:
        return exchange_info(
            Venue.SPOT,
            self._markets[Venue.SPOT],
            self._limiter.exchange_info_limits(Venue.SPOT),
            self._now_ms(),
        )

    async def _leverage_bracket(self, ctx: _Ctx) -> Any:
        symbol = ctx.params.get("symbol")
        if symbol:
            market = self._engine.market(Venue.FUTURES, symbol)
            return payloads.leverage_brackets([market.symbol])[0]
        return payloads.leverage_brackets(self._markets[Venue.FUTURES])

    async def _futures_account(self, ctx: _Ctx) -> Any:
        return payloads.futures_account(ctx.acct, self._marks, self._now_ms())

    def _position_rows(self, ctx: _Ctx, *, v2: bool) -> list[dict[str, Any]]:
        symbol = ctx.params.get("symbol")
        if symbol:
            self._engine.market(Venue.FUTURES, symbol)
        account = ctx.acct
        symbols = self._markets[Venue.FUTURES] if v2 else sorted(account.positions)
        rows = []
        for each in symbols:
            if symbol and each != symbol:
                continue
            position = account.positions.get(each) or Position(each)
            if not v2 and position.qty == 0:
                continue
            market = self._markets[Venue.FUTURES][each]
            mark = self._marks[(Venue.FUTURES, each)]
            rows.append(
                payloads.position_risk(
                    position, market, mark, account.leverage, v2=v2, hedge_mode=account.hedge_mode
                )
            )
        return rows

    async def _position_risk_v3(self, ctx: _Ctx) -> Any:
        return self._position_rows(ctx, v2=False)

    async def _position_risk_v2(self, ctx: _Ctx) -> Any:
        return self._position_rows(ctx, v2=True)

    def _symbol_filter(self, ctx: _Ctx, venue: Venue, *, required: bool) -> str | None:
        symbol = ctx.params.get("symbol")
        if symbol or required:
            return self._engine.market(venue, symbol).symbol
        return None

    async def _futures_open_orders(self, ctx: _Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=False)
        return [payloads.futures_order(o) for o in ctx.acct.open_orders(Venue.FUTURES, symbol)]

    def _lookup(self, ctx: _Ctx, venue: Venue, *, conditional: bool = False) -> Order | None:
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
        return self._engine.find_order(
            ctx.acct, venue, symbol, order_id=order_id, client_id=client_id, conditional=conditional
        )

    async def _futures_get_order(self, ctx: _Ctx) -> Any:
        order = self._lookup(ctx, Venue.FUTURES)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return payloads.futures_order(order)

    async def _futures_post_order(self, ctx: _Ctx) -> Any:
        fault = self._take_fault(ctx, {FaultKind.PARTIAL_FILL}, exclude=False)
        order = self._engine.place_futures(
            ctx.acct, ctx.params, fill_ratio=fault.fill_ratio if fault else None
        )
        return payloads.futures_order(order)

    async def _futures_cancel_order(self, ctx: _Ctx) -> Any:
        order = self._lookup(ctx, Venue.FUTURES)
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.")
        self._cancel_orders(ctx, [order])
        return payloads.futures_order(dataclasses.replace(order, status="CANCELED"))

    async def _futures_cancel_all(self, ctx: _Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=True)
        self._cancel_orders(ctx, ctx.acct.open_orders(Venue.FUTURES, symbol))
        return _CANCEL_ALL_DONE

    async def _algo_post(self, ctx: _Ctx) -> Any:
        return payloads.algo_order(self._engine.place_algo(ctx.acct, ctx.params))

    async def _algo_get(self, ctx: _Ctx) -> Any:
        order = self._lookup(ctx, Venue.FUTURES, conditional=True)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return payloads.algo_order(order)

    async def _algo_cancel(self, ctx: _Ctx) -> Any:
        order = self._lookup(ctx, Venue.FUTURES, conditional=True)
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.")
        self._engine.cancel(ctx.acct, order)
        return {
            "algoId": order.order_id,
            "clientAlgoId": order.client_order_id,
            "code": "200",
            "msg": "success",
        }

    async def _algo_open_orders(self, ctx: _Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=False)
        orders = ctx.acct.open_orders(Venue.FUTURES, symbol, conditional=True)
        return [payloads.algo_order(o) for o in orders]

    async def _algo_cancel_all(self, ctx: _Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.FUTURES, required=True)
        for order in ctx.acct.open_orders(Venue.FUTURES, symbol, conditional=True):
            self._engine.cancel(ctx.acct, order)
        return _CANCEL_ALL_DONE

    async def _spot_account(self, ctx: _Ctx) -> Any:
        return payloads.spot_account(ctx.acct, self._now_ms())

    async def _spot_open_orders(self, ctx: _Ctx) -> Any:
        symbol = self._symbol_filter(ctx, Venue.SPOT, required=False)
        return [payloads.spot_order(o) for o in ctx.acct.open_orders(Venue.SPOT, symbol)]

    async def _spot_cancel_all(self, ctx: _Ctx) -> Any:
        """Binance answers -2011 when nothing is open; ccxt raises ``OrderNotFound`` for it."""
        symbol = self._symbol_filter(ctx, Venue.SPOT, required=True)
        orders = ctx.acct.open_orders(Venue.SPOT, symbol)
        if not orders:
            raise ApiError(-2011, "Unknown order sent.")
        self._cancel_orders(ctx, orders)
        return [payloads.spot_order(dataclasses.replace(o, status="CANCELED")) for o in orders]

    async def _spot_post_order(self, ctx: _Ctx) -> Any:
        fault = self._take_fault(ctx, {FaultKind.PARTIAL_FILL}, exclude=False)
        before = len(ctx.acct.fills)
        order = self._engine.place_spot(
            ctx.acct, ctx.params, fill_ratio=fault.fill_ratio if fault else None
        )
        if ctx.params.get("newOrderRespType", "FULL") != "FULL":
            return payloads.spot_order(order)
        market = self._markets[Venue.SPOT][order.symbol]
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

    async def _spot_get_order(self, ctx: _Ctx) -> Any:
        order = self._lookup(ctx, Venue.SPOT)
        if order is None:
            raise ApiError(-2013, "Order does not exist.")
        return payloads.spot_order(order)

    async def _spot_cancel_order(self, ctx: _Ctx) -> Any:
        order = self._lookup(ctx, Venue.SPOT)
        if order is None or not order.is_open:
            raise ApiError(-2011, "Unknown order sent.")
        self._cancel_orders(ctx, [order])
        return payloads.spot_order(dataclasses.replace(order, status="CANCELED"))

    # -- cancels, late fills and the countdown ---------------------------------------------

    def _cancel_orders(self, ctx: _Ctx, orders: list[Order]) -> None:
        """Cancel ``orders``, unless a ``late_fill`` fault turns the cancel into a late fill:
        the orders leave the book now (the client is told they are cancelled) and are filled
        ``delay_s`` later (0: before this answer is sent)."""
        account = ctx.acct
        fault = self._take_fault(ctx, {FaultKind.LATE_FILL}, exclude=False) if orders else None
        if fault is None:
            for order in orders:
                self._engine.cancel(account, order)
            return
        for order in orders:
            self._engine.detach(order)
        if not fault.delay_s:
            self._late_fill(account, orders)
            return
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self._late_fill(account, orders)

        timer = loop.call_later(fault.delay_s, fire)
        self._timers.add(timer)

    def _late_fill(self, account: Account, orders: list[Order]) -> None:
        filled = []
        for order in orders:
            if self._engine.fill_resting(account, order, late=True) is not None:
                filled.append(order.order_id)
        symbols = sorted({order.symbol for order in orders})
        self._events.append(
            SimEvent(time.time(), "late_fill", account.name, ",".join(symbols), tuple(filled))
        )
        _log.bind(account=account.name, symbols=symbols, orders=filled).info("sim late fill")

    async def _countdown_cancel_all(self, ctx: _Ctx) -> Any:
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
        key = (ctx.acct.name, symbol)
        previous = self._countdowns.pop(key, None)
        if previous is not None:
            previous.handle.cancel()
        if countdown_ms:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(countdown_ms / 1000, self._countdown_fire, key)
            self._countdowns[key] = _Countdown(handle, loop.time() + countdown_ms / 1000)
        return {"symbol": symbol, "countdownTime": str(countdown_ms)}

    def _countdown_fire(self, key: tuple[str, str]) -> None:
        name, symbol = key
        self._countdowns.pop(key, None)
        account = self._accounts[name]
        orders = account.open_orders(Venue.FUTURES, symbol)
        for order in orders:
            self._engine.cancel(account, order)
        ids = tuple(order.order_id for order in orders)
        self._events.append(SimEvent(time.time(), "countdown_cancel", name, symbol, ids))
        _log.bind(account=name, symbol=symbol, cancelled=len(ids)).info(
            "sim countdownCancelAll expired"
        )

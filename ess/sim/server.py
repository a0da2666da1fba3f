"""The exchange simulator: exchange look-alike HTTP servers on loopback for unmodified ccxt.

One :class:`ExchangeSimulator` serves three API families on one port, over one shared matching
engine (:mod:`ess.sim.book`): Binance (USD-M futures ``/fapi``, COIN-M futures ``/dapi`` and
spot ``/api/v3``), Bybit v5 (``/v5``: linear perpetuals and spot) and OKX v5 (``/api/v5``: swaps
and spot). Their paths never overlap, so rewriting only the host of ccxt's URLs
(:func:`ess.venues.ccxt_client.localize_urls`) points any of their clients at the same server.
What differs between exchanges lives in the family (:mod:`ess.sim.families`); accounts, books,
faults, the request log, late fills and dead-man's-switch timers are shared, so one seeded
account can be flattened through any family.

Every request goes through the same pipeline, in this order, and is appended to :attr:`log`:

1. the family's rate limits (:mod:`ess.sim.ratelimit`): over budget is answered with the
   family's rate-limit error;
2. a matching fault (:mod:`ess.sim.faults`) that replaces the answer, if any;
3. the family's authentication of signed routes (key, signature, timestamp window);
4. the route's handler, which mutates the account's state;
5. a fault that mangles the answer after execution (``exec_then_hang``, ``empty``, ``bad_json``).

The simulator also runs the exchanges' dead-man's switches itself (:meth:`arm_switch`): when an
armed timer expires without being refreshed, the open regular orders it covers are cancelled
by the server, with no client involved.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from loguru import logger

from ess.sim.book import ZERO, Account, ApiError, Engine, Fill, Order, Position
from ess.sim.families.base import Ctx, Family
from ess.sim.families.binance import BinanceFamily
from ess.sim.families.bybit import BybitFamily
from ess.sim.families.okx import OkxFamily
from ess.sim.faults import ENGINE_KINDS, POST_KINDS, Fault, FaultKind
from ess.sim.markets import DEFAULT_MARKETS, DERIVATIVE_VENUES, Market, Venue, index_markets
from ess.sim.ratelimit import RateCounters, RateLimiter, RateLimits

__all__ = ["ExchangeSimulator", "LoggedRequest", "SimEvent"]

_log = logger.bind(component="ess.sim")

#: What the HTTP-level faults answer: a gateway's page, not the exchange's JSON.
_GATEWAY_PAGES: dict[FaultKind, tuple[int, str]] = {
    FaultKind.HTTP_500: (500, "<html><body><h1>500 Internal Server Error</h1></body></html>"),
    FaultKind.HTTP_502: (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    FaultKind.HTTP_503: (503, "<html><body><h1>503 Service Unavailable</h1></body></html>"),
}


@dataclass
class LoggedRequest:
    """One request as the simulator saw it (the signature is never kept).

    ``status`` is ``None`` for a request that was never answered (``hang``, or
    ``exec_then_hang`` until released); ``code`` is the error code of an error answer, in
    the engine's (Binance's) codes; ``family`` names the API the request was sent to.
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
    family: str | None = None


@dataclass(frozen=True)
class SimEvent:
    """Something the simulator did on its own: ``countdown_cancel`` or ``late_fill``."""

    ts: float
    kind: str
    account: str
    symbol: str
    order_ids: tuple[int, ...] = ()


@dataclass
class _Switch:
    handle: asyncio.TimerHandle
    deadline: float


#: A dead-man's switch: (account, family, venue, symbol or ``None`` for every symbol).
SwitchKey = tuple[str, str, Venue, str | None]


class ExchangeSimulator:
    """A stateful exchange simulator (Binance, Bybit and OKX families) served over loopback HTTP.

    Use as ``async with ExchangeSimulator() as sim:`` (or ``await sim.start()`` /
    ``await sim.stop()``), then point ccxt at :attr:`url` with
    :func:`ess.venues.ccxt_client.make_exchange`. Seed state with :meth:`add_account`,
    :meth:`seed_position`, :meth:`seed_order`, :meth:`seed_balance`, :meth:`set_mark_price`,
    :meth:`set_hedge_mode` (two-sided positions on every derivative family, see
    ``docs/sim-hedge.md``); inspect it with :meth:`positions`, :meth:`hedge_positions`,
    :meth:`open_orders`, :meth:`fills`, :attr:`log`, :meth:`rate_counters`; act as the market
    with :meth:`fill_order`; break it with :meth:`add_fault`. Symbols are the engine's
    (Binance's) market ids, e.g. ``BTCUSDT``, whichever family a client uses.

    ``latency_ms`` delays every answer by a simulated network round trip (half before the
    exchange acts, half after), so that concurrency pays off as it does against a real venue
    20-50 ms away; loopback alone answers in about a millisecond.

    ``seed`` drives the RNG behind probabilistic faults. ``verify_signatures`` and
    ``check_recv_window`` can be turned off for hand-made requests; ``clock_skew_ms`` shifts the
    server clock (server time and the timestamp window check) to provoke timestamp errors.
    ``rate_limits``/``weights`` configure the Binance family's budgets; ``family_limits`` the
    others' (``{"bybit": {Venue.FUTURES: RateLimits(...)}}``).
    """

    def __init__(
        self,
        *,
        markets: Iterable[Market] | None = None,
        rate_limits: Mapping[Venue, RateLimits] | None = None,
        weights: Mapping[tuple[str, str], tuple[int, int]] | None = None,
        family_limits: Mapping[str, Mapping[Venue, RateLimits]] | None = None,
        seed: int = 0,
        verify_signatures: bool = True,
        check_recv_window: bool = True,
        clock_skew_ms: int = 0,
        latency_ms: float = 0.0,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        self.latency_ms = latency_ms
        self.markets_by_venue = index_markets(DEFAULT_MARKETS if markets is None else markets)
        self.marks: dict[tuple[Venue, str], Decimal] = {
            (venue, symbol): market.mark_price
            for venue, book in self.markets_by_venue.items()
            for symbol, market in book.items()
        }
        self.engine = Engine(self.markets_by_venue, self.marks, self.now_ms)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fault schedule, not crypto
        self.verify_signatures = verify_signatures
        self.check_recv_window = check_recv_window
        self.clock_skew_ms = clock_skew_ms
        self._accounts: dict[str, Account] = {}
        self._by_key: dict[str, Account] = {}
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._events: list[SimEvent] = []
        self._switches: dict[SwitchKey, _Switch] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        limits = family_limits or {}
        self._families: list[Family] = [
            BinanceFamily(self, RateLimiter(rate_limits, weights)),
            BybitFamily(self, BybitFamily.make_limiter(limits.get(BybitFamily.name))),
            OkxFamily(self, OkxFamily.make_limiter(limits.get(OkxFamily.name))),
        ]

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
        for switch in self._switches.values():
            switch.handle.cancel()
        self._switches.clear()
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
        passphrase: str | None = None,
    ) -> str:
        """Register an API key and its secret; return the account name used everywhere else.

        The name (default ``acct1``, ``acct2``...) is what logs and the request log show, so
        the API key itself never appears in them. ``passphrase`` is the API passphrase OKX
        requires with every signed request; an account without one cannot use that family.
        """
        if api_key in self._by_key:
            raise ValueError("API key already registered")
        name = name or f"acct{len(self._accounts) + 1}"
        if name in self._accounts:
            raise ValueError(f"account {name!r} already exists")
        account = Account(
            name=name,
            api_key=api_key,
            secret=secret,
            futures_wallet=Decimal(futures_usdt),
            passphrase=passphrase,
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
        """Switch the futures position mode of ``account``: hedge (two-sided) or one-way, for
        every derivative book and family at once (Binance USD-M and COIN-M ``dualSidePosition``,
        Bybit linear ``positionIdx`` 1/2, OKX swap ``long_short_mode``).

        Raises ``ValueError`` while the account holds a futures position or an open derivative
        order, as the exchanges refuse the switch then (and so no position or order ever
        belongs to the other mode).
        """
        state = self.account(account)
        if state.hedge_mode == hedge_mode:
            return
        blocker = state.mode_switch_blocker()
        if blocker == "position":
            raise ValueError(f"{account!r} holds a futures position: close it to switch mode")
        if blocker == "orders":
            raise ValueError(f"{account!r} has open derivative orders: cancel them to switch mode")
        state.hedge_mode = hedge_mode

    def seed_position(
        self,
        account: str,
        symbol: str,
        qty: Decimal | str | float,
        entry_price: Decimal | str,
        *,
        position_side: str | None = None,
    ) -> None:
        """Set a futures position (USD-M, or COIN-M in contracts for a COIN-M symbol): ``qty``
        signed (negative short), ``0`` removes it.

        In hedge mode ``position_side`` (``LONG``/``SHORT``) says which side, and ``qty``'s
        sign must match it (``LONG`` > 0, ``SHORT`` < 0); in one-way mode it is ``None`` or
        ``BOTH``. ``ValueError`` otherwise.
        """
        state = self.account(account)
        self.engine.market(self._derivative_venue(symbol), symbol)
        amount = Decimal(str(qty))
        side = position_side or "BOTH"
        if state.hedge_mode:
            if side not in {"LONG", "SHORT"}:
                raise ValueError("a hedge-mode position needs position_side LONG or SHORT")
            if amount and (amount > 0) != (side == "LONG"):
                raise ValueError(
                    f"a {side} position's qty must be {'>' if side == 'LONG' else '<'} 0"
                )
        elif side != "BOTH":
            raise ValueError("a one-way-mode position takes no position_side (or BOTH)")
        state.store_position(
            Position(symbol, amount, Decimal(str(entry_price)), update_ms=self.now_ms(), side=side)
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
        """Set a spot balance (free and locked), the futures USDT wallet, or (``Venue.COINM``)
        the COIN-M wallet of a margin asset (``BTC``...)."""
        state = self.account(account)
        if venue is Venue.COINM:
            if asset not in {m.margin_asset for m in self.markets_by_venue[Venue.COINM].values()}:
                raise ValueError(f"no COIN-M market is margined in {asset}")
            state.coinm_wallet[asset] = Decimal(free)
            return
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
        position_side: str | None = None,
    ) -> int:
        """Put a resting order on the book and return its id.

        ``order_type`` ``STOP_MARKET``/``TAKE_PROFIT_MARKET``/``STOP``/... makes it a conditional
        (algo) order, which lives in Binance's separate algo book: only
        ``cancel_all_orders(sym, {'trigger': True})`` removes it. A COIN-M symbol goes to the
        COIN-M book with the default ``venue``. On a hedge-mode account a derivative order
        needs ``position_side`` ``LONG``/``SHORT`` (SELL+LONG and BUY+SHORT close that side
        and are clipped to it when filled); elsewhere it is ``None`` (``ValueError``
        otherwise).
        """
        if venue is Venue.FUTURES:
            venue = self._derivative_venue(symbol)
        order = self.engine.seed_order(
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
            position_side=(position_side or "BOTH").upper(),
        )
        return order.order_id

    def set_mark_price(
        self, symbol: str, price: Decimal | str | float, *, venue: Venue | None = None
    ) -> None:
        """Set the price market orders fill at, on one venue or (default) on every venue
        that lists ``symbol``."""
        venues = (
            [venue]
            if venue is not None
            else [v for v in Venue if symbol in self.markets_by_venue[v]]
        )
        if not venues:
            raise KeyError(f"unknown symbol {symbol!r}")
        for each in venues:
            self.engine.market(each, symbol)
            self.marks[(each, symbol)] = Decimal(str(price))

    def mark_price(self, symbol: str, venue: Venue = Venue.FUTURES) -> Decimal:
        """The current mark of ``symbol`` on ``venue`` (a COIN-M symbol's with the default)."""
        if venue is Venue.FUTURES:
            venue = self._derivative_venue(symbol)
        return self.marks[(venue, symbol)]

    def _derivative_venue(self, symbol: str) -> Venue:
        """The derivative book listing ``symbol`` (USD-M when none does: its errors then)."""
        for venue in DERIVATIVE_VENUES:
            if symbol in self.markets_by_venue[venue]:
                return venue
        return Venue.FUTURES

    def markets(self, venue: Venue) -> list[Market]:
        """The markets listed on ``venue``, in ``exchangeInfo`` order."""
        return list(self.markets_by_venue[venue].values())

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
        return self.engine.fill_resting(
            state,
            order,
            Decimal(str(qty)) if qty is not None else None,
            Decimal(str(price)) if price is not None else None,
        )

    # -- inspection ------------------------------------------------------------------------

    def positions(self, account: str) -> dict[str, Position]:
        """Open one-way-mode futures positions by symbol, USD-M and COIN-M (copies; flat
        symbols are absent; COIN-M quantities are contracts). A hedge-mode account's are in
        :meth:`hedge_positions`."""
        return {s: copy.copy(p) for s, p in self.account(account).positions.items() if p.qty}

    def hedge_positions(self, account: str) -> dict[tuple[str, str], Position]:
        """Open hedge-mode futures positions by ``(symbol, "LONG"/"SHORT")``, USD-M and
        COIN-M (copies; signed ``qty``: a ``SHORT`` one is negative; flat sides are absent)."""
        return {
            key: copy.copy(p) for key, p in self.account(account).hedge_positions.items() if p.qty
        }

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

    def coinm_wallet(self, account: str, asset: str) -> Decimal:
        """A COIN-M wallet balance (``BTC``...): seeded amount plus realized inverse PnL."""
        return self.account(account).coinm_wallet.get(asset, ZERO)

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

    def rate_counters(
        self, venue: Venue, account: str | None = None, *, family: str = "binance"
    ) -> RateCounters:
        """Rate-limit usage of ``venue`` on ``family`` (order counts of ``account``, or of all
        accounts).

        To prove a client stayed within budget: ``rejected == 0`` and ``banned == 0``; the
        ``peak_*`` fields show the closest it came.
        """
        return self.family(family).limiter.counters(venue, account)

    def countdowns(self, account: str, *, family: str | None = None) -> dict[str, float]:
        """Armed dead-man's switches of ``account``: symbol (or ``*`` for one that covers
        every symbol of a venue) -> seconds left; on every family unless ``family`` says."""
        now = asyncio.get_running_loop().time()
        return {
            symbol or "*": max(0.0, switch.deadline - now)
            for (name, owner, _, symbol), switch in self._switches.items()
            if name == account and (family is None or owner == family)
        }

    def family(self, name: str) -> Family:
        """The API family ``name`` (``binance``, ``bybit``, ``okx``)."""
        for family in self._families:
            if family.name == name:
                return family
        raise KeyError(f"unknown family {name!r}")

    def account_by_key(self, api_key: str) -> Account | None:
        """The account an API key belongs to (families authenticate with it)."""
        return self._by_key.get(api_key)

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

    def take_fault(
        self, ctx: Ctx, kinds: Iterable[FaultKind] | None, exclude: bool
    ) -> Fault | None:
        """The first live fault matching ``ctx`` whose kind is (``exclude=False``) or is not
        (``exclude=True``) in ``kinds``, counted as fired; ``None`` if none fires."""
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

    # -- request pipeline ------------------------------------------------------------------

    def now_ms(self) -> int:
        """The server clock in epoch milliseconds (shifted by ``clock_skew_ms``)."""
        return int(time.time() * 1000) + self.clock_skew_ms

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.method.upper()
        path = request.path
        entry = LoggedRequest(
            ts=time.time(), method=method, path=path, params={}, account=None, venue=None
        )
        self._log.append(entry)
        family = next((each for each in self._families if each.owns(path)), None)
        if family is None:
            entry.status = 404
            return web.Response(status=404, text="<html><body>404 Not Found</body></html>")
        ctx = Ctx(
            method=method,
            path=path,
            entry=entry,
            headers=request.headers,
            raw_query=request.rel_url.raw_query_string,
            raw_body=(
                (await request.read()).decode("utf-8", "replace") if request.can_read_body else ""
            ),
        )
        await family.parse(request, ctx)
        known = self._by_key.get(ctx.api_key) if ctx.api_key else None
        ctx.venue = family.venue_of(ctx)
        entry.params = dict(ctx.params)
        entry.account = known.name if known else None
        entry.venue = ctx.venue
        entry.family = family.name
        try:
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 2000)
            response = await self._pipeline(family, ctx)
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 2000)
            return response
        finally:
            _log.bind(
                method=method,
                path=path,
                family=family.name,
                account=entry.account,
                status=entry.status,
                code=entry.code,
                fault=entry.fault,
                weight=entry.weight,
            ).debug("sim request")

    async def _pipeline(self, family: Family, ctx: Ctx) -> web.StreamResponse:
        entry = ctx.entry
        route = family.routes.get((ctx.method, ctx.path))
        venue = ctx.venue
        if route is None or venue is None:
            entry.status = 404
            return web.Response(status=404, text="<html><body>404 Not Found</body></html>")
        weight, refusal = family.limiter.admit(
            venue, entry.account, ctx.method, ctx.path, ctx.params
        )
        entry.weight = weight
        if refusal is not None:
            return self._error(family, ctx, refusal, refused=True)
        fault = self.take_fault(ctx, ENGINE_KINDS, exclude=True)
        if fault is not None and fault.kind not in POST_KINDS:
            early = await self._pre_fault(family, ctx, fault)
            if early is not None:
                return early
            fault = None  # a slow answer (hang with delay_s): now served normally
        try:
            if route.signed:
                ctx.account = family.authenticate(ctx)
            payload = await route.handler(ctx)
            status, document = family.render(ctx, payload)
            response: web.StreamResponse = self._json(family, ctx, status, document)
        except ApiError as err:
            response = self._error(family, ctx, err)
        except Exception:  # a simulator bug: answer like the exchange's catch-all, keep the trace
            _log.bind(method=ctx.method, path=ctx.path).exception("sim handler failed")
            unknown = ApiError(-1000, "An unknown error occured while processing the request.")
            response = self._error(family, ctx, unknown)
        if fault is not None:
            return await self._post_fault(family, ctx, fault, response)
        return response

    async def _pre_fault(self, family: Family, ctx: Ctx, fault: Fault) -> web.StreamResponse | None:
        if fault.kind is FaultKind.HANG:
            released = await self._hold(fault.delay_s)
            if not released:
                return None
            ctx.entry.status = None
            return web.Response(status=503, text="simulator stopped")
        if fault.kind is FaultKind.ERROR:
            err = ApiError(fault.code, fault.msg, fault.status, native=True)
            return self._error(family, ctx, err)
        page = _GATEWAY_PAGES.get(fault.kind)
        if page is not None:
            ctx.entry.status = page[0]
            return web.Response(status=page[0], text=page[1], content_type="text/html")
        canned = family.canned(fault.kind)
        return self._error(family, ctx, canned, refused=canned.status in {418, 429})

    async def _post_fault(
        self, family: Family, ctx: Ctx, fault: Fault, response: web.StreamResponse
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
        body = "" if fault.kind is FaultKind.EMPTY else family.mangled_body
        return web.Response(
            status=200, text=body, content_type="application/json", headers=family.headers(ctx)
        )

    async def _hold(self, delay_s: float | None) -> bool:
        """Wait ``delay_s`` (``None``: forever); ``True`` if released by :meth:`stop` first."""
        try:
            await asyncio.wait_for(self._released.wait(), timeout=delay_s)
        except TimeoutError:
            return False
        return True

    def _json(
        self, family: Family, ctx: Ctx, status: int, document: Any, refused: ApiError | None = None
    ) -> web.Response:
        ctx.entry.status = status
        return web.Response(
            status=status,
            text=json.dumps(document, separators=(",", ":")),
            content_type="application/json",
            headers=family.headers(ctx, refused=refused),
        )

    def _error(
        self, family: Family, ctx: Ctx, err: ApiError, *, refused: bool = False
    ) -> web.Response:
        status, document = family.render_error(ctx, err)
        response = self._json(family, ctx, status, document, err if refused else None)
        ctx.entry.code = err.code
        return response

    # -- cancels, late fills and dead-man's switches ---------------------------------------

    def cancel_orders(self, ctx: Ctx, orders: list[Order]) -> None:
        """Cancel ``orders``, unless a ``late_fill`` fault turns the cancel into a late fill:
        the orders leave the book now (the client is told they are cancelled) and are filled
        ``delay_s`` later (0: before this answer is sent)."""
        account = ctx.acct
        fault = self.take_fault(ctx, {FaultKind.LATE_FILL}, exclude=False) if orders else None
        if fault is None:
            for order in orders:
                self.engine.cancel(account, order)
            return
        for order in orders:
            self.engine.detach(order)
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
            if self.engine.fill_resting(account, order, late=True) is not None:
                filled.append(order.order_id)
        symbols = sorted({order.symbol for order in orders})
        self._events.append(
            SimEvent(time.time(), "late_fill", account.name, ",".join(symbols), tuple(filled))
        )
        _log.bind(account=account.name, symbols=symbols, orders=filled).info("sim late fill")

    def arm_switch(
        self, account: str, family: str, venue: Venue, symbol: str | None, timeout_ms: int
    ) -> None:
        """(Re)arm, or with ``timeout_ms=0`` disarm, a dead-man's switch: when it expires
        without being refreshed, the account's open regular orders on ``venue`` (of ``symbol``,
        or every symbol for ``None``) are cancelled by the server.

        Only the regular book is cancelled: exchanges document these switches as cancelling
        "all open orders", and whether that covers conditional orders is not something to rely
        on, so the simulator assumes it does not.
        """
        key: SwitchKey = (account, family, venue, symbol)
        previous = self._switches.pop(key, None)
        if previous is not None:
            previous.handle.cancel()
        if timeout_ms:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(timeout_ms / 1000, self._switch_fire, key)
            self._switches[key] = _Switch(handle, loop.time() + timeout_ms / 1000)

    def _switch_fire(self, key: SwitchKey) -> None:
        name, family, venue, symbol = key
        self._switches.pop(key, None)
        account = self._accounts[name]
        orders = account.open_orders(venue, symbol)
        for order in orders:
            self.engine.cancel(account, order)
        ids = tuple(order.order_id for order in orders)
        self._events.append(SimEvent(time.time(), "countdown_cancel", name, symbol or "*", ids))
        _log.bind(account=name, family=family, symbol=symbol, cancelled=len(ids)).info(
            "sim dead-man's switch expired"
        )

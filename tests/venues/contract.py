"""The venue contract: what "a supported venue" means, once, for every adapter.

A test module subclasses :class:`VenueContract`, sets ``kind`` (the market the pair serves)
and provides an ``open_pair`` fixture: ``await open_pair(**config_overrides)`` opens a *new*
adapter on the test's simulator account each time it is called (a second instance is how a
fresh, independent read and a restarted executor are modelled; ``account=`` names another
account made by :func:`add_account`) and returns a :class:`Pair`: the opened adapter plus the
simulator, the account and the mapping from the simulator's market ids to the adapter's
symbols. :func:`opening` builds such a fixture from a function that builds the adapter.
The pair's :class:`SimBook` says which simulator book its exposure lives in (default: USD-M
futures or spot by ``kind``; COIN-M passes its own, which also scales the contract's sizes to
whole contracts and names its markets).

Every case runs the real flatten engine (:class:`~ess.roles.execute.engine.VenueFlattener`)
through real ccxt over HTTP against the simulator; nothing is mocked. Success is always
checked by a fresh read: the simulator's own books, and a new adapter instance's snapshot.
What a supported venue guarantees:

1. both order books (regular and conditional) are cancelled on every symbol;
2. every position is closed (reduce-only on futures; on spot every balance is sold into the
   quote except ``keep_assets``), dust is reported and not counted, and a spot balance without
   a market is stranded exposure that is never read as flat;
3. an empty or mangled answer to any read a snapshot is built from raises ``MALFORMED``, and
   the engine never reports flat on it;
4. a flatten cut short and finished by a fresh engine and adapter closes each contract exactly
   once in total, never flipping a position;
5. an order the venue reported cancelled that fills later is closed again while ACTIVE;
6. with every simulator fault kind firing on 30 % of requests, the venue ends flat within a
   deadline and no close of ESS ever flips a position.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

from ess.chaos.venue import arm_faults, count_flips
from ess.clock import SystemClock
from ess.core import Activation
from ess.core.flatten import MarketKind, PositionView, VenueSnapshot
from ess.roles.execute.engine import Phase, VenueFlattener
from ess.settings import ExecuteSettings
from ess.sim import ExchangeSimulator, FaultKind, RateLimits, Venue, default_markets
from ess.sim.book import PENDING_FILL
from ess.sim.markets import fmt
from ess.venues.budget import RateBudget
from ess.venues.config import VenueConfig, VenueCredentials
from ess.venues.ports import VenueError, VenueErrorKind, VenuePort
from schemas import ActionReport, ReasonCode
from tests.helpers import eventually

D = Decimal

#: The engine's pace in these tests: short backoffs, a quick keep-flat loop.
SETTINGS = ExecuteSettings(
    flatten_deadline_sec=5.0,
    stalled_report_interval_sec=1.0,
    enforce_interval_sec=0.05,
    backoff_initial_sec=0.01,
    backoff_max_sec=0.2,
    status_port=-1,
)
#: How long a flatten without faults may take (generous: the machine may be busy).
FLAT_WITHIN_S = 15.0
#: How long a flatten under 30 % faults may take (a 429/418 costs a 1 s ``Retry-After``).
FAULTY_FLAT_WITHIN_S = 30.0
#: Runs under 30 % faults per pair, side by side on one simulator.
FAULTY_RUNS = 3
FAULT_SEED = 7
#: A late fill lands this long after the cancel was answered: after the first verified-flat
#: read, so that the keep-flat loop (not the first flatten) has to find it.
LATE_FILL_DELAY_S = 0.5

#: One generated futures market (order-only symbol) and one for dust; three spot ones
#: (a third base asset to sell, one kept on purpose, one for dust).
EXTRA_FUTURES = 2
EXTRA_SPOT = 3

#: The endpoints the simulator serves per market kind (both adapters reach the same ones).
ORDER_PATH: dict[MarketKind, str] = {
    MarketKind.FUTURES: "/fapi/v1/order",
    MarketKind.SPOT: "/api/v3/order",
}
CANCEL_PATH: dict[MarketKind, str] = {
    MarketKind.FUTURES: "/fapi/v1/allOpenOrders",
    MarketKind.SPOT: "/api/v3/openOrders",
}
VENUE_OF: dict[MarketKind, Venue] = {MarketKind.FUTURES: Venue.FUTURES, MarketKind.SPOT: Venue.SPOT}
QUOTE = "USDT"


@dataclass(frozen=True)
class SimBook:
    """The simulator book a pair trades, and how the contract's market ids and sizes (written
    for USD-M and spot: ``BTCUSDT``, 0.5) read there."""

    venue: Venue
    order_path: str
    cancel_path: str
    #: The contract's market id -> this book's (``BTCUSDT`` -> ``BTCUSD_PERP``); the same id
    #: when absent.
    ids: Mapping[str, str] = field(default_factory=dict)
    #: The contract's sizes are multiplied by this (COIN-M: 100, whole contracts).
    unit: Decimal = Decimal(1)
    #: Arms every fault kind on the book's endpoints (the contract's sixth case).
    arm: Callable[[ExchangeSimulator], None] = arm_faults

    def id(self, market_id: str) -> str:
        return self.ids.get(market_id, market_id)

    def size(self, size: str | Decimal) -> Decimal:
        return Decimal(fmt(Decimal(size) * self.unit))  # "0.04", not "0.0400"


#: The book of each market kind unless a pair names its own.
BOOKS: dict[MarketKind, SimBook] = {
    kind: SimBook(VENUE_OF[kind], ORDER_PATH[kind], CANCEL_PATH[kind]) for kind in MarketKind
}


# -- the pair under test -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One opened adapter on the simulator account it trades, and how to name its symbols."""

    venue: VenuePort
    sim: ExchangeSimulator
    account: str
    #: The simulator's market id (``BTCUSDT``) -> the adapter's symbol (``BTC/USDT:USDT``).
    symbol: Callable[[str], str]
    #: The simulator book traded (``None``: the one of ``kind``, see :data:`BOOKS`).
    book: SimBook | None = None

    @property
    def kind(self) -> MarketKind:
        return self.venue.kind

    @property
    def sim_book(self) -> SimBook:
        return self.book or BOOKS[self.kind]

    @property
    def sim_venue(self) -> Venue:
        return self.sim_book.venue


#: ``await open_pair(account=None, **config_overrides)``: a new, opened adapter on the test's
#: account (or on ``account``, made by :func:`add_account`).
OpenPair = Callable[..., Awaitable[Pair]]
#: Builds an (unopened) adapter from config overrides (``account`` among them when it is not
#: the default one) and the account's credentials.
BuildVenue = Callable[[dict[str, Any], VenueCredentials], VenuePort]


def add_account(sim: ExchangeSimulator, name: str) -> str:
    """Another account on ``sim`` (1000 USDT on spot), for runs side by side."""
    credentials = account_credentials(name)
    return sim.add_account(
        credentials.api_key.get_secret_value(),
        credentials.secret.get_secret_value(),
        name=name,
        spot={QUOTE: "1000"},
    )


def account_credentials(name: str) -> VenueCredentials:
    """The (simulator-only) credentials of an account made by :func:`add_account`."""
    return VenueCredentials(
        api_key=SecretStr(f"contract-key-{name}"), secret=SecretStr(f"contract-secret-{name}")
    )


def short_budget(config: VenueConfig) -> RateBudget:
    """The config's budget over 1 s windows, matching the simulator's (as the fault campaign
    does): a run with many retries is not throttled to a handful of reads per minute."""
    return RateBudget(
        config.weight_per_minute,
        config.orders_per_10s,
        config.max_in_flight,
        weight_window_s=1.0,
        orders_window_s=1.0,
    )


@contextlib.asynccontextmanager
async def opening(
    sim: ExchangeSimulator,
    default_account: str,
    credentials: VenueCredentials,
    build: BuildVenue,
    symbol: Callable[[str], str],
    *,
    book: SimBook | None = None,
) -> AsyncIterator[OpenPair]:
    """An ``open_pair`` factory over ``build`` for ``default_account`` (whose ``credentials``
    these are) trading ``book`` (default: the one of the adapter's kind); every adapter it
    opened is closed on leaving."""
    opened: list[VenuePort] = []

    async def open_pair(*, account: str | None = None, **overrides: Any) -> Pair:
        if account is None:
            venue = build(overrides, credentials)
        else:
            venue = build({**overrides, "account": account}, account_credentials(account))
        assert isinstance(venue, VenuePort)
        opened.append(venue)
        await venue.open()
        return Pair(venue, sim, account or default_account, symbol, book)

    try:
        yield open_pair
    finally:
        for venue in opened:
            await venue.aclose()


def unified_symbol(
    sim: ExchangeSimulator, kind: MarketKind, venue: Venue | None = None
) -> Callable[[str], str]:
    """ccxt's unified symbols for the simulator's markets of ``venue`` (default: the kind's
    book): ``BTC/USDT:USDT``, ``BTC/USDT``, COIN-M's ``BTC/USD:BTC``."""
    markets = {market.symbol: market for market in sim.markets(venue or VENUE_OF[kind])}

    def symbol(market_id: str) -> str:
        market = markets[market_id]
        settle = f":{market.margin_asset}" if kind is MarketKind.FUTURES else ""
        return f"{market.base}/{market.quote}{settle}"

    return symbol


def market_id(market_id: str) -> str:
    """The Binance adapter names symbols by the venue's market id, as the simulator does."""
    return market_id


# -- the engine ----------------------------------------------------------------------------------


def activation(seq: int = 0) -> Activation:
    return Activation(
        seq=seq,
        command_id=f"contract-trip-{seq}",
        reason=ReasonCode.MANUAL,
        detail="venue contract",
        source="operator:test",
        trigger=None,
        ts=datetime(2026, 11, 30, tzinfo=UTC),
    )


@dataclass
class Run:
    """One engine enforcing an activation on one venue, and every report it made."""

    flattener: VenueFlattener
    reports: list[ActionReport] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def outcomes(self) -> list[tuple[str, str]]:
        return [(report.action, report.outcome) for report in self.reports]

    def count(self, action: str, outcome: str) -> int:
        return self.outcomes().count((action, outcome))

    def details(self, action: str, outcome: str) -> list[dict[str, Any]]:
        return [
            json.loads(report.detail)
            for report in self.reports
            if (report.action, report.outcome) == (action, outcome)
        ]

    async def until(
        self, action: str, outcome: str, *, times: int = 1, within: float = FLAT_WITHIN_S
    ) -> None:
        def seen() -> bool:
            assert self.count(action, outcome) >= times, (
                f"waiting for {times} x {action}/{outcome}; last reports: {self.outcomes()[-6:]}"
            )
            return True

        await eventually(seen, timeout=within)

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


Start = Callable[..., Run]


# -- books ---------------------------------------------------------------------------------------


def seed_book(
    sim: ExchangeSimulator, account: str, kind: MarketKind, book: SimBook | None = None
) -> dict[str, Decimal]:
    """A small book on several symbols; returns the exposure by market id (signed futures
    positions, or spot base balances free plus locked). Futures symbols and sizes are read
    through ``book`` (COIN-M: its markets, in contracts).

    Futures: BTC +0.5, ETH -2, SOL +10; regular orders on BTC, ETH and SIM001 (no position
    there); conditional (algo) orders on BTC, ETH and SIM001. Spot: 0.2 BTC, 1.5 ETH and
    20 SIM001, with resting sells locking part of BTC and SIM001, and resting buys on ETH and
    SIM002 locking USDT (spot conditional orders are not modelled by the simulator).
    """
    if kind is MarketKind.FUTURES:
        at = book or BOOKS[kind]
        sizes = (("BTCUSDT", "0.5"), ("ETHUSDT", "-2"), ("SOLUSDT", "10"))
        positions = {at.id(symbol): at.size(size) for symbol, size in sizes}
        for symbol, size in positions.items():
            sim.seed_position(account, symbol, size, sim.mark_price(symbol))
        sim.seed_order(account, at.id("BTCUSDT"), "BUY", at.size("0.01"), "50000")
        sim.seed_order(account, at.id("ETHUSDT"), "BUY", at.size("1"), "2800", reduce_only=True)
        sim.seed_order(account, at.id("SIM001USDT"), "BUY", at.size("2"), "30")
        conditional = (
            ("BTCUSDT", "SELL", "0.5", "STOP_MARKET", "55000", True),
            ("ETHUSDT", "BUY", "2", "TAKE_PROFIT_MARKET", "2500", True),
            ("SIM001USDT", "BUY", "2", "STOP_MARKET", "45", False),
        )
        for symbol, side, qty, order_type, trigger, reduce_only in conditional:
            sim.seed_order(
                account,
                at.id(symbol),
                side,
                at.size(qty),
                order_type=order_type,
                trigger_price=trigger,
                reduce_only=reduce_only,
            )
        return {symbol: D(size) for symbol, size in positions.items()}
    balances = {"BTC": "0.2", "ETH": "1.5", "SIM001": "20"}
    for asset, amount in balances.items():
        sim.seed_balance(account, asset, amount)
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    sim.seed_order(account, "ETHUSDT", "BUY", "0.1", "2800", venue=Venue.SPOT)
    sim.seed_order(account, "SIM001USDT", "SELL", "5", "50", venue=Venue.SPOT)
    sim.seed_order(account, "SIM002USDT", "BUY", "2", "60", venue=Venue.SPOT)
    return {f"{asset}{QUOTE}": D(amount) for asset, amount in balances.items()}


def exposure(sim: ExchangeSimulator, account: str, kind: MarketKind) -> dict[str, Decimal]:
    """What the simulator itself holds: futures positions, or spot base balances (free plus
    locked, the quote excluded) by their ``<asset>USDT`` market id (the asset if none)."""
    if kind is MarketKind.FUTURES:
        return {symbol: position.qty for symbol, position in sim.positions(account).items()}
    state = sim.account(account)
    held: dict[str, Decimal] = {}
    for asset in sorted(set(state.spot_free) | set(state.spot_locked)):
        total = sum(sim.spot_balance(account, asset), D(0))
        if asset != QUOTE and total:
            listed = any(m.symbol == f"{asset}{QUOTE}" for m in sim.markets(Venue.SPOT))
            held[f"{asset}{QUOTE}" if listed else asset] = total
    return held


def pending_late_fills(sim: ExchangeSimulator, account: str) -> list[int]:
    """Orders a cancel took off the book whose late fill has not landed yet."""
    state = sim.account(account)
    books = (*state.orders.values(), *state.algo_orders.values())
    return [order.order_id for order in books if order.status == PENDING_FILL]


def closed_by_symbol(sim: ExchangeSimulator, account: str, kind: MarketKind) -> dict[str, Decimal]:
    """Quantity filled per symbol by anything but a late fill (ESS's closes, in these tests);
    futures: on every derivative book."""
    closed: dict[str, Decimal] = {}
    for fill in sim.fills(account):
        if (fill.venue is Venue.SPOT) is (kind is MarketKind.SPOT) and not fill.late:
            closed[fill.symbol] = closed.get(fill.symbol, D(0)) + fill.qty
    return closed


def assert_never_flipped(pair: Pair, start: dict[str, Decimal]) -> None:
    """No fill of ESS ever took a futures position through zero or opened one; on spot, ESS
    only ever sold (it cannot go short), and no balance went negative."""
    if pair.kind is MarketKind.FUTURES:
        if pair.sim_venue is Venue.FUTURES:
            ours, _late = count_flips(pair.sim, pair.account, start)
        else:  # count_flips replays USD-M fills: replay this book's the same way
            ours = _flips(pair, start)
        assert ours == 0, f"{ours} close(s) of ESS flipped or opened a position"
        return
    orders = pair.sim.requests("POST", ORDER_PATH[MarketKind.SPOT], account=pair.account)
    assert {request.params.get("side") for request in orders} <= {"SELL"}
    assert all(fill.side == "SELL" for fill in pair.sim.fills(pair.account) if not fill.late)
    state = pair.sim.account(pair.account)
    assert all(amount >= 0 for amount in (*state.spot_free.values(), *state.spot_locked.values()))


def _flips(pair: Pair, start: dict[str, Decimal]) -> int:
    """Fills on the pair's book, not late ones, that took a position through zero or opened
    one from flat, replaying every fill from ``start``."""
    running = dict(start)
    ours = 0
    for fill in pair.sim.fills(pair.account):
        if fill.venue is not pair.sim_venue:
            continue
        before = running.get(fill.symbol, Decimal(0))
        after = before + (fill.qty if fill.side == "BUY" else -fill.qty)
        if (before * after < 0 or (before == 0 and after != 0)) and not fill.late:
            ours += 1
        running[fill.symbol] = after
    return ours


async def fresh_snapshot(open_pair: OpenPair, **overrides: Any) -> VenueSnapshot:
    """A read by a new adapter instance: nothing the engine's adapter cached can leak in."""
    fresh = await open_pair(**overrides)
    return await fresh.venue.snapshot()


# -- the contract --------------------------------------------------------------------------------


@pytest.mark.integration
class VenueContract:
    """What every supported adapter-and-venue pair guarantees. Subclasses set ``kind`` and
    provide the ``open_pair`` fixture (see the module docstring)."""

    kind: ClassVar[MarketKind]

    @pytest.fixture
    async def sim(self) -> AsyncIterator[ExchangeSimulator]:
        """Default and a few generated markets; Binance's budgets over 1 s windows, so a
        429/418 says ``Retry-After: 1``; the fault RNG seeded (reproducible up to timing)."""
        limits = {
            Venue.FUTURES: RateLimits(weight_window_s=1.0, orders_10s_window_s=1.0),
            Venue.SPOT: RateLimits(
                weight_per_window=6000, weight_window_s=1.0, orders_per_minute=None
            ),
            Venue.COINM: RateLimits(weight_window_s=1.0, orders_per_10s=None),
        }
        markets = default_markets(
            extra_futures=EXTRA_FUTURES, extra_spot=EXTRA_SPOT, extra_coinm=EXTRA_FUTURES
        )
        simulator = ExchangeSimulator(
            markets=markets,
            rate_limits=limits,
            seed=FAULT_SEED,
        )
        async with simulator:
            yield simulator

    @pytest.fixture
    async def start(self) -> AsyncIterator[Start]:
        """``start(venue, settings=SETTINGS, seq=0)``: the engine enforcing an activation on
        ``venue`` until halted (every run is halted at teardown)."""
        runs: list[Run] = []

        def starter(venue: VenuePort, *, settings: ExecuteSettings = SETTINGS, seq: int = 0) -> Run:
            reports: list[ActionReport] = []
            flattener = VenueFlattener(venue, settings, clock=SystemClock(), report=reports.append)
            run = Run(flattener, reports)
            run.task = asyncio.create_task(flattener.enforce(activation(seq), run.stop))
            runs.append(run)
            return run

        yield starter
        for run in runs:
            await run.halt()

    # 1 -------------------------------------------------------------------------------------

    async def test_both_books_are_cancelled_on_every_symbol(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Regular and conditional (algo) orders on several symbols, some without a
        position, are all gone after a flatten: the simulator shows every one cancelled and a
        new adapter instance reads no open order."""
        pair = await open_pair()
        seed_book(pair.sim, pair.account, pair.kind, pair.sim_book)
        seeded = pair.sim.open_orders(pair.account)
        symbols = {order.symbol for order in seeded}
        conditional = {order.symbol for order in seeded if order.conditional}
        assert len(symbols) >= 3
        before = await pair.venue.snapshot()
        assert {order.symbol for order in before.orders} == {pair.symbol(s) for s in symbols}
        assert {o.symbol for o in before.orders if o.conditional} == {
            pair.symbol(s) for s in conditional
        }

        run = start(pair.venue)
        await run.until("flatten", "verified_flat")

        assert pair.sim.open_orders(pair.account) == []
        assert all(pair.sim.order(pair.account, o.order_id).status == "CANCELED" for o in seeded)
        after = await fresh_snapshot(open_pair)
        assert after.orders == ()
        assert after.flat
        cancelled = {(d["symbol"], d["conditional"]) for d in run.details("cancel", "ok")}
        expected = {(pair.symbol(o.symbol), o.conditional) for o in seeded}
        assert expected <= cancelled
        if pair.kind is MarketKind.FUTURES:
            assert len(conditional) >= 2  # the algo book was really exercised
        else:
            assert not conditional  # the simulator keeps no spot trigger book

    # 2 -------------------------------------------------------------------------------------

    async def test_every_position_is_closed_and_verified_by_fresh_reads(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Futures: reduce-only market closes for exactly the position. Spot: every balance
        with a market is sold into the quote, ``keep_assets`` is left alone. Both: exposure
        below the lot size is reported as dust and does not block "flat"."""
        keep = {"keep_assets": ("SIM002",)} if self.kind is MarketKind.SPOT else {}
        pair = await open_pair(**keep)
        start_exposure = seed_book(pair.sim, pair.account, pair.kind, pair.sim_book)
        if pair.kind is MarketKind.FUTURES:
            # below the step (USD-M 0.001; COIN-M 1 contract)
            book = pair.sim_book
            dust_symbol, dust_qty = book.id("SIM002USDT"), book.size("0.0004")
            pair.sim.seed_position(pair.account, dust_symbol, dust_qty, "75")
        else:
            dust_symbol, dust_qty = "SIM003USDT", D("0.0004")  # step 0.001
            pair.sim.seed_balance(pair.account, "SIM003", dust_qty)
            pair.sim.seed_balance(pair.account, "SIM002", "7")
        usdt_before = sum(pair.sim.spot_balance(pair.account, QUOTE), D(0))

        run = start(pair.venue)
        await run.until("flatten", "verified_flat")

        left = exposure(pair.sim, pair.account, pair.kind)
        if pair.kind is MarketKind.SPOT:
            assert left == {"SIM002USDT": D(7), dust_symbol: dust_qty}
            assert sum(pair.sim.spot_balance(pair.account, QUOTE), D(0)) > usdt_before
        else:
            assert left == {dust_symbol: dust_qty}
        assert closed_by_symbol(pair.sim, pair.account, pair.kind) == {
            symbol: abs(size) for symbol, size in start_exposure.items()
        }
        orders = pair.sim.requests("POST", pair.sim_book.order_path, account=pair.account)
        assert len(orders) == len(start_exposure)
        assert all(o.params["newClientOrderId"].startswith("ess-") for o in orders)
        assert all(o.params["type"] == "MARKET" for o in orders)
        if pair.kind is MarketKind.FUTURES:
            assert all(o.params.get("reduceOnly") == "true" for o in orders)
        else:
            # Spot has no reduce-only (Binance refuses the parameter): only sells.
            assert all("reduceOnly" not in o.params for o in orders)
            assert {o.params["side"] for o in orders} == {"SELL"}
        assert_never_flipped(pair, start_exposure)
        await run.until("flatten", "dust")
        (dust,) = run.details("flatten", "dust")
        assert dust["dust"] == {pair.symbol(dust_symbol): str(dust_qty)}
        fresh = await fresh_snapshot(open_pair, **keep)
        assert fresh.flat
        assert fresh.positions == ()
        assert fresh.dust == (PositionView(pair.symbol(dust_symbol), dust_qty),)

    async def test_a_balance_with_no_market_is_stranded_and_never_read_as_flat(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Spot: an asset with no ``<asset><quote>`` market cannot be sold; it is reported
        (``stranded``) and the engine keeps the venue not-flat, reporting ``stalled``, while
        selling everything it can."""
        pair = await open_pair()
        seed_book(pair.sim, pair.account, pair.kind, pair.sim_book)
        pair.sim.seed_balance(pair.account, "XYZ", "3")  # no XYZUSDT market

        snapshot = await pair.venue.snapshot()
        assert snapshot.stranded == (PositionView("XYZ", D(3)),)
        assert not snapshot.flat
        quick = SETTINGS.model_copy(update={"flatten_deadline_sec": 0.5})
        run = start(pair.venue, settings=quick)

        await eventually(
            lambda: exposure(pair.sim, pair.account, pair.kind) == {"XYZ": D(3)},
            timeout=FLAT_WITHIN_S,
        )
        await run.until("flatten", "stalled")
        assert run.count("flatten", "verified_flat") == 0
        assert run.flattener.progress.phase is Phase.STALLED
        assert pair.sim.open_orders(pair.account) == []
        fresh = await fresh_snapshot(open_pair)
        assert fresh.stranded == (PositionView("XYZ", D(3)),)
        assert fresh.positions == ()
        assert not fresh.flat

    # 3 -------------------------------------------------------------------------------------

    async def test_an_empty_or_malformed_read_is_never_read_as_flat(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Every read a snapshot is built from (found from the simulator's log, one-off reads
        of a first snapshot included), answered with an empty or unparseable HTTP 200 body,
        makes the snapshot of a new adapter raise ``MALFORMED``; the engine reading through
        such answers never reports flat nor acts, and flattens once the answers are sound."""
        probe = await open_pair()
        start_exposure = seed_book(probe.sim, probe.account, probe.kind, probe.sim_book)
        sim, account = probe.sim, probe.account
        sim.clear_log()
        assert not (await probe.venue.snapshot()).flat
        reads = sorted({(r.method, r.path) for r in sim.requests(account=account)})
        assert reads, "the snapshot made no signed read"
        assert {method for method, _ in reads} == {"GET"}

        for method, path in reads:
            for kind in (FaultKind.EMPTY, FaultKind.BAD_JSON):
                pair = await open_pair()
                fault = sim.add_fault(method, path, kind)
                with pytest.raises(VenueError) as raised:
                    await pair.venue.snapshot()
                assert raised.value.kind is VenueErrorKind.MALFORMED, (path, kind.value)
                assert fault.hits == 1, (path, kind.value)
                assert not (await pair.venue.snapshot()).flat  # sound again: all there
                await pair.venue.aclose()

        pair = await open_pair()
        pair.sim.clear_log()
        for index, (method, path) in enumerate(reads):
            kind = (FaultKind.EMPTY, FaultKind.BAD_JSON)[index % 2]
            pair.sim.add_fault(method, path, kind, times=None)
        run = start(pair.venue)
        await run.until("read", "failed", times=5)
        assert run.count("flatten", "verified_flat") == 0
        assert run.flattener.progress.phase is Phase.FLATTENING
        assert pair.sim.requests(account=pair.account, method="POST") == []
        assert pair.sim.requests(account=pair.account, method="DELETE") == []
        assert exposure(pair.sim, pair.account, pair.kind) == start_exposure

        pair.sim.clear_faults()
        await run.until("flatten", "verified_flat")
        assert exposure(pair.sim, pair.account, pair.kind) == {}

    # 4 -------------------------------------------------------------------------------------

    async def test_a_restarted_flatten_closes_each_contract_exactly_once(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """The first engine dies mid-flatten: one close executed but unanswered, one never
        executed (the request hangs), one done. A fresh engine with a fresh adapter finishes;
        the simulator's fills show every contract closed exactly once, nothing flipped."""
        first = await open_pair()
        start_exposure = seed_book(first.sim, first.account, first.kind, first.sim_book)
        order_path = first.sim_book.order_path
        done, unanswered, never = sorted(start_exposure)
        sim = first.sim
        sim.add_fault(
            "POST", order_path, "exec_then_hang", times=None, params={"symbol": unanswered}
        )
        sim.add_fault("POST", order_path, "hang", times=None, params={"symbol": never})
        first_run = start(first.venue)

        def cut_short() -> bool:
            closed = closed_by_symbol(sim, first.account, first.kind)
            assert closed.get(done) == abs(start_exposure[done])
            assert closed.get(unanswered) == abs(start_exposure[unanswered])
            hung = sim.requests("POST", order_path, account=first.account)
            assert any(r.params.get("symbol") == never for r in hung)
            return True

        await eventually(cut_short, timeout=FLAT_WITHIN_S)
        await first_run.halt()
        assert first_run.count("flatten", "verified_flat") == 0
        assert exposure(sim, first.account, first.kind) == {never: start_exposure[never]}

        sim.clear_faults()
        second = await open_pair()
        second_run = start(second.venue, seq=0)  # the same activation, resumed
        await second_run.until("flatten", "verified_flat")

        assert exposure(sim, first.account, first.kind) == {}
        assert closed_by_symbol(sim, first.account, first.kind) == {
            symbol: abs(size) for symbol, size in start_exposure.items()
        }
        assert_never_flipped(first, start_exposure)
        assert (await fresh_snapshot(open_pair)).flat

    # 5 -------------------------------------------------------------------------------------

    async def test_a_fill_after_the_cancel_is_closed_again_while_active(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """A resting buy leaves the book as cancelled and fills later (a position, or a spot
        balance, appears after the venue was verified flat): the keep-flat loop finds it and
        flattens again."""
        pair = await open_pair()
        sim, account, book = pair.sim, pair.account, pair.sim_book
        btc, eth = book.id("BTCUSDT"), book.id("ETHUSDT")
        if pair.kind is MarketKind.FUTURES:
            sim.seed_position(account, btc, book.size("0.5"), sim.mark_price(btc))
        else:
            sim.seed_balance(account, "BTC", "0.2")
            sim.seed_balance(account, QUOTE, "10000")
        order_id = sim.seed_order(account, eth, "BUY", book.size("1"), "2800", venue=book.venue)
        sim.add_fault("DELETE", book.cancel_path, "late_fill", delay_s=LATE_FILL_DELAY_S)
        run = start(pair.venue)

        await run.until("enforce", "exposure_found")
        await run.until("flatten", "verified_flat", times=2)

        (late,) = [fill for fill in sim.fills(account) if fill.late]
        assert (late.order_id, late.symbol, late.qty) == (order_id, eth, book.size("1"))
        assert exposure(sim, account, pair.kind) == {}
        found = run.details("enforce", "exposure_found")
        assert pair.symbol(eth) in found[0]["positions"]
        closed = closed_by_symbol(sim, account, pair.kind)
        assert closed == {
            btc: book.size("0.5") if self.kind is MarketKind.FUTURES else D("0.2"),
            eth: book.size("1"),
        }
        assert (await fresh_snapshot(open_pair)).flat

    # 6 -------------------------------------------------------------------------------------

    async def test_thirty_percent_mixed_faults_end_flat_and_never_flip(
        self, sim: ExchangeSimulator, open_pair: OpenPair, start: Start
    ) -> None:
        """Every fault kind the simulator has, on every endpoint it applies to, on 30 % of
        requests (plus partial fills and late fills on 30 % of orders and cancels), in
        :data:`FAULTY_RUNS` runs side by side (one account each, so their waits overlap):
        each ends flat within the deadline (its engine verified it and the simulator agrees,
        with no late fill pending), and no close of ESS flipped a position."""
        pairs = [
            await open_pair(account=add_account(sim, f"chaos{index}"))
            for index in range(FAULTY_RUNS)
        ]
        books = [seed_book(sim, pair.account, pair.kind, pair.sim_book) for pair in pairs]
        pairs[0].sim_book.arm(sim)
        runs = [start(pair.venue) for pair in pairs]

        def flat() -> bool:
            for pair, run in zip(pairs, runs, strict=True):
                assert run.flattener.progress.phase is Phase.FLAT, (
                    pair.account,
                    run.outcomes()[-4:],
                )
                assert not pending_late_fills(sim, pair.account)
                assert exposure(sim, pair.account, pair.kind) == {}, pair.account
                assert sim.open_orders(pair.account) == [], pair.account
            return True

        await eventually(flat, timeout=FAULTY_FLAT_WITHIN_S, interval=0.05)
        for run in runs:
            await run.halt()

        assert {fault.kind for fault in sim.faults} == set(FaultKind)  # every kind armed
        fired = {fault.kind for fault in sim.faults if fault.hits}
        assert len(fired) >= 5, f"too few fault kinds fired: {sorted(fired)}"
        for pair, book in zip(pairs, books, strict=True):
            assert_never_flipped(pair, book)
        sim.clear_faults()
        for pair in pairs:
            assert (await fresh_snapshot(open_pair, account=pair.account)).flat

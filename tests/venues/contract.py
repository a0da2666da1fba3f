"""The venue contract: what "a supported venue" means, once, for every adapter.

A test module subclasses :class:`VenueContract`, sets ``kind`` (the market the pair serves)
and ``family`` (the simulator family it trades through, a key of :data:`FAMILIES`), and
provides an ``open_pair`` fixture: ``await open_pair(**config_overrides)`` opens a *new*
adapter on the test's simulator account each time it is called (a second instance is how a
fresh, independent read and a restarted executor are modelled; ``account=`` names another
account made by :func:`add_account`) and returns a :class:`Pair`: the opened adapter plus the
simulator, the account, the mapping from the simulator's market ids to the adapter's symbols
and the pair's :class:`SimBook`. :func:`opening` builds such a fixture from a function that
builds the adapter.

Every exchange the simulator serves is one family (``ess/sim/families``), with its own paths,
methods and parameter names; the cases never name them. :data:`FAMILIES` is the table of what
they need per family and market kind (a :class:`SimBook`): the simulator book the exposure
lives in (and, for COIN-M, how the contract's market ids and sizes read there), the order
placement :class:`Route` (the endpoint and the parameters telling this book's requests from
another's on a shared path), the cancel routes, how a logged order request reads
(:class:`OrderFields`: instrument, side, type, client id, size, reduce-only), the exchange's
instrument id of a market (OKX: ``BTCUSDT`` -> ``BTC-USDT-SWAP``) and what one unit of an order's
size is (OKX swaps: a contract of ``ctVal``). Accounts and credentials always carry an API
passphrase (OKX needs one, the others ignore it), and the simulator of the suite relaxes every
family's budgets for the engine's fast re-reads (:meth:`VenueContract.sim`).

Every case runs the real flatten engine (:class:`~ess.roles.execute.engine.VenueFlattener`)
through real ccxt over HTTP against the simulator; nothing is mocked. Success is always
checked by a fresh read: the simulator's own books, and a new adapter instance's snapshot.
What a supported venue guarantees:

1. both order books (regular and conditional) are cancelled on every symbol;
2. every position is closed (reduce-only on futures, in whole contracts where the book trades
   contracts; on spot every balance is sold into the quote except ``keep_assets``), dust is
   reported and not counted, and a spot balance without a market is stranded exposure that is
   never read as flat;
3. an empty or mangled answer to any read a snapshot is built from raises ``MALFORMED``, and
   the engine never reports flat on it;
4. a flatten cut short and finished by a fresh engine and adapter closes each contract exactly
   once in total, never flipping a position;
5. an order the venue reported cancelled that fills later is closed again while ACTIVE;
6. with every simulator fault kind firing on 30 % of requests, the venue ends flat within a
   deadline and no close of ESS ever flips a position;
7. futures pairs, on an account in hedge (two-sided) mode: each side of a symbol is closed on
   its own position side (the family's :class:`HedgeFields`), exactly once in total even when
   the flatten is cut short and finished by a fresh engine, and no close ever opens a side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, cast

import pytest
from pydantic import SecretStr

from ess.chaos.venue import arm_faults, count_flips, fast_simulator
from ess.clock import SystemClock
from ess.core import Activation
from ess.core.flatten import MarketKind, PositionView, VenueSnapshot
from ess.roles.execute.engine import Phase, VenueFlattener
from ess.settings import ExecuteSettings
from ess.sim import (
    ExchangeSimulator,
    Fault,
    FaultKind,
    LoggedRequest,
    Venue,
    default_markets,
)
from ess.sim.book import PENDING_FILL
from ess.sim.families.okx import OkxFamily
from ess.sim.markets import fmt
from ess.venues.budget import RateBudget
from ess.venues.config import VenueConfig, VenueCredentials
from ess.venues.ports import VenueError, VenueErrorKind, VenuePort
from schemas import ActionReport, ReasonCode
from tests.fixtures.venues import ACCOUNT, API_KEY, SECRET
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

VENUE_OF: dict[MarketKind, Venue] = {MarketKind.FUTURES: Venue.FUTURES, MarketKind.SPOT: Venue.SPOT}
QUOTE = "USDT"
#: The (simulator-only) API passphrase of every account the suite makes: OKX signs with it,
#: the other families ignore it.
PASSPHRASE: Final = "contract-Passphrase-1"

# -- the family table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """An endpoint as the simulator logs and matches it: method, path and the parameters that
    tell one book's requests from another's on a path the books share (Bybit's ``category``,
    OKX's ``tdMode``)."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)

    def carries(self, request: LoggedRequest) -> bool:
        """Whether ``request`` went to this route."""
        return (request.method, request.path) == (self.method, self.path) and all(
            request.params.get(key) == value for key, value in self.params.items()
        )

    def requests(self, sim: ExchangeSimulator, account: str) -> list[LoggedRequest]:
        """``account``'s logged requests to this route, in arrival order."""
        return [r for r in sim.requests(self.method, self.path, account) if self.carries(r)]

    def add_fault(
        self,
        sim: ExchangeSimulator,
        kind: FaultKind | str,
        *,
        params: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Fault:
        """A fault on this route's requests (those also carrying ``params``)."""
        return sim.add_fault(
            self.method, self.path, kind, params={**self.params, **(params or {})}, **options
        )

    def armed(self, sim: ExchangeSimulator) -> set[FaultKind]:
        """The kinds of the faults armed on every request of this route."""
        return {
            fault.kind
            for fault in sim.faults
            if fault.matches(self.method, self.path, None, self.params)
        }


@dataclass(frozen=True)
class OrderFields:
    """How a family's logged order request reads: parameter names, and the values of a sell
    and of a market order. Reduce-only is ``<reduce_only>=true`` wherever it is sent."""

    #: The parameter naming the instrument (its value: :meth:`SimBook.instrument`).
    instrument: str
    side: str
    sell: str
    type: str
    market: str
    client_id: str
    #: ESS's client order id as the family accepts it (``re.fullmatch``).
    client_id_format: str
    #: The order's size, in units of :attr:`SimBook.contract_value`.
    size: str
    reduce_only: str = "reduceOnly"


@dataclass(frozen=True)
class HedgeFields:
    """How a family's order names the hedge-mode side it closes, as the simulator logs it:
    ``param`` is ``long``/``short`` for the two sides, and ``reduce_only`` says whether a close
    also carries the reduce-only flag there (Binance refuses it beside a ``positionSide``)."""

    param: str
    long: str
    short: str
    reduce_only: bool

    def value(self, side: str) -> str:
        """The logged value for the simulator's ``LONG``/``SHORT``."""
        return self.long if side == "LONG" else self.short


def same_instrument(sim: ExchangeSimulator, venue: Venue, market_id: str) -> str:
    """The exchange names the instrument by the simulator's market id (Binance, Bybit)."""
    return market_id


def one_unit(sim: ExchangeSimulator, market_id: str) -> Decimal:
    """An order's size is in the book's own units (base units, or COIN-M contracts)."""
    return Decimal(1)


def _okx(sim: ExchangeSimulator) -> OkxFamily:
    return cast(OkxFamily, sim.family("okx"))


def okx_instrument(sim: ExchangeSimulator, venue: Venue, market_id: str) -> str:
    """OKX's ``instId``: ``BTCUSDT`` -> ``BTC-USDT-SWAP`` (swap) or ``BTC-USDT`` (spot)."""
    return _okx(sim).inst_id(market_id, venue)


def okx_contract(sim: ExchangeSimulator, market_id: str) -> Decimal:
    """An OKX swap order is sized in contracts of ``ctVal`` base units."""
    return _okx(sim).contract_value(market_id)


@dataclass(frozen=True)
class SimBook:
    """One family's book a pair trades, as the cases need it: the simulator book, the routes
    the pair writes through, how its order requests read, and how the contract's market ids
    and sizes (written for USD-M and spot: ``BTCUSDT``, 0.5) read there."""

    venue: Venue
    #: Where a close is placed.
    order: Route
    #: Where orders are cancelled: the regular book's route first, then the conditional
    #: book's if it has one of its own.
    cancels: tuple[Route, ...]
    fields: OrderFields
    #: The contract's market id -> this book's (``BTCUSDT`` -> ``BTCUSD_PERP``); the same id
    #: when absent.
    ids: Mapping[str, str] = field(default_factory=dict)
    #: The contract's sizes are multiplied by this (COIN-M: 100, whole contracts).
    unit: Decimal = Decimal(1)
    #: The exchange's instrument id of a market of this book (:attr:`OrderFields.instrument`).
    instrument_of: Callable[[ExchangeSimulator, Venue, str], str] = same_instrument
    #: How much of a market one unit of an order's size is, in the book's quantity.
    contract_value: Callable[[ExchangeSimulator, str], Decimal] = one_unit
    #: Orders are sized in whole contracts (every close must be a whole number of them).
    whole_contracts: bool = False
    #: How a close names its hedge-mode side (futures books of families with hedge mode).
    hedge: HedgeFields | None = None

    def id(self, market_id: str) -> str:
        return self.ids.get(market_id, market_id)

    def size(self, size: str | Decimal) -> Decimal:
        return Decimal(fmt(Decimal(size) * self.unit))  # "0.04", not "0.0400"

    @property
    def cancel(self) -> Route:
        """The regular book's cancel route."""
        return self.cancels[0]

    def instrument(self, sim: ExchangeSimulator, market_id: str) -> str:
        """The exchange's instrument id of this book's market ``market_id``."""
        return self.instrument_of(sim, self.venue, market_id)

    def orders(self, sim: ExchangeSimulator, account: str) -> list[LoggedRequest]:
        """``account``'s order placements on this book."""
        return self.order.requests(sim, account)


BINANCE_ORDERS: Final = OrderFields(
    instrument="symbol",
    side="side",
    sell="SELL",
    type="type",
    market="MARKET",
    client_id="newClientOrderId",
    client_id_format=r"ess-[0-9a-f]{32}",
    size="quantity",
)
BYBIT_ORDERS: Final = OrderFields(
    instrument="symbol",
    side="side",
    sell="Sell",
    type="orderType",
    market="Market",
    client_id="orderLinkId",
    client_id_format=r"ess-[0-9a-f]{32}",
    size="qty",
)
#: OKX's ``clOrdId`` is letters and digits: ESS's derived id is sent as ``ess<29 hex>``.
OKX_ORDERS: Final = OrderFields(
    instrument="instId",
    side="side",
    sell="sell",
    type="ordType",
    market="market",
    client_id="clOrdId",
    client_id_format=r"ess[0-9a-f]{29}",
    size="sz",
)

BINANCE_HEDGE: Final = HedgeFields("positionSide", "LONG", "SHORT", reduce_only=False)

#: What the cases need of each family, per market kind (see the module docstring).
FAMILIES: Final[Mapping[str, Mapping[MarketKind, SimBook]]] = {
    "binance": {
        MarketKind.FUTURES: SimBook(
            Venue.FUTURES,
            Route("POST", "/fapi/v1/order"),
            (Route("DELETE", "/fapi/v1/allOpenOrders"), Route("DELETE", "/fapi/v1/algoOpenOrders")),
            BINANCE_ORDERS,
            hedge=BINANCE_HEDGE,
        ),
        MarketKind.SPOT: SimBook(
            Venue.SPOT,
            Route("POST", "/api/v3/order"),
            (Route("DELETE", "/api/v3/openOrders"),),
            BINANCE_ORDERS,
        ),
    },
    # Inverse perpetuals by their /dapi ids, sizes in contracts (x100: a 0.5 position is 50
    # contracts, a 0.0004 one is 0.04 contracts, dust below the 1-contract step).
    "binance-coinm": {
        MarketKind.FUTURES: SimBook(
            Venue.COINM,
            Route("POST", "/dapi/v1/order"),
            (Route("DELETE", "/dapi/v1/allOpenOrders"), Route("DELETE", "/dapi/v1/algoOpenOrders")),
            BINANCE_ORDERS,
            ids={f"{b}USDT": f"{b}USD_PERP" for b in ("BTC", "ETH", "SOL", "SIM001", "SIM002")},
            unit=Decimal(100),
            whole_contracts=True,
            hedge=BINANCE_HEDGE,
        ),
    },
    # One create and one cancel-all route for both books, told apart by ``category``; the
    # conditional book is cancelled there too (``orderFilter=StopOrder``).
    "bybit": {
        kind: SimBook(
            VENUE_OF[kind],
            Route("POST", "/v5/order/create", {"category": category}),
            (Route("POST", "/v5/order/cancel-all", {"category": category}),),
            BYBIT_ORDERS,
            hedge=HedgeFields("positionIdx", "1", "2", reduce_only=True)
            if kind.value == "futures"
            else None,
        )
        for kind, category in ((MarketKind.FUTURES, "linear"), (MarketKind.SPOT, "spot"))
    },
    # ccxt's create_order is a one-item ``batch-orders`` (``tdMode`` cross on swaps, cash on
    # spot); OKX has no cancel-all: the generic adapter cancels by id in batches, the algo book
    # through ``cancel-algos``. Swaps trade in contracts of ``ctVal``.
    "okx": {
        MarketKind.FUTURES: SimBook(
            Venue.FUTURES,
            Route("POST", "/api/v5/trade/batch-orders", {"tdMode": "cross"}),
            (
                Route("POST", "/api/v5/trade/cancel-batch-orders"),
                Route("POST", "/api/v5/trade/cancel-algos"),
            ),
            OKX_ORDERS,
            instrument_of=okx_instrument,
            contract_value=okx_contract,
            whole_contracts=True,
            hedge=HedgeFields("posSide", "long", "short", reduce_only=False),
        ),
        MarketKind.SPOT: SimBook(
            Venue.SPOT,
            Route("POST", "/api/v5/trade/batch-orders", {"tdMode": "cash"}),
            (Route("POST", "/api/v5/trade/cancel-batch-orders"),),
            OKX_ORDERS,
            instrument_of=okx_instrument,
        ),
    },
}


#: The kinds acting only where orders are placed, and only where they are cancelled.
ORDER_KINDS: Final = frozenset({FaultKind.PARTIAL_FILL, FaultKind.REDUCE_ONLY_REJECTED})
CANCEL_KINDS: Final = frozenset({FaultKind.LATE_FILL, FaultKind.UNKNOWN_ORDER})


# -- the pair under test -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One opened adapter on the simulator account it trades, and how to name its symbols."""

    venue: VenuePort
    sim: ExchangeSimulator
    account: str
    #: The simulator's market id (``BTCUSDT``) -> the adapter's symbol (``BTC/USDT:USDT``).
    symbol: Callable[[str], str]
    #: The family's book traded (see :data:`FAMILIES`).
    book: SimBook

    @property
    def kind(self) -> MarketKind:
        return self.venue.kind

    @property
    def sim_venue(self) -> Venue:
        return self.book.venue


#: ``await open_pair(account=None, **config_overrides)``: a new, opened adapter on the test's
#: account (or on ``account``, made by :func:`add_account`).
OpenPair = Callable[..., Awaitable[Pair]]
#: Builds an (unopened) adapter from config overrides (``account`` among them when it is not
#: the default one) and the account's credentials.
BuildVenue = Callable[[dict[str, Any], VenueCredentials], VenuePort]


def add_account(sim: ExchangeSimulator, name: str) -> str:
    """Another account on ``sim`` (1000 USDT on spot, the suite's passphrase), for runs side by
    side."""
    credentials = account_credentials(name)
    return sim.add_account(
        credentials.api_key.get_secret_value(),
        credentials.secret.get_secret_value(),
        name=name,
        spot={QUOTE: "1000"},
        passphrase=PASSPHRASE,
    )


def account_credentials(name: str) -> VenueCredentials:
    """The (simulator-only) credentials of an account made by :func:`add_account`."""
    return VenueCredentials(
        api_key=SecretStr(f"contract-key-{name}"),
        secret=SecretStr(f"contract-secret-{name}"),
        passphrase=SecretStr(PASSPHRASE),
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
    book: SimBook,
) -> AsyncIterator[OpenPair]:
    """An ``open_pair`` factory over ``build`` for ``default_account`` (whose ``credentials``
    these are) trading ``book``; every adapter it opened is closed on leaving."""
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
    sim: ExchangeSimulator, account: str, kind: MarketKind, book: SimBook
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
        sizes = (("BTCUSDT", "0.5"), ("ETHUSDT", "-2"), ("SOLUSDT", "10"))
        positions = {book.id(symbol): book.size(size) for symbol, size in sizes}
        for symbol, size in positions.items():
            sim.seed_position(account, symbol, size, sim.mark_price(symbol))
        sim.seed_order(account, book.id("BTCUSDT"), "BUY", book.size("0.01"), "50000")
        sim.seed_order(account, book.id("ETHUSDT"), "BUY", book.size("1"), "2800", reduce_only=True)
        sim.seed_order(account, book.id("SIM001USDT"), "BUY", book.size("2"), "30")
        conditional = (
            ("BTCUSDT", "SELL", "0.5", "STOP_MARKET", "55000", True),
            ("ETHUSDT", "BUY", "2", "TAKE_PROFIT_MARKET", "2500", True),
            ("SIM001USDT", "BUY", "2", "STOP_MARKET", "45", False),
        )
        for symbol, side, qty, order_type, trigger, reduce_only in conditional:
            sim.seed_order(
                account,
                book.id(symbol),
                side,
                book.size(qty),
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


#: The hedge-mode book of :func:`seed_hedged_book`: (symbol, side, size) in the contract's
#: terms (read through the pair's :class:`SimBook`).
HEDGED: Final = (
    ("BTCUSDT", "LONG", "0.5"),
    ("BTCUSDT", "SHORT", "-0.3"),
    ("ETHUSDT", "SHORT", "-2"),
)


def seed_hedged_book(sim: ExchangeSimulator, account: str, book: SimBook) -> dict[Side, Decimal]:
    """Switch ``account`` to hedge mode and seed a long and a short on BTC, a short on ETH, an
    opening buy on BTC's long side and a stop on its long side; returns the exposure by
    (market id, ``LONG``/``SHORT``)."""
    sim.set_hedge_mode(account)
    held = {(book.id(symbol), side): book.size(size) for symbol, side, size in HEDGED}
    for (symbol, side), size in held.items():
        sim.seed_position(account, symbol, size, sim.mark_price(symbol), position_side=side)
    btc = book.id("BTCUSDT")
    sim.seed_order(account, btc, "BUY", book.size("0.01"), "50000", position_side="LONG")
    sim.seed_order(
        account,
        btc,
        "SELL",
        book.size("0.5"),
        order_type="STOP_MARKET",
        trigger_price="55000",
        position_side="LONG",
    )
    return held


#: A hedge-mode position: (market id, ``LONG``/``SHORT``).
Side = tuple[str, str]


def closed_by_side(sim: ExchangeSimulator, account: str) -> dict[Side, Decimal]:
    """Quantity filled per hedge-mode side by anything but a late fill (ESS's closes)."""
    closed: dict[Side, Decimal] = {}
    for fill in sim.fills(account):
        if not fill.late and fill.venue is not Venue.SPOT:
            key = (fill.symbol, fill.position_side)
            closed[key] = closed.get(key, D(0)) + fill.qty
    return closed


def assert_every_fill_closed_its_side(sim: ExchangeSimulator, account: str) -> None:
    """Every fill of ESS reduced the side it named (a sell of a long, a buy of a short): a
    close never opened or grew a side."""
    closing = {("SELL", "LONG"), ("BUY", "SHORT")}
    opened = [
        (fill.symbol, fill.side, fill.position_side)
        for fill in sim.fills(account)
        if not fill.late and (fill.side, fill.position_side) not in closing
    ]
    assert opened == []


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
    fields = pair.book.fields
    orders = pair.book.orders(pair.sim, pair.account)
    assert {request.params.get(fields.side) for request in orders} <= {fields.sell}
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
    ``family`` and provide the ``open_pair`` fixture (see the module docstring)."""

    kind: ClassVar[MarketKind]
    #: The simulator family the pair trades through: a key of :data:`FAMILIES`.
    family: ClassVar[str]

    @property
    def book(self) -> SimBook:
        """The pair's book in the family table (what :func:`opening` is given)."""
        return FAMILIES[self.family][self.kind]

    @pytest.fixture
    async def sim(self) -> AsyncIterator[ExchangeSimulator]:
        """Default and a few generated markets; every family's budgets relaxed for the
        engine's fast re-reads (:func:`ess.chaos.venue.fast_simulator`); the fault RNG
        seeded (reproducible up to timing)."""
        markets = default_markets(
            extra_futures=EXTRA_FUTURES, extra_spot=EXTRA_SPOT, extra_coinm=EXTRA_FUTURES
        )
        async with fast_simulator(markets=markets, seed=FAULT_SEED) as simulator:
            yield simulator

    @pytest.fixture
    def account(self, sim: ExchangeSimulator) -> str:
        """The account ``main`` (1000 USDT on spot) with an API passphrase."""
        return sim.add_account(
            API_KEY, SECRET, name=ACCOUNT, spot={QUOTE: "1000"}, passphrase=PASSPHRASE
        )

    @pytest.fixture
    def credentials(self) -> VenueCredentials:
        return VenueCredentials(
            api_key=SecretStr(API_KEY), secret=SecretStr(SECRET), passphrase=SecretStr(PASSPHRASE)
        )

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
        new adapter instance reads no open order. The pair wrote only through its book's
        order and cancel routes, and through each of its cancel routes."""
        pair = await open_pair()
        seed_book(pair.sim, pair.account, pair.kind, pair.book)
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
        book = pair.book
        writes = [r for r in pair.sim.requests(account=pair.account) if r.method != "GET"]
        routes = (book.order, *book.cancels)
        stray = [r for r in writes if not any(route.carries(r) for route in routes)]
        assert [(r.method, r.path, r.params) for r in stray] == []
        assert all(route.requests(pair.sim, pair.account) for route in book.cancels)

    # 2 -------------------------------------------------------------------------------------

    async def test_every_position_is_closed_and_verified_by_fresh_reads(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Futures: reduce-only market closes for exactly the position (in whole contracts
        where the book trades contracts). Spot: every balance with a market is sold into the
        quote, ``keep_assets`` is left alone. Both: one market order per symbol, sized exactly
        what is held, with ESS's client id in the family's format; exposure below the lot size
        is reported as dust and does not block "flat"."""
        keep = {"keep_assets": ("SIM002",)} if self.kind is MarketKind.SPOT else {}
        pair = await open_pair(**keep)
        sim, book, fields = pair.sim, pair.book, pair.book.fields
        start_exposure = seed_book(pair.sim, pair.account, pair.kind, book)
        if pair.kind is MarketKind.FUTURES:
            # below the step (USD-M 0.001, OKX 0.4 of a 0.001 contract; COIN-M 1 contract)
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
        orders = book.orders(sim, pair.account)
        assert len(orders) == len(start_exposure)
        assert all(
            re.fullmatch(fields.client_id_format, o.params[fields.client_id]) for o in orders
        )
        assert all(o.params[fields.type] == fields.market for o in orders)
        by_instrument = {book.instrument(sim, symbol): symbol for symbol in start_exposure}
        sized = [
            (by_instrument[o.params[fields.instrument]], D(o.params[fields.size])) for o in orders
        ]
        assert {symbol: size * book.contract_value(sim, symbol) for symbol, size in sized} == {
            symbol: abs(size) for symbol, size in start_exposure.items()
        }
        if book.whole_contracts:
            assert all(size == size.to_integral() for _, size in sized)
        if pair.kind is MarketKind.FUTURES:
            assert all(o.params.get(fields.reduce_only) == "true" for o in orders)
        else:
            # Spot has no reduce-only (Binance refuses the parameter, OKX in cash mode): only
            # sells.
            assert all(fields.reduce_only not in o.params for o in orders)
            assert {o.params[fields.side] for o in orders} == {fields.sell}
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
        seed_book(pair.sim, pair.account, pair.kind, pair.book)
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
        of a first snapshot included), answered with an empty or unparseable HTTP 200 body
        (every time: an adapter may try a lost read again), makes the snapshot of a new
        adapter raise ``MALFORMED``; the engine reading through such answers never reports
        flat nor acts, and flattens once the answers are sound."""
        probe = await open_pair()
        start_exposure = seed_book(probe.sim, probe.account, probe.kind, probe.book)
        sim, account = probe.sim, probe.account
        sim.clear_log()
        assert not (await probe.venue.snapshot()).flat
        reads = sorted({(r.method, r.path) for r in sim.requests(account=account)})
        assert reads, "the snapshot made no signed read"
        assert {method for method, _ in reads} == {"GET"}

        for method, path in reads:
            for kind in (FaultKind.EMPTY, FaultKind.BAD_JSON):
                pair = await open_pair()
                fault = sim.add_fault(method, path, kind, times=None)
                with pytest.raises(VenueError) as raised:
                    await pair.venue.snapshot()
                assert raised.value.kind is VenueErrorKind.MALFORMED, (path, kind.value)
                assert fault.hits >= 1, (path, kind.value)
                sim.clear_faults()
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
        # no order, no cancel: nothing but reads (every family writes with POST or DELETE)
        assert [r.path for r in pair.sim.requests(account=pair.account) if r.method != "GET"] == []
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
        start_exposure = seed_book(first.sim, first.account, first.kind, first.book)
        done, unanswered, never = sorted(start_exposure)
        sim, book = first.sim, first.book
        instrument = book.fields.instrument
        unanswered_id, never_id = book.instrument(sim, unanswered), book.instrument(sim, never)
        book.order.add_fault(sim, "exec_then_hang", times=None, params={instrument: unanswered_id})
        book.order.add_fault(sim, "hang", times=None, params={instrument: never_id})
        first_run = start(first.venue)

        def cut_short() -> bool:
            closed = closed_by_symbol(sim, first.account, first.kind)
            assert closed.get(done) == abs(start_exposure[done])
            assert closed.get(unanswered) == abs(start_exposure[unanswered])
            hung = book.orders(sim, first.account)
            assert any(r.params.get(instrument) == never_id for r in hung)
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
        sim, account, book = pair.sim, pair.account, pair.book
        btc, eth = book.id("BTCUSDT"), book.id("ETHUSDT")
        if pair.kind is MarketKind.FUTURES:
            sim.seed_position(account, btc, book.size("0.5"), sim.mark_price(btc))
        else:
            sim.seed_balance(account, "BTC", "0.2")
            sim.seed_balance(account, QUOTE, "10000")
        order_id = sim.seed_order(account, eth, "BUY", book.size("1"), "2800", venue=book.venue)
        book.cancel.add_fault(sim, "late_fill", delay_s=LATE_FILL_DELAY_S)
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
        """Every fault kind the simulator has, on every endpoint of every family it applies
        to (:func:`arm_campaign`; the pair's order and cancel routes included), on 30 % of
        requests (plus partial fills and late fills on 30 % of orders and cancels), in
        :data:`FAULTY_RUNS` runs side by side (one account each, so their waits overlap):
        each ends flat within the deadline (its engine verified it and the simulator agrees,
        with no late fill pending), and no close of ESS flipped a position."""
        pairs = [
            await open_pair(account=add_account(sim, f"chaos{index}"))
            for index in range(FAULTY_RUNS)
        ]
        book = pairs[0].book
        seeded = [seed_book(sim, pair.account, pair.kind, book) for pair in pairs]
        arm_faults(sim)
        # every kind that applies, on the routes the pair places and cancels through
        assert book.order.armed(sim) == set(FaultKind) - CANCEL_KINDS - (
            set() if self.kind is MarketKind.FUTURES else {FaultKind.REDUCE_ONLY_REJECTED}
        )
        assert all(route.armed(sim) == set(FaultKind) - ORDER_KINDS for route in book.cancels)
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
        for pair, start_exposure in zip(pairs, seeded, strict=True):
            assert_never_flipped(pair, start_exposure)
        sim.clear_faults()
        for pair in pairs:
            assert (await fresh_snapshot(open_pair, account=pair.account)).flat

    # 7 -------------------------------------------------------------------------------------

    async def test_hedge_mode_closes_each_side_on_its_own_position_side(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Futures, an account in hedge mode holding a long and a short on one symbol: the
        snapshot shows each side as its own position; the flatten sends one close per side,
        each naming its side the family's way (:class:`HedgeFields`) and sized exactly to it,
        cancels both books, and ends verified flat with every fill a closing one."""
        hedge = self.book.hedge
        if hedge is None:
            pytest.skip(f"{self.family} {self.kind.value} has no hedge mode")
        pair = await open_pair()
        sim, book, account = pair.sim, pair.book, pair.account
        held = seed_hedged_book(sim, account, book)
        sides = {"LONG": "long", "SHORT": "short"}
        before = await pair.venue.snapshot()
        assert {(p.symbol, p.side, p.quantity) for p in before.positions} == {
            (pair.symbol(symbol), sides[side], size) for (symbol, side), size in held.items()
        }
        assert not before.flat

        run = start(pair.venue)
        await run.until("flatten", "verified_flat")

        assert sim.hedge_positions(account) == {}
        assert sim.open_orders(account) == []
        assert closed_by_side(sim, account) == {key: abs(size) for key, size in held.items()}
        assert_every_fill_closed_its_side(sim, account)
        orders = book.orders(sim, account)
        by_instrument = {book.instrument(sim, symbol): symbol for symbol, _ in held}
        sent = {
            (by_instrument[o.params[book.fields.instrument]], o.params.get(hedge.param))
            for o in orders
        }
        assert sent == {(symbol, hedge.value(side)) for symbol, side in held}
        assert len(orders) == len(held)
        reduce_only = {o.params.get(book.fields.reduce_only) for o in orders}
        assert reduce_only == ({"true"} if hedge.reduce_only else {None})
        closes = run.details("close", "sent")
        assert {(d["symbol"], d["position_side"]) for d in closes} == {
            (pair.symbol(symbol), sides[side]) for symbol, side in held
        }
        fresh = await fresh_snapshot(open_pair)
        assert fresh.flat
        assert fresh.positions == ()

    async def test_a_restarted_hedge_flatten_closes_each_side_exactly_once(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Hedge mode, the first engine dies mid-flatten: BTC's long close executed but
        unanswered, its short close never executed (hangs), ETH's short done. A fresh engine
        and adapter finish: each side is closed exactly once in total, none opened."""
        hedge = self.book.hedge
        if hedge is None:
            pytest.skip(f"{self.family} {self.kind.value} has no hedge mode")
        first = await open_pair()
        sim, book, account = first.sim, first.book, first.account
        held = seed_hedged_book(sim, account, book)
        btc = book.id("BTCUSDT")
        on_btc = {book.fields.instrument: book.instrument(sim, btc)}
        unanswered = {**on_btc, hedge.param: hedge.value("LONG")}
        never = {**on_btc, hedge.param: hedge.value("SHORT")}
        book.order.add_fault(sim, "exec_then_hang", times=None, params=unanswered)
        book.order.add_fault(sim, "hang", times=None, params=never)
        first_run = start(first.venue)

        def cut_short() -> bool:
            closed = closed_by_side(sim, account)
            assert closed.get((btc, "LONG")) == abs(held[(btc, "LONG")])
            assert closed.get((book.id("ETHUSDT"), "SHORT")) == abs(
                held[(book.id("ETHUSDT"), "SHORT")]
            )
            hung = book.orders(sim, account)
            assert any(all(r.params.get(k) == v for k, v in never.items()) for r in hung)
            return True

        await eventually(cut_short, timeout=FLAT_WITHIN_S)
        await first_run.halt()
        assert first_run.count("flatten", "verified_flat") == 0
        assert set(sim.hedge_positions(account)) == {(btc, "SHORT")}

        sim.clear_faults()
        second = await open_pair()
        second_run = start(second.venue, seq=0)  # the same activation, resumed
        await second_run.until("flatten", "verified_flat")

        assert sim.hedge_positions(account) == {}
        assert closed_by_side(sim, account) == {key: abs(size) for key, size in held.items()}
        assert_every_fill_closed_its_side(sim, account)
        assert (await fresh_snapshot(open_pair)).flat

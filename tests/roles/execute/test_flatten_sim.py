"""The flatten engine through the real ccxt adapters over HTTP against the simulator: both
venues end flat, every fault kind is survived without flipping a position, a restart resumes a
half-done flatten, and a fill that lands after the cancel is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ess.clock import SystemClock
from ess.core import Activation
from ess.roles.execute.engine import VenueFlattener, enforce_all
from ess.settings import ExecuteSettings
from ess.sim import ExchangeSimulator, RateLimits, Venue
from ess.sim.demo import DEMO_POSITIONS, seed_demo_book
from ess.venues.binance import BinanceVenue
from schemas import ActionReport, ReasonCode
from tests.fixtures.venues import OpenVenue
from tests.helpers import eventually

pytestmark = pytest.mark.integration

D = Decimal

SETTINGS = ExecuteSettings(
    flatten_deadline_sec=5.0,
    stalled_report_interval_sec=1.0,
    enforce_interval_sec=0.05,
    backoff_initial_sec=0.01,
    backoff_max_sec=0.2,
    status_port=-1,
)

#: Futures exposure seeded on every test account: symbol -> signed size.
FUTURES = {symbol: D(size) for symbol, (size, _) in DEMO_POSITIONS.items()}


def activation(seq: int = 0) -> Activation:
    return Activation(
        seq=seq,
        command_id=f"trip-{seq}",
        reason=ReasonCode.MANUAL,
        detail="test",
        source="operator:test",
        trigger=None,
        ts=datetime(2026, 11, 30, tzinfo=UTC),
    )


def seed(sim: ExchangeSimulator, account: str) -> None:
    """The demo book: futures positions with regular and conditional orders; spot balances
    with a resting sell that locks part of one."""
    sim.seed_balance(account, "BTC", "0.2")
    sim.seed_balance(account, "ETH", "1.5")
    seed_demo_book(sim, account)


def assert_flat(sim: ExchangeSimulator, account: str) -> None:
    assert sim.positions(account) == {}
    assert sim.open_orders(account) == []
    for asset in ("BTC", "ETH"):
        free, locked = sim.spot_balance(account, asset)
        assert free + locked == 0, f"{asset}: {free} free, {locked} locked"


def assert_never_flipped(sim: ExchangeSimulator, account: str) -> None:
    """Replay the futures fills: no fill ever took a position through zero."""
    running = dict(FUTURES)
    for fill in sim.fills(account):
        if fill.venue is not Venue.FUTURES:
            continue
        before = running.get(fill.symbol, D(0))
        after = before + (fill.qty if fill.side == "BUY" else -fill.qty)
        assert before * after >= 0, f"{fill.symbol} flipped from {before} to {after}"
        running[fill.symbol] = after


@dataclass
class Run:
    """A running ``enforce_all`` and the reports it made."""

    reports: list[ActionReport] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def outcomes(self, venue: str | None = None) -> list[tuple[str, str]]:
        return [(r.action, r.outcome) for r in self.reports if venue in {None, r.venue}]

    async def until(self, action: str, outcome: str, venues: Iterable[str]) -> None:
        wanted = set(venues)

        def seen() -> bool:
            done = {r.venue for r in self.reports if (r.action, r.outcome) == (action, outcome)}
            assert wanted <= done, f"waiting for {action}/{outcome} on {wanted - done}"
            return True

        await eventually(seen, timeout=15.0)

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


@pytest.fixture
async def sim() -> AsyncIterator[ExchangeSimulator]:
    """Binance's budgets over 1 s windows: a 429/418 then says ``Retry-After: 1``, which the
    engine honours, instead of a minute."""
    limits = {
        Venue.FUTURES: RateLimits(weight_window_s=1.0),
        Venue.SPOT: RateLimits(weight_per_window=6000, weight_window_s=1.0, orders_per_minute=None),
    }
    async with ExchangeSimulator(rate_limits=limits) as simulator:
        yield simulator


@pytest.fixture
async def both(open_venue: OpenVenue) -> tuple[BinanceVenue, BinanceVenue]:
    return await open_venue("binanceusdm"), await open_venue("binance")


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Run]]:
    runs: list[Run] = []

    def starter(*venues: BinanceVenue, seq: int = 0) -> Run:
        run = Run()
        flatteners = [
            VenueFlattener(venue, SETTINGS, clock=SystemClock(), report=run.reports.append)
            for venue in venues
        ]
        run.task = asyncio.create_task(enforce_all(flatteners, activation(seq), run.stop))
        runs.append(run)
        return run

    yield starter
    for run in runs:
        await run.halt()


async def test_both_venues_end_verified_flat(
    sim: ExchangeSimulator,
    account: str,
    both: tuple[BinanceVenue, BinanceVenue],
    start: Callable[..., Run],
) -> None:
    seed(sim, account)
    run = start(*both)

    await run.until("flatten", "verified_flat", [venue.name for venue in both])

    assert_flat(sim, account)
    assert_never_flipped(sim, account)
    futures = run.outcomes(both[0].name)
    assert futures[0] == ("flatten", "started")
    assert futures.count(("close", "sent")) == len(FUTURES)
    # Both books of BTCUSDT and the regular book of ETHUSDT.
    assert futures.count(("cancel", "ok")) == 3
    closes = list(sim.requests("POST", "/fapi/v1/order"))
    assert all(r.params.get("reduceOnly") == "true" for r in closes)
    assert all(r.params["newClientOrderId"].startswith("ess-") for r in closes)
    spot_sells = sim.requests("POST", "/api/v3/order")
    assert {r.params["symbol"] for r in spot_sells} == {"BTCUSDT", "ETHUSDT"}
    assert all("reduceOnly" not in r.params for r in spot_sells)


#: Each fault kind, where it bites, how often. ``times`` keeps the venue failing for a few
#: requests: long enough to hit the flatten in the middle, short enough to end it.
FAULTS: dict[str, dict[str, Any]] = {
    "http429": {"path": "/fapi/*", "times": 3},
    "http418": {"path": "/fapi/*", "times": 2},
    "http500": {"path": "/fapi/*", "times": 3},
    "http502": {"path": "/api/*", "times": 3},
    "http503": {"path": "/fapi/*", "times": 3},
    "rate_limit_code": {"path": "/fapi/*", "times": 3},
    "hang": {"path": "/fapi/v1/order", "method": "POST", "times": 2, "delay_s": 0.5},
    "exec_then_hang": {"path": "/fapi/v1/order", "method": "POST", "times": 2},
    "empty": {"path": "/fapi/v3/positionRisk", "method": "GET", "times": 3},
    "bad_json": {"path": "/fapi/*", "method": "GET", "times": 3},
    "invalid_key": {"path": "/fapi/*", "times": 2},
    "unknown_order": {"path": "/fapi/v1/allOpenOrders", "method": "DELETE", "times": 2},
    "reduce_only_rejected": {"path": "/fapi/v1/order", "method": "POST", "times": 2},
    "error": {"path": "/fapi/v1/order", "method": "POST", "times": 2, "code": -1001},
    "partial_fill": {"path": "/fapi/v1/order", "method": "POST", "times": 3},
    "late_fill": {"path": "/fapi/v1/allOpenOrders", "method": "DELETE", "times": 1},
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
async def test_every_fault_kind_is_survived_flat_and_unflipped(
    sim: ExchangeSimulator,
    account: str,
    both: tuple[BinanceVenue, BinanceVenue],
    start: Callable[..., Run],
    kind: str,
) -> None:
    seed(sim, account)
    spec = dict(FAULTS[kind])
    fault = sim.add_fault(spec.pop("method", "*"), spec.pop("path"), kind, **spec)
    run = start(*both)

    await run.until("flatten", "verified_flat", [venue.name for venue in both])
    # A late fill lands after the cancel: the venue must be flat again once it has.
    await eventually(lambda: (assert_flat(sim, account), True)[1], timeout=10.0)

    assert fault.hits >= 1, f"the {kind} fault never fired"
    assert_never_flipped(sim, account)


async def test_a_restarted_executor_resumes_a_half_done_flatten(
    sim: ExchangeSimulator,
    account: str,
    open_venue: OpenVenue,
    start: Callable[..., Run],
) -> None:
    seed(sim, account)
    # The first executor's closes go unanswered: it dies mid-flatten with orders cancelled
    # and some closes executed but never confirmed.
    sim.add_fault("POST", "/fapi/v1/order", "exec_then_hang", times=None)
    first = start(await open_venue("binanceusdm"))
    await eventually(lambda: len(sim.requests("POST", "/fapi/v1/order")) >= 1)
    await first.halt()
    assert ("flatten", "verified_flat") not in first.outcomes()

    sim.clear_faults()
    second = start(await open_venue("binanceusdm"))
    await second.until("flatten", "verified_flat", ["sim-binanceusdm"])

    assert sim.positions(account) == {}
    assert_never_flipped(sim, account)
    # Every contract was closed exactly once in total, across both executors.
    closed: dict[str, Decimal] = {}
    for fill in sim.fills(account):
        closed[fill.symbol] = closed.get(fill.symbol, D(0)) + fill.qty
    assert closed == {symbol: abs(size) for symbol, size in FUTURES.items()}


async def test_a_fill_after_the_cancel_is_closed_while_active(
    sim: ExchangeSimulator,
    account: str,
    open_venue: OpenVenue,
    start: Callable[..., Run],
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", sim.mark_price("BTCUSDT"))
    sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")
    # The ETH order leaves the book as cancelled, then fills 0.3 s later.
    sim.add_fault("DELETE", "/fapi/v1/allOpenOrders", "late_fill", delay_s=0.3)
    run = start(await open_venue("binanceusdm"))

    await run.until("enforce", "exposure_found", ["sim-binanceusdm"])
    await eventually(lambda: run.outcomes().count(("flatten", "verified_flat")) >= 2, timeout=10)

    assert sim.positions(account) == {}
    assert any(fill.late for fill in sim.fills(account))

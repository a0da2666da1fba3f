"""``spot_policy = "cancel_only"`` through both adapters and the real flatten engine, over real
ccxt against the simulator: every order is cancelled, nothing is sold, and every balance that
``sell`` would have sold is reported as exposure left in place by policy (never as flat)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from ess.clock import SystemClock
from ess.core.flatten import PositionView
from ess.roles.execute.engine import Phase, VenueFlattener
from ess.sim import ExchangeSimulator, Venue
from ess.venues.binance import BinanceVenue
from ess.venues.config import VenueCredentials
from ess.venues.generic import CcxtVenue
from ess.venues.ports import VenuePort
from tests.fixtures.venues import venue_config
from tests.venues.contract import SETTINGS, Run, activation
from tests.venues.test_generic_adapter import SIM_OPTIONS

pytestmark = pytest.mark.integration

D = Decimal
LEFT = "(not sold: spot_policy=cancel_only)"

#: ``build(sim, credentials, **overrides)``: an unopened spot adapter on ``sim``, and how it
#: names the simulator's market ids.
Build = Callable[..., VenuePort]


def binance(sim: ExchangeSimulator, credentials: VenueCredentials, **overrides: Any) -> VenuePort:
    return BinanceVenue(venue_config(sim, "binance", **overrides), credentials)


def generic(sim: ExchangeSimulator, credentials: VenueCredentials, **overrides: Any) -> VenuePort:
    config = venue_config(
        sim, "binance", adapter="generic", market="spot", timeout_ms=1000, **overrides
    )
    return CcxtVenue(config, credentials, options=SIM_OPTIONS["binance"])


#: The adapter, and its name for the simulator's BTCUSDT and ETHUSDT.
ADAPTERS: dict[str, tuple[Build, str, str]] = {
    "binance": (binance, "BTCUSDT", "ETHUSDT"),
    "generic": (generic, "BTC/USDT", "ETH/USDT"),
}


@pytest.fixture(params=sorted(ADAPTERS))
async def opened(
    request: pytest.FixtureRequest, sim: ExchangeSimulator, credentials: VenueCredentials
) -> AsyncIterator[Callable[..., Any]]:
    """``await opened(**config_overrides)``: a new, opened adapter; closed at teardown."""
    build, _, _ = ADAPTERS[request.param]
    venues: list[VenuePort] = []

    async def factory(**overrides: Any) -> VenuePort:
        venue = build(sim, credentials, **overrides)
        venues.append(venue)
        await venue.open()
        return venue

    yield factory
    for venue in venues:
        await venue.aclose()


@pytest.fixture
def names(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The adapter's symbols for BTCUSDT and ETHUSDT (the ``opened`` parameter's)."""
    _, btc, eth = ADAPTERS[request.node.callspec.params["opened"]]
    return btc, eth


def seed(sim: ExchangeSimulator, account: str) -> None:
    """0.2 BTC (0.05 locked by a resting sell), 1.5 ETH, 3 XYZ (no market), and a resting
    buy locking USDT."""
    for asset, amount in (("BTC", "0.2"), ("ETH", "1.5"), ("XYZ", "3")):
        sim.seed_balance(account, asset, amount)
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    sim.seed_order(account, "ETHUSDT", "BUY", "0.1", "2800", venue=Venue.SPOT)


async def test_cancel_only_reads_balances_as_exposure_left_in_place(
    sim: ExchangeSimulator, account: str, opened: Callable[..., Any], names: tuple[str, str]
) -> None:
    btc, eth = names
    seed(sim, account)
    venue = await opened(spot_policy="cancel_only")

    snapshot = await venue.snapshot()

    assert snapshot.positions == ()
    assert snapshot.stranded == (
        PositionView("XYZ", D(3)),
        PositionView(f"{btc} {LEFT}", D("0.2")),
        PositionView(f"{eth} {LEFT}", D("1.5")),
    )
    assert {order.symbol for order in snapshot.orders} == {btc, eth}
    assert not snapshot.flat


async def test_cancel_only_cancels_every_order_sells_nothing_and_says_why(
    sim: ExchangeSimulator, account: str, opened: Callable[..., Any], names: tuple[str, str]
) -> None:
    btc, eth = names
    seed(sim, account)
    venue = await opened(spot_policy="cancel_only")
    reports: list[Any] = []
    quick = SETTINGS.model_copy(update={"flatten_deadline_sec": 0.5})
    flattener = VenueFlattener(venue, quick, clock=SystemClock(), report=reports.append)
    run = Run(flattener, reports)
    run.task = asyncio.create_task(flattener.enforce(activation(), run.stop))
    try:
        await run.until("flatten", "stalled")
        assert flattener.progress.phase is Phase.STALLED
    finally:
        await run.halt()

    assert sim.open_orders(account) == []
    assert run.count("cancel", "ok") == 2
    assert sim.requests("POST", "/api/v3/order") == []  # not one sell
    assert [sum(sim.spot_balance(account, a)) for a in ("BTC", "ETH", "XYZ")] == [
        D("0.2"),
        D("1.5"),
        D(3),
    ]
    assert run.count("flatten", "verified_flat") == 0
    (stalled, *_) = run.details("flatten", "stalled")
    assert f"{btc} {LEFT}" in stalled["last_error"]
    assert f"{eth} {LEFT}" in stalled["last_error"]


async def test_sell_is_still_the_default(
    sim: ExchangeSimulator, account: str, opened: Callable[..., Any], names: tuple[str, str]
) -> None:
    btc, eth = names
    seed(sim, account)
    venue = await opened()

    snapshot = await venue.snapshot()

    assert snapshot.positions == (PositionView(btc, D("0.2")), PositionView(eth, D("1.5")))
    assert snapshot.stranded == (PositionView("XYZ", D(3)),)

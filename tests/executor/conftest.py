"""Fixtures for the executor suites: one account on the per-test simulator, and Binance
adapters pointed at it (opened inside the test's event loop, closed after it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from ess.sim import ExchangeSimulator
from ess.venues.binance import BinanceVenue
from ess.venues.budget import RateBudget
from ess.venues.config import VenueConfig, VenueCredentials

#: Distinctive so a leak is easy to find in logs and exception text.
API_KEY = "exec-key-7Hq2ZpLw9"
SECRET = "exec-secret-Xv4mN8rT1"
ACCOUNT = "main"

OpenVenue = Callable[..., Awaitable[BinanceVenue]]


@pytest.fixture
def account(sim: ExchangeSimulator) -> str:
    """The account ``main`` with :data:`API_KEY`/:data:`SECRET`, 10000 USDT on futures and
    1000 USDT on spot."""
    return sim.add_account(API_KEY, SECRET, name=ACCOUNT, spot={"USDT": "1000"})


@pytest.fixture
def credentials() -> VenueCredentials:
    return VenueCredentials(api_key=SecretStr(API_KEY), secret=SecretStr(SECRET))


def venue_config(sim: ExchangeSimulator, exchange: str, **overrides: Any) -> VenueConfig:
    """A venue config for ``exchange`` pointed at ``sim``; short timeout for fault tests."""
    fields: dict[str, Any] = {
        "name": f"sim-{exchange}",
        "exchange": exchange,
        "account": ACCOUNT,
        "base_url": sim.url,
        "timeout_ms": 300,
        **overrides,
    }
    return VenueConfig.model_validate(fields)


@pytest.fixture
async def open_venue(
    sim: ExchangeSimulator, account: str, credentials: VenueCredentials
) -> AsyncIterator[OpenVenue]:
    """``await open_venue("binanceusdm", budget=..., **config_overrides)``: an opened adapter,
    closed at teardown."""
    opened: list[BinanceVenue] = []

    async def factory(
        exchange: str, *, budget: RateBudget | None = None, **overrides: Any
    ) -> BinanceVenue:
        venue = BinanceVenue(venue_config(sim, exchange, **overrides), credentials, budget=budget)
        opened.append(venue)
        await venue.open()
        return venue

    yield factory
    for venue in opened:
        await venue.aclose()


@pytest.fixture
async def futures(open_venue: OpenVenue) -> BinanceVenue:
    return await open_venue("binanceusdm")


@pytest.fixture
async def spot(open_venue: OpenVenue) -> BinanceVenue:
    return await open_venue("binance")

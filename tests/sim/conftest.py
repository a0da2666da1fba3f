"""Fixtures for the exchange-simulator suites: an account on the per-test simulator (``sim``,
from ``tests/fixtures/sim.py``) and real ccxt clients (created inside the test's event loop,
closed without ccxt's 250 ms exit sleep)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ess.sim import ExchangeSimulator, make_exchange

API_KEY = "test-key"
SECRET = "test-secret"


@pytest.fixture
def account(sim: ExchangeSimulator) -> str:
    return sim.add_account(API_KEY, SECRET, spot={"BTC": "0.2", "ETH": "1.5", "USDT": "1000"})


@pytest.fixture
async def usdm(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    exchange = make_exchange("binanceusdm", sim.url, API_KEY, SECRET, timeout_ms=1000)
    yield exchange
    await exchange.close()


@pytest.fixture
async def spot(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    exchange = make_exchange("binance", sim.url, API_KEY, SECRET, timeout_ms=1000)
    yield exchange
    await exchange.close()

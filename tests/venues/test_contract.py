"""The venue contract (:mod:`tests.venues.contract`) on every Binance pair:
:class:`~ess.venues.binance.BinanceVenue` (Binance's raw endpoints) and
:class:`~ess.venues.generic.CcxtVenue` (ccxt's unified API, ``adapter="generic"``), each on
USD-M futures (``binanceusdm``) and on spot (``binance``), through the simulator's Binance
family (``FAMILIES["binance"]``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ess.core.flatten import MarketKind
from ess.sim import ExchangeSimulator
from ess.venues.binance import BinanceVenue
from ess.venues.config import VenueCredentials
from ess.venues.generic import CcxtVenue
from ess.venues.ports import VenuePort
from tests.fixtures.venues import venue_config
from tests.venues.contract import (
    OpenPair,
    Start,
    VenueContract,
    market_id,
    opening,
    short_budget,
    unified_symbol,
)
from tests.venues.test_generic_adapter import SIM_OPTIONS

NO_SPOT_BALANCES = "futures hold positions, not balances: no asset can lack a market"


class BinancePairs(VenueContract):
    """The Binance adapter on the exchange id ``exchange``."""

    exchange: str
    family = "binance"

    @pytest.fixture
    async def open_pair(
        self, sim: ExchangeSimulator, account: str, credentials: VenueCredentials
    ) -> AsyncIterator[OpenPair]:
        def build(overrides: dict[str, Any], keys: VenueCredentials) -> VenuePort:
            config = venue_config(sim, self.exchange, **overrides)
            return BinanceVenue(config, keys, budget=short_budget(config))

        async with opening(sim, account, credentials, build, market_id, self.book) as open_pair:
            yield open_pair


class GenericPairs(VenueContract):
    """The generic (ccxt unified) adapter on the exchange id ``exchange``."""

    exchange: str
    family = "binance"

    @pytest.fixture
    async def open_pair(
        self, sim: ExchangeSimulator, account: str, credentials: VenueCredentials
    ) -> AsyncIterator[OpenPair]:
        def build(overrides: dict[str, Any], keys: VenueCredentials) -> VenuePort:
            config = venue_config(
                sim,
                self.exchange,
                adapter="generic",
                market=self.kind.value,
                name=f"gen-{self.exchange}",
                # ccxt's futures position read is two requests (leverage brackets first): a
                # 300 ms request timeout is too tight for that on a loaded 2-core machine.
                **{"timeout_ms": 1000, **overrides},
            )
            options = SIM_OPTIONS[self.exchange]
            return CcxtVenue(config, keys, options=options, budget=short_budget(config))

        symbol = unified_symbol(sim, self.kind)
        async with opening(sim, account, credentials, build, symbol, self.book) as open_pair:
            yield open_pair


class TestBinanceFutures(BinancePairs):
    exchange = "binanceusdm"
    kind = MarketKind.FUTURES

    @pytest.mark.skip(reason=NO_SPOT_BALANCES)
    async def test_a_balance_with_no_market_is_stranded_and_never_read_as_flat(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Spot only."""


class TestBinanceSpot(BinancePairs):
    exchange = "binance"
    kind = MarketKind.SPOT


class TestGenericFutures(GenericPairs):
    exchange = "binanceusdm"
    kind = MarketKind.FUTURES

    @pytest.mark.skip(reason=NO_SPOT_BALANCES)
    async def test_a_balance_with_no_market_is_stranded_and_never_read_as_flat(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Spot only."""


class TestGenericSpot(GenericPairs):
    exchange = "binance"
    kind = MarketKind.SPOT

"""The venue contract (:mod:`tests.venues.contract`) on Bybit v5: the generic adapter
(:class:`~ess.venues.generic.CcxtVenue`, an unmodified ccxt ``bybit`` client with NO
simulator-specific option) against the simulator's Bybit family, on linear perpetuals and on
spot.

The suite speaks the simulator's inspection vocabulary, which is Binance's where it names
endpoints and order parameters: it arms single faults on ``POST /fapi/v1/order`` or
``DELETE /fapi/v1/allOpenOrders`` and reads closes from the request log as
``newClientOrderId``, ``type=MARKET``, ``side=SELL``. :class:`BybitView` is the simulator with a
lens for exactly that: such a fault is armed on Bybit's endpoint (``POST /v5/order/create`` or
``/v5/order/cancel-all`` of the same category), and the Bybit orders the log holds for such an
endpoint are shown with their parameters renamed (``orderLinkId`` -> ``newClientOrderId``,
``orderType`` ``Market`` -> ``type`` ``MARKET``, ``side`` ``Sell`` -> ``SELL``, ``qty`` ->
``quantity``). Every assertion of the suite runs unchanged. The fault campaign of the sixth
case (:func:`ess.chaos.venue.arm_faults`) arms Bybit's own endpoints itself: its probabilistic
faults, and anything else (faults on Bybit paths, unfiltered log reads), pass through as is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar, Final

import pytest

from ess.core.flatten import MarketKind
from ess.sim import (
    ExchangeSimulator,
    Fault,
    FaultKind,
    LoggedRequest,
    RateLimits,
    Venue,
    default_markets,
)
from ess.venues.config import VenueCredentials
from ess.venues.generic import CcxtVenue
from ess.venues.ports import VenuePort
from tests.fixtures.venues import venue_config
from tests.venues.contract import (
    EXTRA_FUTURES,
    EXTRA_SPOT,
    FAULT_SEED,
    OpenPair,
    Start,
    VenueContract,
    opening,
    short_budget,
    unified_symbol,
)

NO_SPOT_BALANCES = "futures hold positions, not balances: no asset can lack a market"

#: Bybit's published budgets (600 requests per IP, create-order 10/s linear and 20/s spot per
#: UID) over 1 s windows, as the suite runs Binance's.
BYBIT_LIMITS: Final[Mapping[Venue, RateLimits]] = {
    Venue.FUTURES: RateLimits(
        weight_per_window=600,
        weight_window_s=1.0,
        orders_per_10s=10,
        orders_10s_window_s=1.0,
        orders_per_minute=None,
    ),
    Venue.SPOT: RateLimits(
        weight_per_window=600,
        weight_window_s=1.0,
        orders_per_10s=20,
        orders_10s_window_s=1.0,
        orders_per_minute=None,
    ),
}

#: A Binance endpoint the suite names -> Bybit's (method, path, parameters the request must
#: carry). Bybit's cancel-all serves both books.
BYBIT_ENDPOINT: Final[Mapping[tuple[str, str], tuple[str, str, Mapping[str, str]]]] = {
    ("POST", "/fapi/v1/order"): ("POST", "/v5/order/create", {"category": "linear"}),
    ("POST", "/api/v3/order"): ("POST", "/v5/order/create", {"category": "spot"}),
    ("DELETE", "/fapi/v1/allOpenOrders"): ("POST", "/v5/order/cancel-all", {"category": "linear"}),
    ("DELETE", "/api/v3/openOrders"): ("POST", "/v5/order/cancel-all", {"category": "spot"}),
}
#: Bybit's order parameters by Binance's name, and how the value reads in Binance's terms.
BINANCE_PARAMS: Final = (
    ("symbol", "symbol", str),
    ("side", "side", str.upper),
    ("type", "orderType", str.upper),
    ("quantity", "qty", str),
    ("price", "price", str),
    ("newClientOrderId", "orderLinkId", str),
    ("reduceOnly", "reduceOnly", str),
)


def binance_params(params: Mapping[str, str]) -> dict[str, str]:
    """A Bybit order's parameters under the names (and casing) Binance gives them."""
    return {
        binance: convert(params[bybit])
        for binance, bybit, convert in BINANCE_PARAMS
        if params.get(bybit)
    }


class BybitView(ExchangeSimulator):
    """The simulator, with the suite's Binance endpoint names mapped onto Bybit's (see the
    module docstring)."""

    def add_fault(self, method: str, path: str, kind: FaultKind | str, **options: Any) -> Fault:
        target = BYBIT_ENDPOINT.get((method.upper(), path))
        if target is None or "probability" in options:  # Bybit's own, or the campaign's
            return super().add_fault(method, path, kind, **options)
        bybit_method, bybit_path, required = target
        params = {**required, **(options.pop("params", None) or {})}
        return super().add_fault(bybit_method, bybit_path, kind, params=params, **options)

    def requests(
        self, method: str | None = None, path: str | None = None, account: str | None = None
    ) -> list[LoggedRequest]:
        target = BYBIT_ENDPOINT.get(((method or "").upper(), path or ""))
        if target is None:
            return super().requests(method, path, account)
        bybit_method, bybit_path, required = target
        return [
            replace(entry, params=binance_params(entry.params))
            for entry in super().requests(bybit_method, bybit_path, account)
            if all(entry.params.get(key) == value for key, value in required.items())
        ]


class BybitPairs(VenueContract):
    """The generic adapter on ``bybit`` (market ``kind``), default ccxt options."""

    exchange: ClassVar[str] = "bybit"

    @pytest.fixture
    async def sim(self) -> AsyncIterator[ExchangeSimulator]:
        """The suite's simulator (default and generated markets, Binance's budgets over 1 s
        windows, the seeded fault RNG) with Bybit's budgets over 1 s windows too, seen through
        :class:`BybitView`."""
        limits = {
            Venue.FUTURES: RateLimits(weight_window_s=1.0, orders_10s_window_s=1.0),
            Venue.SPOT: RateLimits(
                weight_per_window=6000, weight_window_s=1.0, orders_per_minute=None
            ),
        }
        simulator = BybitView(
            markets=default_markets(extra_futures=EXTRA_FUTURES, extra_spot=EXTRA_SPOT),
            rate_limits=limits,
            family_limits={"bybit": BYBIT_LIMITS},
            seed=FAULT_SEED,
        )
        async with simulator:
            yield simulator

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
                # load_markets is 12 requests here (currencies, then spot, linear, inverse and
                # six option coins): 300 ms is too tight for that on a loaded 2-core machine.
                **{"timeout_ms": 1000, **overrides},
            )
            return CcxtVenue(config, keys, options={}, budget=short_budget(config))

        symbol = unified_symbol(sim, self.kind)
        async with opening(sim, account, credentials, build, symbol) as open_pair:
            yield open_pair


class TestBybitLinear(BybitPairs):
    kind = MarketKind.FUTURES

    @pytest.mark.skip(reason=NO_SPOT_BALANCES)
    async def test_a_balance_with_no_market_is_stranded_and_never_read_as_flat(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Spot only."""


class TestBybitSpot(BybitPairs):
    kind = MarketKind.SPOT

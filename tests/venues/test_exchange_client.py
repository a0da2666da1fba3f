"""The in-process API flattening real venues: ``EmergencyStopController`` with
``VenuesExchangeClient`` over the Binance adapters against the simulator."""

from __future__ import annotations

import pytest

from ess import EmergencyStopController
from ess.api.controller import ActivationIncomplete
from ess.api.fakes import FakeEventBus, FakePolicyStore
from ess.sim import ExchangeSimulator, Venue
from ess.venues.exchange_client import NotFlatError, VenuesExchangeClient
from tests.fixtures.venues import OpenVenue

pytestmark = pytest.mark.integration


def seed(sim: ExchangeSimulator, account: str) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "60000")
    sim.seed_position(account, "ETHUSDT", "-2", "3000")
    sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000")
    sim.seed_order(account, "BTCUSDT", "SELL", "0.5", order_type="STOP_MARKET", trigger_price="1")
    sim.seed_balance(account, "BTC", "0.2")
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)


async def test_the_controller_flattens_every_venue_through_the_port(
    sim: ExchangeSimulator, account: str, open_venue: OpenVenue
) -> None:
    seed(sim, account)
    client = VenuesExchangeClient([await open_venue("binanceusdm"), await open_venue("binance")])
    controller = EmergencyStopController(FakePolicyStore(), client, FakeEventBus())

    state = await controller.activate("flash_crash: BTC -9% in 20s")

    assert state.active
    assert sim.positions(account) == {}
    assert sim.open_orders(account) == []
    assert sum(sim.spot_balance(account, "BTC")) == 0
    closes = sim.requests("POST", "/fapi/v1/order")
    assert all(r.params["reduceOnly"] == "true" for r in closes)


async def test_a_venue_that_cannot_be_verified_flat_raises(
    sim: ExchangeSimulator, account: str, open_venue: OpenVenue
) -> None:
    seed(sim, account)
    client = VenuesExchangeClient([await open_venue("binanceusdm")])
    sim.add_fault("GET", "/fapi/v3/positionRisk", "empty", times=None)

    with pytest.raises(NotFlatError, match="sim-binanceusdm"):
        await client.close_all_positions()
    controller = EmergencyStopController(
        FakePolicyStore(), client, FakeEventBus(), retry_delay_sec=0.01
    )
    with pytest.raises(ActivationIncomplete):
        await controller.activate("manual")
    sim.clear_faults()
    await client.close_all_positions()  # the port is safe to repeat
    assert sim.positions(account) == {}

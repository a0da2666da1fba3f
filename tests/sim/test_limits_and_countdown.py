"""Rate budgets (429/-1003, order counts, 418 bans, counters) and Binance's futures dead-man's
switch ``countdownCancelAll``, run by the simulator itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ccxt.base import errors

from ess.sim import ExchangeSimulator, RateLimits, Venue, make_exchange
from tests.helpers import eventually
from tests.sim.conftest import API_KEY, SECRET

pytestmark = pytest.mark.integration

BTC = "BTC/USDT:USDT"


@pytest.fixture
async def tight() -> AsyncIterator[ExchangeSimulator]:
    """Futures budget of 12 weight per 0.5 s and 3 orders per 10 s; ban after 3 violations."""
    limits = RateLimits(
        weight_per_window=12,
        weight_window_s=0.5,
        orders_per_10s=3,
        orders_per_minute=None,
        ban_after=3,
        ban_s=0.3,
    )
    async with ExchangeSimulator(rate_limits={Venue.FUTURES: limits}) as simulator:
        simulator.add_account(API_KEY, SECRET)
        yield simulator


@pytest.fixture
async def client(tight: ExchangeSimulator) -> AsyncIterator[Any]:
    exchange = make_exchange("binanceusdm", tight.url, API_KEY, SECRET)
    exchange.enableLastResponseHeaders = True
    yield exchange
    await exchange.close()


async def test_weight_budget_exceeded_answers_429_and_recovers(
    tight: ExchangeSimulator, client: Any
) -> None:
    await client.load_markets()  # weight 1
    await client.fetch_balance()  # weight 5
    assert client.last_response_headers["X-MBX-USED-WEIGHT-1M"] == "6"
    await client.fapiPrivateV3GetPositionRisk()  # weight 5 -> 11

    with pytest.raises(errors.DDoSProtection, match="-1003"):
        await client.fapiPrivateV3GetPositionRisk()  # 16 > 12

    counters = tight.rate_counters(Venue.FUTURES)
    assert (counters.rejected, counters.peak_weight, counters.used_weight) == (1, 11, 11)
    refused = tight.log[-1]
    assert (refused.status, refused.code, refused.weight) == (429, -1003, 5)
    # poll the counters, not the API: hammering a rate-limited endpoint is what earns bans
    await eventually(lambda: tight.rate_counters(Venue.FUTURES).used_weight == 0, timeout=2)
    await client.fapiPrivateV3GetPositionRisk()
    assert tight.rate_counters(Venue.FUTURES).rejected == 1


async def test_order_count_budget_per_ten_seconds(tight: ExchangeSimulator, client: Any) -> None:
    account = tight.add_account("k2", "s2")
    await client.load_markets()
    for price in (50000, 50001, 50002):
        await client.create_order(BTC, "limit", "buy", 0.001, price)

    with pytest.raises(errors.DDoSProtection, match="-1015"):
        await client.create_order(BTC, "limit", "buy", 0.001, 50003)

    counters = tight.rate_counters(Venue.FUTURES, "acct1")
    assert (counters.orders_10s, counters.peak_orders_10s, counters.rejected) == (3, 3, 1)
    assert tight.rate_counters(Venue.FUTURES, account).orders_10s == 0  # per account
    assert client.last_response_headers is not None


async def test_repeated_violations_earn_a_418_ban(tight: ExchangeSimulator, client: Any) -> None:
    await client.load_markets()
    await client.fapiPrivateV3GetAccount()
    await client.fapiPrivateV3GetAccount()  # 11 of 12
    for _ in range(3):
        with pytest.raises(errors.DDoSProtection):
            await client.fapiPrivateV3GetAccount()

    with pytest.raises(errors.DDoSProtection, match="banned"):
        await client.fetch_time()

    assert tight.log[-1].status == 418
    assert tight.rate_counters(Venue.FUTURES).banned == 1
    assert tight.rate_counters(Venue.FUTURES).ban_remaining_s > 0
    await eventually(lambda: tight.rate_counters(Venue.FUTURES).ban_remaining_s == 0, timeout=2)
    await client.fetch_time()


async def test_exchange_info_publishes_the_configured_budgets(client: Any) -> None:
    info = await client.fapiPublicGetExchangeInfo()

    assert info["rateLimits"] == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND", "intervalNum": 1, "limit": 12},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 3},
    ]


async def test_spot_and_futures_budgets_are_separate(tight: ExchangeSimulator) -> None:
    spot = make_exchange("binance", tight.url, API_KEY, SECRET)
    try:
        for _ in range(3):
            await spot.fetch_balance()  # 20 weight each, far over the futures budget
    finally:
        await spot.close()

    assert tight.rate_counters(Venue.SPOT).total_weight == 20 + 3 * 20
    assert tight.rate_counters(Venue.FUTURES).requests == 0


async def countdown(client: Any, symbol: str, ms: int) -> Any:
    return await client.fapiPrivatePostCountdownCancelAll({"symbol": symbol, "countdownTime": ms})


async def test_countdown_cancels_the_symbols_orders_when_it_expires(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    other = sim.add_account("k2", "s2")
    btc = sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000")
    sim.seed_order(account, "ETHUSDT", "BUY", "0.1", "2500")
    sim.seed_order(other, "BTCUSDT", "BUY", "0.01", "50000")
    stop = sim.seed_order(
        account, "BTCUSDT", "SELL", "0.01", order_type="STOP_MARKET", trigger_price="55000"
    )

    answer = await countdown(usdm, "BTCUSDT", 150)
    assert answer == {"symbol": "BTCUSDT", "countdownTime": "150"}

    await eventually(lambda: sim.events, timeout=2)
    assert await usdm.fetch_open_orders(BTC) == []
    assert [o.symbol for o in sim.open_orders(account, conditional=False)] == ["ETHUSDT"]
    assert len(sim.open_orders(other)) == 1  # countdowns are per account
    assert [o.order_id for o in sim.open_orders(account, conditional=True)] == [stop]
    assert [(e.kind, e.account, e.symbol, e.order_ids) for e in sim.events] == [
        ("countdown_cancel", account, "BTCUSDT", (btc,))
    ]
    assert sim.countdowns(account) == {}


async def test_countdown_refresh_postpones_and_zero_disarms(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000")
    sim.seed_order(account, "ETHUSDT", "BUY", "0.1", "2500")
    await countdown(usdm, "ETHUSDT", 200)
    await countdown(usdm, "ETHUSDT", 0)
    assert set(sim.countdowns(account)) == set()

    await countdown(usdm, "BTCUSDT", 400)
    for _ in range(4):  # a heartbeat: refresh well inside the countdown, 4 x 150 ms > 400 ms
        await asyncio.sleep(0.15)
        assert sim.countdowns(account)["BTCUSDT"] > 0.1
        await countdown(usdm, "BTCUSDT", 400)
    assert len(sim.open_orders(account)) == 2  # outlived the first deadline by far

    await eventually(lambda: not sim.open_orders(account, symbol="BTCUSDT"), timeout=2)
    assert [o.symbol for o in sim.open_orders(account)] == ["ETHUSDT"]  # disarmed one held
    assert len(sim.requests("POST", "/fapi/v1/countdownCancelAll")) == 7
    assert sim.rate_counters(Venue.FUTURES).total_weight >= 70  # weight 10 each


async def test_countdown_validates_its_parameters(
    sim: ExchangeSimulator, account: str, usdm: Any
) -> None:
    with pytest.raises(errors.BadRequest):
        await usdm.fapiPrivatePostCountdownCancelAll({"symbol": "BTCUSDT"})
    with pytest.raises(errors.BadSymbol):
        await countdown(usdm, "NOPEUSDT", 1000)
    assert sim.countdowns(account) == {}

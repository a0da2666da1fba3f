"""What the generic adapter does about venues whose ccxt methods do not, alone, give a complete
read or a usable dead-man's switch (each against the simulator through unmodified ccxt):

* OKX lists its algo book per ``ordType``: a stop-loss placed as a ``conditional`` order is
  not in ccxt's ``trigger`` listing, and must still be seen and cancelled;
* Bybit pages open orders (20 rows): a snapshot must hold every one;
* Bybit's disconnected-cancel-all fires only when a websocket drops (ESS talks REST), and
  OKX's ``cancel-all-after`` takes 10 to 120 s: both are refused at configuration time rather
  than armed for nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest
from pydantic import SecretStr

from ess.core.flatten import CancelStep, CloseStep, PositionSide
from ess.sim import ExchangeSimulator, Venue, localize_urls
from ess.venues.config import VenueConfig, VenueConfigError, VenueCredentials, parse_venues
from ess.venues.generic import CcxtVenue
from ess.venues.ports import VenueError, VenueErrorKind
from tests.fixtures.venues import venue_config
from tests.venues.test_generic_adapter import SIM_OPTIONS

KEY, SECRET, PASSPHRASE = "quirks-key", "quirks-secret", "quirks-pass"
CREDENTIALS = VenueCredentials(
    api_key=SecretStr(KEY), secret=SecretStr(SECRET), passphrase=SecretStr(PASSPHRASE)
)


@pytest.fixture
def account(sim: ExchangeSimulator) -> str:
    return sim.add_account(KEY, SECRET, name="quirks", passphrase=PASSPHRASE)


@pytest.fixture
async def okx_client(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    """The bot's own ccxt client on the same OKX account (how the orders got there)."""
    client = ccxt_async.okx(
        {"apiKey": KEY, "secret": SECRET, "password": PASSPHRASE, "timeout": 2000}
    )
    client.timeout_on_exit = 0
    localize_urls(client, sim.url)
    await client.load_markets()
    yield client
    await client.close()


async def opened(config: VenueConfig) -> CcxtVenue:
    venue = CcxtVenue(config, CREDENTIALS)
    await venue.open()
    return venue


async def test_okx_stop_loss_and_take_profit_orders_are_seen_and_cancelled(
    sim: ExchangeSimulator, account: str, okx_client: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    btc = "BTC/USDT:USDT"
    await okx_client.create_order(
        btc, "market", "sell", 500, None, {"stopLossPrice": 55000, "reduceOnly": True}
    )
    await okx_client.create_order(
        btc, "market", "sell", 500, None, {"takeProfitPrice": 65000, "reduceOnly": True}
    )
    await okx_client.create_order(btc, "market", "sell", 200, None, {"triggerPrice": 54000})
    assert len(sim.open_orders(account, conditional=True)) == 3
    venue = await opened(
        venue_config(sim, "okx", adapter="generic", market="futures", timeout_ms=2000)
    )
    try:
        snapshot = await venue.snapshot()
        assert [(o.symbol, o.conditional) for o in snapshot.orders] == [(btc, True)] * 3

        await venue.cancel_all(CancelStep(btc, conditional=True))

        assert sim.open_orders(account, conditional=True) == []
        assert (await venue.snapshot()).orders == ()
    finally:
        await venue.aclose()


async def test_bybit_open_orders_beyond_the_first_page_are_read(
    sim: ExchangeSimulator, account: str
) -> None:
    for index in range(27):
        price = Decimal(50_000 - index * 10)
        sim.seed_order(account, "BTCUSDT", "BUY", "0.001", price, venue=Venue.FUTURES)
    venue = await opened(
        venue_config(sim, "bybit", adapter="generic", market="futures", timeout_ms=2000)
    )
    try:
        snapshot = await venue.snapshot()
    finally:
        await venue.aclose()

    assert len(snapshot.orders) == 27
    assert len({o.order_id for o in snapshot.orders}) == 27


def test_bybit_countdown_is_refused_because_it_never_fires_over_rest() -> None:
    with pytest.raises(VenueConfigError, match="private websocket"):
        parse_venues(
            [
                {
                    "name": "bybit-perps",
                    "exchange": "bybit",
                    "market": "futures",
                    "countdown_symbols": ["BTC/USDT:USDT"],
                }
            ]
        )
    venue = CcxtVenue(
        VenueConfig(name="bybit-perps", exchange="bybit", market="futures"), CREDENTIALS
    )
    assert not venue.supports_countdown


@pytest.mark.parametrize(("countdown_ms", "accepted"), [(5_000, False), (60_000, True)])
def test_okx_countdown_length_must_be_what_okx_accepts(countdown_ms: int, accepted: bool) -> None:
    entry = {
        "name": "okx-swaps",
        "exchange": "okx",
        "market": "futures",
        "countdown_symbols": ["BTC/USDT:USDT"],
        "countdown_ms": countdown_ms,
    }
    if accepted:
        (venue,) = parse_venues([entry])
        assert venue.countdown_ms == countdown_ms
        return
    with pytest.raises(VenueConfigError, match="okx accepts 10000 to 120000 ms"):
        parse_venues([entry])


async def test_a_lost_read_is_tried_again_within_the_snapshot(
    sim: ExchangeSimulator, account: str
) -> None:
    """OKX's snapshot is seven reads: one answer lost to a proxy (an empty 200) is read
    again rather than failing the whole snapshot; a rate limit is left to the engine."""
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    venue = await opened(
        venue_config(sim, "okx", adapter="generic", market="futures", timeout_ms=2000)
    )
    try:
        lost = sim.add_fault("GET", "/api/v5/account/positions", "empty")
        snapshot = await venue.snapshot()
        assert lost.hits == 1
        assert [p.symbol for p in snapshot.positions] == ["BTC/USDT:USDT"]

        limited = sim.add_fault("GET", "/api/v5/account/positions", "http429")
        with pytest.raises(VenueError) as raised:
            await venue.snapshot()
        assert (raised.value.kind, limited.hits) == (VenueErrorKind.RATE_LIMITED, 1)
    finally:
        await venue.aclose()


@pytest.mark.parametrize(
    ("exchange", "side"),
    [("binanceusdm", "LONG"), ("bybit", "LONG"), ("okx", "LONG"), ("okx", "SHORT")],
)
async def test_a_hedge_close_of_a_side_already_flat_reads_as_already_reduced(
    sim: ExchangeSimulator, account: str, exchange: str, side: str
) -> None:
    """Hedge mode: the venue refuses the close of a side that is flat by now (Binance -2022,
    Bybit 110017, OKX 51169, each in its own words): the engine must read it as "already
    reduced", as it reads a refused reduce-only close in one-way mode, not as a failure to
    back off from."""
    sim.set_hedge_mode(account)
    other = "SHORT" if side == "LONG" else "LONG"
    sim.seed_position(
        account, "BTCUSDT", "-0.5" if other == "SHORT" else "0.5", "58000", position_side=other
    )
    config = venue_config(sim, exchange, adapter="generic", market="futures", timeout_ms=2000)
    venue = CcxtVenue(config, CREDENTIALS, options=SIM_OPTIONS.get(exchange, {}))
    await venue.open()
    try:
        flat_side: PositionSide = "long" if side == "LONG" else "short"
        close = CloseStep(
            "BTC/USDT:USDT",
            "sell" if side == "LONG" else "buy",
            Decimal("0.5"),
            "ess-" + "e" * 32,
            reduce_only=True,
            observed=Decimal("0.5") if side == "LONG" else Decimal("-0.5"),
            position_side=flat_side,
        )
        with pytest.raises(VenueError) as refused:
            await venue.close(close)
        assert refused.value.kind is VenueErrorKind.REDUCE_ONLY_REJECTED, str(refused.value)
        assert set(sim.hedge_positions(account)) == {("BTCUSDT", other)}
    finally:
        await venue.aclose()

"""Binance COIN-M (``binancecoinm``, inverse perpetuals under ``/dapi``) through an unmodified
ccxt client with its default options, over HTTP against the simulator: the hidden requests of
``load_markets``, balances per margin coin, positions in contracts, both order books, reduce-only
closes with inverse PnL in the base coin, signatures, rate limits, every fault kind and the
``countdownCancelAll`` dead-man's switch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest
from ccxt.base import errors

from ess.sim import ExchangeSimulator, FaultKind, Market, RateLimits, Venue
from ess.sim.markets import DEFAULT_MARKETS
from ess.venues.ccxt_client import localize_urls, route_exceptions_by_path
from tests.helpers import eventually

pytestmark = pytest.mark.integration

D = Decimal
KEY = "coinm-key"
SECRET = "coinm-secret"
BTC = "BTC/USD:BTC"
ETH = "ETH/USD:ETH"
#: What one closed contract realizes: ``contracts x contract_size x (1/entry - 1/exit)``.
Q8 = D("1e-8")


def inverse_pnl(contracts: int, size: int, entry: str, exit_price: str, direction: int) -> Decimal:
    return (contracts * size * (1 / D(entry) - 1 / D(exit_price)) * direction).quantize(Q8)


def coinm_client(
    sim: ExchangeSimulator,
    key: str = KEY,
    secret: str = SECRET,
    *,
    timeout_ms: int = 1000,
    options: dict[str, Any] | None = None,
) -> Any:
    """ccxt's ``binancecoinm`` with its default options (``options`` only adds), pointed at the
    simulator the production way: hosts rewritten, error tables chosen by path, ccxt's
    client-side throttle off (``cost x 50 ms`` of sleep per request) as in ESS's adapters."""
    client = ccxt_async.binancecoinm(
        {
            "apiKey": key,
            "secret": secret,
            "timeout": timeout_ms,
            "enableRateLimit": False,
            "options": options or {},
        }
    )
    client.timeout_on_exit = 0
    localize_urls(client, sim.url)
    route_exceptions_by_path(client)
    return client


@pytest.fixture
def coinm_account(sim: ExchangeSimulator) -> str:
    """An account holding 2 BTC and 10 ETH in its COIN-M wallets."""
    name = sim.add_account(KEY, SECRET, name="coin")
    sim.seed_balance(name, "BTC", "2", venue=Venue.COINM)
    sim.seed_balance(name, "ETH", "10", venue=Venue.COINM)
    return name


@pytest.fixture
async def coinm(sim: ExchangeSimulator, coinm_account: str) -> AsyncIterator[Any]:
    client = coinm_client(sim)
    yield client
    await client.close()


# -- reads ----------------------------------------------------------------------------------------


async def test_load_markets_serves_the_hidden_requests_and_lists_inverse_perpetuals(
    sim: ExchangeSimulator, coinm: Any
) -> None:
    markets = await coinm.load_markets()

    assert sorted(markets) == ["BTC/USD:BTC", "ETH/USD:ETH", "SOL/USD:SOL"]
    btc = markets[BTC]
    assert (btc["id"], btc["type"], btc["inverse"], btc["settle"]) == (
        "BTCUSD_PERP",
        "swap",
        True,
        "BTC",
    )
    assert (btc["contractSize"], btc["precision"]["amount"], btc["limits"]["amount"]["min"]) == (
        100,
        1,
        1,
    )
    assert markets[ETH]["contractSize"] == 10
    # With keys and default options ccxt also reads the wallet's coins (and margin pairs).
    assert sorted((e.path, e.status) for e in sim.log) == [
        ("/dapi/v1/exchangeInfo", 200),
        ("/sapi/v1/capital/config/getall", 200),
        ("/sapi/v1/margin/allPairs", 200),
    ]
    assert {"BTC", "ETH", "USDT"} <= set(coinm.currencies)


async def test_fetch_time_reads_the_coinm_clock(sim: ExchangeSimulator, coinm: Any) -> None:
    before = sim.now_ms()
    assert before <= await coinm.fetch_time() <= sim.now_ms()
    assert [e.path for e in sim.log] == ["/dapi/v1/time"]


async def test_balance_is_per_margin_coin_with_inverse_unrealized_pnl(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    sim.seed_position(coinm_account, "BTCUSD_PERP", 100, "50000")  # mark 60000

    balance = await coinm.fetch_balance()

    unrealized = inverse_pnl(100, 100, "50000", "60000", 1)  # 0.03333333 BTC
    assert D(str(balance["BTC"]["total"])) == D(2) + unrealized
    assert D(str(balance["BTC"]["used"])) == (D(100 * 100) / D(60000) / 20).quantize(Q8)
    assert balance["ETH"]["total"] == 10
    assert sim.requests("GET", "/dapi/v1/account")[0].status == 200


async def test_positions_are_contracts_with_the_side_from_the_coin_notional(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    sim.seed_position(coinm_account, "BTCUSD_PERP", 100, "50000")
    sim.seed_position(coinm_account, "ETHUSD_PERP", -30, "3100")
    sim.seed_position(coinm_account, "BTCUSDT", "0.5", "58000")  # USD-M: not a /dapi position

    positions = {p["symbol"]: p for p in await coinm.fetch_positions()}
    await coinm.fetch_positions()

    assert sorted(positions) == [BTC, ETH]
    btc, eth = positions[BTC], positions[ETH]
    assert (btc["side"], btc["contracts"], btc["contractSize"], btc["entryPrice"]) == (
        "long",
        100,
        100,
        50000,
    )
    assert (eth["side"], eth["contracts"], eth["contractSize"]) == ("short", 30, 10)
    assert btc["notional"] == pytest.approx(100 * 100 / 60000)  # in BTC
    assert eth["unrealizedPnl"] == pytest.approx(float(inverse_pnl(30, 10, "3100", "3000", -1)))
    assert btc["hedged"] is False
    # ccxt reads the brackets once per client, from /dapi/v2 (COIN-M's, not /fapi's).
    assert [e.path for e in sim.requests("GET")].count("/dapi/v2/leverageBracket") == 1
    assert sim.requests("GET", "/fapi/v1/leverageBracket") == []


async def test_coinm_and_usdm_books_are_separate(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    """One account, two derivative books: each API reports only its own."""
    sim.seed_position(coinm_account, "BTCUSD_PERP", 7, "60000")
    sim.seed_position(coinm_account, "BTCUSDT", "0.5", "58000")
    sim.seed_order(coinm_account, "BTCUSDT", "BUY", "0.01", "50000")
    usdm = ccxt_async.binanceusdm({"apiKey": KEY, "secret": SECRET, "timeout": 1000})
    usdm.timeout_on_exit = 0
    localize_urls(usdm, sim.url)
    try:
        linear = await usdm.fetch_positions()
        inverse = await coinm.fetch_positions()
        assert await coinm.fetch_open_orders(BTC) == []
        assert len(await usdm.fetch_open_orders("BTC/USDT:USDT")) == 1
    finally:
        await usdm.close()
    assert [(p["symbol"], p["contracts"]) for p in linear] == [("BTC/USDT:USDT", 0.5)]
    assert [(p["symbol"], p["contracts"]) for p in inverse] == [(BTC, 7)]


async def test_open_orders_of_both_books(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    regular = sim.seed_order(coinm_account, "BTCUSD_PERP", "BUY", 5, "50000")
    trigger = sim.seed_order(
        coinm_account,
        "ETHUSD_PERP",
        "SELL",
        3,
        order_type="STOP_MARKET",
        trigger_price="2500",
        reduce_only=True,
    )

    (order,) = await coinm.fetch_open_orders(BTC)
    assert (order["id"], order["type"], order["amount"], order["price"]) == (
        str(regular),
        "limit",
        5,
        50000,
    )
    assert await coinm.fetch_open_orders(ETH) == []
    (stop,) = await coinm.fetch_open_orders(ETH, params={"trigger": True})
    assert (stop["id"], stop["triggerPrice"], stop["reduceOnly"]) == (str(trigger), 2500, True)
    assert [e.path for e in sim.requests("GET")][-3:] == [
        "/dapi/v1/openOrders",
        "/dapi/v1/openOrders",
        "/dapi/v1/openAlgoOrders",
    ]

    # Account-wide (what the generic adapter reads), once ccxt's client-side warning is off.
    wide = coinm_client(sim, options={"warnOnFetchOpenOrdersWithoutSymbol": False})
    try:
        assert [o["symbol"] for o in await wide.fetch_open_orders()] == [BTC]
        assert [
            o["symbol"] for o in await wide.fetch_open_orders(None, None, None, {"trigger": True})
        ] == [ETH]
    finally:
        await wide.close()
    assert sim.requests("GET", "/dapi/v1/openOrders")[-1].weight == 40


# -- orders and cancels ---------------------------------------------------------------------------


async def test_create_fetch_and_cancel_orders_in_both_books(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    limit = await coinm.create_order(BTC, "limit", "buy", 3, 55000, {"clientOrderId": "mine-1"})
    assert (limit["status"], limit["amount"], limit["clientOrderId"]) == ("open", 3, "mine-1")
    posted = sim.requests("POST", "/dapi/v1/order")[0].params
    assert (posted["quantity"], posted["newClientOrderId"]) == ("3", "mine-1")

    fetched = await coinm.fetch_order(limit["id"], BTC)
    assert (fetched["id"], fetched["status"]) == (limit["id"], "open")

    stop = await coinm.create_order(
        ETH, "market", "sell", 2, None, {"triggerPrice": 2500, "reduceOnly": False}
    )
    assert [o.order_id for o in sim.open_orders(coinm_account, conditional=True)] == [
        int(stop["id"])
    ]
    assert sim.requests("POST", "/dapi/v1/algoOrder")[0].params["algoType"] == "CONDITIONAL"
    stop_read = await coinm.fetch_order(stop["id"], ETH, {"trigger": True})
    assert stop_read["triggerPrice"] == 2500

    cancelled = await coinm.cancel_order(limit["id"], BTC)
    assert cancelled["status"] == "canceled"
    await coinm.cancel_order(stop["id"], ETH, {"trigger": True})
    assert sim.open_orders(coinm_account) == []
    with pytest.raises(errors.OrderNotFound):
        await coinm.cancel_order(limit["id"], BTC)
    with pytest.raises(errors.OrderNotFound):
        await coinm.fetch_order("424242", BTC)


async def test_cancel_orders_by_id_in_one_batch(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    first = sim.seed_order(coinm_account, "BTCUSD_PERP", "BUY", 1, "50000")
    second = sim.seed_order(coinm_account, "BTCUSD_PERP", "SELL", 2, "70000")
    kept = sim.seed_order(coinm_account, "BTCUSD_PERP", "BUY", 3, "40000")

    answers = await coinm.cancel_orders([str(first), str(second), "999"], BTC)

    # ccxt keeps the cancelled ones; the unknown id's element is ``{"code": -2011, ...}``.
    assert [(a["id"], a["status"]) for a in answers] == [
        (str(first), "canceled"),
        (str(second), "canceled"),
    ]
    assert [o.order_id for o in sim.open_orders(coinm_account)] == [kept]
    with pytest.raises(errors.OrderNotFound, match="-2011"):  # only unknown ids: an error
        await coinm.cancel_orders(["7"], BTC)
    assert sim.requests("DELETE", "/dapi/v1/batchOrders")[0].params["orderidlist"] == (
        f"[{first},{second},999]"
    )


async def test_cancel_all_orders_clears_both_books(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    for symbol in ("BTCUSD_PERP", "ETHUSD_PERP"):
        sim.seed_order(coinm_account, symbol, "BUY", 1, "1000")
        sim.seed_order(
            coinm_account, symbol, "BUY", 1, order_type="TAKE_PROFIT_MARKET", trigger_price="900"
        )

    for symbol in (BTC, ETH):
        await coinm.cancel_all_orders(symbol)
    assert sim.open_orders(coinm_account, conditional=False) == []
    assert len(sim.open_orders(coinm_account, conditional=True)) == 2  # a book of its own
    for symbol in (BTC, ETH):
        await coinm.cancel_all_orders(symbol, {"trigger": True})

    assert sim.open_orders(coinm_account) == []
    assert len(sim.requests("DELETE", "/dapi/v1/allOpenOrders")) == 2
    assert len(sim.requests("DELETE", "/dapi/v1/algoOpenOrders")) == 2


async def test_legacy_conditional_order_on_the_order_endpoint_rests_in_the_regular_book(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    """COIN-M's order endpoint still takes ``STOP_MARKET`` with ``stopPrice`` (USD-M refuses
    it with -4120): such an order is listed and cancelled with the regular book."""
    await coinm.load_markets()
    answer = await coinm.dapiPrivatePostOrder(
        {"symbol": "BTCUSD_PERP", "side": "SELL", "type": "STOP_MARKET", "quantity": "4",
         "stopPrice": "50000"}
    )  # fmt: skip
    assert (answer["type"], answer["stopPrice"], answer["status"]) == (
        "STOP_MARKET",
        "50000",
        "NEW",
    )
    (listed,) = await coinm.fetch_open_orders(BTC)
    assert listed["triggerPrice"] == 50000
    await coinm.cancel_all_orders(BTC)
    assert sim.open_orders(coinm_account) == []


# -- closes ---------------------------------------------------------------------------------------


async def test_reduce_only_close_of_a_long_realizes_inverse_pnl_in_btc(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    sim.seed_position(coinm_account, "BTCUSD_PERP", 120, "50000")

    order = await coinm.create_order(
        BTC, "market", "sell", 120, None, {"reduceOnly": True, "clientOrderId": "ess-close-1"}
    )

    realized = inverse_pnl(120, 100, "50000", "60000", 1)  # 0.04 BTC
    assert (order["status"], order["filled"], order["average"]) == ("closed", 120, 60000)
    assert order["cost"] == pytest.approx(120 * 100 / 60000)  # cumBase: in BTC
    assert order["clientOrderId"] == "ess-close-1"
    assert sim.positions(coinm_account) == {}
    assert sim.coinm_wallet(coinm_account, "BTC") == D(2) + realized
    assert sim.fills(coinm_account)[-1].realized_pnl == realized
    assert sim.requests("POST", "/dapi/v1/order")[0].params["reduceOnly"] == "true"
    assert await coinm.fetch_positions() == []


async def test_reduce_only_close_of_a_short_realizes_inverse_pnl_in_eth(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    sim.seed_position(coinm_account, "ETHUSD_PERP", -40, "3300")
    sim.set_mark_price("ETHUSD_PERP", "3100")

    order = await coinm.create_order(ETH, "market", "buy", 40, None, {"reduceOnly": True})

    realized = inverse_pnl(40, 10, "3300", "3100", -1)  # the short gained: positive
    assert realized > 0
    assert (order["status"], order["filled"]) == ("closed", 40)
    assert sim.positions(coinm_account) == {}
    assert sim.coinm_wallet(coinm_account, "ETH") == D(10) + realized


async def test_entry_price_of_added_contracts_is_the_harmonic_mean(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    await coinm.create_order(BTC, "market", "buy", 100, None)
    sim.set_mark_price("BTCUSD_PERP", "40000")
    await coinm.create_order(BTC, "market", "buy", 100, None)

    (position,) = await coinm.fetch_positions()
    assert position["contracts"] == 200
    assert position["entryPrice"] == pytest.approx(200 / (100 / 60000 + 100 / 40000))  # 48000


async def test_reduce_only_that_would_open_or_flip_is_refused_or_clipped(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    with pytest.raises(errors.InvalidOrder, match="-2022"):  # flat: it could only open
        await coinm.create_order(BTC, "market", "sell", 5, None, {"reduceOnly": True})
    sim.seed_position(coinm_account, "BTCUSD_PERP", 10, "60000")
    with pytest.raises(errors.InvalidOrder, match="-2022"):  # same side: it could only grow
        await coinm.create_order(BTC, "market", "buy", 5, None, {"reduceOnly": True})

    # Sized above the position (a stale read): closes exactly the 10 contracts, never short.
    order = await coinm.create_order(BTC, "market", "sell", 15, None, {"reduceOnly": True})

    assert (order["filled"], order["status"]) == (10, "closed")
    assert sim.positions(coinm_account) == {}
    assert [e.code for e in sim.requests("POST", "/dapi/v1/order")] == [-2022, -2022, None]


async def test_quantities_are_whole_contracts(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    await coinm.load_markets()
    assert coinm.amount_to_precision(BTC, 2.7) == "2"  # ccxt truncates to the contract
    with pytest.raises(errors.BadRequest, match="-1111"):
        await coinm.dapiPrivatePostOrder(
            {"symbol": "BTCUSD_PERP", "side": "BUY", "type": "MARKET", "quantity": "1.5"}
        )
    assert sim.positions(coinm_account) == {}


# -- authentication -------------------------------------------------------------------------------


async def test_wrong_secret_is_an_authentication_error(
    sim: ExchangeSimulator, coinm_account: str
) -> None:
    client = coinm_client(sim, secret="not-the-secret")
    try:
        with pytest.raises(errors.AuthenticationError):
            await client.dapiPrivateGetAccount()
    finally:
        await client.close()
    assert sim.requests("GET", "/dapi/v1/account")[0].code == -1022


async def test_unknown_key_is_an_authentication_error(
    sim: ExchangeSimulator, coinm_account: str
) -> None:
    client = coinm_client(sim, key="someone-else")
    try:
        with pytest.raises(errors.AuthenticationError):
            await client.load_markets()  # its first request is already signed (/sapi)
    finally:
        await client.close()
    entry = sim.log[0]
    assert (entry.status, entry.code, entry.account) == (401, -2015, None)


@pytest.mark.parametrize("skew_ms", [-20_000, 20_000], ids=["client-ahead", "client-behind"])
async def test_stale_timestamp_is_invalid_nonce(
    sim: ExchangeSimulator, coinm: Any, skew_ms: int
) -> None:
    await coinm.load_markets()
    sim.clock_skew_ms = skew_ms
    with pytest.raises(errors.InvalidNonce):
        await coinm.fetch_balance()
    await coinm.load_time_difference()  # GET /dapi/v1/time
    await coinm.fetch_balance()
    assert [e.code for e in sim.requests("GET", "/dapi/v1/account")] == [-1021, None]


# -- rate limits ----------------------------------------------------------------------------------


@pytest.fixture
async def tight() -> AsyncIterator[ExchangeSimulator]:
    """COIN-M budget of 12 weight per 0.5 s and 2 orders per minute window of 0.5 s."""
    limits = RateLimits(
        weight_per_window=12,
        weight_window_s=0.5,
        orders_per_10s=None,
        orders_per_minute=2,
        orders_minute_window_s=0.5,
    )
    async with ExchangeSimulator(rate_limits={Venue.COINM: limits}) as simulator:
        simulator.add_account(KEY, SECRET)
        yield simulator


async def test_over_the_weight_budget_is_refused_with_the_headers(tight: ExchangeSimulator) -> None:
    client = coinm_client(tight)
    client.enableLastResponseHeaders = True
    try:
        await client.dapiPublicGetExchangeInfo()  # 1
        await client.dapiPrivateGetAccount()  # 5 -> 6
        assert client.last_response_headers["X-MBX-USED-WEIGHT-1M"] == "6"
        assert "X-MBX-ORDER-COUNT-10S" not in client.last_response_headers  # COIN-M has none
        await client.dapiPrivateGetAccount()  # 5 -> 11
        with pytest.raises(errors.DDoSProtection, match="-1003"):
            await client.dapiPrivateGetAccount()  # 16 > 12
        assert client.last_response_headers["Retry-After"] == "1"
        assert client.last_response_headers["X-MBX-USED-WEIGHT-1M"] == "11"
        counters = tight.rate_counters(Venue.COINM)
        assert (counters.rejected, counters.peak_weight) == (1, 11)
        assert tight.rate_counters(Venue.FUTURES).requests == 0  # USD-M's budget untouched
        await eventually(lambda: tight.rate_counters(Venue.COINM).used_weight == 0, timeout=2)
        await client.dapiPrivateGetAccount()
    finally:
        await client.close()


async def test_over_the_order_budget_is_refused_with_1015(tight: ExchangeSimulator) -> None:
    client = coinm_client(tight)
    order = {"symbol": "BTCUSD_PERP", "side": "BUY", "type": "LIMIT", "quantity": "1",
             "price": "50000", "timeInForce": "GTC"}  # fmt: skip
    try:
        await client.load_markets()
        for _ in range(2):
            await client.dapiPrivatePostOrder(dict(order))
        with pytest.raises(errors.DDoSProtection, match="-1015"):
            await client.dapiPrivatePostOrder(dict(order))
    finally:
        await client.close()
    assert tight.rate_counters(Venue.COINM).peak_orders_minute == 2


# -- faults ---------------------------------------------------------------------------------------

# kind, expected exception (None: ccxt raises nothing), whether the close was executed
FAULT_MATRIX = [
    (FaultKind.HTTP_429, errors.DDoSProtection, False),
    (FaultKind.HTTP_418, errors.DDoSProtection, False),
    (FaultKind.RATE_LIMIT_CODE, errors.RateLimitExceeded, False),
    (FaultKind.HTTP_500, errors.ExchangeNotAvailable, False),
    (FaultKind.HTTP_502, errors.ExchangeNotAvailable, False),
    (FaultKind.HTTP_503, errors.ExchangeNotAvailable, False),
    (FaultKind.HANG, errors.RequestTimeout, False),
    (FaultKind.EXEC_THEN_HANG, errors.RequestTimeout, True),
    (FaultKind.INVALID_KEY, errors.AuthenticationError, False),
    (FaultKind.UNKNOWN_ORDER, errors.OrderNotFound, False),
    (FaultKind.REDUCE_ONLY_REJECTED, errors.InvalidOrder, False),
    (FaultKind.ERROR, errors.OperationFailed, False),  # -1000 by default
    (FaultKind.EMPTY, None, True),
    (FaultKind.BAD_JSON, None, True),
]


def _param_id(value: object) -> str:
    return getattr(value, "__name__", str(value))


@pytest.mark.parametrize(("kind", "expected", "executed"), FAULT_MATRIX, ids=_param_id)
async def test_fault_on_a_reduce_only_close(
    sim: ExchangeSimulator,
    coinm_account: str,
    kind: FaultKind,
    expected: type[Exception] | None,
    executed: bool,
) -> None:
    sim.seed_position(coinm_account, "BTCUSD_PERP", 25, "58000")
    client = coinm_client(sim, timeout_ms=300)
    try:
        await client.load_markets()
        fault = sim.add_fault("POST", "/dapi/v1/order", kind)
        call = client.create_order(BTC, "market", "sell", 25, None, {"reduceOnly": True})
        if expected is None:
            order = await call
            # Looks like nothing happened, although the close executed: not to be trusted.
            assert (order["id"], order["status"]) == (None, None)
        else:
            with pytest.raises(expected):
                await call
    finally:
        await client.close()
    assert fault.hits == 1
    assert ("BTCUSD_PERP" not in sim.positions(coinm_account)) is executed
    assert sim.requests("POST", "/dapi/v1/order")[0].fault is kind


async def test_an_empty_or_mangled_position_read_looks_flat_to_the_unified_call(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    """The trap: ccxt turns an empty or unparseable 200 into "no positions". The implicit call
    shows the answer is not a list, which is what an adapter must check."""
    sim.seed_position(coinm_account, "BTCUSD_PERP", 25, "58000")
    await coinm.fetch_positions()  # brackets cached
    for kind in (FaultKind.EMPTY, FaultKind.BAD_JSON):
        sim.add_fault("GET", "/dapi/v1/positionRisk", kind, times=2)
        assert await coinm.fetch_positions() == []
        assert not isinstance(await coinm.dapiPrivateGetPositionRisk(), list)
    assert [p["contracts"] for p in await coinm.fetch_positions()] == [25]


async def test_partial_fill_leaves_part_of_the_position(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    sim.seed_position(coinm_account, "BTCUSD_PERP", 25, "58000")
    sim.add_fault("POST", "/dapi/v1/order", FaultKind.PARTIAL_FILL, fill_ratio="0.5")

    first = await coinm.create_order(BTC, "market", "sell", 25, None, {"reduceOnly": True})

    assert (first["status"], first["filled"]) == ("expired", 12)  # whole contracts, rounded down
    assert sim.positions(coinm_account)["BTCUSD_PERP"].qty == 13
    second = await coinm.create_order(BTC, "market", "sell", 13, None, {"reduceOnly": True})
    assert (second["status"], second["filled"]) == ("closed", 13)
    assert sim.positions(coinm_account) == {}


async def test_late_fill_after_cancel_all_creates_a_position(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    order_id = sim.seed_order(coinm_account, "ETHUSD_PERP", "BUY", 7, "2900")
    sim.add_fault("DELETE", "/dapi/v1/allOpenOrders", FaultKind.LATE_FILL, delay_s=0.5)

    await coinm.cancel_all_orders(ETH)
    assert await coinm.fetch_open_orders(ETH) == []
    assert await coinm.fetch_positions() == []  # the first look: flat

    async def long_again() -> bool:
        return [(p["side"], p["contracts"]) for p in await coinm.fetch_positions()] == [("long", 7)]

    await eventually(long_again, timeout=3)
    assert (await coinm.fetch_order(str(order_id), ETH))["status"] == "closed"
    assert sim.fills(coinm_account)[-1].late is True


# -- the dead-man's switch ------------------------------------------------------------------------


async def countdown(client: Any, symbol: str, ms: int) -> Any:
    return await client.dapiPrivatePostCountdownCancelAll({"symbol": symbol, "countdownTime": ms})


async def test_countdown_arm_refresh_expire_and_disarm(
    sim: ExchangeSimulator, coinm_account: str, coinm: Any
) -> None:
    btc = sim.seed_order(coinm_account, "BTCUSD_PERP", "BUY", 1, "50000")
    stop = sim.seed_order(
        coinm_account, "BTCUSD_PERP", "SELL", 1, order_type="STOP_MARKET", trigger_price="40000"
    )
    eth = sim.seed_order(coinm_account, "ETHUSD_PERP", "BUY", 1, "2000")
    await coinm.load_markets()

    await countdown(coinm, "ETHUSD_PERP", 200)
    assert await countdown(coinm, "ETHUSD_PERP", 0) == {
        "symbol": "ETHUSD_PERP",
        "countdownTime": "0",
    }
    assert sim.countdowns(coinm_account) == {}
    await countdown(coinm, "BTCUSD_PERP", 400)
    for _ in range(3):  # a heartbeat: refreshed when most of the countdown has run
        await eventually(lambda: sim.countdowns(coinm_account)["BTCUSD_PERP"] < 0.2, timeout=2)
        await countdown(coinm, "BTCUSD_PERP", 400)
        assert sim.countdowns(coinm_account)["BTCUSD_PERP"] > 0.3
    assert sim.order(coinm_account, btc).status == "NEW"  # outlived 3 x 200 ms > 400 ms

    await eventually(lambda: sim.order(coinm_account, btc).status == "CANCELED", timeout=3)
    assert [(e.kind, e.symbol, e.order_ids) for e in sim.events] == [
        ("countdown_cancel", "BTCUSD_PERP", (btc,))
    ]
    assert sim.order(coinm_account, eth).status == "NEW"  # disarmed: kept
    assert sim.order(coinm_account, stop).status == "NEW"  # the algo book is not covered
    assert sim.countdowns(coinm_account) == {}


# -- seeding ------------------------------------------------------------------------------------


def test_a_derivative_symbol_names_one_book() -> None:
    clash = Market("BTCUSD_PERP", "BTC", "USD", Venue.FUTURES, D(60000))
    with pytest.raises(ValueError, match="two derivative books"):
        ExchangeSimulator(markets=[*DEFAULT_MARKETS, clash])


def test_seeding_helpers_find_the_coinm_book(sim: ExchangeSimulator, coinm_account: str) -> None:
    sim.seed_position(coinm_account, "ETHUSD_PERP", -12, "3100")
    order = sim.seed_order(coinm_account, "ETHUSD_PERP", "BUY", 12, "2900", reduce_only=True)
    sim.set_mark_price("ETHUSD_PERP", "2900")

    assert sim.mark_price("ETHUSD_PERP") == D(2900)
    assert sim.order(coinm_account, order).venue is Venue.COINM
    assert sim.open_orders(coinm_account, venue=Venue.COINM)[0].order_id == order
    sim.fill_order(coinm_account, order)  # the market trades against it: the short is closed
    assert sim.positions(coinm_account) == {}
    assert sim.coinm_wallet(coinm_account, "ETH") == D(10) + inverse_pnl(12, 10, "3100", "2900", -1)
    with pytest.raises(ValueError, match="margined in USDT"):
        sim.seed_balance(coinm_account, "USDT", "1", venue=Venue.COINM)

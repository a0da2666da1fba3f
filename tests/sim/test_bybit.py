"""The Bybit v5 family (:mod:`ess.sim.families.bybit`) through real, unmodified ccxt ``bybit``
clients over HTTP, built as production builds them (default options; the spot client only says
``defaultType: spot``, as :class:`~ess.venues.generic.CcxtVenue` does): every unified call a
kill switch makes, both order books, reduce-only closes, signatures, rate limits, every fault
kind and the dead-man's switch."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest
from ccxt.base import errors

from ess.sim import ExchangeSimulator, FaultKind, RateLimits, Venue
from ess.venues.ccxt_client import localize_urls
from tests.helpers import eventually

pytestmark = pytest.mark.integration

D = Decimal
API_KEY = "bybit-key-Qm4Tz"
SECRET = "bybit-secret-Lp7Wx"
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
SOL = "SOL/USDT:USDT"
BTC_SPOT = "BTC/USDT"
CREATE = "/v5/order/create"
CANCEL_ALL = "/v5/order/cancel-all"
POSITIONS = "/v5/position/list"
DCP = "/v5/order/disconnected-cancel-all"
#: ccxt's ``fetch_order`` on a unified account refuses to run without this acknowledgement.
ACK = {"acknowledged": True}


def make_bybit(
    sim: ExchangeSimulator,
    *,
    api_key: str = API_KEY,
    secret: str = SECRET,
    spot: bool = False,
    timeout_ms: int = 2000,
) -> Any:
    """An unmodified ccxt ``bybit`` client pointed at ``sim`` (close it)."""
    options: dict[str, Any] = {"defaultType": "spot"} if spot else {}
    exchange = ccxt_async.bybit(
        {
            "apiKey": api_key,
            "secret": secret,
            "enableRateLimit": False,
            "timeout": timeout_ms,
            "options": options,
        }
    )
    exchange.timeout_on_exit = 0
    localize_urls(exchange, sim.url)
    return exchange


@pytest.fixture
def account(sim: ExchangeSimulator) -> str:
    return sim.add_account(API_KEY, SECRET, spot={"BTC": "0.2", "ETH": "1.5", "USDT": "1000"})


@pytest.fixture
async def bybit(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    exchange = make_bybit(sim)
    yield exchange
    await exchange.close()


@pytest.fixture
async def bybit_spot(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    exchange = make_bybit(sim, spot=True)
    yield exchange
    await exchange.close()


def seed_futures(sim: ExchangeSimulator, account: str) -> dict[str, int]:
    """BTC long 0.5, ETH short 2; a resting buy on BTC and a reduce-only stop on ETH."""
    sim.seed_position(account, "BTCUSDT", "0.5", "60000")
    sim.seed_position(account, "ETHUSDT", "-2", "3000")
    return {
        "btc_limit": sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000"),
        "eth_stop": sim.seed_order(
            account,
            "ETHUSDT",
            "BUY",
            "2",
            order_type="STOP_MARKET",
            trigger_price="3300",
            reduce_only=True,
        ),
    }


def body(exchange: Any) -> dict[str, Any]:
    """The last answer ccxt read, parsed."""
    answer: dict[str, Any] = json.loads(exchange.last_http_response)
    return answer


# -- markets, time, account -----------------------------------------------------------------------


async def test_load_markets_serves_every_request_of_a_default_client(
    sim: ExchangeSimulator, bybit: Any
) -> None:
    markets = await bybit.load_markets()

    assert {BTC, ETH, SOL, BTC_SPOT, "ETH/USDT"} <= set(markets)
    btc = markets[BTC]
    assert (btc["type"], btc["linear"], btc["settle"], btc["id"]) == (
        "swap",
        True,
        "USDT",
        "BTCUSDT",
    )
    assert btc["precision"]["amount"] == 0.001
    assert btc["limits"]["amount"]["min"] == 0.001
    assert markets[BTC_SPOT]["spot"] is True
    assert markets[BTC_SPOT]["precision"]["amount"] == 0.00001
    assert bybit.currencies["BTC"]["id"] == "BTC"
    # Currencies (signed, keys are set), then spot, linear (+ pre-launch), inverse (+
    # pre-launch) and six option base coins: every one served.
    assert {(e.method, e.path) for e in sim.log} == {
        ("GET", "/v5/asset/coin/query-info"),
        ("GET", "/v5/market/instruments-info"),
    }
    assert len(sim.log) == 12
    assert all(e.status == 200 and e.family == "bybit" for e in sim.log)
    categories = sorted(
        e.params["category"] for e in sim.requests(path="/v5/market/instruments-info")
    )
    assert categories == ["inverse", "inverse", "linear", "linear", *["option"] * 6, "spot"]


async def test_fetch_time_is_the_server_clock(sim: ExchangeSimulator, bybit: Any) -> None:
    sim.clock_skew_ms = 42_000
    before = sim.now_ms()
    assert before <= await bybit.fetch_time() <= sim.now_ms()


async def test_fetch_balance_is_the_unified_wallet(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    """Spot coins from the spot balances (resting orders lock them), USDT = spot USDT plus the
    futures wallet, with the linear positions' margin counted as used."""
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    sim.seed_position(account, "BTCUSDT", "0.5", "60000")  # 30000 notional, 20x: 1500 IM

    balance = await bybit.fetch_balance()

    assert balance["BTC"] == {"free": 0.15, "used": 0.05, "total": 0.2, "debt": 0.0}
    assert balance["ETH"]["total"] == 1.5
    assert balance["USDT"]["total"] == 11_000.0
    assert balance["USDT"]["used"] == 1500.0
    # Markets first (currencies are signed), then ccxt's is_unified_enabled (the key, the
    # account: once per client), then the wallet.
    signed = [e.path for e in sim.log if e.account == account]
    assert signed[0] == "/v5/asset/coin/query-info"
    assert sorted(signed[1:3]) == ["/v5/account/info", "/v5/user/query-api"]
    assert signed[3:] == ["/v5/account/wallet-balance"]
    assert sim.requests(path="/v5/account/wallet-balance")[0].params == {"accountType": "UNIFIED"}


async def test_fetch_positions_reads_one_way_positions(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    seed_futures(sim, account)

    positions = await bybit.fetch_positions()

    assert sorted((p["symbol"], p["side"], p["contracts"], p["entryPrice"]) for p in positions) == [
        (BTC, "long", 0.5, 60000.0),
        (ETH, "short", 2.0, 3000.0),
    ]
    assert all(p["hedged"] is False for p in positions)
    assert sim.requests(path=POSITIONS)[0].params == {
        "settleCoin": "USDT",
        "limit": "200",
        "category": "linear",
    }
    (flat,) = await bybit.fetch_positions([SOL])  # by symbol: the row is there, size 0
    assert (flat["symbol"], flat["contracts"], flat["side"]) == (SOL, 0.0, None)


# -- orders ---------------------------------------------------------------------------------------


async def test_open_orders_list_both_books_unless_filtered(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    """A unified account lists every kind of order without ``orderFilter``; ccxt's
    ``trigger`` param asks for ``StopOrder``: the conditional book alone."""
    ids = seed_futures(sim, account)

    everything = await bybit.fetch_open_orders()
    triggers = await bybit.fetch_open_orders(None, None, None, {"trigger": True})

    assert {o["id"] for o in everything} == {str(ids["btc_limit"]), str(ids["eth_stop"])}
    (stop,) = triggers
    assert (stop["id"], stop["symbol"], stop["triggerPrice"], stop["status"]) == (
        str(ids["eth_stop"]),
        ETH,
        3300.0,
        "open",
    )
    assert stop["reduceOnly"] is True
    reads = sim.requests(path="/v5/order/realtime")
    assert [r.params.get("orderFilter") for r in reads] == [None, "StopOrder"]


async def test_open_orders_page_by_twenty_as_bybit_does(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    """Pitfall: without pagination ccxt reads Bybit's first page only (20 rows)."""
    for index in range(25):
        sim.seed_order(account, "BTCUSDT", "BUY", "0.01", str(40000 + index))

    assert len(await bybit.fetch_open_orders(BTC)) == 20
    assert len(await bybit.fetch_open_orders(BTC, None, None, {"paginate": True})) == 25


async def test_limit_order_lifecycle_with_client_order_id(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    created = await bybit.create_order(
        BTC, "limit", "buy", 0.01, 50000, {"clientOrderId": "ess-a1"}
    )
    assert created["clientOrderId"] == "ess-a1"
    request = sim.requests("POST", CREATE)[-1]
    assert request.params["orderLinkId"] == "ess-a1"
    assert (request.params["orderType"], request.params["side"]) == ("Limit", "Buy")

    (listed,) = await bybit.fetch_open_orders(BTC)
    assert (listed["id"], listed["clientOrderId"], listed["price"]) == (
        created["id"],
        "ess-a1",
        50000.0,
    )
    fetched = await bybit.fetch_order(created["id"], BTC, ACK)
    assert (fetched["status"], fetched["amount"], fetched["timeInForce"]) == ("open", 0.01, "GTC")

    cancelled = await bybit.cancel_order(created["id"], BTC)
    assert cancelled["id"] == created["id"]
    assert (await bybit.fetch_order(created["id"], BTC, ACK))["status"] == "canceled"
    with pytest.raises(errors.OrderNotFound):
        await bybit.cancel_order(created["id"], BTC)
    assert body(bybit)["retCode"] == 110001
    with pytest.raises(errors.OrderNotFound):
        await bybit.fetch_order("999", BTC, ACK)


@pytest.mark.parametrize(("symbol", "market_id", "side", "size"), [
    (BTC, "BTCUSDT", "sell", "0.5"),
    (ETH, "ETHUSDT", "buy", "2"),
], ids=["long", "short"])  # fmt: skip
async def test_reduce_only_market_close(
    sim: ExchangeSimulator,
    account: str,
    bybit: Any,
    symbol: str,
    market_id: str,
    side: str,
    size: str,
) -> None:
    seed_futures(sim, account)

    order = await bybit.create_order(
        symbol, "market", side, float(size), None, {"reduceOnly": True, "clientOrderId": "ess-c"}
    )

    assert market_id not in sim.positions(account)
    (fill,) = sim.fills(account)
    assert (fill.symbol, fill.qty, fill.side) == (market_id, D(size), side.upper())
    assert sim.requests("POST", CREATE)[-1].params["reduceOnly"] == "true"
    fetched = await bybit.fetch_order(order["id"], symbol, ACK)
    assert (fetched["status"], fetched["filled"], fetched["reduceOnly"]) == (
        "closed",
        float(size),
        True,
    )


@pytest.mark.parametrize(("symbol", "side"), [
    (SOL, "sell"),  # no position: a reduce-only order could only open one
    (BTC, "buy"),  # long: a reduce-only buy could only grow it
], ids=["would-open", "would-grow"])  # fmt: skip
async def test_reduce_only_that_would_open_or_grow_is_invalid_order(
    sim: ExchangeSimulator, account: str, bybit: Any, symbol: str, side: str
) -> None:
    seed_futures(sim, account)

    with pytest.raises(errors.InvalidOrder, match="110017"):
        await bybit.create_order(symbol, "market", side, 1, None, {"reduceOnly": True})

    assert sim.requests("POST", CREATE)[-1].code == -2022
    assert body(bybit)["retCode"] == 110017
    assert sim.positions(account)["BTCUSDT"].qty == D("0.5")
    assert sim.fills(account) == []


async def test_an_oversized_reduce_only_close_never_flips(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    seed_futures(sim, account)

    order = await bybit.create_order(BTC, "market", "sell", 2, None, {"reduceOnly": True})

    assert "BTCUSDT" not in sim.positions(account)
    fetched = await bybit.fetch_order(order["id"], BTC, ACK)
    assert (fetched["filled"], fetched["status"]) == (0.5, "closed")  # clipped: Filled/0.5


async def test_a_trigger_order_rests_in_the_conditional_book(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    seed_futures(sim, account)

    order = await bybit.create_order(
        BTC,
        "market",
        "sell",
        0.5,
        None,
        {"triggerPrice": 55000, "triggerDirection": "descending", "reduceOnly": True},
    )

    (stop,) = sim.open_orders(account, conditional=True, symbol="BTCUSDT")
    assert str(stop.order_id) == order["id"]
    assert (stop.trigger_price, stop.reduce_only, stop.type) == (D(55000), True, "STOP_MARKET")
    listed = await bybit.fetch_open_orders(BTC, None, None, {"trigger": True})
    assert [(o["id"], o["triggerPrice"]) for o in listed] == [(order["id"], 55000.0)]
    assert listed[0]["info"]["triggerDirection"] == 2
    assert sim.positions(account)["BTCUSDT"].qty == D("0.5")  # untriggered


async def test_cancel_all_orders_covers_each_book(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    """``trigger`` cancels the conditional book alone; a plain linear cancel-all cancels every
    kind, as Bybit documents for ``orderFilter`` left out."""
    ids = seed_futures(sim, account)
    second_stop = sim.seed_order(
        account, "ETHUSDT", "BUY", "1", order_type="STOP_MARKET", trigger_price="3400"
    )
    eth_limit = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")

    cancelled = await bybit.cancel_all_orders(ETH, {"trigger": True})
    assert {o["id"] for o in cancelled} == {str(ids["eth_stop"]), str(second_stop)}
    assert [o.order_id for o in sim.open_orders(account, symbol="ETHUSDT")] == [eth_limit]

    sim.seed_order(account, "ETHUSDT", "BUY", "1", order_type="STOP_MARKET", trigger_price="3500")
    await bybit.cancel_all_orders(ETH)
    assert sim.open_orders(account, symbol="ETHUSDT") == []
    assert [o.order_id for o in sim.open_orders(account)] == [ids["btc_limit"]]
    assert await bybit.cancel_all_orders(ETH) == []  # nothing open: success, empty list
    assert sim.requests("POST", CANCEL_ALL)[0].params["orderFilter"] == "StopOrder"


async def test_cancel_orders_in_a_batch(sim: ExchangeSimulator, account: str, bybit: Any) -> None:
    """Pitfall: ccxt returns a row for every id of a batch cancel, the unknown ones too; only
    ``retExtInfo`` says which failed."""
    ids = seed_futures(sim, account)
    eth_limit = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")

    rows = await bybit.cancel_orders([str(eth_limit), str(ids["eth_stop"]), "424242"], ETH)

    assert [row["id"] for row in rows] == [str(eth_limit), str(ids["eth_stop"]), "424242"]
    assert [item["code"] for item in body(bybit)["retExtInfo"]["list"]] == [0, 0, 110001]
    assert sim.open_orders(account, symbol="ETHUSDT") == []
    assert sim.order(account, ids["eth_stop"]).status == "CANCELED"


async def test_cancel_order_by_id_in_either_book_and_on_spot(
    sim: ExchangeSimulator, account: str, bybit: Any, bybit_spot: Any
) -> None:
    ids = seed_futures(sim, account)
    spot_id = sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)

    await bybit.cancel_order(str(ids["eth_stop"]), ETH)
    await bybit_spot.cancel_order(str(spot_id), BTC_SPOT)

    assert sim.order(account, ids["eth_stop"]).status == "CANCELED"
    assert sim.order(account, spot_id).status == "CANCELED"
    assert sim.spot_balance(account, "BTC") == (D("0.2"), D(0))
    with pytest.raises(errors.OrderNotFound):
        await bybit_spot.cancel_order(str(spot_id), BTC_SPOT)
    assert body(bybit_spot)["retCode"] == 170213


async def test_spot_orders_balances_and_cancel_all(
    sim: ExchangeSimulator, account: str, bybit_spot: Any
) -> None:
    resting = sim.seed_order(account, "ETHUSDT", "SELL", "0.5", "3500", venue=Venue.SPOT)

    (listed,) = await bybit_spot.fetch_open_orders()
    assert (listed["id"], listed["symbol"]) == (str(resting), "ETH/USDT")
    assert await bybit_spot.fetch_open_orders(None, None, None, {"trigger": True}) == []
    await bybit_spot.cancel_all_orders("ETH/USDT")
    assert sim.open_orders(account) == []

    await bybit_spot.create_order(BTC_SPOT, "market", "sell", 0.1)
    await bybit_spot.create_order(BTC_SPOT, "market", "buy", 0.01)  # marketUnit=baseCoin

    assert sim.spot_balance(account, "BTC") == (D("0.11"), D(0))
    assert sim.spot_balance(account, "USDT") == (D(1000 + 6000 - 600), D(0))
    assert [r.params["marketUnit"] for r in sim.requests("POST", CREATE)] == ["baseCoin"] * 2
    balance = await bybit_spot.fetch_balance()
    assert balance["BTC"]["free"] == 0.11


# -- signatures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("api_key", "secret", "ret_code", "code"), [
    (API_KEY, "not-the-secret", 10004, -1022),
    ("someone-else", SECRET, 10003, -2015),
], ids=["wrong-secret", "unknown-key"])  # fmt: skip
async def test_bad_credentials_are_authentication_errors(
    sim: ExchangeSimulator, account: str, api_key: str, secret: str, ret_code: int, code: int
) -> None:
    """With keys set, ``load_markets`` already makes a signed request (the currencies): a bad
    key or secret fails there, before any market is known."""
    client = make_bybit(sim, api_key=api_key, secret=secret)
    try:
        with pytest.raises(errors.AuthenticationError, match=str(ret_code)):
            await client.load_markets()
        with pytest.raises(errors.AuthenticationError, match=str(ret_code)):
            await client.fetch_positions()
    finally:
        await client.close()
    refused = [e for e in sim.log if e.code is not None]
    assert {(e.path, e.status, e.code) for e in refused} == {
        ("/v5/asset/coin/query-info", 200, code)
    }
    assert all(e.account == (account if api_key == API_KEY else None) for e in refused)


@pytest.mark.parametrize("skew_ms", [-20_000, 20_000], ids=["client-ahead", "client-behind"])
async def test_timestamp_outside_recv_window_is_invalid_nonce(
    sim: ExchangeSimulator, account: str, bybit: Any, skew_ms: int
) -> None:
    await bybit.load_markets()
    sim.clock_skew_ms = skew_ms

    with pytest.raises(errors.InvalidNonce, match="10002"):
        await bybit.fetch_positions()
    await bybit.load_time_difference()  # GET /v5/market/time, the documented fix
    await bybit.fetch_positions()

    assert [e.code for e in sim.requests(path=POSITIONS)] == [-1021, None]


# -- rate limits ----------------------------------------------------------------------------------


async def test_over_the_order_budget_is_10006_with_the_limit_headers() -> None:
    limits = {Venue.FUTURES: RateLimits(orders_per_10s=2, orders_10s_window_s=60.0)}
    async with ExchangeSimulator(family_limits={"bybit": limits}) as sim:
        sim.add_account(API_KEY, SECRET)
        client = make_bybit(sim)
        try:
            await client.create_order(BTC, "limit", "buy", 0.01, 50000)
            assert client.last_response_headers["X-Bapi-Limit-Status"] == "1"
            await client.create_order(BTC, "limit", "buy", 0.01, 50000)
            with pytest.raises(errors.RateLimitExceeded, match="10006"):
                await client.create_order(BTC, "limit", "buy", 0.01, 50000)
            headers = client.last_response_headers
        finally:
            await client.close()
        assert headers["X-Bapi-Limit"] == "2"
        assert headers["X-Bapi-Limit-Status"] == "0"
        assert int(headers["X-Bapi-Limit-Reset-Timestamp"]) > sim.now_ms()
        assert len(sim.open_orders("acct1")) == 2
        counters = sim.rate_counters(Venue.FUTURES, family="bybit")
        assert (counters.rejected, counters.peak_orders_10s) == (1, 2)


async def test_over_the_ip_budget_is_http_403() -> None:
    """Bybit's IP limit is HTTP 403 with no JSON (ccxt: ``RateLimitExceeded`` by status), and
    with ``ban_after`` it stays 403 after the window has room again."""
    limits = {Venue.FUTURES: RateLimits(weight_per_window=3, weight_window_s=60.0, ban_after=2)}
    async with ExchangeSimulator(family_limits={"bybit": limits}) as sim:
        sim.add_account(API_KEY, SECRET)
        client = make_bybit(sim)
        try:
            for _ in range(3):
                await client.fetch_time()
            for _ in range(3):
                with pytest.raises(errors.RateLimitExceeded):
                    await client.fetch_time()
            headers = client.last_response_headers
        finally:
            await client.close()
        assert [e.status for e in sim.log] == [200, 200, 200, 403, 403, 403]
        assert "X-Bapi-Limit" not in headers
        counters = sim.rate_counters(Venue.FUTURES, family="bybit")
        assert (counters.rejected, counters.banned) == (2, 1)


# -- faults ---------------------------------------------------------------------------------------

#: kind, exception ccxt raises on ``fetch_positions`` (``None``: it returns normally).
READ_FAULTS = [
    (FaultKind.HTTP_429, errors.RateLimitExceeded),
    (FaultKind.HTTP_418, errors.RateLimitExceeded),  # Bybit's IP ban is a 403
    (FaultKind.RATE_LIMIT_CODE, errors.RateLimitExceeded),
    (FaultKind.HTTP_500, errors.ExchangeNotAvailable),
    (FaultKind.HTTP_502, errors.ExchangeNotAvailable),
    (FaultKind.HTTP_503, errors.ExchangeNotAvailable),
    (FaultKind.INVALID_KEY, errors.AuthenticationError),
    (FaultKind.HANG, errors.RequestTimeout),
]


@pytest.mark.parametrize(("kind", "raised"), READ_FAULTS, ids=[k.value for k, _ in READ_FAULTS])
async def test_read_faults_raise_what_ccxt_should(
    sim: ExchangeSimulator, account: str, kind: FaultKind, raised: type[Exception]
) -> None:
    seed_futures(sim, account)
    client = make_bybit(sim, timeout_ms=300)
    try:
        await client.load_markets()
        fault = sim.add_fault("GET", POSITIONS, kind)
        with pytest.raises(raised):
            await client.fetch_positions()
        assert fault.hits == 1
        assert len(await client.fetch_positions()) == 2  # one-off: sound again
    finally:
        await client.close()


@pytest.mark.parametrize("kind", [FaultKind.EMPTY, FaultKind.BAD_JSON], ids=["empty", "bad_json"])
async def test_an_empty_or_mangled_read_is_silently_no_positions_to_ccxt(
    sim: ExchangeSimulator, account: str, bybit: Any, kind: FaultKind
) -> None:
    """Pitfall: ccxt raises nothing and reads "no positions" (the generic adapter's hook turns
    such an answer into MALFORMED; see the venue contract)."""
    seed_futures(sim, account)
    await bybit.load_markets()
    sim.add_fault("GET", POSITIONS, kind)

    assert await bybit.fetch_positions() == []
    assert len(sim.positions(account)) == 2


async def test_an_error_fault_in_bybit_codes(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    await bybit.load_markets()
    sim.add_fault("GET", POSITIONS, "error", code=10016, status=200, msg="Internal System Error.")
    with pytest.raises(errors.ExchangeError, match="10016"):
        await bybit.fetch_positions()


@pytest.mark.parametrize(("kind", "executed"), [
    (FaultKind.EXEC_THEN_HANG, True),
    (FaultKind.EMPTY, True),
    (FaultKind.BAD_JSON, True),
    (FaultKind.REDUCE_ONLY_REJECTED, False),
    (FaultKind.PARTIAL_FILL, True),
], ids=lambda value: value.value if isinstance(value, FaultKind) else str(value))  # fmt: skip
async def test_order_faults(
    sim: ExchangeSimulator, account: str, kind: FaultKind, executed: bool
) -> None:
    seed_futures(sim, account)
    client = make_bybit(sim, timeout_ms=300)
    try:
        await client.load_markets()
        await client.fetch_balance()  # is_unified_enabled, cached: the order is one request
        fault = sim.add_fault("POST", CREATE, kind)

        async def close() -> Any:
            return await client.create_order(BTC, "market", "sell", 0.5, None, {"reduceOnly": True})

        if kind is FaultKind.EXEC_THEN_HANG:
            with pytest.raises(errors.RequestTimeout):
                await close()
        elif kind is FaultKind.REDUCE_ONLY_REJECTED:
            with pytest.raises(errors.InvalidOrder, match="110017"):
                await close()
        else:
            order = await close()
            # An empty or mangled answer is an order without an id, not an error.
            assert (order["id"] is None) is (kind is not FaultKind.PARTIAL_FILL)
    finally:
        await client.close()
    assert fault.hits == 1
    left = sim.positions(account).get("BTCUSDT")
    expected = {True: D("0.25") if kind is FaultKind.PARTIAL_FILL else None, False: D("0.5")}
    assert (left.qty if left else None) == expected[executed]


async def test_unknown_order_fault_on_a_cancel(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    ids = seed_futures(sim, account)
    sim.add_fault("POST", "/v5/order/cancel", "unknown_order")

    with pytest.raises(errors.OrderNotFound):
        await bybit.cancel_order(str(ids["btc_limit"]), BTC)

    assert sim.order(account, ids["btc_limit"]).status == "NEW"  # never reached the book


async def test_late_fill_after_a_cancel_all(
    sim: ExchangeSimulator, account: str, bybit: Any
) -> None:
    """The order is reported cancelled and fills later: a position appears after the cancel."""
    order_id = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")
    sim.add_fault("POST", CANCEL_ALL, "late_fill", delay_s=0.05)

    (row,) = await bybit.cancel_all_orders(ETH)
    assert row["id"] == str(order_id)
    assert await bybit.fetch_open_orders(ETH) == []

    await eventually(lambda: "ETHUSDT" in sim.positions(account))
    assert sim.positions(account)["ETHUSDT"].qty == D(1)
    (late,) = [fill for fill in sim.fills(account) if fill.late]
    assert late.order_id == order_id


# -- the dead-man's switch ------------------------------------------------------------------------


async def test_dead_mans_switch_expires_and_cancels_regular_orders(
    sim: ExchangeSimulator, account: str, bybit: Any, bybit_spot: Any
) -> None:
    """Both products armed (3 s, Bybit's minimum); on expiry the server cancels the regular
    orders of each, the conditional book is left alone."""
    ids = seed_futures(sim, account)
    spot_id = sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)

    answer = await bybit.cancel_all_orders_after(3000)
    # Pitfall: ccxt names the product from a ``type`` param only, never from the client's
    # ``defaultType``: a spot client must say so or it arms the derivatives switch.
    await bybit_spot.cancel_all_orders_after(3000, {"type": "spot"})

    assert answer["retMsg"] == "success"
    requests = sim.requests("POST", DCP)
    assert [(r.params["timeWindow"], r.params["product"]) for r in requests] == [
        ("3", "DERIVATIVES"),
        ("3", "SPOT"),
    ]
    assert 2.0 < sim.countdowns(account, family="bybit")["*"] <= 3.0

    def fired() -> bool:
        assert sim.order(account, ids["btc_limit"]).status == "CANCELED"
        assert sim.order(account, spot_id).status == "CANCELED"
        return True

    await eventually(fired, timeout=8)
    assert sim.order(account, ids["eth_stop"]).status == "NEW"
    assert [e.kind for e in sim.events] == ["countdown_cancel", "countdown_cancel"]
    assert sim.countdowns(account) == {}


async def test_dead_mans_switch_refresh_and_disarm(
    sim: ExchangeSimulator, account: str, bybit: Any, bybit_spot: Any
) -> None:
    ids = seed_futures(sim, account)
    await bybit.cancel_all_orders_after(3000)

    def below_two_seconds() -> bool:
        assert sim.countdowns(account, family="bybit")["*"] < 2.0
        return True

    await eventually(below_two_seconds, timeout=5)
    await bybit.cancel_all_orders_after(3000)  # refreshed: a whole window again
    assert sim.countdowns(account, family="bybit")["*"] > 2.5
    assert sim.order(account, ids["btc_limit"]).status == "NEW"

    await bybit_spot.cancel_all_orders_after(3000)  # no ``type``: DERIVATIVES again
    assert sim.requests("POST", DCP)[-1].params["product"] == "DERIVATIVES"
    await bybit.cancel_all_orders_after(0)  # disarmed
    assert sim.countdowns(account) == {}
    assert sim.events == []

    with pytest.raises(errors.BadRequest, match="timeWindow"):
        await bybit.cancel_all_orders_after(1000)  # below Bybit's 3 s

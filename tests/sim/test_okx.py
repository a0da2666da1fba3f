"""The simulator's OKX v5 family through real, unmodified ccxt ``okx`` clients over HTTP (default
options; only the host is rewritten): every unified call ESS makes, both order books, reduce-only
closes in contracts, signatures and passphrase, OKX's per-endpoint rate limits, every fault kind
and the ``cancel-all-after`` dead-man's switch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any, cast

import ccxt.async_support as ccxt_async
import pytest
from ccxt.base import errors

from ess.sim import ExchangeSimulator, FaultKind, RateLimits, Venue
from ess.sim.families.okx import ENDPOINT_LIMITS, OkxFamily
from ess.venues.ccxt_client import Answer, hook_answers, localize_urls
from tests.helpers import eventually

pytestmark = pytest.mark.integration

D = Decimal
API_KEY = "okx-key"
SECRET = "okx-secret"
PASSPHRASE = "okx-Passphrase-1"
BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"
BTC_SPOT = "BTC/USDT"
V5 = "/api/v5"
BATCH = f"{V5}/trade/batch-orders"
CANCEL_AFTER = ("POST", f"{V5}/trade/cancel-all-after")


def okx_client(
    sim: ExchangeSimulator,
    *,
    key: str = API_KEY,
    secret: str = SECRET,
    password: str | None = PASSPHRASE,
    timeout_ms: int = 1000,
) -> Any:
    """ccxt's ``okx`` with its default options, pointed at the simulator (host rewritten)."""
    config: dict[str, Any] = {
        "apiKey": key,
        "secret": secret,
        "timeout": timeout_ms,
        "enableRateLimit": False,
    }
    if password is not None:
        config["password"] = password
    client = ccxt_async.okx(config)
    client.timeout_on_exit = 0
    localize_urls(client, sim.url)
    return client


def family(sim: ExchangeSimulator) -> OkxFamily:
    return cast(OkxFamily, sim.family("okx"))


def short_countdowns(sim: ExchangeSimulator) -> None:
    """Countdowns from 1 s (OKX: 10 s), re-armed as often as a test needs (OKX: once a
    second), so that a test can watch one expire and be refreshed quickly."""
    okx = family(sim)
    okx.cancel_after_min_s = 1
    limits = {key: rule for key, rule in ENDPOINT_LIMITS.items() if key != CANCEL_AFTER}
    okx.limiter = OkxFamily.make_limiter(endpoint_limits=limits)


@pytest.fixture
def account(sim: ExchangeSimulator) -> str:
    return sim.add_account(
        API_KEY,
        SECRET,
        name="okx",
        passphrase=PASSPHRASE,
        spot={"BTC": "0.2", "ETH": "1.5", "USDT": "1000"},
    )


@pytest.fixture
async def okx(sim: ExchangeSimulator, account: str) -> AsyncIterator[Any]:
    client = okx_client(sim)
    await client.load_markets()
    sim.clear_log()
    yield client
    await client.close()


def seed_swaps(sim: ExchangeSimulator, account: str) -> None:
    """A long BTC (0.5 = 500 contracts of 0.001) and a short ETH (-2 = 2000 contracts)."""
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    sim.seed_position(account, "ETHUSDT", "-2", "3100")


# -- markets, time, account ----------------------------------------------------------------------


async def test_load_markets_lists_swaps_in_contracts_and_spot_in_base(
    sim: ExchangeSimulator, account: str
) -> None:
    client = okx_client(sim)
    try:
        markets = await client.load_markets()
    finally:
        await client.close()

    btc = markets[BTC]
    assert (btc["id"], btc["type"], btc["linear"], btc["settle"]) == (
        "BTC-USDT-SWAP",
        "swap",
        True,
        "USDT",
    )
    assert btc["contractSize"] == 0.001  # ctVal = the engine's quantity step
    assert btc["precision"]["amount"] == 1
    assert btc["limits"]["amount"]["min"] == 1
    assert markets[SOL]["contractSize"] == 1
    spot = markets[BTC_SPOT]
    assert (spot["id"], spot["type"], spot["precision"]["amount"]) == ("BTC-USDT", "spot", 1e-05)
    assert set(markets) == {BTC, ETH, SOL, BTC_SPOT, "ETH/USDT"}
    # With keys, ccxt's default load_markets also reads the currencies (signed) and asks for
    # every instrument type, two option underlyings included: all served.
    paths = [(e.path, e.params.get("instType"), e.status) for e in sim.log]
    assert paths == [
        (f"{V5}/asset/currencies", None, 200),
        (f"{V5}/public/instruments", "SPOT", 200),
        (f"{V5}/public/instruments", "FUTURES", 200),
        (f"{V5}/public/instruments", "SWAP", 200),
        (f"{V5}/public/instruments", "OPTION", 200),
        (f"{V5}/public/instruments", "OPTION", 200),
    ]
    assert sim.log[0].account == account


async def test_fetch_time_is_the_server_clock(sim: ExchangeSimulator, okx: Any) -> None:
    sim.clock_skew_ms = 5_000
    served = await okx.fetch_time()
    assert abs(served - sim.now_ms()) < 1_000
    assert sim.log[-1].path == f"{V5}/public/time"


async def test_balance_is_the_unified_trading_account(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    """Spot balances plus the futures USDT wallet; the swaps' unrealized PnL in USDT equity,
    their initial margin frozen; a spot order's locked funds are ``used``."""
    seed_swaps(sim, account)  # marks 60000 / 3000: upl +1000 and +200
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)

    balance = await okx.fetch_balance()

    assert (balance["BTC"]["total"], balance["BTC"]["free"], balance["BTC"]["used"]) == (
        0.2,
        0.15,
        0.05,
    )
    assert balance["ETH"]["total"] == 1.5
    margin = 0.5 * 60000 / 20 + 2 * 3000 / 20  # initial margin at leverage 20
    assert balance["USDT"]["total"] == 1000 + 10_000 + 1000 + 200
    assert balance["USDT"]["used"] == margin
    assert balance["USDT"]["free"] == 1000 + 10_000 - margin
    assert sim.log[-1].path == f"{V5}/account/balance"


async def test_account_config_reads_net_mode(okx: Any) -> None:
    mode = await okx.fetch_position_mode()
    assert mode["hedged"] is False
    assert mode["info"]["posMode"] == "net_mode"


async def test_positions_are_net_mode_contracts(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    seed_swaps(sim, account)

    positions = {p["symbol"]: p for p in await okx.fetch_positions()}

    assert set(positions) == {BTC, ETH}  # flat SOL is left out
    btc, eth = positions[BTC], positions[ETH]
    assert (btc["side"], btc["contracts"], btc["contractSize"], btc["hedged"]) == (
        "long",
        500,
        0.001,
        False,
    )
    assert (eth["side"], eth["contracts"], eth["entryPrice"]) == ("short", 2000, 3100)
    assert btc["info"]["posSide"] == "net"
    assert eth["info"]["pos"] == "-2000"
    assert btc["unrealizedPnl"] == 1000
    only = await okx.fetch_positions([ETH])
    assert [p["symbol"] for p in only] == [ETH]
    assert sim.log[-1].params == {"instId": "ETH-USDT-SWAP"}


# -- orders --------------------------------------------------------------------------------------


async def test_open_orders_of_both_books_and_both_venues(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    regular = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")
    spot = sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    stop = sim.seed_order(
        account, "BTCUSDT", "SELL", "0.5", order_type="STOP_MARKET", trigger_price="55000"
    )

    orders = await okx.fetch_open_orders()
    triggers = await okx.fetch_open_orders(None, None, None, {"trigger": True})
    stops = await okx.fetch_open_orders(BTC, None, None, {"stop": True})

    # One account-wide listing holds the swap and the spot orders (no instType sent).
    assert {(o["id"], o["symbol"], o["amount"]) for o in orders} == {
        (str(regular), ETH, 1000),  # 1 ETH = 1000 contracts
        (str(spot), BTC_SPOT, 0.05),
    }
    assert [(o["id"], o["triggerPrice"], o["amount"]) for o in triggers] == [
        (str(stop), 55000, 500)
    ]
    assert [o["id"] for o in stops] == [str(stop)]
    pending = sim.requests("GET", f"{V5}/trade/orders-algo-pending")
    assert [r.params for r in pending] == [
        {"ordType": "trigger"},
        {"ordType": "trigger", "instId": "BTC-USDT-SWAP"},
    ]


async def test_a_conditional_order_is_not_in_the_trigger_listing(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    """OKX lists algo orders by ``ordType``: ccxt's ``trigger`` listing asks for ``trigger``
    only, so a stop-loss placed as a ``conditional`` order needs its own listing."""
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    placed = await okx.create_order(
        BTC, "market", "sell", 500, None, {"stopLossPrice": 55000, "reduceOnly": True}
    )
    assert sim.requests("POST", f"{V5}/trade/order-algo")[0].params["ordType"] == "conditional"

    assert await okx.fetch_open_orders(None, None, None, {"trigger": True}) == []
    listed = await okx.fetch_open_orders(None, None, None, {"ordType": "conditional"})
    assert [(o["id"], o["stopLossPrice"], o["reduceOnly"]) for o in listed] == [
        (placed["id"], 55000, True)
    ]
    (held,) = sim.open_orders(account, conditional=True)
    assert (held.type, held.trigger_price, held.orig_qty) == ("STOP_MARKET", D(55000), D("0.5"))


async def test_create_fetch_and_cancel_orders_of_both_books(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    limit = await okx.create_order(ETH, "limit", "buy", 1000, 2800, {"clientOrderId": "mine1"})
    trigger = await okx.create_order(
        BTC, "market", "sell", 300, None, {"triggerPrice": 55000, "clientOrderId": "stop1"}
    )
    spot = await okx.create_order(BTC_SPOT, "limit", "sell", 0.05, 70000)

    (held,) = sim.open_orders(account, venue=Venue.FUTURES, conditional=False)
    assert (held.symbol, held.orig_qty, held.price, held.client_order_id) == (
        "ETHUSDT",
        D(1),
        D(2800),
        "mine1",
    )
    fetched = await okx.fetch_order(limit["id"], ETH)
    assert (fetched["status"], fetched["amount"], fetched["clientOrderId"]) == (
        "open",
        1000,
        "mine1",
    )
    algo = await okx.fetch_order(trigger["id"], BTC, {"trigger": True})
    assert (algo["status"], algo["triggerPrice"], algo["amount"]) == ("open", 55000, 300)
    # ccxt names its own client ids (a broker prefix) when none is given.
    assert sim.order(account, int(spot["id"])).client_order_id.startswith("6b9ad766b55dBCDE")

    cancelled = await okx.cancel_order(limit["id"], ETH)
    assert cancelled["id"] == limit["id"]
    batch = await okx.cancel_orders([spot["id"]], BTC_SPOT)
    assert [o["id"] for o in batch] == [spot["id"]]
    algo_cancel = await okx.cancel_order(trigger["id"], BTC, {"trigger": True})
    assert algo_cancel["id"] == trigger["id"]

    assert sim.open_orders(account) == []
    assert sim.spot_balance(account, "BTC") == (D("0.2"), D(0))  # the lock is released
    assert [r.path for r in sim.log if r.method == "POST"] == [
        BATCH,
        f"{V5}/trade/order-algo",
        BATCH,
        f"{V5}/trade/cancel-order",
        f"{V5}/trade/cancel-batch-orders",
        f"{V5}/trade/cancel-algos",
    ]
    with pytest.raises(errors.OrderNotFound):
        await okx.fetch_order("999", ETH)
    with pytest.raises(errors.OrderNotFound):
        await okx.cancel_order(limit["id"], ETH)
    with pytest.raises(errors.OrderNotFound):
        await okx.cancel_orders([trigger["id"]], BTC, {"trigger": True})


async def test_a_batch_cancel_with_one_unknown_id_cancels_the_rest(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    """Top-level code ``2`` with a per-item ``sCode``: ccxt raises nothing and leaves the
    failed item out of its answer (it has no symbol), so only a fresh read can tell."""
    one = sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000")
    two = sim.seed_order(account, "BTCUSDT", "BUY", "0.02", "49000")
    bodies: list[Any] = []

    def hook(answer: Answer, ccxt_handling: Callable[[], Any]) -> Any:
        bodies.append(answer.response)
        return ccxt_handling()

    hook_answers(okx, hook)
    answered = await okx.cancel_orders([str(one), "123", str(two)], BTC)

    assert [o["id"] for o in answered] == [str(one), str(two)]
    (body,) = bodies
    assert body["code"] == "2"
    assert [(item["ordId"], item["sCode"]) for item in body["data"]] == [
        (str(one), "0"),
        ("123", "51400"),
        (str(two), "0"),
    ]
    assert sim.open_orders(account) == []


async def test_reduce_only_closes_a_long_and_a_short_exactly(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    seed_swaps(sim, account)

    long_close = await okx.create_order(BTC, "market", "sell", 500, None, {"reduceOnly": True})
    short_close = await okx.create_order(ETH, "market", "buy", 2000, None, {"reduceOnly": True})

    assert sim.positions(account) == {}
    for placed, symbol in ((long_close, BTC), (short_close, ETH)):
        order = await okx.fetch_order(placed["id"], symbol)
        assert (order["status"], order["reduceOnly"]) == ("closed", True)
    fills = {f.symbol: (f.side, f.qty) for f in sim.fills(account)}
    assert fills == {"BTCUSDT": ("SELL", D("0.5")), "ETHUSDT": ("BUY", D(2))}
    orders = sim.requests("POST", BATCH)
    assert [(o.params["sz"], o.params["reduceOnly"], o.params["tdMode"]) for o in orders] == [
        ("500", "true", "cross"),
        ("2000", "true", "cross"),
    ]


async def test_an_oversized_reduce_only_close_never_flips(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    order = await okx.create_order(BTC, "market", "sell", 800, None, {"reduceOnly": True})
    assert sim.positions(account) == {}
    assert (await okx.fetch_order(order["id"], BTC))["filled"] == 500


@pytest.mark.parametrize(
    ("position", "side"),
    [(None, "sell"), ("0.5", "buy"), ("-0.5", "sell")],
    ids=["flat", "grows-long", "grows-short"],
)
async def test_a_reduce_only_order_that_would_open_or_grow_is_invalid_order(
    sim: ExchangeSimulator, account: str, okx: Any, position: str | None, side: str
) -> None:
    if position is not None:
        sim.seed_position(account, "BTCUSDT", position, "58000")
    before = sim.positions(account)

    with pytest.raises(errors.InvalidOrder, match="51205"):
        await okx.create_order(BTC, "market", side, 100, None, {"reduceOnly": True})

    assert sim.positions(account) == before
    assert sim.log[-1].status == 200  # OKX answers order refusals with HTTP 200, code "1"


async def test_client_order_ids_follow_okx_rule(okx: Any) -> None:
    """Letters and digits, 1 to 32: ESS's raw ``ess-<32 hex>`` would be refused (51000)."""
    with pytest.raises(errors.BadRequest, match="clOrdId"):
        await okx.create_order(
            ETH, "limit", "buy", 1000, 2800, {"clientOrderId": "ess-" + "a" * 32}
        )
    await okx.create_order(ETH, "limit", "buy", 1000, 2800, {"clientOrderId": "ess" + "a" * 29})
    with pytest.raises(errors.InvalidOrder, match="51016"):  # duplicated among open orders
        await okx.create_order(ETH, "limit", "buy", 1000, 2800, {"clientOrderId": "ess" + "a" * 29})


async def test_spot_sells_the_balance_and_refuses_reduce_only(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    with pytest.raises(errors.InvalidOrder, match="51139"):
        await okx.create_order(BTC_SPOT, "market", "sell", 0.2, None, {"reduceOnly": True})
    sold = await okx.create_order(BTC_SPOT, "market", "sell", 0.2, None, {"clientOrderId": "s1"})
    assert sim.spot_balance(account, "BTC") == (D(0), D(0))
    assert sim.spot_balance(account, "USDT")[0] == 1000 + D("0.2") * 60000
    fetched = await okx.fetch_order(sold["id"], BTC_SPOT)
    assert (fetched["status"], fetched["filled"], fetched["average"]) == ("closed", 0.2, 60000)
    with pytest.raises(errors.InsufficientFunds):
        await okx.create_order(BTC_SPOT, "market", "sell", 0.1)


# -- signing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"secret": "not-the-secret"}, 50113),
        ({"key": "someone-else"}, 50111),
        ({"password": "wrong-passphrase"}, 50105),
    ],
    ids=["bad-secret", "unknown-key", "wrong-passphrase"],
)
async def test_bad_credentials_are_authentication_errors(
    sim: ExchangeSimulator, account: str, overrides: dict[str, str], code: int
) -> None:
    client = okx_client(sim, **overrides)
    try:
        with pytest.raises(errors.AuthenticationError, match=str(code)):
            await client.fetch_balance()
    finally:
        await client.close()
    # ccxt loads markets first: its first signed request (the currencies) is refused.
    (entry,) = sim.log
    assert (entry.path, entry.status, entry.code) == (f"{V5}/asset/currencies", 401, code)


async def test_an_account_without_passphrase_cannot_use_okx(sim: ExchangeSimulator) -> None:
    sim.add_account("plain-key", "plain-secret")
    client = okx_client(sim, key="plain-key", secret="plain-secret", password="anything")
    try:
        with pytest.raises(errors.AuthenticationError, match="50105"):
            await client.fetch_positions()
    finally:
        await client.close()


async def test_a_client_without_passphrase_fails_locally(sim: ExchangeSimulator) -> None:
    client = okx_client(sim, password=None)
    try:
        with pytest.raises(errors.AuthenticationError, match="password"):
            await client.fetch_balance()
    finally:
        await client.close()


@pytest.mark.parametrize("skew_ms", [-40_000, 40_000], ids=["client-ahead", "client-behind"])
async def test_a_stale_timestamp_is_invalid_nonce(
    sim: ExchangeSimulator, okx: Any, skew_ms: int
) -> None:
    sim.clock_skew_ms = skew_ms

    with pytest.raises(errors.InvalidNonce, match="50102"):
        await okx.fetch_positions()
    await okx.load_time_difference()  # GET /api/v5/public/time, the documented fix
    await okx.fetch_positions()

    assert [e.code for e in sim.requests("GET", f"{V5}/account/positions")] == [50102, None]


async def test_checks_can_be_turned_off_for_hand_made_requests(
    sim: ExchangeSimulator, okx: Any
) -> None:
    sim.verify_signatures = False
    sim.clock_skew_ms = 60_000
    sim.check_recv_window = False
    okx.secret = "anything"
    assert await okx.fetch_positions() == []


# -- rate limits ---------------------------------------------------------------------------------


async def test_over_an_endpoint_limit_is_rate_limit_exceeded(
    sim: ExchangeSimulator, okx: Any
) -> None:
    """Positions: 10 requests per 2 s per user; the 11th is answered 429/50011, which ccxt
    raises as ``RateLimitExceeded``. OKX sends no rate-limit headers and no Retry-After."""
    seen: list[Answer] = []

    def hook(answer: Answer, ccxt_handling: Callable[[], Any]) -> Any:
        seen.append(answer)
        return ccxt_handling()

    hook_answers(okx, hook)
    for _ in range(10):
        await okx.fetch_positions()
    with pytest.raises(errors.RateLimitExceeded):
        await okx.fetch_positions()
    await okx.fetch_balance()  # another endpoint, its own limit

    refused = seen[10]
    assert (refused.status, refused.response["code"]) == (429, "50011")
    assert not {name.lower() for name in refused.headers} & {"retry-after", "x-ratelimit-limit"}
    counters = sim.rate_counters(Venue.FUTURES, family="okx")
    assert counters.rejected == 1
    assert [e.status for e in sim.log] == [200] * 10 + [429, 200]


async def test_the_order_budget_is_per_account() -> None:
    limits = {Venue.FUTURES: RateLimits(weight_per_window=None, orders_per_10s=2)}
    async with ExchangeSimulator(family_limits={"okx": limits}) as sim:
        sim.add_account(API_KEY, SECRET, name="okx", passphrase=PASSPHRASE)
        client = okx_client(sim)
        try:
            for _ in range(2):
                await client.create_order(ETH, "limit", "buy", 1000, 2800)
            with pytest.raises(errors.RateLimitExceeded):
                await client.create_order(ETH, "limit", "buy", 1000, 2800)
        finally:
            await client.close()
        assert sim.rate_counters(Venue.FUTURES, "okx", family="okx").peak_orders_10s == 2


# -- faults --------------------------------------------------------------------------------------

# kind, expected exception (None: ccxt raises nothing), whether the close was executed
FAULT_MATRIX = [
    (FaultKind.HTTP_429, errors.RateLimitExceeded, False),
    (FaultKind.HTTP_418, errors.RateLimitExceeded, False),
    (FaultKind.RATE_LIMIT_CODE, errors.RateLimitExceeded, False),
    (FaultKind.HTTP_500, errors.ExchangeNotAvailable, False),
    (FaultKind.HTTP_502, errors.ExchangeNotAvailable, False),
    (FaultKind.HTTP_503, errors.ExchangeNotAvailable, False),
    (FaultKind.HANG, errors.RequestTimeout, False),
    (FaultKind.EXEC_THEN_HANG, errors.RequestTimeout, True),
    (FaultKind.INVALID_KEY, errors.AuthenticationError, False),
    (FaultKind.UNKNOWN_ORDER, errors.OrderNotFound, False),
    (FaultKind.REDUCE_ONLY_REJECTED, errors.InvalidOrder, False),
    (FaultKind.EMPTY, None, True),
    (FaultKind.BAD_JSON, None, True),
]


def _param_id(value: object) -> str:
    return getattr(value, "__name__", str(value))


@pytest.mark.parametrize(("kind", "expected", "executed"), FAULT_MATRIX, ids=_param_id)
async def test_fault_on_a_reduce_only_close_maps_to_a_ccxt_exception(
    sim: ExchangeSimulator,
    account: str,
    kind: FaultKind,
    expected: type[Exception] | None,
    executed: bool,
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    client = okx_client(sim, timeout_ms=300)
    try:
        await client.load_markets()
        fault = sim.add_fault("POST", BATCH, kind)
        call = client.create_order(BTC, "market", "sell", 500, None, {"reduceOnly": True})
        if expected is None:
            order = await call
            # ccxt raises nothing and returns an order that looks like nothing happened.
            assert (order["id"], order["status"]) == (None, None)
        else:
            with pytest.raises(expected):
                await call
    finally:
        await client.close()

    assert fault.hits == 1
    assert ("BTCUSDT" not in sim.positions(account)) is executed
    assert sim.requests("POST", BATCH)[0].fault is kind


@pytest.mark.parametrize("kind", [FaultKind.EMPTY, FaultKind.BAD_JSON])
async def test_an_empty_or_mangled_position_read_looks_flat_to_ccxt(
    sim: ExchangeSimulator, account: str, okx: Any, kind: FaultKind
) -> None:
    """The pitfall ESS's adapters guard against: ccxt reads an empty or unparseable HTTP 200
    as "no positions". The body is OKX-shaped (truncated JSON) or empty."""
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    sim.add_fault("GET", f"{V5}/account/positions", kind)
    assert await okx.fetch_positions() == []
    assert [p["symbol"] for p in await okx.fetch_positions()] == [BTC]


async def test_error_fault_answers_the_code_given(sim: ExchangeSimulator, okx: Any) -> None:
    sim.add_fault(
        "GET", f"{V5}/trade/orders-pending", "error", code=50013, status=503, msg="System busy"
    )
    with pytest.raises(errors.ExchangeNotAvailable, match="50013"):
        await okx.fetch_open_orders()


async def test_partial_fill_fault_fills_part_of_a_close(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    sim.seed_position(account, "BTCUSDT", "0.5", "58000")
    sim.add_fault("POST", BATCH, "partial_fill", fill_ratio="0.4")

    placed = await okx.create_order(BTC, "market", "sell", 500, None, {"reduceOnly": True})

    assert sim.positions(account)["BTCUSDT"].qty == D("0.3")
    order = await okx.fetch_order(placed["id"], BTC)
    assert (order["status"], order["filled"], order["amount"]) == ("canceled", 200, 500)


async def test_late_fill_fault_fills_an_order_reported_cancelled(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    order_id = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")
    sim.add_fault("POST", f"{V5}/trade/cancel-batch-orders", "late_fill", delay_s=0.5)

    (answered,) = await okx.cancel_orders([str(order_id)], ETH)
    assert answered["id"] == str(order_id)
    assert (await okx.fetch_order(str(order_id), ETH))["status"] == "canceled"

    await eventually(lambda: "ETHUSDT" in sim.positions(account), timeout=5)
    assert sim.positions(account)["ETHUSDT"].qty == 1
    assert [e.kind for e in sim.events] == ["late_fill"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (FaultKind.UNKNOWN_ORDER, errors.OrderNotFound),
        (FaultKind.INVALID_KEY, errors.AuthenticationError),
    ],
    ids=_param_id,
)
async def test_faults_on_a_cancel(
    sim: ExchangeSimulator, account: str, okx: Any, kind: FaultKind, expected: type[Exception]
) -> None:
    order_id = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")
    sim.add_fault("POST", f"{V5}/trade/cancel-order", kind)
    with pytest.raises(expected):
        await okx.cancel_order(str(order_id), ETH)
    assert len(sim.open_orders(account)) == 1  # nothing was cancelled


# -- the dead-man's switch -------------------------------------------------------------------------


async def test_cancel_all_after_arms_refreshes_expires_and_disarms(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    short_countdowns(sim)
    swap = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")
    spot = sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    stop = sim.seed_order(
        account, "BTCUSDT", "SELL", "0.5", order_type="STOP_MARKET", trigger_price="55000"
    )

    armed = await okx.cancel_all_orders_after(3_000)
    assert sim.log[-1].params == {"timeOut": "3"}  # ccxt sends whole seconds
    first = sim.countdowns(account)["*"]
    assert 2 < first <= 3
    assert int(armed["data"][0]["triggerTime"]) > sim.now_ms()
    await okx.cancel_all_orders_after(1_000)  # re-armed: the new timeout replaces the old
    assert sim.countdowns(account)["*"] <= 1

    await eventually(lambda: not sim.open_orders(account, conditional=False), timeout=5)
    assert {e.kind for e in sim.events} == {"countdown_cancel"}
    assert sim.order(account, swap).status == sim.order(account, spot).status == "CANCELED"
    assert sim.order(account, stop).status == "NEW"  # the algo book is not covered
    assert sim.countdowns(account) == {}

    await okx.cancel_all_orders_after(2_000)
    assert sim.countdowns(account)
    disarmed = await okx.cancel_all_orders_after(0)
    assert disarmed["data"][0]["triggerTime"] == "0"
    assert sim.countdowns(account) == {}


async def test_cancel_all_after_accepts_okx_range_only(sim: ExchangeSimulator, okx: Any) -> None:
    """0 or 10 to 120 seconds; ccxt turns anything under 1000 ms into 0 (a disarm)."""
    limits = {key: rule for key, rule in ENDPOINT_LIMITS.items() if key != CANCEL_AFTER}
    family(sim).limiter = OkxFamily.make_limiter(endpoint_limits=limits)
    with pytest.raises(errors.BadRequest, match="timeOut"):
        await okx.cancel_all_orders_after(5_000)
    with pytest.raises(errors.BadRequest, match="timeOut"):
        await okx.cancel_all_orders_after(121_000)
    await okx.cancel_all_orders_after(120_000)
    assert 119 < sim.countdowns("okx")["*"] <= 120
    await okx.cancel_all_orders_after(999)
    assert sim.log[-1].params == {"timeOut": "0"}
    assert sim.countdowns("okx") == {}


async def test_a_refresh_keeps_orders_alive_past_the_first_deadline(
    sim: ExchangeSimulator, account: str, okx: Any
) -> None:
    short_countdowns(sim)
    order_id = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800")
    await okx.cancel_all_orders_after(2_000)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    refreshes = 0

    async def refreshed_past_deadline() -> bool:
        nonlocal refreshes
        await okx.cancel_all_orders_after(2_000)
        refreshes += 1
        assert loop.time() > deadline + 0.3
        return True

    await eventually(refreshed_past_deadline, timeout=6, interval=0.2)
    assert sim.order(account, order_id).status == "NEW"
    assert refreshes >= 2

"""BinanceVenue through real ccxt over real HTTP against the exchange simulator: snapshots,
cancels, closes and the countdown on both markets, every injected fault mapped to its
VenueErrorKind, the rate budget against the simulator's limits, and no credential in any log
line or exception text."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, Literal

import pytest
from loguru import logger
from pydantic import SecretStr

from ess.core.flatten import (
    CancelStep,
    CloseStep,
    MarketKind,
    OrderView,
    PositionView,
    VenueSnapshot,
)
from ess.sim import (
    ExchangeSimulator,
    FaultKind,
    RateCounters,
    RateLimits,
    Venue,
    default_markets,
)
from ess.venues.binance import BinanceVenue
from ess.venues.budget import RateBudget
from ess.venues.config import VenueConfig, VenueCredentials
from ess.venues.ports import VenueError, VenueErrorKind, VenuePort
from tests.fixtures.venues import API_KEY, SECRET, OpenVenue, venue_config
from tests.helpers import eventually

pytestmark = pytest.mark.integration

D = Decimal
K = VenueErrorKind
BTC = "BTCUSDT"
ETH = "ETHUSDT"
SOL = "SOLUSDT"


def close_step(
    symbol: str, side: Literal["buy", "sell"], amount: str, client_order_id: str = "ess-close-1"
) -> CloseStep:
    signed = D(amount) if side == "sell" else -D(amount)
    return CloseStep(symbol, side, D(amount), client_order_id, reduce_only=True, observed=signed)


def positions(*items: tuple[str, str]) -> tuple[PositionView, ...]:
    return tuple(PositionView(symbol, D(quantity)) for symbol, quantity in items)


async def raises(call: Any) -> VenueError:
    with pytest.raises(VenueError) as caught:
        await call
    return caught.value


# -- snapshots ---------------------------------------------------------------------------------


async def test_futures_snapshot_reads_positions_both_order_books_and_dust(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_position(account, BTC, "0.5", "58000")
    sim.seed_position(account, ETH, "-2", "3100")
    sim.seed_position(account, SOL, "0.5", "140")  # SOL trades in whole units: dust
    limit = sim.seed_order(account, BTC, "BUY", "0.01", "50000")
    reduce = sim.seed_order(account, ETH, "BUY", "1", "2800", reduce_only=True)
    stop = sim.seed_order(
        account, BTC, "SELL", "0.5", order_type="STOP_MARKET", trigger_price="55000"
    )
    sim.clear_log()

    snapshot = await futures.snapshot()

    assert snapshot == VenueSnapshot(
        positions=positions((BTC, "0.5"), (ETH, "-2")),
        orders=(
            OrderView(BTC, str(limit)),
            OrderView(BTC, str(stop), conditional=True),
            OrderView(ETH, str(reduce)),
        ),
        dust=positions((SOL, "0.5")),
    )
    assert not snapshot.flat
    assert sorted(e.path for e in sim.log) == [  # four reads, nothing hidden (no brackets)
        "/fapi/v1/openAlgoOrders",
        "/fapi/v1/openOrders",
        "/fapi/v3/account",
        "/fapi/v3/positionRisk",
    ]


async def test_spot_snapshot_holds_free_and_locked_and_strands_assets_without_a_market(
    sim: ExchangeSimulator, account: str, spot: BinanceVenue
) -> None:
    sim.seed_balance(account, "BTC", "0.2")
    order = sim.seed_order(account, BTC, "SELL", "0.05", "70000", venue=Venue.SPOT)  # locks
    sim.seed_balance(account, "ETH", "0.00005")  # below ETHUSDT's 0.0001 step: dust
    sim.seed_balance(account, "BNB", "3")  # no BNBUSDT market: nothing to sell it on

    snapshot = await spot.snapshot()

    assert sim.spot_balance(account, "BTC") == (D("0.15"), D("0.05"))
    # Issue 13, item 9: BNB is exposure all the same (it used to be left out: "flat").
    assert snapshot == VenueSnapshot(
        positions=positions((BTC, "0.2")),
        orders=(OrderView(BTC, str(order)),),
        dust=positions((ETH, "0.00005")),
        stranded=positions(("BNB", "3")),
    )
    assert not VenueSnapshot(stranded=snapshot.stranded).flat


async def test_a_stranded_asset_listed_in_keep_assets_is_held_on_purpose(
    sim: ExchangeSimulator, account: str, open_venue: OpenVenue
) -> None:
    venue = await open_venue("binance", keep_assets=("BNB",))
    sim.seed_balance(account, "BNB", "3")

    snapshot = await venue.snapshot()

    assert snapshot.stranded == ()
    assert snapshot.flat


async def test_spot_snapshot_skips_kept_assets_and_the_quote(
    sim: ExchangeSimulator, account: str, open_venue: OpenVenue
) -> None:
    venue = await open_venue("binance", keep_assets=("BTC",))
    sim.seed_balance(account, "BTC", "0.2")
    sim.seed_balance(account, "ETH", "1.5")

    snapshot = await venue.snapshot()

    assert snapshot.positions == positions((ETH, "1.5"))
    assert snapshot.dust == ()


@pytest.mark.parametrize(
    ("late_path", "signed"),
    [("/fapi/v3/positionRisk", "0.5"), ("/fapi/v3/account", "-0.5")],
)
async def test_the_larger_of_the_two_position_reads_wins(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue, late_path: str, signed: str
) -> None:
    """One read answers before the position shrinks, the other after: the snapshot keeps the
    larger size, whichever read saw it."""
    sim.seed_position(account, BTC, signed, "58000")
    sim.add_fault("GET", late_path, FaultKind.HANG, delay_s=0.15)  # a slow answer
    early_path = ({"/fapi/v3/positionRisk", "/fapi/v3/account"} - {late_path}).pop()

    pending = asyncio.create_task(futures.snapshot())
    await eventually(lambda: any(e.status == 200 for e in sim.requests("GET", early_path)))
    sim.seed_position(account, BTC, D(signed) / 5, "58000")
    snapshot = await pending

    assert snapshot.positions == positions((BTC, signed))


# -- every fault kind ----------------------------------------------------------------------------

# kind -> (expected kind, code, retry_after, whether a close was executed anyway)
FAULTS: list[tuple[FaultKind, VenueErrorKind, int | None, float | None, bool]] = [
    (FaultKind.HTTP_429, K.RATE_LIMITED, -1003, 60.0, False),
    (FaultKind.HTTP_418, K.BANNED, -1003, 60.0, False),
    (FaultKind.HTTP_500, K.UNAVAILABLE, None, None, False),
    (FaultKind.HTTP_502, K.UNAVAILABLE, None, None, False),
    (FaultKind.HTTP_503, K.UNAVAILABLE, None, None, False),
    (FaultKind.RATE_LIMIT_CODE, K.RATE_LIMITED, -1003, None, False),
    (FaultKind.HANG, K.TIMEOUT, None, None, False),
    (FaultKind.EXEC_THEN_HANG, K.TIMEOUT, None, None, True),
    (FaultKind.EMPTY, K.MALFORMED, None, None, True),
    (FaultKind.BAD_JSON, K.MALFORMED, None, None, True),
    (FaultKind.INVALID_KEY, K.AUTH, -2015, None, False),
    (FaultKind.UNKNOWN_ORDER, K.REJECTED, -2011, None, False),
    (FaultKind.REDUCE_ONLY_REJECTED, K.REDUCE_ONLY_REJECTED, -2022, None, False),
    (FaultKind.ERROR, K.REJECTED, -1000, None, False),
]


@pytest.mark.parametrize(("fault", "kind", "code", "retry_after", "executed"), FAULTS)
async def test_fault_on_a_read_maps_to_its_kind(
    sim: ExchangeSimulator,
    futures: BinanceVenue,
    fault: FaultKind,
    kind: VenueErrorKind,
    code: int | None,
    retry_after: float | None,
    executed: bool,
) -> None:
    """The account is flat: any read error swallowed would look like a flat snapshot."""
    injected = sim.add_fault("GET", "/fapi/v3/positionRisk", fault)

    error = await raises(futures.snapshot())

    assert (error.kind, error.code, error.retry_after) == (kind, code, retry_after)
    assert injected.hits == 1
    assert await futures.snapshot() == VenueSnapshot()  # the fault is spent: flat for real


@pytest.mark.parametrize(("fault", "kind", "code", "retry_after", "executed"), FAULTS)
async def test_fault_on_a_close_maps_to_its_kind(
    sim: ExchangeSimulator,
    account: str,
    futures: BinanceVenue,
    fault: FaultKind,
    kind: VenueErrorKind,
    code: int | None,
    retry_after: float | None,
    executed: bool,
) -> None:
    sim.seed_position(account, BTC, "0.5", "58000")
    sim.add_fault("POST", "/fapi/v1/order", fault)

    error = await raises(futures.close(close_step(BTC, "sell", "0.5")))

    assert (error.kind, error.code) == (kind, code)
    assert (BTC not in sim.positions(account)) is executed


@pytest.mark.parametrize(
    ("code", "status", "msg", "kind"),
    [
        (-2014, 401, "API-key format invalid.", K.AUTH),
        (-1022, 400, "Signature for this request is not valid.", K.AUTH),
        (-2008, 401, "Invalid Api-Key ID.", K.AUTH),
        (-2015, 200, "Invalid API-key, IP, or permissions for action.", K.AUTH),  # HTTP 200
        (-1015, 429, "Too many new orders.", K.RATE_LIMITED),
        (-1008, 503, "Server is currently overloaded.", K.UNAVAILABLE),
        (-1000, 503, "An unknown error occured.", K.UNAVAILABLE),  # 5xx: outcome unknown
        (-4164, 400, "Order's notional must be no smaller than 5.", K.REJECTED),
        (-2010, 400, "Account has insufficient balance for requested action.", K.REJECTED),
        (-2010, 400, "Duplicate order sent.", K.DUPLICATE_ID),
        (-4116, 400, "ClientOrderId is duplicated.", K.DUPLICATE_ID),
    ],
)
async def test_venue_codes_decide_the_kind(
    sim: ExchangeSimulator,
    account: str,
    futures: BinanceVenue,
    code: int,
    status: int,
    msg: str,
    kind: VenueErrorKind,
) -> None:
    sim.seed_position(account, BTC, "0.5", "58000")
    sim.add_fault("POST", "/fapi/v1/order", FaultKind.ERROR, code=code, status=status, msg=msg)

    error = await raises(futures.close(close_step(BTC, "sell", "0.5")))

    assert (error.kind, error.code) == (kind, code)
    assert msg in str(error)


@pytest.mark.parametrize(
    ("exchange", "path"),
    [
        ("binanceusdm", "/fapi/v3/positionRisk"),
        ("binanceusdm", "/fapi/v3/account"),
        ("binanceusdm", "/fapi/v1/openOrders"),
        ("binanceusdm", "/fapi/v1/openAlgoOrders"),
        ("binance", "/api/v3/account"),
        ("binance", "/api/v3/openOrders"),
    ],
)
@pytest.mark.parametrize("fault", [FaultKind.EMPTY, FaultKind.BAD_JSON])
async def test_an_empty_or_unparseable_read_is_malformed_never_flat(
    sim: ExchangeSimulator, open_venue: OpenVenue, exchange: str, path: str, fault: FaultKind
) -> None:
    venue = await open_venue(exchange)
    sim.add_fault("GET", path, fault)

    error = await raises(venue.snapshot())

    assert error.kind is K.MALFORMED


async def test_an_object_where_a_list_belongs_is_malformed(
    sim: ExchangeSimulator, futures: BinanceVenue
) -> None:
    """A 200 ``{"code": 200, ...}`` is not an error answer, but not a list of orders either."""
    sim.add_fault("GET", "/fapi/v1/openOrders", FaultKind.ERROR, code=200, status=200, msg="ok")

    error = await raises(futures.snapshot())

    assert error.kind is K.MALFORMED
    assert "openOrders: expected a list" in str(error)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(FaultKind.EMPTY, K.MALFORMED), (FaultKind.BAD_JSON, K.MALFORMED), ("http503", K.UNAVAILABLE)],
)
async def test_open_fails_with_a_venue_error_and_can_be_retried(
    sim: ExchangeSimulator,
    account: str,
    credentials: VenueCredentials,
    fault: str,
    kind: VenueErrorKind,
) -> None:
    venue = BinanceVenue(venue_config(sim, "binanceusdm"), credentials)
    sim.add_fault("GET", "/fapi/v1/exchangeInfo", fault)
    try:
        assert (await raises(venue.open())).kind is kind
        await venue.open()  # reloads: ccxt would otherwise keep the empty first result
        assert await venue.snapshot() == VenueSnapshot()
    finally:
        await venue.aclose()


async def test_open_against_a_dead_venue_is_unavailable(credentials: VenueCredentials) -> None:
    sim = await ExchangeSimulator().start()
    config = venue_config(sim, "binanceusdm")
    await sim.stop()
    venue = BinanceVenue(config, credentials)
    try:
        assert (await raises(venue.open())).kind is K.UNAVAILABLE
    finally:
        await venue.aclose()
        await venue.aclose()  # idempotent, never raises


async def test_calls_before_open_are_a_programming_error(
    sim: ExchangeSimulator, credentials: VenueCredentials
) -> None:
    venue = BinanceVenue(venue_config(sim, "binance"), credentials)

    with pytest.raises(RuntimeError, match="open"):
        await venue.snapshot()


# -- closes ----------------------------------------------------------------------------------


async def test_futures_close_is_a_reduce_only_market_order_truncated_to_the_step(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_position(account, BTC, "0.5", "58000")

    await futures.close(close_step(BTC, "sell", "0.5009", "ess-abc"))

    (sent,) = sim.requests("POST", "/fapi/v1/order")
    assert {k: sent.params.get(k) for k in ("side", "type", "quantity", "reduceOnly")} == {
        "side": "SELL",
        "type": "MARKET",
        "quantity": "0.5",
        "reduceOnly": "true",
    }
    assert sent.params["newClientOrderId"] == "ess-abc"
    assert sim.positions(account) == {}


async def test_a_reduce_only_close_can_never_flip_a_position(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_position(account, ETH, "-0.3", "3100")

    await futures.close(close_step(ETH, "buy", "1.0", "ess-1"))
    assert sim.positions(account) == {}  # clipped at 0.3, not long 0.7
    again = await raises(futures.close(close_step(ETH, "buy", "1.0", "ess-2")))

    assert (again.kind, again.code) == (K.REDUCE_ONLY_REJECTED, -2022)
    assert sim.positions(account) == {}


async def test_a_close_below_the_lot_size_sends_nothing(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_position(account, BTC, "0.0004", "58000")

    await futures.close(close_step(BTC, "sell", "0.0004"))

    assert sim.requests("POST", "/fapi/v1/order") == []
    assert sim.positions(account)[BTC].qty == D("0.0004")


async def test_a_close_on_an_unknown_market_is_rejected(futures: BinanceVenue) -> None:
    error = await raises(futures.close(close_step("XYZUSDT", "sell", "1")))

    assert error.kind is K.REJECTED


async def test_a_reused_client_order_id_is_a_duplicate_on_futures(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_position(account, BTC, "0.5", "58000")
    sim.seed_order(account, BTC, "SELL", "0.1", "70000", client_order_id="ess-dup")

    error = await raises(futures.close(close_step(BTC, "sell", "0.5", "ess-dup")))

    assert (error.kind, error.code) == (K.DUPLICATE_ID, -4116)
    assert sim.positions(account)[BTC].qty == D("0.5")


async def test_spot_close_sells_without_reduce_only(
    sim: ExchangeSimulator, account: str, spot: BinanceVenue
) -> None:
    sim.seed_balance(account, "BTC", "0.123456")

    await spot.close(close_step(BTC, "sell", "0.123456", "ess-spot"))

    (sent,) = sim.requests("POST", "/api/v3/order")
    assert "reduceOnly" not in sent.params
    assert (sent.params["quantity"], sent.params["newClientOrderId"]) == ("0.12345", "ess-spot")
    assert sim.spot_balance(account, "BTC") == (D("0.000006"), D(0))
    assert (await spot.snapshot()).dust == positions((BTC, "0.000006"))


async def test_spot_duplicate_and_insufficient_balance_share_a_code_but_not_a_kind(
    sim: ExchangeSimulator, account: str, spot: BinanceVenue
) -> None:
    sim.seed_balance(account, "BTC", "0.2")
    sim.seed_order(account, BTC, "SELL", "0.05", "70000", venue=Venue.SPOT, client_order_id="x1")

    duplicate = await raises(spot.close(close_step(BTC, "sell", "0.1", "x1")))
    too_much = await raises(spot.close(close_step(BTC, "sell", "0.2", "x2")))  # 0.05 locked

    assert (duplicate.kind, duplicate.code) == (K.DUPLICATE_ID, -2010)
    assert (too_much.kind, too_much.code) == (K.REJECTED, -2010)


async def test_a_partial_fill_leaves_the_remainder_in_the_next_snapshot(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_position(account, BTC, "0.5", "58000")
    sim.add_fault("POST", "/fapi/v1/order", FaultKind.PARTIAL_FILL, fill_ratio="0.5")

    await futures.close(close_step(BTC, "sell", "0.5"))

    assert (await futures.snapshot()).positions == positions((BTC, "0.25"))


# -- cancels ---------------------------------------------------------------------------------


async def test_cancels_empty_one_book_of_one_symbol(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_order(account, BTC, "BUY", "0.01", "50000")
    stop = sim.seed_order(account, BTC, "SELL", "0.5", order_type="STOP_MARKET", trigger_price="1")
    other = sim.seed_order(account, ETH, "BUY", "1", "2800")

    await futures.cancel_all(CancelStep(BTC, conditional=False))
    assert {(o.order_id, o.conditional) for o in sim.open_orders(account)} == {
        (stop, True),
        (other, False),
    }
    await futures.cancel_all(CancelStep(BTC, conditional=True))

    assert [o.order_id for o in sim.open_orders(account)] == [other]
    assert [(e.method, e.path, e.params["symbol"]) for e in sim.log[-2:]] == [
        ("DELETE", "/fapi/v1/allOpenOrders", BTC),
        ("DELETE", "/fapi/v1/algoOpenOrders", BTC),
    ]


async def test_nothing_to_cancel_is_success(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue, spot: BinanceVenue
) -> None:
    sim.add_fault("DELETE", "/fapi/v1/allOpenOrders", FaultKind.UNKNOWN_ORDER)

    await futures.cancel_all(CancelStep(BTC, conditional=False))
    await spot.cancel_all(CancelStep(BTC, conditional=False))  # the real -2011 of spot

    assert [e.code for e in sim.log if e.method == "DELETE"] == [-2011, -2011]


async def test_spot_cancel_removes_the_orders_and_frees_the_balance(
    sim: ExchangeSimulator, account: str, spot: BinanceVenue
) -> None:
    sim.seed_balance(account, "BTC", "0.2")
    sim.seed_order(account, BTC, "SELL", "0.05", "70000", venue=Venue.SPOT)

    await spot.cancel_all(CancelStep(BTC, conditional=False))

    assert sim.open_orders(account) == []
    assert sim.spot_balance(account, "BTC") == (D("0.2"), D(0))


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(FaultKind.EMPTY, K.MALFORMED), (FaultKind.HTTP_503, K.UNAVAILABLE), ("invalid_key", K.AUTH)],
)
async def test_other_cancel_failures_raise(
    sim: ExchangeSimulator, futures: BinanceVenue, fault: str, kind: VenueErrorKind
) -> None:
    sim.add_fault("DELETE", "/fapi/v1/algoOpenOrders", fault)

    error = await raises(futures.cancel_all(CancelStep(BTC, conditional=True)))

    assert error.kind is kind


async def test_spot_has_no_conditional_book(spot: BinanceVenue) -> None:
    error = await raises(spot.cancel_all(CancelStep(BTC, conditional=True)))

    assert error.kind is K.REJECTED


async def test_a_late_fill_turns_up_after_the_cancel_reported_success(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    sim.seed_order(account, BTC, "BUY", "0.3", "59000")
    sim.add_fault("DELETE", "/fapi/v1/allOpenOrders", FaultKind.LATE_FILL, delay_s=0.2)

    await futures.cancel_all(CancelStep(BTC, conditional=False))
    assert (await futures.snapshot()).flat

    async def long_again() -> bool:
        return (await futures.snapshot()).positions == positions((BTC, "0.3"))

    await eventually(long_again, timeout=3)


# -- countdown -------------------------------------------------------------------------------


async def test_arm_countdown_arms_the_switch_and_the_venue_cancels_on_expiry(
    sim: ExchangeSimulator, account: str, futures: BinanceVenue
) -> None:
    order = sim.seed_order(account, BTC, "BUY", "0.01", "50000")
    other = sim.seed_order(account, ETH, "BUY", "1", "2800")

    await futures.arm_countdown(BTC, 1000)

    assert futures.supports_countdown
    assert 0.5 < sim.countdowns(account)[BTC] <= 1.0
    await eventually(lambda: [o.order_id for o in sim.open_orders(account)] == [other], timeout=3)
    assert [(e.kind, e.symbol, e.order_ids) for e in sim.events] == [
        ("countdown_cancel", BTC, (order,))
    ]


async def test_spot_has_no_countdown(spot: BinanceVenue) -> None:
    error = await raises(spot.arm_countdown(BTC, 1000))

    assert not spot.supports_countdown
    assert error.kind is K.REJECTED
    assert "no countdown on spot" in str(error)


# -- rate budget -----------------------------------------------------------------------------


async def test_the_adapters_weights_are_the_venues(
    sim: ExchangeSimulator, account: str, open_venue: OpenVenue
) -> None:
    """What the budget counted is what the venue counted, call for call."""
    sim.seed_position(account, BTC, "0.5", "58000")
    sim.seed_balance(account, "BTC", "0.2")
    futures_budget, spot_budget = RateBudget(10_000, 100, 4), RateBudget(10_000, 100, 4)
    futures = await open_venue("binanceusdm", budget=futures_budget)
    spot = await open_venue("binance", name="sim-spot", budget=spot_budget)

    for venue in (futures, spot):
        await venue.snapshot()
        await venue.cancel_all(CancelStep(BTC, conditional=False))
        await venue.close(close_step(BTC, "sell", "0.2"))
    await futures.cancel_all(CancelStep(BTC, conditional=True))
    await futures.arm_countdown(BTC, 10_000)

    for market, budget in ((Venue.FUTURES, futures_budget), (Venue.SPOT, spot_budget)):
        counters = sim.rate_counters(market, account)
        assert budget.sent_weight_in_window() == counters.total_weight
        assert budget.sent_orders_in_window() == counters.orders_10s == 1
    assert futures_budget.sent_weight_in_window() == 1 + 90 + 1 + 0 + 1 + 10
    assert spot_budget.sent_weight_in_window() == 20 + 100 + 1 + 1


async def _flatten_load(
    credentials: VenueCredentials, budget: RateBudget
) -> tuple[list[Any], RateCounters, int]:
    """Six snapshots plus cancels of both books and a close on each of six symbols, all at
    once, against a venue allowing 200 weight and 3 orders per 0.25 s. Returns the outcomes,
    the venue's rate counters and how many positions are left."""
    limits = RateLimits(
        weight_per_window=200,
        weight_window_s=0.25,
        orders_per_10s=3,
        orders_10s_window_s=0.25,
        orders_per_minute=None,
    )
    markets = default_markets(extra_futures=6)
    async with ExchangeSimulator(
        markets=markets, rate_limits={Venue.FUTURES: limits}, latency_ms=4
    ) as sim:
        account = sim.add_account(API_KEY, SECRET, name="main")
        symbols = [m.symbol for m in sim.markets(Venue.FUTURES) if m.symbol.startswith("SIM")]
        for symbol in symbols:
            sim.seed_position(account, symbol, "0.002", "100")
        venue = BinanceVenue(venue_config(sim, "binanceusdm"), credentials, budget=budget)
        calls: list[Any] = [venue.snapshot() for _ in range(6)]
        for symbol in symbols:
            calls += [
                venue.cancel_all(CancelStep(symbol, conditional=False)),
                venue.cancel_all(CancelStep(symbol, conditional=True)),
                venue.close(close_step(symbol, "sell", "0.002", f"ess-{symbol}")),
            ]
        try:
            await venue.open()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await venue.aclose()
        return outcomes, sim.rate_counters(Venue.FUTURES, account), len(sim.positions(account))


async def test_a_tight_budget_keeps_many_concurrent_calls_within_the_venues_limits(
    credentials: VenueCredentials,
) -> None:
    budget = RateBudget(200, 3, 8, weight_window_s=0.25, orders_window_s=0.25)

    outcomes, counters, left = await _flatten_load(credentials, budget)

    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert (counters.rejected, counters.banned, left) == (0, 0, 0)
    assert counters.peak_weight <= 200
    assert counters.peak_orders_10s <= 3
    assert counters.total_weight > 2 * 200  # the load did need more than two windows
    assert budget.waits > 0


async def test_without_a_tight_budget_the_same_load_is_refused(
    credentials: VenueCredentials,
) -> None:
    """The control experiment: with a budget that allows everything, the venue says no."""
    outcomes, counters, _ = await _flatten_load(credentials, RateBudget(10_000, 100, 64))

    refused = [o for o in outcomes if isinstance(o, VenueError) and o.kind is K.RATE_LIMITED]
    assert counters.rejected >= len(refused) > 0


async def test_spot_auth_failure_after_a_success_is_still_auth(
    sim: ExchangeSimulator, spot: BinanceVenue
) -> None:
    """ccxt reads -2015 after a successful spot call as a temporary ban (DDoSProtection);
    the venue's code says otherwise."""
    await spot.snapshot()
    sim.add_fault("GET", "/api/v3/account", FaultKind.INVALID_KEY)

    error = await raises(spot.snapshot())

    assert (error.kind, error.code) == (K.AUTH, -2015)


# -- credentials -------------------------------------------------------------------------------


async def test_credentials_never_appear_in_logs_or_errors(
    sim: ExchangeSimulator, account: str, open_venue: OpenVenue, credentials: VenueCredentials
) -> None:
    lines: list[str] = []
    sink = logger.add(
        lambda message: lines.append(str(message)),
        level="TRACE",
        format="{level} {name} {message} {extra} {exception}",
    )
    errors: list[BaseException] = []

    async def attempt(call: Any) -> None:
        try:
            await call
        except VenueError as exc:
            errors.append(exc)

    try:
        sim.seed_position(account, BTC, "0.5", "58000")
        futures = await open_venue("binanceusdm")
        spot = await open_venue("binance", name="sim-spot")
        for fault in (
            FaultKind.INVALID_KEY,
            FaultKind.HANG,
            FaultKind.BAD_JSON,
            FaultKind.HTTP_418,
        ):
            sim.clear_faults()
            sim.add_fault("GET", "/fapi/*", fault, times=None)  # every read fails alike
            await attempt(futures.snapshot())
        sim.clear_faults()
        sim.add_fault("POST", "/fapi/v1/order", FaultKind.EXEC_THEN_HANG)
        await attempt(futures.close(close_step(BTC, "sell", "0.5")))
        await attempt(spot.close(close_step(BTC, "sell", "5")))  # insufficient balance
        await attempt(futures.arm_countdown(BTC, 5000))
        wrong = VenueCredentials(api_key=credentials.api_key, secret=SecretStr("not-the-secret"))
        stranger = BinanceVenue(venue_config(sim, "binanceusdm", name="wrong"), wrong)
        await stranger.open()
        await attempt(stranger.snapshot())  # -1022: bad signature
        await stranger.aclose()
    finally:
        logger.remove(sink)

    assert len(errors) == 7
    assert {e.kind for e in errors if isinstance(e, VenueError)} >= {K.AUTH, K.TIMEOUT}
    texts = [*lines]
    for error in errors:
        cause: BaseException | None = error
        while cause is not None:
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
    assert any("venue call failed" in line for line in lines)
    assert not [text for text in texts if API_KEY in text or SECRET in text]


def test_the_adapter_is_a_venue_port(credentials: VenueCredentials) -> None:
    futures = BinanceVenue(VenueConfig(name="f", exchange="binanceusdm", account="a"), credentials)
    spot = BinanceVenue(VenueConfig(name="s", exchange="binance"), credentials)

    assert isinstance(futures, VenuePort)
    assert (futures.name, futures.account, futures.kind, futures.supports_countdown) == (
        "f",
        "a",
        MarketKind.FUTURES,
        True,
    )
    assert (spot.kind, spot.supports_countdown) == (MarketKind.SPOT, False)
    assert (futures.budget.weight_per_minute, spot.budget.orders_per_10s) == (1920, 80)


def test_a_budget_too_small_for_a_call_is_refused_at_construction(
    credentials: VenueCredentials,
) -> None:
    """A spot account read weighs 20: with less per minute it could never be sent."""
    config = VenueConfig(name="s", exchange="binance", weight_per_minute=19)

    with pytest.raises(ValueError, match="budget too small for markets, account, orders"):
        BinanceVenue(config, credentials)

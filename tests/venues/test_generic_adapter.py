"""CcxtVenue (ccxt's unified API only) through real ccxt over real HTTP against the Binance
simulator with ``adapter="generic"``: snapshots, both books cancelled, reduce-only closes and
a verified-flat end through the real flatten engine; empty or mangled answers raise instead of
reading flat; errors map by ccxt's unified classes; capabilities are checked from ``has``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ess.clock import SystemClock
from ess.core import Activation
from ess.core.flatten import CancelStep, CloseStep, MarketKind, OrderView, PositionView
from ess.roles.execute.engine import VenueFlattener, enforce_all
from ess.settings import ExecuteSettings
from ess.sim import ExchangeSimulator
from ess.sim.demo import seed_demo_book
from ess.venues.config import VenueCredentials, make_venue
from ess.venues.generic import CcxtVenue, check_capabilities
from ess.venues.ports import VenueError, VenueErrorKind, VenuePort
from schemas import ActionReport, ReasonCode
from tests.fixtures.venues import venue_config
from tests.helpers import eventually

D = Decimal
BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"

#: What the simulator serves: no currencies or margin pairs, one market type per client.
SIM_OPTIONS: dict[str, dict[str, Any]] = {
    exchange: {
        "fetchCurrencies": False,
        "fetchMargins": False,
        "adjustForTimeDifference": False,
        "fetchMarkets": {"types": [types]},
    }
    for exchange, types in (("binanceusdm", "linear"), ("binance", "spot"))
}

OpenGeneric = Callable[..., Awaitable[CcxtVenue]]


@pytest.fixture
async def open_generic(
    sim: ExchangeSimulator, account: str, credentials: VenueCredentials
) -> AsyncIterator[OpenGeneric]:
    opened: list[CcxtVenue] = []

    async def factory(exchange: str, **overrides: Any) -> CcxtVenue:
        market = "futures" if exchange == "binanceusdm" else "spot"
        config = venue_config(
            sim,
            exchange,
            adapter="generic",
            market=market,
            name=f"gen-{exchange}",
            # ccxt's futures position read is two requests (leverage brackets first): a
            # 300 ms request timeout is too tight for that on a loaded 2-core machine.
            **{"timeout_ms": 1000, **overrides},
        )
        venue = CcxtVenue(config, credentials, options=SIM_OPTIONS[exchange])
        opened.append(venue)
        await venue.open()
        return venue

    yield factory
    for venue in opened:
        await venue.aclose()


def seed(sim: ExchangeSimulator, account: str) -> None:
    sim.seed_balance(account, "BTC", "0.2")
    sim.seed_balance(account, "ETH", "1.5")
    seed_demo_book(sim, account)


# -- capabilities (pure) ------------------------------------------------------------------------

FULL_HAS = {
    "fetchMarkets": True,
    "fetchPositions": True,
    "fetchBalance": True,
    "fetchOpenOrders": True,
    "cancelAllOrders": True,
    "cancelOrder": True,
    "createOrder": True,
    "createReduceOnlyOrder": True,
    "createMarketOrder": True,
}
SWAP = {"symbol": BTC, "type": "swap", "swap": True, "linear": True, "inverse": False}
SPOT = {"symbol": "BTC/USDT", "type": "spot", "spot": True}
TRIGGERS = {
    "createOrder": {"triggerPrice": True},
    "fetchOpenOrders": {"trigger": True, "symbolRequired": False},
}


class FakeExchange:
    """Just what :func:`check_capabilities` reads."""

    def __init__(
        self,
        has: dict[str, Any],
        markets: list[dict[str, Any]] | None = None,
        features: dict[str, Any] | None = None,
    ) -> None:
        self.has = has
        self.markets = {m["symbol"]: m for m in markets or [SWAP, SPOT]}
        self.features = (
            {"spot": TRIGGERS, "swap": {"linear": TRIGGERS}} if features is None else features
        )


@pytest.mark.parametrize("kind", list(MarketKind))
def test_a_complete_venue_lacks_nothing(kind: MarketKind) -> None:
    assert check_capabilities(FakeExchange(FULL_HAS), kind) == []


def test_missing_futures_capabilities_are_listed_exactly() -> None:
    has = {**FULL_HAS, "fetchPositions": False, "createReduceOnlyOrder": None}
    del has["cancelAllOrders"]
    has["cancelOrder"] = False
    assert check_capabilities(FakeExchange(has), MarketKind.FUTURES) == [
        "fetchPositions",
        "cancelAllOrders or cancelOrder",
        "createReduceOnlyOrder",
    ]


def test_missing_spot_capabilities_are_listed_exactly() -> None:
    has = {**FULL_HAS, "fetchBalance": None, "createMarketOrder": False, "cancelAllOrders": False}
    # cancelOrder alone is enough to cancel.
    assert check_capabilities(FakeExchange(has), MarketKind.SPOT) == [
        "fetchBalance",
        "createMarketOrder",
    ]


def test_trigger_orders_that_cannot_be_listed_are_a_missing_capability() -> None:
    blind = {
        "createOrder": {"triggerPrice": True},
        "fetchOpenOrders": {"trigger": False, "symbolRequired": True},
    }
    exchange = FakeExchange(FULL_HAS, features={"swap": {"linear": blind}})
    assert check_capabilities(exchange, MarketKind.FUTURES) == [
        "fetchOpenOrders without a symbol",
        "fetchOpenOrders(trigger)",
    ]
    # Nothing known about the market type's features: trigger orders may exist unseen.
    assert check_capabilities(FakeExchange(FULL_HAS, features={}), MarketKind.FUTURES) == [
        "fetchOpenOrders(trigger)"
    ]
    # A venue that takes no trigger orders needs no trigger listing.
    plain = {"createOrder": {"triggerPrice": False}, "fetchOpenOrders": {"trigger": False}}
    exchange = FakeExchange(FULL_HAS, features={"swap": {"linear": plain}})
    assert check_capabilities(exchange, MarketKind.FUTURES) == []


def test_no_markets_of_the_kind_is_missing() -> None:
    exchange = FakeExchange(FULL_HAS, markets=[SPOT])
    assert check_capabilities(exchange, MarketKind.FUTURES) == ["markets (futures)"]
    exchange.markets = {}
    assert check_capabilities(exchange, MarketKind.SPOT) == ["markets (spot)"]


# -- against the simulator ------------------------------------------------------------------------


@pytest.mark.integration
async def test_futures_snapshot_lists_positions_and_both_books(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    seed(sim, account)
    venue = await open_generic("binanceusdm")

    snapshot = await venue.snapshot()

    assert venue.kind is MarketKind.FUTURES
    assert snapshot.positions == (
        PositionView(BTC, D("0.5")),
        PositionView(ETH, D("-2")),
        PositionView(SOL, D("10")),
    )
    assert [(o.symbol, o.conditional) for o in snapshot.orders] == [
        (BTC, False),
        (BTC, True),
        (ETH, False),
    ]
    assert not venue.supports_countdown  # ccxt's binance has no cancelAllOrdersAfter


@pytest.mark.integration
async def test_spot_snapshot_counts_locked_balance_and_strands_unsellable_assets(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    seed(sim, account)
    sim.seed_balance(account, "XYZ", "3")  # no XYZ/USDT market
    venue = await open_generic("binance", keep_assets=["BNB"])

    snapshot = await venue.snapshot()

    assert snapshot.positions == (
        PositionView("BTC/USDT", D("0.2")),
        PositionView("ETH/USDT", D("1.5")),
    )
    assert snapshot.orders == (OrderView("BTC/USDT", snapshot.orders[0].order_id),)
    assert snapshot.stranded == (PositionView("XYZ", D("3")),)
    assert not snapshot.flat


@pytest.mark.integration
async def test_cancels_both_books_and_closes_reduce_only_with_the_derived_id(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    seed(sim, account)
    venue = await open_generic("binanceusdm")

    await venue.cancel_all(CancelStep(BTC, conditional=False))
    await venue.cancel_all(CancelStep(BTC, conditional=True))
    await venue.cancel_all(CancelStep(BTC, conditional=True))  # nothing left: still fine
    close = CloseStep(BTC, "sell", D("0.5"), "ess-" + "a" * 32, True, D("0.5"))
    await venue.close(close)

    assert "BTCUSDT" not in sim.positions(account)
    assert [o for o in (await venue.snapshot()).orders if o.symbol == BTC] == []
    (order,) = sim.requests("POST", "/fapi/v1/order")
    assert order.params["reduceOnly"] == "true"
    assert order.params["newClientOrderId"] == close.client_order_id
    assert order.params["quantity"] == "0.5"


@pytest.mark.integration
async def test_a_spot_close_refused_for_locked_balance_sells_the_free_part(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    """The close sells what the snapshot held (the cancels free what orders locked); where
    part is still locked (an order no listing shows), the venue refuses it and the free part
    is sold instead of nothing."""
    seed(sim, account)  # 0.05 of the 0.2 BTC is locked by a resting sell
    venue = await open_generic("binance")

    await venue.close(CloseStep("BTC/USDT", "sell", D("0.2"), "ess-" + "b" * 32, False, D("0.2")))

    refused, order = sim.requests("POST", "/api/v3/order")
    assert (D(refused.params["quantity"]), refused.status) == (D("0.2"), 400)
    assert D(order.params["quantity"]) == D("0.15")
    assert "reduceOnly" not in order.params
    assert sim.spot_balance(account, "BTC") == (D(0), D("0.05"))


SETTINGS = ExecuteSettings(
    flatten_deadline_sec=5.0,
    stalled_report_interval_sec=1.0,
    enforce_interval_sec=0.05,
    backoff_initial_sec=0.01,
    backoff_max_sec=0.2,
    status_port=-1,
)


@pytest.mark.integration
async def test_the_engine_flattens_both_venues_through_the_generic_adapter(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    seed(sim, account)
    venues = [await open_generic("binanceusdm"), await open_generic("binance")]
    reports: list[ActionReport] = []
    stop = asyncio.Event()
    trip = Activation(
        seq=0,
        command_id="trip-0",
        reason=ReasonCode.MANUAL,
        detail="test",
        source="operator:test",
        trigger=None,
        ts=datetime(2026, 11, 30, tzinfo=UTC),
    )
    flatteners = [
        VenueFlattener(venue, SETTINGS, clock=SystemClock(), report=reports.append)
        for venue in venues
    ]
    task = asyncio.create_task(enforce_all(flatteners, trip, stop))
    try:

        def done() -> bool:
            flat = {
                r.venue for r in reports if (r.action, r.outcome) == ("flatten", "verified_flat")
            }
            assert flat == {venue.name for venue in venues}, reports[-3:]
            return True

        await eventually(done, timeout=15.0)
    finally:
        stop.set()
        await task

    assert sim.positions(account) == {}
    assert sim.open_orders(account) == []
    for asset in ("BTC", "ETH"):
        assert sum(sim.spot_balance(account, asset)) == 0
    closes = sim.requests("POST", "/fapi/v1/order")
    assert len(closes) == 3
    assert all(r.params["reduceOnly"] == "true" for r in closes)
    assert all(r.params["newClientOrderId"].startswith("ess-") for r in closes)
    assert sim.requests("DELETE", "/fapi/v1/algoOpenOrders")  # the conditional book
    spot_sells = sim.requests("POST", "/api/v3/order")
    assert {r.params["symbol"] for r in spot_sells} == {"BTCUSDT", "ETHUSDT"}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("exchange", "path", "fault"),
    [
        ("binanceusdm", "/fapi/v3/positionRisk", "empty"),
        ("binanceusdm", "/fapi/v3/positionRisk", "bad_json"),
        ("binanceusdm", "/fapi/v1/openOrders", "empty"),
        ("binanceusdm", "/fapi/v1/openAlgoOrders", "bad_json"),
        ("binance", "/api/v3/account", "empty"),
        ("binance", "/api/v3/openOrders", "bad_json"),
    ],
)
async def test_an_empty_or_mangled_read_raises_instead_of_reading_flat(
    sim: ExchangeSimulator,
    account: str,
    open_generic: OpenGeneric,
    exchange: str,
    path: str,
    fault: str,
) -> None:
    """Every time (a lost read is tried again within the snapshot, see
    ``test_generic_quirks``)."""
    seed(sim, account)
    venue = await open_generic(exchange)
    sim.add_fault("GET", path, fault, times=None)

    with pytest.raises(VenueError) as raised:
        await venue.snapshot()

    assert raised.value.kind is VenueErrorKind.MALFORMED
    sim.clear_faults()
    assert not (await venue.snapshot()).flat  # the next read sees it all again


@pytest.mark.integration
async def test_an_empty_answer_to_a_close_is_malformed(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    seed(sim, account)
    venue = await open_generic("binanceusdm")
    sim.add_fault("POST", "/fapi/v1/order", "empty")

    with pytest.raises(VenueError) as raised:
        await venue.close(CloseStep(BTC, "sell", D("0.5"), "ess-" + "c" * 32, True, D("0.5")))

    assert raised.value.kind is VenueErrorKind.MALFORMED


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("http429", VenueErrorKind.RATE_LIMITED),
        ("http418", VenueErrorKind.BANNED),
        ("rate_limit_code", VenueErrorKind.RATE_LIMITED),
        ("invalid_key", VenueErrorKind.AUTH),
        ("http503", VenueErrorKind.UNAVAILABLE),
    ],
)
async def test_error_answers_map_to_kinds(
    sim: ExchangeSimulator,
    account: str,
    open_generic: OpenGeneric,
    fault: str,
    kind: VenueErrorKind,
) -> None:
    venue = await open_generic("binanceusdm")
    sim.add_fault("GET", "/fapi/v3/positionRisk", fault, times=None)

    with pytest.raises(VenueError) as raised:
        await venue.snapshot()

    assert raised.value.kind is kind
    assert "exec-secret" not in str(raised.value)
    assert "signature" not in str(raised.value)


@pytest.mark.integration
async def test_a_429_carries_retry_after(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    venue = await open_generic("binanceusdm")
    sim.add_fault("GET", "/fapi/v3/positionRisk", "http429")

    with pytest.raises(VenueError) as raised:
        await venue.snapshot()

    assert raised.value.retry_after is not None


@pytest.mark.integration
async def test_a_reduce_only_rejection_is_recognised(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    seed(sim, account)
    venue = await open_generic("binanceusdm")
    sim.add_fault("POST", "/fapi/v1/order", "reduce_only_rejected")

    with pytest.raises(VenueError) as raised:
        await venue.close(CloseStep(BTC, "sell", D("0.5"), "ess-" + "d" * 32, True, D("0.5")))

    assert raised.value.kind is VenueErrorKind.REDUCE_ONLY_REJECTED
    assert raised.value.code == -2022


@pytest.mark.integration
async def test_nothing_to_cancel_is_success(
    sim: ExchangeSimulator, account: str, open_generic: OpenGeneric
) -> None:
    venue = await open_generic("binanceusdm")
    fault = sim.add_fault("DELETE", "/fapi/v1/allOpenOrders", "unknown_order")

    await venue.cancel_all(CancelStep(BTC, conditional=False))  # no error: nothing to cancel

    assert fault.hits == 1  # the venue really answered "unknown order"


@pytest.mark.integration
async def test_no_countdown_without_cancel_all_orders_after(open_generic: OpenGeneric) -> None:
    venue = await open_generic("binance")

    assert not venue.supports_countdown
    with pytest.raises(VenueError) as raised:
        await venue.arm_countdown("BTC/USDT", 60_000)
    assert raised.value.kind is VenueErrorKind.REJECTED


def test_the_factory_builds_the_configured_adapter(
    sim: ExchangeSimulator, credentials: VenueCredentials
) -> None:
    from ess.venues.binance import BinanceVenue  # noqa: PLC0415

    binance = make_venue(venue_config(sim, "binanceusdm"), credentials)
    generic = make_venue(
        venue_config(sim, "binanceusdm", adapter="generic", market="futures"), credentials
    )
    other = make_venue(venue_config(sim, "bybit", market="futures"), credentials)

    assert isinstance(binance, BinanceVenue)
    assert isinstance(generic, CcxtVenue)
    assert isinstance(other, CcxtVenue)
    assert isinstance(other, VenuePort)
    assert other.kind is MarketKind.FUTURES
    # ccxt's bybit has cancelAllOrdersAfter, but it fires only when a websocket drops.
    assert not other.supports_countdown

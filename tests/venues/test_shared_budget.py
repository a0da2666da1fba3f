"""Accounts behind one egress IP share one request-weight budget: a :class:`WeightWindow`
shared by their :class:`RateBudget` objects, on fake time (weight shared, orders and in-flight
limits per account, one FIFO line for weight) and against the simulator, which counts weight
per venue across accounts as Binance counts it per IP."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from ess.core.flatten import CancelStep, CloseStep
from ess.sim import ExchangeSimulator, RateCounters, RateLimits, Venue, default_markets
from ess.venues.binance import BinanceVenue
from ess.venues.budget import RateBudget, WeightWindow
from ess.venues.config import VenueCredentials, build_budgets, parse_venues
from ess.venues.ports import VenueError, VenueErrorKind
from tests.fixtures.venues import venue_config
from tests.venues.test_budget import FakeTime, settle

D = Decimal


def sharing(
    clock: FakeTime, *, weight: int = 10, orders: int = 3, in_flight: int = 4
) -> tuple[RateBudget, RateBudget]:
    """Two accounts' budgets over one weight window of ``weight`` per minute."""
    window = WeightWindow(weight, clock=clock)
    return (
        RateBudget(weight, orders, in_flight, shared_weight=window, sleep=clock.sleep),
        RateBudget(weight, orders, in_flight, shared_weight=window, sleep=clock.sleep),
    )


# -- on fake time --------------------------------------------------------------------------------


async def test_weight_one_account_spent_delays_the_other() -> None:
    clock = FakeTime()
    main, sub = sharing(clock)
    async with main.request(8):
        pass

    async with sub.request(5):
        admitted_at = clock.now

    assert admitted_at == 1060.0  # once main's 8 left the shared minute
    assert clock.slept == [60.0]
    assert (main.waits, sub.waits) == (0, 1)
    assert main.sent_weight_in_window() == sub.sent_weight_in_window() == 5


async def test_order_budgets_stay_per_account() -> None:
    clock = FakeTime()
    main, sub = sharing(clock, weight=100, orders=3)
    for _ in range(3):
        async with main.request(1, orders=1):
            pass

    for _ in range(3):  # main's full order budget does not hold sub back
        async with sub.request(1, orders=1):
            pass
    assert clock.slept == []
    assert (main.sent_orders_in_window(), sub.sent_orders_in_window()) == (3, 3)
    async with main.request(1, orders=1):  # but main's own does
        pass

    assert clock.slept == [10.0]


async def test_in_flight_limits_stay_per_account() -> None:
    clock = FakeTime()
    main, sub = sharing(clock, weight=100, in_flight=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with main.request(1):
            await release.wait()

    holder = asyncio.create_task(hold())
    await settle()
    blocked = asyncio.create_task(main.request(1).__aenter__())
    await settle()

    async with sub.request(1):
        assert sub.in_flight == 1
    assert not blocked.done()  # main's second request waits for main's slot only
    release.set()
    await holder
    await blocked
    assert main.in_flight == 1


async def test_weight_in_flight_on_one_account_holds_the_other_until_it_completes() -> None:
    clock = FakeTime()
    main, sub = sharing(clock)
    release = asyncio.Event()

    async def hold() -> None:
        async with main.request(8):
            await release.wait()

    holder = asyncio.create_task(hold())
    await settle()
    clock.now += 600.0
    waiter = asyncio.create_task(sub.request(5).__aenter__())
    await settle()
    assert not waiter.done()  # an in-flight request never expires, whoever sent it

    release.set()
    await holder
    await waiter

    assert clock.slept == [60.0]  # a full window after main's request completed


async def test_accounts_wait_for_weight_in_one_line() -> None:
    """A large request at the head of the shared line is not overtaken by a small one of
    another account that would fit sooner."""
    clock = FakeTime()
    main, sub = sharing(clock)
    admitted: list[str] = []
    async with main.request(5):
        pass

    async def call(budget: RateBudget, name: str, weight: int) -> None:
        async with budget.request(weight):
            admitted.append(name)

    await asyncio.gather(call(main, "large", 10), call(sub, "small", 1))

    assert admitted == ["large", "small"]
    assert clock.slept == [60.0, 60.0]


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"weight_per_minute": 11}, "differs from the shared window"),
        ({"weight_window_s": 1.0}, "weight_window_s differs"),
        ({"clock": lambda: 0.0}, "the window's clock"),
    ],
    ids=["weight", "window", "clock"],
)
def test_a_budget_must_match_the_window_it_shares(arguments: dict[str, Any], match: str) -> None:
    window = WeightWindow(10, clock=FakeTime())
    fields: dict[str, Any] = {"weight_per_minute": 10, **arguments}

    with pytest.raises(ValueError, match=match):
        RateBudget(fields.pop("weight_per_minute"), 3, 4, shared_weight=window, **fields)


def test_a_shared_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        WeightWindow(0)
    with pytest.raises(ValueError, match="positive"):
        WeightWindow(10, window_s=0.0)


# -- against the simulator ------------------------------------------------------------------------

#: The venue's per-IP weight budget and per-account order budget, over short windows.
WEIGHT = 200
ORDERS = 3
WINDOW_S = 0.25
ACCOUNTS = ("main", "sub1")
SYMBOLS = 4


def credentials_of(account: str) -> VenueCredentials:
    return VenueCredentials(
        api_key=SecretStr(f"shared-key-{account}"), secret=SecretStr(f"shared-secret-{account}")
    )


async def flatten_load_of_two_accounts(
    budgets: dict[str, RateBudget],
) -> tuple[list[Any], RateCounters, int]:
    """Both accounts at once: six snapshots, cancels of both books and a close on each of
    four symbols per account. Returns the outcomes, the venue's counters (weight across both
    accounts, as per IP) and how many positions are left."""
    limits = RateLimits(
        weight_per_window=WEIGHT,
        weight_window_s=WINDOW_S,
        orders_per_10s=ORDERS,
        orders_10s_window_s=WINDOW_S,
        orders_per_minute=None,
    )
    async with ExchangeSimulator(
        markets=default_markets(extra_futures=SYMBOLS),
        rate_limits={Venue.FUTURES: limits},
        latency_ms=4,
    ) as sim:
        symbols = [m.symbol for m in sim.markets(Venue.FUTURES) if m.symbol.startswith("SIM")]
        venues: list[BinanceVenue] = []
        calls: list[Any] = []
        for account in ACCOUNTS:
            keys = credentials_of(account)
            sim.add_account(
                keys.api_key.get_secret_value(), keys.secret.get_secret_value(), name=account
            )
            for symbol in symbols:
                sim.seed_position(account, symbol, "0.002", "100")
            venue = BinanceVenue(
                # A generous request timeout: a loaded machine must not turn waits into
                # failures (the budget, not the clock, is under test).
                venue_config(sim, "binanceusdm", name=account, account=account, timeout_ms=5000),
                keys,
                budget=budgets[account],
            )
            venues.append(venue)
            calls += [venue.snapshot() for _ in range(6)]
            for symbol in symbols:
                calls += [
                    venue.cancel_all(CancelStep(symbol, conditional=False)),
                    venue.cancel_all(CancelStep(symbol, conditional=True)),
                    venue.close(
                        CloseStep(
                            symbol, "sell", D("0.002"), f"ess-{account}-{symbol}", True, D("0.002")
                        )
                    ),
                ]
        try:
            await asyncio.gather(*(venue.open() for venue in venues))
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            for venue in venues:
                await venue.aclose()
        left = sum(len(sim.positions(account)) for account in ACCOUNTS)
        return outcomes, sim.rate_counters(Venue.FUTURES), left


@pytest.mark.integration
async def test_two_accounts_sharing_the_ips_weight_stay_within_it() -> None:
    window = WeightWindow(WEIGHT, window_s=WINDOW_S)
    budgets = {
        account: RateBudget(WEIGHT, ORDERS, 8, shared_weight=window, orders_window_s=WINDOW_S)
        for account in ACCOUNTS
    }

    outcomes, counters, left = await flatten_load_of_two_accounts(budgets)

    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert (counters.rejected, counters.banned, left) == (0, 0, 0)
    assert counters.peak_weight <= WEIGHT
    assert counters.total_weight > 2 * WEIGHT  # the load did need more than two windows
    assert all(budget.waits > 0 for budget in budgets.values())


@pytest.mark.integration
async def test_two_accounts_each_within_the_figure_alone_exceed_it_together() -> None:
    """The control experiment: the same figure counted per account, and the venue says no."""
    budgets = {
        account: RateBudget(WEIGHT, ORDERS, 8, weight_window_s=WINDOW_S, orders_window_s=WINDOW_S)
        for account in ACCOUNTS
    }

    outcomes, counters, _ = await flatten_load_of_two_accounts(budgets)

    refused = [
        o for o in outcomes if isinstance(o, VenueError) and o.kind is VenueErrorKind.RATE_LIMITED
    ]
    assert counters.rejected >= len(refused) > 0


def test_build_budgets_gives_the_group_one_window_of_the_configured_size() -> None:
    """What the executor builds from a venues file with a ``budget_group``."""
    venues = parse_venues(
        [{"name": name, "exchange": "binanceusdm", "budget_group": "egress-1"} for name in ACCOUNTS]
    )

    budgets = build_budgets(venues)

    windows = {id(budget.weight_window) for budget in budgets.values()}
    assert len(windows) == 1
    assert budgets["main"].weight_window.window_s == 60.0
    assert budgets["main"].weight_window.weight_per_minute == 1920

"""RateBudget: sliding-window weight and order accounting on fake time, FIFO fairness, the
concurrency limit, and one short real-time check."""

from __future__ import annotations

import asyncio
import time

import pytest

from ess.venues.budget import RateBudget


class FakeTime:
    """A monotonic clock that only moves when the budget sleeps (or a test moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def fake_budget(
    clock: FakeTime, weight: int = 10, orders: int = 3, in_flight: int = 4
) -> RateBudget:
    return RateBudget(weight, orders, in_flight, clock=clock, sleep=clock.sleep)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_requests_within_budget_do_not_wait_and_are_counted() -> None:
    clock = FakeTime()
    budget = fake_budget(clock)

    async with budget.request(4):
        assert budget.in_flight == 1
    async with budget.request(0, orders=2):
        pass

    assert (budget.sent_weight_in_window(), budget.sent_orders_in_window()) == (4, 2)
    assert (budget.waits, clock.slept, budget.in_flight) == (0, [], 0)
    clock.now += 10.0  # the order window (10 s) has passed, the weight window (60 s) not
    assert (budget.sent_weight_in_window(), budget.sent_orders_in_window()) == (4, 0)
    clock.now += 50.0
    assert budget.sent_weight_in_window() == 0


async def test_over_the_weight_budget_waits_until_the_window_slides() -> None:
    clock = FakeTime()
    budget = fake_budget(clock)
    async with budget.request(8):
        pass

    async with budget.request(5):
        admitted_at = clock.now

    assert clock.slept == [60.0]
    assert admitted_at == 1060.0
    assert budget.waits == 1
    assert budget.sent_weight_in_window() == 5


async def test_over_the_order_budget_waits_for_the_10s_window() -> None:
    clock = FakeTime()
    budget = fake_budget(clock, orders=3)
    for _ in range(3):
        async with budget.request(1, orders=1):
            clock.now += 1.0

    async with budget.request(1, orders=1):
        pass

    # The oldest order completed at 1001 and leaves the window at 1011; it is now 1003.
    assert clock.slept == [8.0]
    assert budget.sent_orders_in_window() == 3


async def test_a_request_counts_until_a_window_after_it_completed() -> None:
    """The venue counted it on arrival, somewhere between send and completion."""
    clock = FakeTime()
    budget = fake_budget(clock)
    async with budget.request(8):
        clock.now += 5.0  # a slow answer

    clock.now += 59.0
    assert budget.sent_weight_in_window() == 8  # 64 s after sending, 59 s after completion
    async with budget.request(5):
        pass

    assert clock.slept == [pytest.approx(1.0)]


async def test_an_in_flight_request_never_expires() -> None:
    clock = FakeTime()
    budget = fake_budget(clock)
    release = asyncio.Event()

    async def hold() -> None:
        async with budget.request(8):
            await release.wait()

    holder = asyncio.create_task(hold())
    await settle()
    clock.now += 600.0
    assert budget.sent_weight_in_window() == 8
    waiter = asyncio.create_task(budget.request(5).__aenter__())
    await settle()
    assert not waiter.done()  # only the holder's completion can make room

    release.set()
    await holder
    await waiter

    assert clock.slept == [60.0]  # then a full window after that completion
    assert budget.waits == 1


async def test_max_in_flight_bounds_concurrency() -> None:
    budget = RateBudget(1000, 100, 2)
    peak = 0
    gate = asyncio.Event()

    async def call() -> None:
        nonlocal peak
        async with budget.request(1):
            peak = max(peak, budget.in_flight)
            await gate.wait()

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    await settle()
    assert budget.in_flight == 2
    gate.set()
    await asyncio.gather(*tasks)

    assert peak == 2
    assert budget.waits == 3
    assert budget.in_flight == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    """A large request at the head of the line is not overtaken by small ones that would fit
    sooner: no waiter starves."""
    clock = FakeTime()
    budget = fake_budget(clock)
    admitted: list[str] = []
    async with budget.request(5):
        pass

    async def call(name: str, weight: int) -> None:
        async with budget.request(weight):
            admitted.append(name)

    await asyncio.gather(call("large", 10), call("small-1", 1), call("small-2", 1))

    assert admitted == ["large", "small-1", "small-2"]
    assert clock.slept == [60.0, 60.0]


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    clock = FakeTime()
    budget = fake_budget(clock, in_flight=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with budget.request(3):
            await release.wait()

    holder = asyncio.create_task(hold())
    await settle()
    waiter = asyncio.create_task(budget.request(4).__aenter__())
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await holder

    assert budget.sent_weight_in_window() == 3
    async with budget.request(7):  # exactly fills the budget: nothing of the 4 was recorded
        pass
    assert clock.slept == []


@pytest.mark.parametrize(("weight", "orders"), [(11, 0), (1, 4), (-1, 0), (0, -1)])
async def test_impossible_requests_raise_instead_of_waiting_forever(
    weight: int, orders: int
) -> None:
    budget = fake_budget(FakeTime())

    with pytest.raises(ValueError, match="weight"):
        async with budget.request(weight, orders):
            pass

    async with budget.request(10, 3):  # the budget is untouched and still usable
        pass


@pytest.mark.parametrize(
    ("weight", "orders", "in_flight", "window"),
    [(0, 1, 1, 1.0), (1, 0, 1, 1.0), (1, 1, 0, 1.0), (1, 1, 1, 0.0)],
)
def test_budgets_must_be_positive(weight: int, orders: int, in_flight: int, window: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateBudget(weight, orders, in_flight, weight_window_s=window)


async def test_real_time_wait_matches_the_window() -> None:
    budget = RateBudget(10, 5, 4, weight_window_s=0.2)
    async with budget.request(8):
        pass
    started = time.monotonic()

    async with budget.request(5):
        elapsed = time.monotonic() - started

    assert 0.15 <= elapsed < 1.0
    assert budget.waits == 1

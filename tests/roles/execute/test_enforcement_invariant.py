"""Issue 13, item 2: enforcement cannot lapse.

The executor's invariant -- while the folded state is ACTIVE, an enforcement of the current
activation is running; while INACTIVE (and the log trusted), none is -- must hold for any
sequence of trips and resets, split into fetches any way, with the executor's own tasks
(the stops a reset schedules) running at any point in between. A watchdog restarts
enforcement if it ever finds the invariant broken, and counts it.
"""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ess.roles.execute.service import Executor
from schemas import topic_registry
from tests.roles.execute.fakes import FAST_SETTINGS, FakeVenue
from tests.statelog_support import LogBuilder, trust

SCOPE = "ess.state"
SETTINGS = FAST_SETTINGS


def executor_for(venue: FakeVenue) -> Executor:
    return Executor("unused:9092", topic_registry("ess"), [venue], SETTINGS, trust=trust(SCOPE))


def holds(executor: Executor) -> bool:
    """The invariant, as seen right after the executor applied what it was fed."""
    state, current = executor.state, executor._enforcement
    if state.active:
        return (
            current is not None
            and state.activation is not None
            and current.activation.seq == state.activation.seq
            and not current.stop.is_set()
        )
    return current is None


async def play(steps: list[bool], cuts: list[int], yields: list[int]) -> None:
    """``steps``: True = a trip, False = a reset (when ACTIVE); the log is delivered in
    fetches cut at ``cuts``, and after each fetch the event loop runs ``yields[i]`` times."""
    venue = FakeVenue()
    venue.positions["BTCUSDT"] = Decimal("1")
    executor = executor_for(venue)
    log = LogBuilder(SCOPE)
    for index, trip in enumerate(steps):
        if trip:
            log.trip(f"trip-{index}")
        elif log.state.active:
            log.reset()
    records = log.records()
    bounds = sorted({0, len(records), *(cut % (len(records) + 1) for cut in cuts)})
    try:
        for number, (start, end) in enumerate(itertools.pairwise(bounds)):
            executor._reader.feed(records[start:end])
            executor._apply()
            assert holds(executor), f"after fetch {number} ({start}:{end})"
            for _ in range(yields[number % len(yields)] if yields else 0):
                await asyncio.sleep(0)
                assert holds(executor), f"while its tasks ran, after fetch {number}"
        await asyncio.gather(*executor._background, return_exceptions=True)
        assert holds(executor)
        assert not executor.enforcement_broken()
        assert executor.metrics.enforcement_restarts._value.get() == 0
    finally:
        await executor._stop_enforcement("test over")
        await asyncio.gather(*executor._background, return_exceptions=True)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.booleans(), min_size=1, max_size=14),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    yields=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=6),
)
def test_enforcement_follows_the_state_for_any_batching_and_interleaving(
    steps: list[bool], cuts: list[int], yields: list[int]
) -> None:
    asyncio.run(play(steps, cuts, yields))


async def test_the_watchdog_restarts_a_lapsed_enforcement_and_counts_it() -> None:
    venue = FakeVenue()
    executor = executor_for(venue)
    log = LogBuilder(SCOPE)
    log.trip()
    executor._reader.feed(log.records())
    executor._apply()
    try:
        assert not executor.check_enforcement()  # nothing to do while it holds
        lapsed = executor._enforcement
        assert lapsed is not None
        lapsed.stop.set()  # a defect ends the enforcement behind the executor's back
        await lapsed.task
        assert executor.enforcement_broken()

        assert executor.check_enforcement()

        current = executor._enforcement
        assert current is not None
        assert current is not lapsed
        assert not current.task.done()
        assert executor.metrics.enforcement_restarts._value.get() == 1
        venue.positions["ETHUSDT"] = Decimal("2")
        for _ in range(200):
            if not venue.positions:
                break
            await asyncio.sleep(0.01)
        assert venue.positions == {}
    finally:
        await executor._stop_enforcement("test over")
        await asyncio.gather(*executor._background, return_exceptions=True)

"""How the executor service turns the verified state log into enforcement, without a broker:
records are fed to its reader exactly as its follower does, and the flatten runs against
an in-memory venue.

* Issue 13, finding 2: a reset and the next activation arriving together (in one fetch, or
  applied one after the other before the reset's stop ran) leave the new activation enforced.
* A foreign record (a hand-produced reset) never ends enforcement, and while one awaits the
  processor's acknowledgement not even an authentic reset ends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal

import pytest

from ess.core.flatten import MarketKind
from ess.core.reader import RawRecord
from ess.roles.execute.service import Countdown, Executor
from schemas import ReasonCode, ResetEntry, TriggerRef, encode, topic_registry
from tests.helpers import eventually
from tests.roles.execute.fakes import FAST_SETTINGS, FakeVenue
from tests.statelog_support import T0, LogBuilder, trust

SETTINGS = FAST_SETTINGS
SCOPE = "ess.state"

Make = Callable[[FakeVenue], Executor]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Executor] = []

    def build(venue: FakeVenue) -> Executor:
        executor = Executor(
            "unused:9092", topic_registry("ess"), [venue], SETTINGS, trust=trust(SCOPE)
        )
        made.append(executor)
        return executor

    yield build
    for executor in made:
        await executor._stop_enforcement("test over")
        await asyncio.gather(*executor._background, return_exceptions=True)


def deliver(executor: Executor, records: Sequence[RawRecord], *, one_by_one: bool) -> None:
    """What the executor's follower does with a fetch: feed it, then apply the state. With
    ``one_by_one`` every record is applied on its own (the worst case: nothing awaited
    between them)."""
    batches = [[record] for record in records] if one_by_one else [list(records)]
    for batch in batches:
        executor._reader.feed(batch)
        executor._apply()


def holding(venue: FakeVenue) -> FakeVenue:
    venue.positions["BTCUSDT"] = Decimal("0.5")
    return venue


def flat(venue: FakeVenue) -> bool:
    assert venue.positions == {}
    return True


@pytest.mark.parametrize("one_by_one", [False, True], ids=["one-fetch", "record-by-record"])
async def test_a_reset_and_the_next_activation_together_leave_the_new_one_enforced(
    make: Make, one_by_one: bool
) -> None:
    venue = holding(FakeVenue())
    executor = make(venue)
    log = LogBuilder(SCOPE)
    log.trip("trip-0")
    deliver(executor, log.records(), one_by_one=False)
    first = executor._enforcement
    assert first is not None
    assert first.activation.seq == 0
    await eventually(lambda: flat(venue))

    log.reset()  # seq 1
    log.trip("trip-2")  # seq 2: ACTIVE again
    deliver(executor, log.records(1), one_by_one=one_by_one)
    await asyncio.sleep(0.1)  # every stop the deliveries scheduled has run

    current = executor._enforcement
    assert current is not None
    assert current.activation.seq == 2
    assert not current.stop.is_set()
    assert not current.task.done()
    assert first.stop.is_set()
    assert executor.status().status == "ACTIVE"
    venue.positions["ETHUSDT"] = Decimal("-2")  # trading again: closed by the enforcement
    await eventually(lambda: flat(venue))


async def test_a_reset_alone_ends_enforcement(make: Make) -> None:
    venue = holding(FakeVenue())
    executor = make(venue)
    log = LogBuilder(SCOPE)
    log.trip()
    deliver(executor, log.records(), one_by_one=False)
    enforcement = executor._enforcement
    assert enforcement is not None

    log.reset()
    deliver(executor, log.records(1), one_by_one=False)
    await asyncio.gather(*executor._background)

    assert executor._enforcement is None
    assert enforcement.task.done()
    assert executor.status().status == "INACTIVE"


async def test_a_foreign_reset_while_active_ends_nothing(make: Make) -> None:
    venue = holding(FakeVenue())
    executor = make(venue)
    log = LogBuilder(SCOPE)
    log.trip()
    deliver(executor, log.records(), one_by_one=False)
    enforcement = executor._enforcement
    assert enforcement is not None

    forged = ResetEntry(seq=1, command_id="r-forged", ts=T0, operators=("alice",), nonce="n")
    deliver(executor, [RawRecord(1, encode(forged))], one_by_one=False)
    await asyncio.sleep(0.05)

    assert executor._enforcement is enforcement
    assert not enforcement.stop.is_set()
    status = executor.status()
    assert (status.status, status.activation_seq) == ("ACTIVE", 0)
    assert status.checks["log"].startswith("untrusted")
    venue.positions["ETHUSDT"] = Decimal("1")
    await eventually(lambda: flat(venue))


async def test_while_a_foreign_record_is_unacknowledged_even_an_authentic_reset_ends_nothing(
    make: Make,
) -> None:
    """Someone else wrote to ess.state: until the processor has acknowledged it (with an
    ``unauthorized_access`` trip, which activates again) enforcement does not lapse."""
    venue = holding(FakeVenue())
    executor = make(venue)
    log = LogBuilder(SCOPE)
    log.trip()  # log offset 0
    deliver(executor, [RawRecord(0, log.values[0])], one_by_one=False)
    enforcement = executor._enforcement
    assert enforcement is not None

    log.reset()  # written at offset 2, after a foreign record at offset 1
    deliver(
        executor,
        [RawRecord(1, b'{"kind": "reset"}'), RawRecord(2, log.values[1])],
        one_by_one=False,
    )
    await asyncio.sleep(0.05)

    assert executor.state.status.value == "INACTIVE"
    assert executor._enforcement is enforcement, "untrusted: enforcement kept"
    assert not enforcement.stop.is_set()

    # The processor's acknowledgement: a trip pointing at the foreign record (ACTIVE again).
    log.trip(
        reason=ReasonCode.UNAUTHORIZED_ACCESS,
        source="ess-command-processor",
        trigger=TriggerRef(topic=SCOPE, partition=0, offset=1, event_ts=T0),
    )
    deliver(executor, [RawRecord(3, log.values[2])], one_by_one=False)
    await asyncio.sleep(0.05)

    current = executor._enforcement
    assert current is not None
    assert current.activation.seq == 2
    assert not current.stop.is_set()
    assert executor.status().checks["log"] == "ok"


def test_status_says_which_venues_have_a_dead_mans_switch() -> None:
    """Issue 15, item 2: a venue whose orders would outlive ESS is named, not left implicit."""
    armed, available, spot = (
        FakeVenue("armed"),
        FakeVenue("available"),
        FakeVenue("spot", kind=MarketKind.SPOT),
    )
    executor = Executor(
        "unused:9092",
        topic_registry("ess"),
        [armed, available, spot],
        SETTINGS,
        trust=trust(SCOPE),
        countdowns={"armed": Countdown(("BTCUSDT", "ETHUSDT"), 60_000)},
    )

    switches = executor.dead_mans_switches()

    assert switches == {
        "armed": "kept armed: 2 symbol(s), 60000 ms",
        "available": "available, not configured (set countdown_symbols)",
        "spot": "none: the venue has no native dead-man's switch ESS can use",
    }
    checks = executor.status().checks
    assert checks["dead_mans_switch:spot"] == switches["spot"]
    assert checks["dead_mans_switch:armed"].startswith("kept armed")

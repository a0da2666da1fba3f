"""The flatten engine against an in-memory venue: read, plan, act, verify, keep flat."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from loguru import logger

from ess.clock import ManualClock
from ess.core.flatten import MarketKind, close_order_id
from ess.core.state import Activation
from ess.roles.execute.engine import Phase, VenueFlattener, enforce_all, keep_countdown
from ess.settings import ExecuteSettings
from ess.venues.ports import VenueError, VenueErrorKind
from schemas import ActionReport, ReasonCode
from tests.helpers import eventually
from tests.roles.execute.fakes import FakeVenue, call_depths

D = Decimal

SETTINGS = ExecuteSettings(
    flatten_deadline_sec=0.2,
    stalled_report_interval_sec=0.05,
    enforce_interval_sec=0.02,
    backoff_initial_sec=0.005,
    backoff_max_sec=0.05,
)
ACTIVATION = Activation(
    seq=7,
    command_id="trip-1",
    reason=ReasonCode.DAILY_LOSS,
    detail="daily loss over the limit",
    source="tests",
    trigger=None,
    ts=datetime(2026, 1, 1, tzinfo=UTC),
)
UNAVAILABLE = VenueError(VenueErrorKind.UNAVAILABLE, "503 Service Unavailable")


class Run:
    """One flattener enforcing an activation in the background, its reports collected."""

    def __init__(self, venue: FakeVenue, settings: ExecuteSettings = SETTINGS) -> None:
        self.venue = venue
        self.clock = ManualClock()
        self.reports: list[ActionReport] = []
        self.flattener = VenueFlattener(
            venue, settings, clock=self.clock, report=self.reports.append
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self, activation: Activation = ACTIVATION) -> Run:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.flattener.enforce(activation, self.stop))
        return self

    def phase(self) -> Phase:
        return self.flattener.progress.phase

    def outcomes(self) -> list[tuple[str, str]]:
        return [(report.action, report.outcome) for report in self.reports]

    def count(self, action: str, outcome: str) -> int:
        return self.outcomes().count((action, outcome))

    def details(self, action: str, outcome: str) -> list[dict[str, Any]]:
        return [
            json.loads(report.detail)
            for report in self.reports
            if (report.action, report.outcome) == (action, outcome)
        ]

    async def until(self, action: str, outcome: str, count: int = 1) -> None:
        await eventually(
            lambda: self.count(action, outcome) >= count,
            timeout=3,
            message=f"{count}x {action} {outcome}; got {self.outcomes()}",
        )

    async def finish(self, within: float = 1.0) -> None:
        """Set stop and wait (at most ``within`` seconds) for enforce to return."""
        assert self.task is not None
        self.stop.set()
        async with asyncio.timeout(within):
            await self.task


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Run]]:
    """Start a :class:`Run`; whatever a test leaves running is stopped afterwards."""
    runs: list[Run] = []

    def start_run(venue: FakeVenue, settings: ExecuteSettings = SETTINGS) -> Run:
        run = Run(venue, settings).start()
        runs.append(run)
        return run

    yield start_run
    for run in runs:
        run.stop.set()
    for run in runs:
        assert run.task is not None
        if not run.task.done():
            run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)


def futures_venue(name: str = "fake-futures", **kwargs: Any) -> FakeVenue:
    return FakeVenue(name, kind=MarketKind.FUTURES, **kwargs)


# --------------------------------------------------------------------------- flatten


async def test_flattens_positions_and_both_order_books(start: Callable[..., Run]) -> None:
    venue = futures_venue()
    venue.positions.update(BTCUSDT=D("0.5"), ETHUSDT=D("-2"))
    venue.add_order("BTCUSDT")
    venue.add_order("BTCUSDT", conditional=True)
    venue.add_order("SOLUSDT", side="sell")
    run = start(venue)

    await run.until("flatten", "verified_flat")
    progress = run.flattener.progress
    await run.finish()

    assert venue.current().flat
    outcomes = run.outcomes()
    assert outcomes[0] == ("flatten", "started")
    assert outcomes[-2:] == [("flatten", "verified_flat"), ("flatten", "stopped")]
    assert Counter(outcomes[1:-2]) == {("cancel", "ok"): 3, ("close", "sent"): 2}
    # Within a symbol the cancels come first; BTC is the symbol with both.
    btc = [
        (r.action, r.outcome)
        for r in run.reports
        if json.loads(r.detail).get("symbol") == "BTCUSDT"
    ]
    assert btc == [("cancel", "ok"), ("cancel", "ok"), ("close", "sent")]
    assert {(s.symbol, s.side, s.amount, s.reduce_only) for s in venue.executed} == {
        ("BTCUSDT", "sell", D("0.5"), True),
        ("ETHUSDT", "buy", D("2"), True),
    }
    for step in venue.executed:
        assert step.client_order_id == close_order_id(
            "trip-1", venue.name, step.symbol, step.observed
        )
    assert {(r.venue, r.account, r.activation_seq, r.ts) for r in run.reports} == {
        (venue.name, "main", 7, run.clock.now())
    }
    assert run.details("flatten", "started") == [{"reason": "daily_loss", "command_id": "trip-1"}]
    [verified] = run.details("flatten", "verified_flat")
    assert verified["rounds"] == 1
    assert verified["elapsed_ms"] >= 0
    assert progress.phase is Phase.FLAT
    assert progress.activation_seq == 7
    assert (progress.rounds, progress.cancels_sent, progress.closes_sent) == (1, 3, 2)
    assert progress.flatten_seconds is not None
    assert progress.last_error is None
    assert run.phase() is Phase.IDLE


async def test_spot_cancels_the_resting_sell_before_selling_everything(
    start: Callable[..., Run],
) -> None:
    venue = FakeVenue("fake-spot", kind=MarketKind.SPOT)
    venue.positions["BTCUSDT"] = D("1")
    venue.add_order("BTCUSDT", side="sell", amount=D("0.4"))  # locks 0.4 of the balance
    run = start(venue)

    await run.until("flatten", "verified_flat")

    assert venue.current().flat
    assert [(s.side, s.amount, s.reduce_only) for s in venue.executed] == [("sell", D("1"), False)]
    assert run.count("close", "failed") == 0
    [cancel] = venue.calls_of("cancel_all")
    [close] = venue.calls_of("close")
    assert cancel.end is not None
    assert cancel.end < close.start


async def test_a_failed_cancel_holds_the_close_of_its_symbol_back(
    start: Callable[..., Run],
) -> None:
    venue = FakeVenue("fake-spot", kind=MarketKind.SPOT)
    venue.positions["BTCUSDT"] = D("1")
    venue.add_order("BTCUSDT", side="sell", amount=D("0.4"))
    venue.fail("cancel_all", UNAVAILABLE)
    run = start(venue)

    await run.until("flatten", "verified_flat")

    assert run.outcomes()[1:] == [
        ("cancel", "failed"),
        ("cancel", "ok"),
        ("close", "sent"),
        ("flatten", "verified_flat"),
    ]
    assert venue.counts["close"] == 1


async def test_a_failed_cancel_does_not_hold_a_reduce_only_futures_close_back(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")
    venue.add_order("BTCUSDT", side="buy", amount=D("0.4"))
    venue.fail("cancel_all", UNAVAILABLE)
    run = start(venue)

    await run.until("flatten", "verified_flat")

    assert run.outcomes()[1:3] == [("cancel", "failed"), ("close", "sent")]
    assert venue.current().positions == ()


@pytest.mark.parametrize(
    "error",
    [
        UNAVAILABLE,
        VenueError(VenueErrorKind.MALFORMED, "HTTP 200 with an empty body"),
        VenueError(VenueErrorKind.TIMEOUT, "read timed out"),
        RuntimeError("adapter bug: untranslated error"),
    ],
    ids=["unavailable", "malformed", "timeout", "untranslated"],
)
async def test_a_failed_read_is_never_taken_for_flat(
    start: Callable[..., Run], error: Exception
) -> None:
    venue = futures_venue()  # really flat: only a good read may say so
    venue.fail("snapshot", error, times=None)
    run = start(venue)

    await eventually(lambda: venue.counts["snapshot"] >= 4, timeout=3)
    assert run.count("flatten", "verified_flat") == 0
    assert run.count("read", "failed") >= 3
    assert run.phase() is not Phase.FLAT

    venue.heal()
    await run.until("flatten", "verified_flat")
    assert run.outcomes()[:2] == [("flatten", "started"), ("read", "failed")]


async def test_an_executed_close_whose_answer_was_lost_is_not_repeated(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")
    venue.lose_answers(1)
    run = start(venue)

    await run.until("flatten", "verified_flat")

    assert len(venue.executed) == 1
    [failed] = run.details("close", "failed")
    assert failed["error"].startswith("timeout")
    assert run.count("close", "sent") == 0


@pytest.mark.parametrize("remembers_ids", [True, False], ids=["ids-refused", "ids-reusable"])
async def test_retries_on_stale_reads_never_double_or_flip(
    start: Callable[..., Run], remembers_ids: bool
) -> None:
    """The close executes but its answer is lost, and the next reads still show the old
    position: the retries must be refused, either as a duplicate id or as reduce-only."""
    venue = futures_venue(remembers_ids=remembers_ids)
    venue.positions["BTCUSDT"] = D("1")
    venue.lose_answers(1)
    venue.serve_stale(4)
    run = start(venue)

    await run.until("flatten", "verified_flat")

    assert len(venue.executed) == 1
    assert all(quantity >= 0 for _, quantity in venue.history)
    assert venue.current().flat
    assert run.count("close", "already_reduced") >= 1
    if remembers_ids:
        assert run.count("close", "duplicate_id") >= 1


async def test_duplicate_id_for_an_unchanged_position_moves_to_the_next_attempt(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")
    venue.expire_closes(1)  # the first close is accepted, then expires unfilled
    run = start(venue)

    await run.until("flatten", "verified_flat")

    first, second = (
        close_order_id("trip-1", venue.name, "BTCUSDT", D("1"), attempt) for attempt in (0, 1)
    )
    assert [call.args[1] for call in venue.calls_of("close")] == [first, first, second]
    assert [step.client_order_id for step in venue.executed] == [second]
    [duplicate] = run.details("close", "duplicate_id")
    assert duplicate["client_order_id"] == first
    assert duplicate["next_attempt"] == 1


async def test_a_fill_racing_the_cancel_is_closed_too(start: Callable[..., Run]) -> None:
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")
    venue.add_order("BTCUSDT", side="buy")
    venue.late_fill("BTCUSDT", D("0.5"))  # the buy fills as it is being cancelled
    run = start(venue)

    await run.until("flatten", "verified_flat")

    assert [step.amount for step in venue.executed] == [D("1"), D("0.5")]
    assert len({step.client_order_id for step in venue.executed}) == 2
    assert run.details("flatten", "verified_flat")[0]["rounds"] == 2
    assert run.count("enforce", "exposure_found") == 0


async def test_exposure_after_verified_flat_is_found_and_flattened_again(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")
    run = start(venue)
    await run.until("flatten", "verified_flat")
    first_flatten = run.flattener.progress.flatten_seconds

    venue.positions["BTCUSDT"] = D("0.3")  # a late fill
    venue.add_order("ETHUSDT")  # a rogue bot's order
    await run.until("flatten", "verified_flat", count=2)

    assert venue.current().flat
    [found] = run.details("enforce", "exposure_found")
    assert found == {"positions": {"BTCUSDT": "0.3"}, "orders": 1}
    assert [step.observed for step in venue.executed] == [D("1"), D("0.3")]
    after = run.outcomes()[run.outcomes().index(("enforce", "exposure_found")) + 1 :]
    assert Counter(after[:-1]) == {("cancel", "ok"): 1, ("close", "sent"): 1}
    assert after[-1] == ("flatten", "verified_flat")
    progress = run.flattener.progress
    assert progress.flatten_seconds == first_flatten  # the first verified flat is the figure
    assert progress.rounds == 2
    assert progress.phase is Phase.FLAT


async def test_dust_is_reported_once_and_does_not_count_against_flat(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue()
    venue.dust["DOGEUSDT"] = D("0.4")
    run = start(venue)

    await run.until("flatten", "verified_flat")
    await eventually(lambda: venue.counts["snapshot"] >= 4, timeout=3)

    assert run.details("flatten", "dust") == [{"dust": {"DOGEUSDT": "0.4"}}]
    assert run.count("flatten", "verified_flat") == 1


# --------------------------------------------------------------------------- failures


async def test_a_venue_that_keeps_failing_is_reported_stalled_until_it_recovers(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")
    venue.fail("snapshot", UNAVAILABLE, times=None)
    run = start(venue)

    await run.until("flatten", "stalled", count=2)
    assert run.phase() is Phase.STALLED
    first, second = run.details("flatten", "stalled")[:2]
    assert first["elapsed_ms"] >= 200
    assert second["elapsed_ms"] >= first["elapsed_ms"] + 45
    assert first["last_error"] == f"read: {UNAVAILABLE}"
    reads = venue.counts["snapshot"]
    await eventually(lambda: venue.counts["snapshot"] > reads + 2, timeout=3)  # still trying

    venue.heal()
    await run.until("flatten", "verified_flat")
    assert venue.current().flat
    assert run.phase() is Phase.FLAT
    stalled = run.count("flatten", "stalled")
    await eventually(lambda: venue.counts["snapshot"] > reads + 8, timeout=3)
    assert run.count("flatten", "stalled") == stalled


async def test_closes_that_change_nothing_are_repeated_with_backoff_not_in_a_hot_loop(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue(remembers_ids=False)
    venue.positions["BTCUSDT"] = D("1")
    venue.expire_closes(1_000)  # every market close expires unfilled (no liquidity)
    run = start(venue)

    await run.until("flatten", "stalled")

    # 0.2 s at backoffs of 5 ms doubling to 50 ms: a dozen rounds, not thousands.
    assert 2 <= venue.counts["close"] <= 15
    assert run.phase() is Phase.STALLED


async def test_exposure_no_order_can_remove_stalls_with_the_reason(
    start: Callable[..., Run],
) -> None:
    venue = FakeVenue("fake-spot", kind=MarketKind.SPOT)
    venue.positions["BTCUSDT"] = D("-1")  # a negative spot balance: nothing to sell
    run = start(venue)

    await run.until("flatten", "stalled")

    assert "BTCUSDT" in run.details("flatten", "stalled")[0]["last_error"]
    assert venue.counts["close"] == 0


async def test_a_connect_failure_is_retried_and_the_venue_opened_once(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue()
    venue.fail("open", UNAVAILABLE)
    run = start(venue)
    await run.until("flatten", "verified_flat")
    await run.finish()

    assert run.outcomes()[:2] == [("flatten", "started"), ("connect", "failed")]
    # A later activation on the same (long-lived) flattener neither reopens nor reuses ids.
    venue.positions["BTCUSDT"] = D("1")
    run.start(dataclasses.replace(ACTIVATION, seq=9, command_id="trip-2"))
    await run.until("flatten", "verified_flat", count=2)
    await run.finish()
    assert venue.counts["open"] == 2
    assert venue.opened
    [step] = venue.executed
    assert step.client_order_id == close_order_id("trip-2", venue.name, "BTCUSDT", D("1"))
    assert run.reports[-1].activation_seq == 9


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("close", VenueError(VenueErrorKind.RATE_LIMITED, "429", code=-1003, retry_after=0.15)),
        ("snapshot", VenueError(VenueErrorKind.BANNED, "418 IP banned")),
        ("close", VenueError(VenueErrorKind.AUTH, "Invalid API-key", code=-2015)),
    ],
    ids=["rate-limited-retry-after", "banned", "auth"],
)
async def test_budget_and_credential_errors_slow_the_retries_down(
    start: Callable[..., Run], method: str, error: VenueError
) -> None:
    critical: list[str] = []
    sink = logger.add(lambda message: critical.append(message.record["message"]), level="CRITICAL")
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")
    venue.fail(method, error)
    run = start(venue, SETTINGS.model_copy(update={"backoff_max_sec": 0.15}))
    try:
        await run.until("flatten", "verified_flat")
    finally:
        logger.remove(sink)

    failed = next(call for call in venue.calls if call.error is error)
    after = venue.calls[venue.calls.index(failed) + 1]
    assert after.at - failed.at >= 0.14
    assert ("close failed" in critical) == (error.kind is VenueErrorKind.AUTH)


async def test_a_failing_report_sink_never_stops_the_flatten() -> None:
    venue = futures_venue()
    venue.positions["BTCUSDT"] = D("1")

    def broken_sink(report: ActionReport) -> None:
        raise asyncio.QueueFull

    flattener = VenueFlattener(venue, SETTINGS, clock=ManualClock(), report=broken_sink)
    stop = asyncio.Event()
    task = asyncio.create_task(flattener.enforce(ACTIVATION, stop))
    await eventually(lambda: flattener.progress.phase is Phase.FLAT, timeout=3)
    assert venue.current().flat
    assert not task.done()
    stop.set()
    async with asyncio.timeout(1):
        await task


# --------------------------------------------------------------------------- stop, venues


@pytest.mark.parametrize("failing", [False, True], ids=["in-enforce-wait", "in-backoff"])
async def test_stop_returns_promptly_and_reports_stopped_once(
    start: Callable[..., Run], failing: bool
) -> None:
    venue = futures_venue()
    slow = SETTINGS.model_copy(
        update={"enforce_interval_sec": 60.0, "backoff_initial_sec": 60.0, "backoff_max_sec": 60.0}
    )
    if failing:
        venue.fail("snapshot", UNAVAILABLE, times=None)
    run = start(venue, slow)
    await run.until(*(("read", "failed") if failing else ("flatten", "verified_flat")))

    began = time.monotonic()
    await run.finish(within=1.0)

    assert time.monotonic() - began < 0.5
    assert run.outcomes()[-1] == ("flatten", "stopped")
    assert run.count("flatten", "stopped") == 1
    assert run.details("flatten", "stopped") == [{"rounds": 0, "flat": not failing}]
    assert run.phase() is Phase.IDLE


async def test_one_failing_slow_venue_does_not_delay_another() -> None:
    broken = futures_venue("broken", latency=0.05)
    broken.fail("snapshot", UNAVAILABLE, times=None)
    healthy = futures_venue("healthy")
    healthy.positions["BTCUSDT"] = D("2")
    healthy.add_order("BTCUSDT", conditional=True)
    reports: list[ActionReport] = []
    flatteners = [
        VenueFlattener(venue, SETTINGS, clock=ManualClock(), report=reports.append)
        for venue in (broken, healthy)
    ]
    stop = asyncio.Event()
    task = asyncio.create_task(enforce_all(flatteners, ACTIVATION, stop))

    def seen(venue: str, outcome: str) -> list[int]:
        return [i for i, r in enumerate(reports) if (r.venue, r.outcome) == (venue, outcome)]

    await eventually(lambda: seen("broken", "stalled"), timeout=3)
    assert seen("healthy", "verified_flat")[0] < seen("broken", "stalled")[0]
    assert healthy.current().flat
    assert not seen("broken", "verified_flat")
    stop.set()
    async with asyncio.timeout(1):
        await task
    assert seen("broken", "stopped")
    assert seen("healthy", "stopped")


async def test_an_emergency_flatten_is_four_sequential_round_trips(
    start: Callable[..., Run],
) -> None:
    venue = futures_venue(latency=0.001)
    venue.positions.update(BTCUSDT=D("1"), ETHUSDT=D("-3"))
    venue.add_order("BTCUSDT")
    venue.add_order("BTCUSDT", conditional=True)
    venue.add_order("SOLUSDT")
    run = start(venue)
    await run.until("flatten", "verified_flat")
    await run.finish()

    verifying = [i for i, call in enumerate(venue.calls) if call.method == "snapshot"][1]
    calls = venue.calls[: verifying + 1]
    depths = call_depths(calls)
    assert Counter(call.method for call in calls) == {
        "open": 1,
        "snapshot": 2,
        "cancel_all": 3,
        "close": 2,
    }
    # open is connection set-up, not part of the flatten: count from the first read.
    assert depths[verifying] - depths[1] + 1 == 4
    by_method: dict[str, set[int]] = {}
    for call, depth in zip(calls, depths, strict=True):
        by_method.setdefault(call.method, set()).add(depth - depths[1] + 1)
    assert by_method["cancel_all"] == {2}  # both books of BTC and SOL's at once
    assert by_method["close"] == {2, 3}  # ETH has nothing to cancel; BTC waits for its cancels


# --------------------------------------------------------------------------- countdown


async def test_keep_countdown_arms_every_symbol_and_reports_armed_once() -> None:
    venue = futures_venue()
    reports: list[ActionReport] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        keep_countdown(
            venue, ["BTCUSDT", "ETHUSDT"], 30, stop, clock=ManualClock(), report=reports.append
        )
    )
    await eventually(lambda: venue.counts["arm_countdown"] >= 8, timeout=3)
    stop.set()
    async with asyncio.timeout(1):
        await task

    assert call_depths(venue.calls[:2]) == [1, 1]  # both symbols in one round trip
    assert venue.countdowns == {"BTCUSDT": 30, "ETHUSDT": 30}  # stopping disarms nothing
    assert sorted((r.outcome, json.loads(r.detail)["symbol"]) for r in reports) == [
        ("armed", "BTCUSDT"),
        ("armed", "ETHUSDT"),
    ]
    assert {r.activation_seq for r in reports} == {None}


async def test_keep_countdown_reports_a_failure_then_armed_again() -> None:
    venue = futures_venue()
    reports: list[ActionReport] = []
    stop = asyncio.Event()
    venue.fail("arm_countdown", UNAVAILABLE)
    task = asyncio.create_task(
        keep_countdown(venue, ["BTCUSDT"], 30, stop, clock=ManualClock(), report=reports.append)
    )
    await eventually(lambda: venue.counts["arm_countdown"] >= 4, timeout=3)
    assert [r.outcome for r in reports] == ["failed", "armed"]

    venue.fail("arm_countdown", UNAVAILABLE)
    await eventually(lambda: len(reports) == 4, timeout=3)
    assert [r.outcome for r in reports] == ["failed", "armed", "failed", "armed"]
    assert json.loads(reports[0].detail)["error"] == str(UNAVAILABLE)
    stop.set()
    async with asyncio.timeout(1):
        await task


async def test_keep_countdown_stops_re_arming_while_the_state_log_is_unreachable() -> None:
    venue = futures_venue()
    reports: list[ActionReport] = []
    stop = asyncio.Event()
    log_reachable = True
    task = asyncio.create_task(
        keep_countdown(
            venue,
            ["BTCUSDT"],
            30,
            stop,
            clock=ManualClock(),
            report=reports.append,
            healthy=lambda: log_reachable,
        )
    )
    await eventually(lambda: venue.counts["arm_countdown"] >= 2, timeout=3)
    log_reachable = False
    await eventually(lambda: [r.outcome for r in reports] == ["armed", "paused"], timeout=3)
    paused_at = venue.counts["arm_countdown"]
    await eventually(lambda: venue.counts["arm_countdown"] == paused_at, timeout=3)

    log_reachable = True
    await eventually(lambda: venue.counts["arm_countdown"] > paused_at, timeout=3)
    await eventually(lambda: [r.outcome for r in reports][-1] == "armed", timeout=3)
    stop.set()
    async with asyncio.timeout(1):
        await task
    assert [r.outcome for r in reports] == ["armed", "paused", "armed"]


@pytest.mark.parametrize(
    ("kind", "symbols"), [(MarketKind.SPOT, ["BTCUSDT"]), (MarketKind.FUTURES, [])]
)
async def test_keep_countdown_does_nothing_without_a_switch_or_symbols(
    kind: MarketKind, symbols: list[str]
) -> None:
    venue = FakeVenue(kind=kind)
    reports: list[ActionReport] = []
    async with asyncio.timeout(1):
        await keep_countdown(
            venue, symbols, 30, asyncio.Event(), clock=ManualClock(), report=reports.append
        )
    assert venue.counts["arm_countdown"] == 0
    assert not reports


async def test_a_call_cancelled_by_another_caller_is_a_failed_call_not_the_end() -> None:
    """Issue 13 (found by the venue campaign): ccxt shares one in-flight request between
    concurrent callers; cancelling it with one caller must not end another's flatten."""
    from loguru import logger  # noqa: PLC0415

    from ess.roles.execute.engine import _guarded  # noqa: PLC0415

    shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def call() -> None:
        await shared

    waiting = asyncio.create_task(_guarded(call(), logger))
    await asyncio.sleep(0)
    shared.cancel()  # the other caller's cancellation
    result = await waiting
    assert isinstance(result, VenueError)
    assert result.kind is VenueErrorKind.UNAVAILABLE

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ours = asyncio.create_task(_guarded(never, logger))
    await asyncio.sleep(0)
    ours.cancel()  # this flatten being stopped: that cancellation propagates
    with pytest.raises(asyncio.CancelledError):
        await ours

"""The flatten engine: read, plan, act, verify on each venue until flat; then keep it flat.

One :class:`VenueFlattener` per venue runs this loop for an activation until ESS is reset:

1. **Read** a complete :class:`~ess.core.flatten.VenueSnapshot`. A read that fails or is
   malformed raises in the adapter, so it can never pass for "flat".
2. **Plan** with :func:`~ess.core.flatten.plan_flatten` (pure; cancel-before-close per symbol,
   reduce-only closes with client order ids derived from the activation and the observation).
3. **Act**: every symbol concurrently; within a symbol its cancels (both books at once), then
   its close (on spot only if those cancels succeeded: a resting sell locks the balance).
4. **Verify** with a fresh read straight after a clean round, so an emergency flatten costs
   four sequential venue round trips: read, cancel, close, read.

Failures back off exponentially; a venue not verified flat within the deadline is reported
``stalled`` (again at every interval) while the engine keeps trying: giving up is never an
option for a kill switch. Once flat, the venue is re-read every ``enforce_interval_sec``, because
ESS stays ACTIVE and a late fill or a rogue bot's order must be removed too.

Every step is reported as an :class:`~schemas.ActionReport` (``action``/``outcome``):

==========  ==============================================================================
action      outcomes
==========  ==============================================================================
flatten     ``started`` (first report of an activation), ``verified_flat`` (a complete read
            showed nothing, once per flatten), ``dust`` (once per activation),
            ``stalled`` (past the deadline, repeated), ``stopped`` (reset or shutdown)
enforce     ``exposure_found`` (exposure after ``verified_flat``: flattening again)
connect     ``failed``
read        ``failed``
cancel      ``ok``, ``failed``
close       ``sent``, ``failed``, ``already_reduced`` (reduce-only refused: the position is
            already smaller), ``duplicate_id`` (an earlier copy of this close reached the venue)
countdown   ``armed`` (first time, and after a failure), ``failed``, ``paused`` (ess.state lost)
==========  ==============================================================================

``detail`` is a compact JSON object (symbol, side, amount, client order id, error, timings),
cut at the record's 4096 characters if it must be.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from ess.clock import Clock
from ess.core.flatten import (
    CancelStep,
    CloseStep,
    FlattenPlan,
    MarketKind,
    SymbolPlan,
    VenueSnapshot,
    plan_flatten,
    quantity_text,
)
from ess.core.state import Activation
from ess.settings import ExecuteSettings
from ess.venues.ports import VenueError, VenueErrorKind, VenuePort
from schemas import ActionReport

if TYPE_CHECKING:
    from loguru import Logger

__all__ = [
    "Phase",
    "ReportSink",
    "VenueFlattener",
    "VenueProgress",
    "enforce_all",
    "keep_countdown",
]

#: Receives every step report. Must not block: the executor queues reports for ``ess.actions``
#: so that a slow broker never delays a cancel or a close.
ReportSink = Callable[[ActionReport], None]

_T = TypeVar("_T")

#: Venue error messages can be whole HTML pages; a report's ``detail`` holds at most 4096.
_ERROR_CHARS = 512
_DETAIL_CHARS = 4096


class Phase(StrEnum):
    """Where a venue stands in the current activation."""

    IDLE = "IDLE"
    FLATTENING = "FLATTENING"
    FLAT = "FLAT"
    STALLED = "STALLED"


@dataclass(frozen=True, slots=True)
class VenueProgress:
    """A venue's progress in its current (or last) activation, for the status view and metrics.

    ``cancels_sent`` and ``closes_sent`` count calls the venue accepted; ``flatten_seconds`` is
    the time from the start of the activation to its first verified-flat read.
    """

    venue: str
    account: str
    phase: Phase
    activation_seq: int | None
    rounds: int
    closes_sent: int
    cancels_sent: int
    last_error: str | None
    flatten_seconds: float | None


@dataclass(slots=True, eq=False)
class _Run:
    """The mutable state of one :meth:`VenueFlattener.enforce` call.

    Kept per call rather than on the flattener: the service may start the next activation
    before the previous call has returned, and the two must not share attempts or counters.
    A *flatten* starts with the activation and again whenever exposure reappears after a
    verified-flat read; the deadline and the ``verified_flat`` figures are per flatten.
    """

    activation: Activation
    started: float
    flatten_started: float
    stall_due: float | None
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    phase: Phase = Phase.FLATTENING
    rounds: int = 0
    flatten_rounds: int = 0
    closes_sent: int = 0
    cancels_sent: int = 0
    last_error: str | None = None
    flatten_seconds: float | None = None
    dust_reported: bool = False


class _Backoff:
    """Exponential delays from ``initial`` doubling to ``cap``; a caller may demand more."""

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self._next = initial

    def next(self, at_least: float = 0.0) -> float:
        delay = max(self._next, at_least)
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._initial


#: Failures no retry can fix (credentials, account set-up): reported as CRITICAL and
#: retried at the slowest pace until a human fixes them.
_FATAL_KINDS = frozenset({VenueErrorKind.AUTH, VenueErrorKind.UNSUPPORTED})


class VenueFlattener:
    """Flattens one venue account for each activation and keeps it flat until stopped.

    Long-lived (one per venue for the executor's lifetime): it opens the venue once, and
    :attr:`progress` describes the current or last activation. Run one :meth:`enforce` at a
    time per activation; :func:`enforce_all` runs every venue side by side.
    """

    def __init__(
        self,
        venue: VenuePort,
        settings: ExecuteSettings,
        *,
        clock: Clock,
        report: ReportSink,
        monotonic: Callable[[], float] = time.monotonic,
        on_auth_failure: Callable[[VenueError], None] | None = None,
    ) -> None:
        self._venue = venue
        self._settings = settings
        self._monotonic = monotonic
        self._on_auth_failure = on_auth_failure
        self._reporter = _Reporter(venue, clock, report)
        self._log = self._reporter.log
        self._opened = False
        self._run: _Run | None = None

    @property
    def progress(self) -> VenueProgress:
        run = self._run
        return VenueProgress(
            venue=self._venue.name,
            account=self._venue.account,
            phase=run.phase if run else Phase.IDLE,
            activation_seq=run.activation.seq if run else None,
            rounds=run.rounds if run else 0,
            closes_sent=run.closes_sent if run else 0,
            cancels_sent=run.cancels_sent if run else 0,
            last_error=run.last_error if run else None,
            flatten_seconds=run.flatten_seconds if run else None,
        )

    async def enforce(self, activation: Activation, stop: asyncio.Event) -> None:
        """Flatten the venue for ``activation``, then keep it flat until ``stop`` is set.

        Never raises for a venue problem (an executor that died would lose the activation):
        failures are reported, backed off and retried for as long as it takes. Only
        cancellation propagates. ``stop`` (reset or shutdown) ends it at once: waits are
        interrupted and calls still in flight abandoned.
        """
        now = self._monotonic()
        run = _Run(
            activation=activation,
            started=now,
            flatten_started=now,
            stall_due=now + self._settings.flatten_deadline_sec,
        )
        self._run = run
        self._emit(
            run,
            "flatten",
            "started",
            level="WARNING",
            reason=activation.reason.value,
            command_id=activation.command_id,
        )
        try:
            # The stall watchdog runs beside the loop so that "stalled" goes out on time even
            # while a venue call hangs for its whole timeout (or a ban holds the loop back).
            async with asyncio.TaskGroup() as group:
                group.create_task(self._report_stalls(run, stop))
                loop = group.create_task(self._keep_flat(run, stop))
                stopped = group.create_task(stop.wait())
                while True:
                    await asyncio.wait({loop, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if stop.is_set():
                        break
                    # The loop ended while ESS is ACTIVE (a cancellation that was not ours,
                    # a bug): enforcement must not lapse on this venue, so it starts again.
                    self._log.bind(activation_seq=run.activation.seq).critical(
                        "venue flatten loop ended while ACTIVE; restarting it"
                    )
                    await asyncio.wait({stopped}, timeout=self._settings.backoff_max_sec)
                    loop = group.create_task(self._keep_flat(run, stop))
                # Abandon a call still in flight (or queued for rate budget): a read cut short
                # is harmless, and a close cut short is a timeout, safe by reduce-only.
                loop.cancel()
            self._emit(run, "flatten", "stopped", rounds=run.rounds, flat=run.phase is Phase.FLAT)
        finally:
            run.phase = Phase.IDLE

    async def _keep_flat(self, run: _Run, stop: asyncio.Event) -> None:
        """The read-plan-act-verify loop; returns once ``stop`` is set."""
        backoff = _Backoff(self._settings.backoff_initial_sec, self._settings.backoff_max_sec)
        delay = 0.0
        # The snapshot the last round acted on, if every step of that round succeeded: reading
        # it back unchanged means the round achieved nothing (e.g. a market close expired
        # unfilled), and repeating it at once would hammer the venue.
        acted_on: VenueSnapshot | None = None
        while not await _stopped(stop, delay):
            delay = 0.0
            if not self._opened:
                error = await _guarded(self._venue.open(), self._log)
                if error is not None:
                    self._failure(run, "connect", error)
                    delay = backoff.next(self._floor(error))
                    continue
                self._opened = True
            snapshot = await _guarded(self._venue.snapshot(), self._log)
            if isinstance(snapshot, VenueError):
                self._failure(run, "read", snapshot)
                delay = backoff.next(self._floor(snapshot))
                continue
            if snapshot.flat:
                self._verified(run, snapshot)
                backoff.reset()
                acted_on = None
                delay = self._settings.enforce_interval_sec
                continue
            if run.phase is Phase.FLAT:
                self._exposure_found(run, snapshot)
            if snapshot == acted_on:
                acted_on = None
                delay = backoff.next()
                continue
            if acted_on is not None:
                backoff.reset()  # the last round changed something: progress
            plan = plan_flatten(
                snapshot,
                activation_id=run.activation.command_id,
                venue=self._venue.name,
                kind=self._venue.kind,
                attempts=run.attempts,
            )
            if plan.empty:
                # Not flat, yet no order can change it (a zero quantity, or a negative spot
                # balance, listed as a position): keep reading, and let "stalled" say why.
                run.last_error = f"exposure no order can remove: {_positions(snapshot)}"
                self._log.bind(positions=_positions(snapshot)).error(run.last_error)
                delay = backoff.next()
                continue
            if stop.is_set():
                return
            failures = await self._round(run, plan, stop)
            acted_on = None if failures else snapshot
            if failures:
                delay = backoff.next(max(self._floor(error) for error in failures))

    async def _round(self, run: _Run, plan: FlattenPlan, stop: asyncio.Event) -> list[VenueError]:
        """Execute ``plan``, every symbol concurrently; returns the steps' failures."""
        run.rounds += 1
        run.flatten_rounds += 1
        results = await asyncio.gather(*(self._symbol(run, item, stop) for item in plan.symbols))
        return [error for errors in results for error in errors]

    async def _symbol(self, run: _Run, plan: SymbolPlan, stop: asyncio.Event) -> list[VenueError]:
        """One symbol: its cancels (both books at once), then its close (in hedge mode the two
        sides' closes, side by side).

        The close waits for the cancels because a resting order can block it: on spot a
        resting sell locks the balance to sell; on futures a reduce-only order holds the
        quantity a close needs. After a failed cancel a spot sell waits for the next read (it
        would only be refused for the locked balance); a futures close goes ahead anyway: being
        reduce-only it cannot flip anything, and in an emergency an open position is worse
        than a refused order.
        """
        cancels = await asyncio.gather(*(self._cancel(run, step) for step in plan.cancels))
        failures = [error for error in cancels if error is not None]
        blocked = failures and self._venue.kind is MarketKind.SPOT
        if blocked or not plan.closes or stop.is_set():
            return failures
        closes = await asyncio.gather(*(self._close(run, step) for step in plan.closes))
        return [*failures, *(error for error in closes if error is not None)]

    async def _cancel(self, run: _Run, step: CancelStep) -> VenueError | None:
        error = await _guarded(self._venue.cancel_all(step), self._log)
        fields: dict[str, Any] = {"symbol": step.symbol, "conditional": step.conditional}
        if error is None:
            run.cancels_sent += 1
            self._emit(run, "cancel", "ok", **fields)
        else:
            self._failure(run, "cancel", error, **fields)
        return error

    async def _close(self, run: _Run, step: CloseStep) -> VenueError | None:
        """Send ``step``; returns the error only if the close failed.

        A refused reduce-only close means the position is already smaller or gone, and a
        duplicate id means an earlier copy reached the venue: neither is a failure, the next
        read tells what the venue holds. After a duplicate id, the same observation gets a
        fresh id (the earlier order must have expired, or the position would have changed).
        A timeout or a malformed answer may hide an executed close: the next read decides.
        If a stale read repeats the old position, the retry carries the identical id, which a
        venue that still knows it refuses; Binance only refuses ids of *open* orders, and
        there reduce-only (futures) or the remaining balance (spot) bounds the retry.
        """
        error = await _guarded(self._venue.close(step), self._log)
        fields: dict[str, Any] = {
            "symbol": step.symbol,
            "side": step.side,
            "amount": quantity_text(step.amount),
            "client_order_id": step.client_order_id,
            "reduce_only": step.reduce_only,
        }
        if step.position_side is not None:
            fields["position_side"] = step.position_side
        if error is None:
            run.closes_sent += 1
            self._emit(run, "close", "sent", **fields)
        elif error.kind is VenueErrorKind.REDUCE_ONLY_REJECTED:
            self._emit(run, "close", "already_reduced", **fields, error=_text(error))
        elif error.kind is VenueErrorKind.DUPLICATE_ID:
            key = (step.symbol, quantity_text(step.observed))
            run.attempts[key] = run.attempts.get(key, 0) + 1
            self._emit(
                run,
                "close",
                "duplicate_id",
                **fields,
                next_attempt=run.attempts[key],
                error=_text(error),
            )
        else:
            self._failure(run, "close", error, **fields)
            return error
        return None

    def _verified(self, run: _Run, snapshot: VenueSnapshot) -> None:
        """A complete read showed nothing: report it once per flatten, and dust once."""
        if run.phase is not Phase.FLAT:
            now = self._monotonic()
            elapsed = now - run.flatten_started
            if run.flatten_seconds is None:
                run.flatten_seconds = now - run.started
            run.phase = Phase.FLAT
            run.stall_due = None
            run.last_error = None
            self._emit(
                run,
                "flatten",
                "verified_flat",
                elapsed_ms=round(elapsed * 1000),
                rounds=run.flatten_rounds,
            )
        if snapshot.dust and not run.dust_reported:
            run.dust_reported = True
            self._emit(
                run, "flatten", "dust", level="WARNING", dust=_positions(snapshot, dust=True)
            )

    def _exposure_found(self, run: _Run, snapshot: VenueSnapshot) -> None:
        """Exposure after a verified-flat read: a new flatten, with its own deadline."""
        now = self._monotonic()
        run.phase = Phase.FLATTENING
        run.flatten_started = now
        run.flatten_rounds = 0
        run.stall_due = now + self._settings.flatten_deadline_sec
        self._emit(
            run,
            "enforce",
            "exposure_found",
            level="CRITICAL",
            positions=_positions(snapshot),
            orders=len(snapshot.orders),
        )

    async def _report_stalls(self, run: _Run, stop: asyncio.Event) -> None:
        """Report ``stalled`` when a flatten passes its deadline, then every interval.

        While flat (``stall_due`` is None) it sleeps one deadline: a flatten starting later
        is due no earlier than a deadline after it starts, so it is never checked late.
        """
        while True:
            due = run.stall_due
            wait = self._settings.flatten_deadline_sec if due is None else due - self._monotonic()
            if await _stopped(stop, wait):
                return
            now = self._monotonic()
            if run.stall_due is not None and now >= run.stall_due:
                run.phase = Phase.STALLED
                run.stall_due = now + self._settings.stalled_report_interval_sec
                self._emit(
                    run,
                    "flatten",
                    "stalled",
                    level="CRITICAL",
                    elapsed_ms=round((now - run.flatten_started) * 1000),
                    rounds=run.flatten_rounds,
                    last_error=run.last_error,
                )

    def _failure(self, run: _Run, action: str, error: VenueError, **fields: Any) -> None:
        """Report a failed step; bad credentials are critical (nothing works until fixed)."""
        run.last_error = f"{action}: {_text(error)}"
        level = "CRITICAL" if error.kind in _FATAL_KINDS else "WARNING"
        self._emit(run, action, "failed", level=level, **fields, error=_text(error))
        if error.kind is VenueErrorKind.AUTH and self._on_auth_failure is not None:
            self._on_auth_failure(error)

    def _floor(self, error: VenueError) -> float:
        """The shortest pause ``error`` allows before the next call to the venue."""
        if error.kind in _FATAL_KINDS:
            return self._settings.backoff_max_sec
        if error.kind in {VenueErrorKind.RATE_LIMITED, VenueErrorKind.BANNED}:
            if error.retry_after is not None:
                return error.retry_after
            # A ban without a stated length lasts minutes: retry at the slowest pace.
            return self._settings.backoff_max_sec if error.kind is VenueErrorKind.BANNED else 0.0
        return 0.0

    def _emit(
        self, run: _Run, action: str, outcome: str, *, level: str = "INFO", **fields: Any
    ) -> None:
        self._reporter(action, outcome, activation_seq=run.activation.seq, level=level, **fields)


async def keep_countdown(
    venue: VenuePort,
    symbols: Sequence[str],
    countdown_ms: int,
    stop: asyncio.Event,
    *,
    clock: Clock,
    report: ReportSink,
    healthy: Callable[[], bool] = lambda: True,
) -> None:
    """Keep the venue's own dead-man's switch armed for ``symbols`` until ``stop``.

    Re-arms every symbol concurrently every third of ``countdown_ms``, so two refreshes can
    fail before the venue cancels anything. Failures are reported and retried at the next
    tick; ``armed`` is reported the first time and after a failure, not on every refresh.
    Stopping does not disarm: if ESS dies, the venue must cancel the orders. Neither does an
    ESS that cannot see its state: while ``healthy()`` is false (the executor lost
    ``ess.state``) the switch is not re-armed, so the venue cancels the orders on its own
    (``paused`` is reported once). Needs an opened venue; does nothing if the venue has no
    such switch or no symbol is given.
    """
    if not venue.supports_countdown or not symbols:
        return
    reporter = _Reporter(venue, clock, report)
    # True until a symbol is armed, and again after it fails: the next success is news.
    unarmed = dict.fromkeys(symbols, True)
    interval = countdown_ms / 3000
    loop = asyncio.get_running_loop()

    async def arm(symbol: str) -> None:
        error = await _guarded(venue.arm_countdown(symbol, countdown_ms), reporter.log)
        fields: dict[str, Any] = {"symbol": symbol, "countdown_ms": countdown_ms}
        if error is not None:
            unarmed[symbol] = True
            reporter(
                "countdown",
                "failed",
                activation_seq=None,
                level="ERROR",
                **fields,
                error=_text(error),
            )
        elif unarmed[symbol]:
            unarmed[symbol] = False
            reporter("countdown", "armed", activation_seq=None, **fields)

    paused = False
    while not stop.is_set():
        started = loop.time()
        if healthy():
            paused = False
            await asyncio.gather(*(arm(symbol) for symbol in unarmed))
        elif not paused:
            paused = True
            unarmed.update(dict.fromkeys(unarmed, True))  # re-arming will be news again
            reporter(
                "countdown",
                "paused",
                activation_seq=None,
                level="CRITICAL",
                symbols=list(symbols),
                why="ess.state unreachable: letting the venue cancel",
            )
        if await _stopped(stop, interval - (loop.time() - started)):
            return


async def enforce_all(
    flatteners: Sequence[VenueFlattener], activation: Activation, stop: asyncio.Event
) -> None:
    """Enforce ``activation`` on every venue concurrently until ``stop``.

    Venues are independent: a slow or failing venue never delays another, and even a bug that
    ends one venue's loop leaves the others running (it is logged as critical).
    """
    results = await asyncio.gather(
        *(flattener.enforce(activation, stop) for flattener in flatteners),
        return_exceptions=True,
    )
    for flattener, result in zip(flatteners, results, strict=True):
        if isinstance(result, Exception):
            logger.opt(exception=result).bind(
                venue=flattener.progress.venue, activation_seq=activation.seq
            ).critical("venue flatten ended by an unexpected error")


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``stop``; whether it is set."""
    if seconds > 0 and not stop.is_set():
        try:
            async with asyncio.timeout(seconds):
                await stop.wait()
        except TimeoutError:
            return False
    return stop.is_set()


async def _guarded(call: Awaitable[_T], log: Logger) -> _T | VenueError:
    """The call's result, or the error it raised as a :class:`VenueError`.

    Adapters must translate every failure; one that did not is a bug, but the flatten has to
    survive it. Nothing can be concluded from such a call, exactly as for MALFORMED.
    """
    try:
        return await call
    except VenueError as exc:
        return exc
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this flatten is being stopped
        # Not ours: a request shared with another caller (ccxt loads markets once for every
        # concurrent caller) was cancelled with *that* caller. A failed call, not the end.
        log.warning("venue call cancelled by another caller of a shared request; retrying")
        return VenueError(VenueErrorKind.UNAVAILABLE, "call cancelled by another caller")
    except Exception as exc:
        log.opt(exception=exc).error("venue adapter raised an untranslated error")
        return VenueError(VenueErrorKind.MALFORMED, f"untranslated {type(exc).__name__}: {exc}")


class _Reporter:
    """Logs each step and hands its report to the sink, for one venue account."""

    def __init__(self, venue: VenuePort, clock: Clock, sink: ReportSink) -> None:
        self._venue = venue
        self._clock = clock
        self._sink = sink
        self.log = logger.bind(venue=venue.name, account=venue.account)

    def __call__(
        self,
        action: str,
        outcome: str,
        *,
        activation_seq: int | None,
        level: str = "INFO",
        **fields: Any,
    ) -> None:
        """A failing sink (a full queue, an invalid value) is logged and swallowed: losing a
        report is bad, a flatten stopped by it is worse. The log line carries the same
        fields, so the step is never lost entirely."""
        self.log.bind(action=action, outcome=outcome, activation_seq=activation_seq, **fields).log(
            level, f"{action} {outcome}"
        )
        try:
            self._sink(
                ActionReport(
                    ts=self._clock.now(),
                    venue=self._venue.name,
                    account=self._venue.account,
                    action=action,
                    outcome=outcome,
                    # Cut rather than lose the report (hundreds of symbols of exposure).
                    detail=json.dumps(fields, separators=(",", ":"), default=str)[:_DETAIL_CHARS],
                    activation_seq=activation_seq,
                )
            )
        except Exception:
            self.log.bind(action=action, outcome=outcome).opt(exception=True).error(
                "action report could not be queued"
            )


def _positions(snapshot: VenueSnapshot, *, dust: bool = False) -> dict[str, str]:
    """``{symbol: quantity}`` of the snapshot's positions and stranded exposure (or its
    dust), for reports; a hedge-mode position is named with its side (``BTCUSDT long``)."""
    views = snapshot.dust if dust else (*snapshot.positions, *snapshot.stranded)
    return {view.label: quantity_text(view.quantity) for view in views}


def _text(error: VenueError) -> str:
    return str(error)[:_ERROR_CHARS]

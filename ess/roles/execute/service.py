"""The executor role: follow ``ess.state``, flatten every venue while ESS is ACTIVE, report
every step to ``ess.actions``, and keep the venues' dead-man's switches armed.

How the pieces fit:

* **State.** The executor reads ``ess.state`` to its end and folds it before acting, then
  follows it. It acts only on the folded state, never on a single entry: replaying an old
  ``activated`` that a later ``reset`` cancelled must not flatten a live account.
* **Activation.** A new activation (a ``seq`` it has not enforced yet) starts one
  :class:`~ess.roles.execute.engine.VenueFlattener` run per venue, all in parallel. Further trips
  while ACTIVE change nothing (the venues are already being kept flat). A reset stops them.
* **Restart.** Nothing about a flatten's progress needs storing: the plan is recomputed from
  fresh venue reads, and client order ids derive from the activation and what was read, so a
  restarted executor resumes a half-done flatten exactly where the venue says it stands.
  ``ess.actions`` records each step only after the venue answered (``verified_flat`` only
  after a complete read showed nothing).
* **Reports** go through an in-memory queue to ``ess.actions``: a slow or absent broker never
  delays a cancel or a close. The queue is bounded; overflow drops the oldest report and
  counts it (``ess_executor_reports_dropped_total``), the log line of every step stays.
* **Verified log.** ``ess.state`` is read with the verifying reader every reader uses
  (:class:`ess.statelog.StateLogReader`). A record that does not verify is never applied;
  while one awaits the command processor's acknowledgement (an ``unauthorized_access``
  trip) the executor keeps enforcing if it was and ends nothing. A log that cannot be folded
  (a ``seq`` gap, a reset whose authorization does not verify) makes the executor keep doing
  what it was doing (an ACTIVE executor keeps enforcing), start nothing new, and report
  unhealthy on ``/healthz`` until restarted on a repaired log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from ess.clock import Clock, SystemClock
from ess.core import Activation, EssState
from ess.core.ids import derive_id
from ess.core.reader import LogBroken, Trust
from ess.kafka.clients import KafkaSecurity, producer
from ess.observability.status import serve_status
from ess.roles.execute.engine import (
    Phase,
    VenueFlattener,
    VenueProgress,
    enforce_all,
    keep_countdown,
)
from ess.roles.execute.metrics import ExecutorMetrics
from ess.settings import ExecuteSettings
from ess.statelog import KafkaStateLog, StateLog, StateLogReader
from ess.venues.config import (
    VenueConfig,
    VenueConfigError,
    VenueCredentials,
    build_budgets,
    make_venue,
)
from ess.venues.ports import VenueError, VenueErrorKind, VenuePort
from schemas import (
    IDENT_MAX,
    ActionReport,
    SecurityEvent,
    SecurityEventKind,
    TopicRegistry,
    clip,
    encode,
)

__all__ = ["Countdown", "Executor", "ExecutorMetrics", "ExecutorStatus", "run_executor"]

#: Reports kept while ``ess.actions`` is unreachable (each is a few hundred bytes).
_QUEUE_LIMIT = 100_000
_RETRY_S = 1.0
#: How long a stopping executor waits for its last reports to reach ess.actions.
_DRAIN_S = 2.0


@dataclass(frozen=True, slots=True)
class Countdown:
    """The dead-man's switch of one venue: these symbols, this countdown."""

    symbols: tuple[str, ...]
    countdown_ms: int


@dataclass(frozen=True, slots=True)
class ExecutorStatus:
    """What ``GET /status`` of the executor serves."""

    status: str
    activation_seq: int | None
    reason: str | None
    caught_up: bool
    log_trusted: bool
    venues: tuple[VenueProgress, ...]
    reports_pending: int
    reports_dropped: int
    checks: Mapping[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Following a trusted log; a stalled venue is reported in ``checks`` but does not make
        the executor "unhealthy": restarting it would not help the venue."""
        return self.caught_up and self.log_trusted

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "activation_seq": self.activation_seq,
            "reason": self.reason,
            "caught_up": self.caught_up,
            "log_trusted": self.log_trusted,
            "healthy": self.healthy,
            "checks": dict(self.checks),
            "reports_pending": self.reports_pending,
            "reports_dropped": self.reports_dropped,
            "venues": [
                {
                    "venue": p.venue,
                    "account": p.account,
                    "phase": p.phase.value,
                    "activation_seq": p.activation_seq,
                    "rounds": p.rounds,
                    "cancels_sent": p.cancels_sent,
                    "closes_sent": p.closes_sent,
                    "flatten_seconds": p.flatten_seconds,
                    "last_error": p.last_error,
                }
                for p in self.venues
            ],
        }


@dataclass(slots=True)
class _Enforcement:
    activation: Activation
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One record for the publisher: topic, key and encoded value."""

    topic: str
    key: bytes
    value: bytes


class Executor:
    """Runs the executor role against ``bootstrap`` until :meth:`run`'s ``stop`` is set.

    It follows ``ess.state`` through the :class:`~ess.statelog.StateLog` port (``state_log``,
    by default the Kafka topic), so its following can be exercised on an in-memory log."""

    def __init__(
        self,
        bootstrap: str,
        topics: TopicRegistry,
        venues: Sequence[VenuePort],
        settings: ExecuteSettings,
        *,
        trust: Trust,
        countdowns: Mapping[str, Countdown] | None = None,
        clock: Clock | None = None,
        metrics: ExecutorMetrics | None = None,
        security: KafkaSecurity | None = None,
        state_log: StateLog | None = None,
    ) -> None:
        names = [venue.name for venue in venues]
        if len(set(names)) != len(names):
            raise ValueError(f"venue names must be unique: {names}")
        self.bootstrap = bootstrap
        self.security = security
        self.topics = topics
        #: ``ess.state`` (the Kafka topic unless a test hands in another adapter).
        self.state_log: StateLog = state_log or KafkaStateLog(
            bootstrap, topics.state.name, security=security
        )
        self.venues = tuple(venues)
        self.settings = settings
        self.countdowns = dict(countdowns or {})
        self.clock = clock or SystemClock()
        self.metrics = metrics or ExecutorMetrics()
        self.flatteners = tuple(
            VenueFlattener(
                venue,
                settings,
                clock=self.clock,
                report=self.report,
                on_auth_failure=self._credentials_refused(venue),
            )
            for venue in self.venues
        )
        self._reader = StateLogReader(trust, name="executor")
        self._caught_up = False
        self._log_fault: str | None = None
        self._enforcement: _Enforcement | None = None
        #: Records waiting for the publisher: action reports and security events.
        self._outbox: deque[_Outgoing] = deque()
        #: When each venue's refused credentials were last reported (monotonic).
        self._auth_reported: dict[str, float] = {}
        self._outbox_ready = asyncio.Event()
        self._outbox_drained = asyncio.Event()
        self._outbox_drained.set()
        self._dropped = 0
        self._background: set[asyncio.Task[None]] = set()
        self._last_contact: float | None = None
        self._contact = asyncio.Event()  # set at the first answer from ess.state
        self.metrics.progress = self._progress

    def _progress(self) -> tuple[VenueProgress, ...]:
        return tuple(flattener.progress for flattener in self.flatteners)

    def _touch(self) -> None:
        self._last_contact = time.monotonic()
        self._contact.set()

    def log_reachable(self) -> bool:
        """Whether ``ess.state`` answered within ``settings.log_timeout_sec``. While it does
        not, the executor cannot know whether ESS was tripped, so it stops re-arming the
        venues' dead-man's switches and lets the venues cancel (fail closed)."""
        return (
            self._last_contact is not None
            and time.monotonic() - self._last_contact <= self.settings.log_timeout_sec
        )

    # ------------------------------------------------------------------ observation

    @property
    def state(self) -> EssState:
        return self._reader.folded.state

    def status(self) -> ExecutorStatus:
        progress = self._progress()
        state = self.state
        checks = {
            "log": "broken: " + self._log_fault if self._log_fault else "ok",
            "caught_up": "yes" if self._caught_up else "no",
        }
        if not self._reader.trusted:
            checks["log"] = "untrusted: a foreign record awaits the processor's acknowledgement"
        for item in progress:
            checks[f"venue:{item.venue}"] = item.phase.value + (
                f" ({item.last_error})" if item.last_error and item.phase is not Phase.FLAT else ""
            )
        for name, switch in self.dead_mans_switches().items():
            checks[f"dead_mans_switch:{name}"] = switch
        return ExecutorStatus(
            status=state.status.value,
            activation_seq=state.activation.seq if state.activation else None,
            reason=state.activation.reason.value if state.activation else None,
            caught_up=self._caught_up,
            log_trusted=self._log_fault is None,
            venues=progress,
            reports_pending=len(self._outbox),
            reports_dropped=self._dropped,
            checks=checks,
        )

    def dead_mans_switches(self) -> dict[str, str]:
        """For each venue, whether the venue itself will cancel its orders if ESS dies: its
        native dead-man's switch kept armed (while the log is seen), one available but not
        configured, or none at all. Those without one rely on ESS staying alive."""
        switches: dict[str, str] = {}
        for venue in self.venues:
            countdown = self.countdowns.get(venue.name)
            if not venue.supports_countdown:
                switches[venue.name] = "none: the venue has no native dead-man's switch ESS can use"
            elif countdown is None or not countdown.symbols:
                switches[venue.name] = "available, not configured (set countdown_symbols)"
            else:
                switches[venue.name] = (
                    f"kept armed: {len(countdown.symbols)} symbol(s), {countdown.countdown_ms} ms"
                )
        return switches

    def report(self, report: ActionReport) -> None:
        """Queue ``report`` for ``ess.actions`` (never blocks; drops the oldest on overflow)."""
        self.metrics.observe(report)
        key = f"{report.venue}/{report.account}".encode()
        self._queue(_Outgoing(self.topics.actions.name, key, encode(report)))

    def _queue(self, item: _Outgoing) -> None:
        if len(self._outbox) >= _QUEUE_LIMIT:
            self._outbox.popleft()
            self._dropped += 1
            self.metrics.reports_dropped.inc()
        self._outbox.append(item)
        self._outbox_drained.clear()
        self._outbox_ready.set()

    def _credentials_refused(self, venue: VenuePort) -> Callable[[VenueError], None]:
        """What to do when ``venue`` refuses the credentials: an ``api_key_invalid`` security
        event on ``ess.security`` (detection trips ESS at once), at most once per probe
        interval per venue so that a flatten retrying against a dead key does not flood."""

        def refused(error: VenueError) -> None:
            now = time.monotonic()
            last = self._auth_reported.get(venue.name)
            if last is not None and now - last < self.settings.credential_probe_interval_sec:
                return
            self._auth_reported[venue.name] = now
            self.metrics.credentials_refused.labels(venue.name).inc()
            at = self.clock.now()
            event = SecurityEvent(
                event_id=derive_id("executor-auth", venue.name, venue.account, at.isoformat()),
                kind=SecurityEventKind.API_KEY_INVALID,
                source=clip(f"ess-executor:{venue.name}", IDENT_MAX),
                detail=clip(
                    f"venue {venue.name} (account {venue.account}) refused the executor's "
                    f"credentials: {error}; ESS cannot flatten it until they are fixed"
                ),
                ts=at,
            )
            logger.bind(venue=venue.name, error=str(error)).critical(
                "venue refused the executor's credentials; reporting api_key_invalid"
            )
            # Keyed by the record's key field, as every input record must be (docs/contract.md).
            self._queue(_Outgoing(self.topics.security.name, event.source.encode(), encode(event)))

        return refused

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log, enforce activations and arm countdowns until ``stop``."""
        logger.bind(
            venues=[venue.name for venue in self.venues], topic=self.topics.state.name
        ).info("executor starting")
        for name, switch in self.dead_mans_switches().items():
            if not switch.startswith("kept armed"):
                logger.bind(venue=name, dead_mans_switch=switch).warning(
                    "no dead-man's switch on this venue: its orders stay if ESS dies"
                )
        tasks = [
            asyncio.create_task(self._follow(stop), name="ess-executor-follow"),
            asyncio.create_task(self._publish(stop), name="ess-executor-publish"),
            asyncio.create_task(self._watchdog(stop), name="ess-executor-watchdog"),
        ]
        tasks += [
            asyncio.create_task(self._prepare(venue, stop), name=f"ess-venue-{venue.name}")
            for venue in self.venues
        ]
        tasks += [
            asyncio.create_task(self._probe(venue, stop), name=f"ess-probe-{venue.name}")
            for venue in self.venues
        ]
        try:
            await stop.wait()
        finally:
            await self._stop_enforcement("shutdown")
            await self._drain_outbox()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)
            for venue in self.venues:
                await venue.aclose()
            logger.bind(reports_unsent=len(self._outbox)).info("executor stopped")

    async def _drain_outbox(self) -> None:
        """Give the publisher a moment to send the last reports (``stopped``) on shutdown."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_S):
                await self._outbox_drained.wait()

    async def _follow(self, stop: asyncio.Event) -> None:
        """Catch up on ``ess.state``, then follow it; reconnect after any failure."""
        state_log = self.state_log
        while not stop.is_set():
            try:
                if not self._caught_up:
                    self._reader.feed(await state_log.read(self._reader.folded.next_offset))
                    self._touch()
                    self._caught_up = True
                    logger.bind(
                        status=self.state.status.value,
                        next_offset=self._reader.folded.next_offset,
                        trusted=self._reader.trusted,
                    ).info("executor caught up with ess.state")
                    self._apply()
                async for records in state_log.follow(
                    self._reader.folded.next_offset, on_fetch=self._touch
                ):
                    self._reader.feed(records)
                    self._apply()
            except LogBroken as exc:
                self._log_fault = str(exc)
                logger.bind(error=str(exc)).critical(
                    "ess.state cannot be folded; the executor keeps its current enforcement "
                    "and starts nothing new until restarted on a repaired log"
                )
                return
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "executor lost ess.state; reconnecting"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RETRY_S)

    def _apply(self) -> None:
        """Start or stop enforcement to match the folded state.

        The enforcement a reset ends is taken out of ``_enforcement`` *now*; stopping it may
        finish later, but it can then never stop an enforcement started after it (a reset
        and the next activation in one fetch). While the log holds an unacknowledged foreign
        record nothing is ended: enforcement lapses only on a trusted reset."""
        state = self.state
        current = self._enforcement
        if state.active and state.activation is not None:
            if current is None or current.activation.seq != state.activation.seq:
                self._start_enforcement(state.activation)
        elif current is not None and self._reader.trusted:
            self._enforcement = None
            task = asyncio.get_running_loop().create_task(self._end(current, "reset"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def enforcement_broken(self) -> bool:
        """Whether the invariant is broken: the folded state is ACTIVE but no enforcement of
        its activation is running (none, another activation's, or one that ended)."""
        state = self.state
        if not state.active or state.activation is None:
            return False
        current = self._enforcement
        return (
            current is None or current.activation.seq != state.activation.seq or current.task.done()
        )

    def check_enforcement(self) -> bool:
        """Restart enforcement when :meth:`enforcement_broken`; ``True`` when it did."""
        if not self.enforcement_broken():
            return False
        activation = self.state.activation
        assert activation is not None
        self.metrics.enforcement_restarts.inc()
        logger.bind(seq=activation.seq).critical(
            "executor watchdog: ESS is ACTIVE but its activation was not being enforced; "
            "restarting enforcement"
        )
        self._start_enforcement(activation)
        return True

    async def _watchdog(self, stop: asyncio.Event) -> None:
        """Every ``watchdog_interval_sec``: :meth:`check_enforcement` (belt and braces)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.watchdog_interval_sec)
            if not stop.is_set() and self._caught_up:
                self.check_enforcement()

    def _start_enforcement(self, activation: Activation) -> None:
        previous = self._enforcement
        if previous is not None:
            previous.stop.set()
        logger.bind(
            seq=activation.seq, reason=activation.reason.value, venues=len(self.venues)
        ).critical("executor: emergency stop ACTIVE, flattening every venue")
        stop = asyncio.Event()
        task = asyncio.create_task(
            enforce_all(self.flatteners, activation, stop), name=f"ess-enforce-{activation.seq}"
        )
        self._enforcement = _Enforcement(activation, stop, task)

    async def _stop_enforcement(self, why: str) -> None:
        current, self._enforcement = self._enforcement, None
        if current is not None:
            await self._end(current, why)

    @staticmethod
    async def _end(enforcement: _Enforcement, why: str) -> None:
        enforcement.stop.set()
        await asyncio.gather(enforcement.task, return_exceptions=True)
        logger.bind(seq=enforcement.activation.seq, why=why).warning("executor enforcement ended")

    async def _prepare(self, venue: VenuePort, stop: asyncio.Event) -> None:
        """Open ``venue`` now (client, markets), so that an activation does not pay for it,
        then keep its dead-man's switch armed if it has one configured."""
        while not stop.is_set():
            try:
                await venue.open()
                break
            except Exception as exc:
                logger.bind(venue=venue.name, error=str(exc)).error(
                    "cannot open venue; retrying (a flatten would retry too)"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RETRY_S)
        countdown = self.countdowns.get(venue.name)
        if countdown is None or not countdown.symbols or not venue.supports_countdown:
            return
        # Armed only by an executor that sees the log ("healthy"): wait for the first answer.
        waiters = {asyncio.create_task(self._contact.wait()), asyncio.create_task(stop.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if stop.is_set():
            return
        await keep_countdown(
            venue,
            countdown.symbols,
            countdown.countdown_ms,
            stop,
            clock=self.clock,
            report=self.report,
            healthy=self.log_reachable,
        )

    async def unsupported_venues(self) -> dict[str, str]:
        """Venues whose account ESS could never flatten (hedge mode on an exchange whose
        position sides ESS cannot name), by name, from one read
        of each at start (bounded by ``start_check_timeout_sec``). A venue that cannot be read
        now is not held against the start: the flatten and the probes report it later."""

        async def check(venue: VenuePort) -> str | None:
            try:
                async with asyncio.timeout(self.settings.start_check_timeout_sec):
                    await venue.open()
                    await venue.snapshot()
            except VenueError as exc:
                if exc.kind is VenueErrorKind.UNSUPPORTED:
                    return str(exc)
                logger.bind(venue=venue.name, error=str(exc)).warning(
                    "start check: venue not readable now; the flatten and probes will retry"
                )
            except Exception as exc:
                logger.bind(venue=venue.name, error=f"{type(exc).__name__}: {exc}").warning(
                    "start check: venue not readable now; the flatten and probes will retry"
                )
            return None

        found = await asyncio.gather(*(check(venue) for venue in self.venues))
        return {venue.name: why for venue, why in zip(self.venues, found, strict=True) if why}

    async def _probe(self, venue: VenuePort, stop: asyncio.Event) -> None:
        """While INACTIVE, read ``venue`` with its credentials every
        ``credential_probe_interval_sec``: refused credentials are reported now, not found out
        in an emergency. (While ACTIVE the flatten itself reports them.)"""
        refused = self._credentials_refused(venue)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.credential_probe_interval_sec)
            if stop.is_set() or self._enforcement is not None or not self._caught_up:
                continue
            await self.probe_once(venue, refused)

    async def probe_once(
        self, venue: VenuePort, refused: Callable[[VenueError], None] | None = None
    ) -> bool:
        """One credential probe of ``venue``; ``False`` when it refused the credentials."""
        try:
            await venue.snapshot()
        except VenueError as exc:
            if exc.kind is VenueErrorKind.AUTH:
                (refused or self._credentials_refused(venue))(exc)
                return False
            logger.bind(venue=venue.name, error=str(exc)).warning("credential probe failed")
        except Exception as exc:
            logger.bind(venue=venue.name, error=f"{type(exc).__name__}: {exc}").warning(
                "credential probe failed"
            )
        return True

    async def _publish(self, stop: asyncio.Event) -> None:
        """Drain the queue into ``ess.actions`` / ``ess.security``, reconnecting as needed."""
        while True:  # cancelled by run() once the queue is drained (or the drain timed out)
            sender = producer(self.bootstrap, security=self.security)
            try:
                await sender.start()
                while True:
                    if not self._outbox:
                        self._outbox_drained.set()
                        self._outbox_ready.clear()
                        await self._outbox_ready.wait()
                        continue
                    item = self._outbox[0]
                    await sender.send_and_wait(item.topic, item.value, key=item.key)
                    if self._outbox and self._outbox[0] is item:
                        self._outbox.popleft()
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "cannot publish to ess.actions / ess.security; retrying"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await sender.stop()


async def run_executor(
    topics: TopicRegistry,
    bootstrap: str,
    venues: Sequence[tuple[VenueConfig, VenueCredentials]],
    settings: ExecuteSettings,
    stop: asyncio.Event,
    *,
    trust: Trust,
    status_host: str = "127.0.0.1",
    clock: Clock | None = None,
    security: KafkaSecurity | None = None,
) -> None:
    """Entry point of ``ess worker --role execute``: an :class:`Executor` over ccxt venues
    built from ``venues`` (see :func:`ess.venues.config.load_venues`), with its status
    server on ``settings.status_port`` (``-1``: none), until ``stop``."""
    if not venues:
        logger.critical(
            "executor has no venues configured: ESS will stop trading through the gates but "
            "will not cancel or flatten anything on any exchange"
        )
    # One budget per venue; venues of one budget_group share one weight budget (per IP).
    budgets = build_budgets([config for config, _ in venues])
    executor = Executor(
        bootstrap,
        topics,
        [
            make_venue(config, credentials, budget=budgets[config.name])
            for config, credentials in venues
        ],
        settings,
        trust=trust,
        countdowns={
            config.name: Countdown(config.countdown_symbols, config.countdown_ms)
            for config, _ in venues
            if config.countdown_symbols
        },
        clock=clock,
        security=security,
    )
    unsupported = await executor.unsupported_venues()
    if unsupported:
        raise VenueConfigError(
            "the executor refuses to start: "
            + "; ".join(f"venue {name}: {why}" for name, why in unsupported.items())
        )
    server = None
    if settings.status_port >= 0:
        server = await serve_status(
            executor, executor.metrics.registry, status_host, settings.status_port
        )
    try:
        await executor.run(stop)
    finally:
        if server is not None:
            await server.stop()

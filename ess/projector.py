"""The projector (role ``project``): follows ``ess.state`` into everything derived from it.

Outputs, all projections of the one log:

* the PolicyStore record ``emergency_stop`` every trading gate reads, written after catching
  up, after each new entry, and re-asserted every ``refresh_interval`` with a fresh
  ``refreshed_at`` so gates can tell a live projector from a dead one;
* ``emergency.stop`` / ``emergency.reset`` events on ``ess.events``;
* ESS's own health beat on the health topic;
* the status snapshot and Prometheus metrics (served by :mod:`ess.status`).

How it reads the log. One consumer, assigned manually (no group: one partition, nothing to
balance, and a group join costs seconds on Tansu) to ``ess.state`` partition 0 from offset 0,
then fetching forever. Entries are folded with :func:`ess.statelog.fold_log` semantics: a
duplicated ``seq`` is skipped (first writer wins), a gap or an undecodable record is a
*fault*. "Caught up" means a fetch came back empty with the position at both the fetched high
watermark and the listed end offset: the same rule as :func:`ess.kafka.read_to_end`, right on
real Kafka and on Tansu (whose listed end offset can be short).

Fail-closed choice on a log it cannot trust (gap or corrupt record). The projector does *not*
overwrite the record with a synthetic ACTIVE one (``reason=policy_store_stale``): that would
be a state change no log entry says happened, and the reason code belongs to detection. It
keeps the last good record but **stops refreshing it**, logs CRITICAL, reports CRITICAL
health and ``healthy: false``, and exports ``ess_state_log_trusted 0``. Gates judge staleness
by ``refreshed_at`` and go stale-closed on their own; the executor follows the log itself.
One refinement: if the trusted prefix of the log says ACTIVE and this run has not written
that record yet (the fault came in the same fetch, or during catch-up), it is written once,
because stopping is always safe, and then never refreshed. An INACTIVE prefix is never
written after a fault. A fault is
permanent for the life of the projector: an append-only log does not heal, so someone must
repair it and restart the projector. The same "stop refreshing" rule applies while the
broker has not answered a fetch for ``log_timeout`` seconds: a projector that cannot see the
log cannot vouch for the record.

A second guard: the projector never moves the record backwards. Before each write it reads
the current record and refuses to write when the stored ``seq`` is ahead of its own (for
example a projector pointed at a wrong or recreated, empty topic, which would otherwise
re-enable trading). The refusal counts as a write error and is retried every interval.

Events are idempotent across restarts: on start the projector reads ``ess.events`` to its
end, learns the highest ``seq`` already published and never publishes an event with a
``seq`` at or below it, so replaying the log rewrites the same record and publishes nothing
old as new. An entry older than the events topic's retention is not published either: its
event would have expired by now, and an empty (expired) events topic must not make every
historical trip look new. Across *failures* delivery is at-least-once (a send that timed out
may still have reached the broker and is retried); events carry ``seq`` so consumers can
deduplicate. The PolicyStore writer and the event publisher are independent tasks, so a dead
PolicyStore never holds back ``emergency.stop`` and a dead broker never stops the record from
being re-asserted (within ``log_timeout``).

Metrics counters are derived from the folded log, so the replay on every start does not
double count (see :mod:`ess.metrics`). ESS's health beat is CRITICAL while ESS is ACTIVE:
detection must ignore ESS's own beats for ``system_critical`` (see :func:`health_beat`).

Run one projector per deployment. Two would both publish events (deduplicated by ``seq``
downstream) and race on the record (the backwards guard narrows that race, it cannot close
it: the PolicyStore protocol has no compare-and-set).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from loguru import logger

from ess.api.protocols import EMERGENCY_STOP_KEY, PolicyStore
from ess.clock import Clock, SystemClock
from ess.config import EssSettings
from ess.core import EssState, SequenceError, derive_id
from ess.core.projection import NEVER, event_for, policy_record
from ess.kafka import KafkaSecurity, UnknownTopicError, consumer, producer, read_to_end
from ess.metrics import LogTally, ProjectorMetrics
from ess.statelog import Folded, KafkaStateLog, fold_log
from ess.status import ProjectorStatus, serve_status
from schemas import (
    ActivatedEntry,
    EmergencyEvent,
    EmergencyResetEvent,
    EmergencyStopEvent,
    HealthBeat,
    HealthStatus,
    PolicyRecord,
    RecordError,
    ResetEntry,
    StateEntry,
    TopicRegistry,
    decode,
    encode,
)

__all__ = [
    "NEVER",
    "LogCondition",
    "Projector",
    "assess_health",
    "event_for",
    "health_beat",
    "policy_record",
    "run_projector",
    "should_publish",
    "store_is_ahead",
]

#: Kafka key of every ``ess.events`` record (one partition; the key documents intent).
EVENTS_KEY: Final = b"ess"

#: How long one fetch of the follower waits before it re-checks ``stop`` and catch-up.
_POLL_MS: Final = 100


# =========================================================================== pure functions


def should_publish(
    entry: StateEntry,
    *,
    published_seq: int | None,
    now: datetime,
    horizon: timedelta | None,
) -> bool:
    """Whether ``entry``'s event (if any) is new: its ``seq`` is above the highest already on
    ``ess.events`` and it is younger than ``horizon`` (the events topic's retention;
    ``None`` = infinite)."""
    if published_seq is not None and entry.seq <= published_seq:
        return False
    return horizon is None or entry.ts >= now - horizon


def store_is_ahead(current: Mapping[str, Any] | None, record: PolicyRecord) -> bool:
    """True when the stored record has a ``seq`` beyond ``record``'s: writing would move the
    record backwards. A missing or unreadable stored ``seq`` is never "ahead"."""
    if current is None:
        return False
    stored = current.get("seq")
    if not isinstance(stored, int) or isinstance(stored, bool):
        return False
    return record.seq is None or stored > record.seq


class LogCondition(StrEnum):
    """How far the projector can vouch for what it read from ``ess.state``."""

    STARTING = "starting"  # clients not connected yet
    CATCHING_UP = "catching_up"  # replaying the log; the state is partial
    OK = "ok"
    CORRUPT = "corrupt"  # a gap or undecodable record: fault, permanent
    UNREACHABLE = "unreachable"  # no fetch answered for log_timeout seconds


def assess_health(
    state: EssState, log: LogCondition, *, policy_store_ok: bool
) -> tuple[HealthStatus, dict[str, str]]:
    """ESS's health status and checks for its beat.

    CRITICAL while ESS is ACTIVE (trading is stopped) and whenever the projector cannot vouch
    for the log (corrupt or unreachable); DEGRADED while starting, catching up or when the
    PolicyStore record is not being kept fresh; HEALTHY otherwise.

    While the log is not yet read (starting, catching up) ``state`` is ``UNKNOWN`` rather than
    the partial fold, and the ``policy_store`` check is left out rather than reported
    ``stale``: nothing has been written *yet*, which is not a stale store, and a detector
    that trips ``policy_store_stale`` on that check would otherwise stop trading on every
    projector restart.
    """
    known = log in {LogCondition.OK, LogCondition.CORRUPT, LogCondition.UNREACHABLE}
    checks = {"state": state.status.value if known else "UNKNOWN", "state_log": log.value}
    if known:
        checks["policy_store"] = "ok" if policy_store_ok else "stale"
    if (known and state.active) or log in {LogCondition.CORRUPT, LogCondition.UNREACHABLE}:
        return HealthStatus.CRITICAL, checks
    if log is not LogCondition.OK or not policy_store_ok:
        return HealthStatus.DEGRADED, checks
    return HealthStatus.HEALTHY, checks


def health_beat(
    *,
    component: str,
    status: HealthStatus,
    checks: Mapping[str, str],
    run_id: str,
    beat_no: int,
    now: datetime,
) -> HealthBeat:
    """ESS's own :class:`HealthBeat`.

    ``event_id`` is ``derive_id("health", component, run_id, beat_no)``: deterministic from
    its inputs, and unique across restarts because ``run_id`` is the run's start time (a
    bare beat counter would restart at 0 and repeat ids a deduplicating reader would drop).

    Detection must ignore beats from ESS's own component for ``system_critical``: ESS beats
    CRITICAL *because* it is ACTIVE, and counting that as a critical system would append a
    ``trip_recorded`` entry every beat for as long as ESS stays stopped. Heartbeat-loss rules
    may and should watch these beats.
    """
    return HealthBeat(
        event_id=derive_id("health", component, run_id, beat_no),
        component=component,
        status=status,
        checks=dict(checks),
        ts=now,
    )


# =========================================================================== the projector


@dataclass(slots=True)
class _Clients:
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    listed_end: int


async def _wait_any(seconds: float | None, *events: asyncio.Event) -> None:
    """Return when any of ``events`` is set or after ``seconds`` (``None``: no limit)."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Projector:
    """Follow ``ess.state`` into the PolicyStore record, ``ess.events``, ESS's health beat,
    a status snapshot and metrics. See the module docstring for the fail-closed rules.

    ``registry`` is the *topic* registry; Prometheus metrics go to ``metrics`` (a
    :class:`ProjectorMetrics` with a fresh ``CollectorRegistry`` when omitted). ``io_timeout``
    bounds every PolicyStore call and every send, so a hung dependency delays one output, not
    the others. :meth:`run` never raises for I/O failures: it logs, counts and retries.
    """

    def __init__(
        self,
        bootstrap: str,
        registry: TopicRegistry,
        policy_store: PolicyStore,
        *,
        clock: Clock | None = None,
        refresh_interval: float = 1.0,
        health_interval: float = 1.0,
        component: str = "ess",
        metrics: ProjectorMetrics | None = None,
        io_timeout: float = 5.0,
        log_timeout: float = 10.0,
        security: KafkaSecurity | None = None,
    ) -> None:
        if refresh_interval <= 0 or health_interval <= 0 or io_timeout <= 0 or log_timeout <= 0:
            raise ValueError("intervals and timeouts must be positive")
        self.bootstrap = bootstrap
        self.security = security
        self.topics = registry
        self.policy_store = policy_store
        self.clock: Clock = clock or SystemClock()
        self.refresh_interval = refresh_interval
        self.health_interval = health_interval
        self.component = component
        self.metrics = metrics if metrics is not None else ProjectorMetrics()
        self.io_timeout = io_timeout
        self.log_timeout = log_timeout
        retention = registry.events.retention_ms
        #: Entries older than this get no event (see the module docstring); None = infinite.
        self.event_horizon = timedelta(milliseconds=retention) if retention > 0 else None

        self._started = False
        self._beats_sent = 0
        self._changed = asyncio.Event()
        self._events_ready = asyncio.Event()
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        """Forget everything learnt from the log: each run replays it from offset 0."""
        self._folded = Folded(EssState(), 0)
        self._tally = LogTally()
        self._caught_up = False
        self._fault: str | None = None
        self._highwater: int | None = None
        self._last_fetch: float | None = None  # time.monotonic() of the last answered fetch
        self._published_seq: int | None = None
        self._pending: deque[EmergencyStopEvent | EmergencyResetEvent] = deque()
        self._written: PolicyRecord | None = None
        self._store_ok = False
        self._write_failures = 0
        self._changed.clear()
        self._events_ready.clear()
        self.metrics.observe_trusted(True)

    # ------------------------------------------------------------------ views

    @property
    def state(self) -> EssState:
        """The state folded from the trusted part of the log so far."""
        return self._folded.state

    @property
    def written(self) -> PolicyRecord | None:
        """The last record successfully written to the PolicyStore by this projector."""
        return self._written

    def log_condition(self) -> LogCondition:
        """How far the projector can vouch for the log right now."""
        if self._fault is not None:
            return LogCondition.CORRUPT
        if not self._started:
            return LogCondition.STARTING
        silent_for = time.monotonic() - (self._last_fetch or time.monotonic())
        if silent_for > self.log_timeout:
            return LogCondition.UNREACHABLE
        if not self._caught_up:
            return LogCondition.CATCHING_UP
        return LogCondition.OK

    def _policy_store_ok(self, log: LogCondition) -> bool:
        # "ok" means gates are seeing a fresh record: the last write worked and we keep
        # refreshing (we stop on a fault or while the log is unreachable).
        return self._store_ok and log is LogCondition.OK

    def status(self) -> ProjectorStatus:
        """A consistent snapshot for ``/status`` (never blocks, never does I/O)."""
        state = self._folded.state
        log = self.log_condition()
        store_ok = self._policy_store_ok(log)
        health, checks = assess_health(state, log, policy_store_ok=store_ok)
        activation = state.activation
        return ProjectorStatus(
            status=state.status.value,
            reason=activation.reason.value if activation else None,
            detail=activation.detail if activation else "",
            since=activation.ts if activation else state.last_change,
            seq=state.last_seq,
            epoch=state.epoch,
            trips_recorded=state.trips_recorded,
            pending_approvals=len(state.approvals),
            last_refresh=self._written.refreshed_at if self._written else None,
            log_offset=self._folded.next_offset,
            lag=self._lag(),
            caught_up=self._caught_up,
            healthy=log is LogCondition.OK and store_ok,
            health=health.value,
            checks=checks,
            fault=self._fault,
            events_published_seq=self._published_seq,
            events_pending=len(self._pending),
            beats_sent=self._beats_sent,
        )

    def _lag(self) -> int:
        if self._highwater is None:
            return 0
        return max(self._highwater - self._folded.next_offset, 0)

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set. Connects (retrying until the topics exist and the
        broker answers), learns what ``ess.events`` already holds, then runs the follower,
        the PolicyStore writer, the event publisher and the health beat side by side."""
        run_id = self.clock.now().isoformat()
        self._reset_run_state()
        clients = await self._connect(stop)
        if clients is None:
            return
        self._started = True
        logger.bind(
            component=self.component,
            state_topic=self.topics.state.name,
            published_seq=self._published_seq,
        ).info("projector started; replaying ess.state from offset 0")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._guard("follower", self._follow(clients, stop)))
                group.create_task(self._guard("writer", self._write_loop(stop)))
                group.create_task(
                    self._guard("publisher", self._publish_loop(clients.producer, stop))
                )
                group.create_task(
                    self._guard("health", self._beat_loop(clients.producer, stop, run_id))
                )
        finally:
            self._started = False
            await self._close(clients)
            logger.bind(component=self.component).info("projector stopped")

    async def _guard(self, name: str, loop: Coroutine[Any, Any, None]) -> None:
        """Run one of the loops. Each loop handles its own I/O errors, so anything escaping is
        a bug. Rather than run half a projector (say, beating HEALTHY while no longer
        refreshing the record), the task group then cancels the other loops and :meth:`run`
        raises, for the supervisor to restart the process; this logs why first."""
        try:
            await loop
        except Exception:
            logger.bind(task=name).opt(exception=True).critical("projector task crashed")
            raise

    async def _connect(self, stop: asyncio.Event) -> _Clients | None:
        """Start the clients, retrying every ``refresh_interval`` until they work or ``stop``.

        The topics are checked by listing (never by naming them in a request: Tansu would
        auto-create a missing ``ess.state`` with 4 partitions); a missing topic is waited
        for, never created here."""
        state_tp = TopicPartition(self.topics.state.name, 0)
        while not stop.is_set():
            follower: AIOKafkaConsumer | None = None
            sender: AIOKafkaProducer | None = None
            try:
                self._published_seq = await self._highest_published_seq()
                follower = consumer(
                    self.bootstrap,
                    group_id=None,
                    client_id="ess-projector",
                    security=self.security,
                )
                await follower.start()
                existing = await follower.topics()
                for name in (self.topics.state.name, self.topics.health.name):
                    if name not in existing:
                        raise UnknownTopicError(f"topic {name} does not exist")
                follower.assign([state_tp])
                await follower.seek_to_beginning(state_tp)
                listed_end = int((await follower.end_offsets([state_tp]))[state_tp])
                # One record per batch: ess.events is read "to the end" on every start.
                sender = producer(self.bootstrap, read_to_end_safe=True, security=self.security)
                await sender.start()
                return _Clients(follower, sender, listed_end)
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "projector cannot connect; retrying"
                )
                for client in (follower, sender):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.stop()
                await _wait_any(self.refresh_interval, stop)
        return None

    async def _close(self, clients: _Clients) -> None:
        for client in (clients.consumer, clients.producer):
            try:
                # Bounded: with the broker gone, a producer would wait to flush queued beats.
                async with asyncio.timeout(self.io_timeout):
                    await client.stop()
            except asyncio.CancelledError:
                # aiokafka 0.14's fetcher re-raises the CancelledError of its own pending fetch
                # when closed with the broker gone; only a cancellation of *us* may propagate.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                logger.warning("projector client stop was interrupted by its own fetch task")
            except Exception as exc:  # stopping is best effort; the process is going away
                logger.bind(error=str(exc)).warning("projector client did not stop cleanly")

    async def _highest_published_seq(self) -> int | None:
        """Highest ``seq`` on ``ess.events`` (``None`` if empty). Records that do not decode
        are skipped: they cannot say which seq they announced, and ESS is the only writer."""
        highest: int | None = None
        for record in await read_to_end(
            self.bootstrap, self.topics.events.name, security=self.security
        ):
            try:
                event: EmergencyStopEvent | EmergencyResetEvent = decode(
                    EmergencyEvent, record.value or b""
                )
            except RecordError as exc:
                logger.bind(offset=record.offset, error=str(exc)).warning(
                    "undecodable record on ess.events ignored"
                )
                continue
            highest = event.seq if highest is None else max(highest, event.seq)
        return highest

    # ------------------------------------------------------------------ follower

    async def _follow(self, clients: _Clients, stop: asyncio.Event) -> None:
        tp = TopicPartition(self.topics.state.name, 0)
        follower = clients.consumer
        last_poll: int | None = None
        while not stop.is_set():
            try:
                batch = (await follower.getmany(tp, timeout_ms=_POLL_MS)).get(tp, [])
                polled = follower.last_poll_timestamp(tp)
                if polled is not None and polled != last_poll:
                    # A fetch was answered (with or without records): the broker is there.
                    last_poll = polled
                    self._last_fetch = time.monotonic()
                self._highwater = follower.highwater(tp)
                if batch and self._fault is None:
                    self._apply(batch)
                if not self._caught_up and not batch and self._fault is None:
                    position = await follower.position(tp)
                    if self._highwater is not None and position >= max(
                        self._highwater, clients.listed_end
                    ):
                        self._on_caught_up()
                self.metrics.observe_lag(self._lag())
            except Exception as exc:
                # aiokafka retries connections itself; this catches the rest without dying.
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "ess.state fetch failed; retrying"
                )
                await _wait_any(self.refresh_interval, stop)

    def _apply(self, records: list[Any]) -> None:
        """Fold fetched records, queue new events, export metrics; fault on a gap/corruption."""
        now = self.clock.now()
        folded = self._folded
        for record in records:
            try:
                logged = KafkaStateLog.decode_record(record.offset, record.value)
                after = fold_log([logged], start=folded)
            except SequenceError as exc:
                self._folded = folded
                self._enter_fault(str(exc), record.offset)
                break
            if len(after.skipped) > len(folded.skipped):
                folded = after  # duplicate seq: offset advances, nothing else happens
                continue
            folded = after
            entry = logged.entry
            self._tally = self._tally.add(entry)
            event = event_for(entry)
            if event is not None:
                if should_publish(
                    entry, published_seq=self._published_seq, now=now, horizon=self.event_horizon
                ):
                    self._pending.append(event)
                    self._events_ready.set()
                else:
                    logger.bind(seq=entry.seq, type=event.type).debug(
                        "event already published (or expired); not republished"
                    )
            if self._caught_up:
                self._log_entry(entry)
        else:
            self._folded = folded
        self.metrics.observe_log(self._folded.state, self._tally)
        if self._caught_up or self._fault is not None:
            self._changed.set()

    def _log_entry(self, entry: StateEntry) -> None:
        bound = logger.bind(seq=entry.seq, kind=entry.kind, command_id=entry.command_id)
        if isinstance(entry, ActivatedEntry):
            bound.bind(reason=entry.reason.value, detail=entry.detail).critical(
                "projector: emergency stop ACTIVE"
            )
        elif isinstance(entry, ResetEntry):
            bound.bind(operators=list(entry.operators)).warning("projector: emergency stop RESET")
        else:
            bound.info("projector: state-log entry applied")

    def _on_caught_up(self) -> None:
        self._caught_up = True
        state = self._folded.state
        logger.bind(
            next_offset=self._folded.next_offset,
            status=state.status.value,
            seq=state.last_seq,
            epoch=state.epoch,
            events_pending=len(self._pending),
        ).info("projector caught up with ess.state")
        self.metrics.observe_log(state, self._tally)
        self._changed.set()

    def _enter_fault(self, why: str, offset: int) -> None:
        self._fault = why
        self.metrics.observe_trusted(False)
        logger.bind(
            offset=offset,
            error=why,
            trusted_seq=self._folded.state.last_seq,
            status=self._folded.state.status.value,
        ).critical(
            "ess.state cannot be trusted: projector stops refreshing the PolicyStore record "
            "(gates go stale-closed) until the log is repaired and the projector restarted"
        )

    # ------------------------------------------------------------------ PolicyStore

    async def _write_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait_any(self.refresh_interval, stop, self._changed)
            if stop.is_set():
                return
            self._changed.clear()
            await self._write_once()

    async def _write_once(self) -> None:
        """Write (or re-assert) the record if the projector may; count and log failures."""
        state = self._folded.state
        log = self.log_condition()
        if log is LogCondition.CORRUPT:
            written_seq = self._written.seq if self._written else None
            if not (state.active and written_seq != state.last_seq):
                return  # keep the last good record, unrefreshed
        elif log is not LogCondition.OK:
            return  # catching up (partial state) or the log is unreachable: do not vouch
        record = policy_record(state, refreshed_at=self.clock.now())
        try:
            async with asyncio.timeout(self.io_timeout):
                current = await self.policy_store.get(EMERGENCY_STOP_KEY)
                if store_is_ahead(current, record):
                    raise RuntimeError(
                        f"stored emergency_stop has seq {current and current.get('seq')}, "
                        f"ahead of the log's {record.seq}; refusing to move it backwards"
                    )
                await self.policy_store.set(EMERGENCY_STOP_KEY, record.model_dump(mode="json"))
        except Exception as exc:
            self._store_ok = False
            self._write_failures += 1
            self.metrics.policy_store_write_failed()
            bound = logger.bind(
                seq=record.seq,
                active=record.active,
                failures=self._write_failures,
                error=f"{type(exc).__name__}: {exc}",
            )
            # Every refresh retries; log the first failure of a streak and then every 30th,
            # so an outage is visible without a line per second (the counter has them all).
            if self._write_failures % 30 == 1:
                bound.error("emergency_stop write failed; retrying every refresh")
            else:
                bound.debug("emergency_stop write failed again")
            return
        if self._write_failures:
            logger.bind(failures=self._write_failures).info("emergency_stop writes recovered")
            self._write_failures = 0
        changed = self._written is None or self._written.seq != record.seq
        self._written = record
        self._store_ok = True
        assert record.refreshed_at is not None  # set by policy_record
        self.metrics.policy_store_written(record.refreshed_at)
        bound = logger.bind(seq=record.seq, active=record.active, reason=record.reason)
        if changed:
            bound.info("emergency_stop record written")
        else:
            bound.debug("emergency_stop record refreshed")

    # ------------------------------------------------------------------ events

    async def _publish_loop(self, sender: AIOKafkaProducer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait_any(None, stop, self._events_ready)
            self._events_ready.clear()
            while self._pending and not stop.is_set():
                event = self._pending[0]
                try:
                    async with asyncio.timeout(self.io_timeout):
                        await sender.send_and_wait(
                            self.topics.events.name, encode(event), key=EVENTS_KEY
                        )
                except Exception as exc:
                    self.metrics.event_publish_failed()
                    logger.bind(
                        seq=event.seq, type=event.type, error=f"{type(exc).__name__}: {exc}"
                    ).error("event publish failed; retrying")
                    await _wait_any(self.refresh_interval, stop)
                    continue
                self._pending.popleft()
                self._published_seq = event.seq
                self.metrics.event_published(event.type)
                logger.bind(seq=event.seq, type=event.type).info("event published")

    # ------------------------------------------------------------------ health beat

    async def _beat_loop(self, sender: AIOKafkaProducer, stop: asyncio.Event, run_id: str) -> None:
        beat_no = 0
        while not stop.is_set():
            log = self.log_condition()
            status, checks = assess_health(
                self._folded.state, log, policy_store_ok=self._policy_store_ok(log)
            )
            beat = health_beat(
                component=self.component,
                status=status,
                checks=checks,
                run_id=run_id,
                beat_no=beat_no,
                now=self.clock.now(),
            )
            beat_no += 1
            try:
                async with asyncio.timeout(self.io_timeout):
                    await sender.send_and_wait(
                        self.topics.health.name, encode(beat), key=self.component.encode()
                    )
            except Exception as exc:
                self.metrics.health_beat_failed()
                logger.bind(error=f"{type(exc).__name__}: {exc}").warning(
                    "health beat not published"
                )
            else:
                self._beats_sent += 1
            await _wait_any(self.health_interval, stop)


async def run_projector(
    settings: EssSettings,
    policy_store: PolicyStore,
    stop: asyncio.Event,
    *,
    bootstrap: str | None = None,
    metrics: ProjectorMetrics | None = None,
    clock: Clock | None = None,
    refresh_interval: float = 1.0,
    health_interval: float = 1.0,
    component: str = "ess",
    status_host: str = "127.0.0.1",
    status_port: int | None = None,
) -> None:
    """Entry point of ``ess worker --role project``: run a :class:`Projector` on the
    configured topics until ``stop``, with the status server when ``status_port`` is given.

    ``bootstrap`` overrides ``settings.kafka_bootstrap_servers`` (a worker that started the
    embedded broker passes its address). There is no embedded-broker fallback here: a
    projector following a private, empty broker would assert "inactive" for a log nobody
    writes to. Topics are expected to exist (``ensure_topics``); the projector waits for them.
    """
    target = bootstrap or settings.kafka_bootstrap_servers
    if not target:
        raise ValueError(
            "the projector follows a shared ess.state: set KAFKA_BOOTSTRAP_SERVERS "
            "(or pass bootstrap=)"
        )
    projector = Projector(
        target,
        settings.registry(),
        policy_store,
        clock=clock,
        refresh_interval=refresh_interval,
        health_interval=health_interval,
        component=component,
        metrics=metrics,
        log_timeout=settings.log_timeout_sec,
        security=settings.kafka_security(),
    )
    server = None
    if status_port is not None:
        server = await serve_status(projector, projector.metrics.registry, status_host, status_port)
    try:
        await projector.run(stop)
    finally:
        if server is not None:
            await server.stop()

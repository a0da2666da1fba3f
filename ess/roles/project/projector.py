"""The projector (role ``project``): follows ``ess.state`` into everything derived from it.

Outputs, all projections of the one log:

* the PolicyStore record ``emergency_stop`` every trading gate reads, written after catching
  up, after each new entry, and re-asserted every ``refresh_interval`` with a fresh
  ``refreshed_at`` so gates can tell a live projector from a dead one;
* ``emergency.stop`` / ``emergency.reset`` events on ``ess.events``;
* ESS's own health beat on the health topic;
* the status snapshot and Prometheus metrics (served by :mod:`ess.observability.status`).

How it reads. ``ess.state`` through the :class:`~ess.statelog.StateLog` port (``state_log``;
by default the Kafka topic, :class:`~ess.statelog.KafkaStateLog`), followed from offset 0 and
folded with the verifying reader every reader uses (:class:`ess.statelog.StateLogReader`).
Every answer of the log is proof the broker is reachable (``on_fetch``) and says where the log
ends (``on_end``: the fetched high watermark), which gives the lag. "Caught up" means the fold
has reached both an answer's end and the end listed when the projector connected
(:meth:`~ess.statelog.StateLog.end_offset`): right on real Kafka and on Tansu (whose listed end
offset can be short). The other two inputs are not the state log and are read by one consumer
of the projector's own, assigned manually (no group: nothing to balance, and a group join
costs seconds on Tansu): ``ess.liveness`` near its end, for the command processor's signed
beats, and ``ess.commands`` from its end, only to see how far commands have arrived.

When the projector vouches. It writes an INACTIVE record (the one that lets gates open) only
while *all* of these hold, and otherwise stops refreshing it, so gates go stale-closed within
their ``max_record_age``:

* it has caught up with ``ess.state`` and the broker answered a fetch within ``log_timeout``;
* the log is trusted: no foreign record is waiting for the processor's acknowledgement (see
  :mod:`ess.core.reader`), and the log could be folded (no ``seq`` gap, no unverifiable reset);
* the single writer is alive (:class:`WriterWatch`): a signed beat from the processor that
  owns the command partition arrived within ``processor_timeout`` (beats already on
  ``ess.liveness`` when the projector started do not count: they say the processor was alive
  then), and no command has waited on ``ess.commands`` longer than ``backlog_timeout`` for
  it. A processor that is killed,
  stopped, fenced or wedged therefore closes every gate within ``processor_timeout`` (or
  ``backlog_timeout``) plus the gates' ``max_record_age``.

An ACTIVE record is written whenever the projector knows the trusted state is ACTIVE:
stopping is always safe. A log that cannot be folded is a fault for the life of the
projector (an append-only log does not heal; repair it and restart); the entries before the
break are applied and announced (an activation fetched in the same batch as a gap behind it
is still ACTIVE).

Projections decide from the log only. The record written is always the projection of the
folded log. Before each write the projector reads the stored record: one that differs from
what it last wrote was written by someone else, and is counted, logged and overwritten,
never obeyed. One exception keeps a log loss from re-opening gates: an ACTIVE stored record
whose ``seq`` is beyond the log's end may be the last word of a log that was lost (an
embedded broker restarted), so the projector does not replace it with INACTIVE; it stops
vouching and says so (CRITICAL) until the command processor re-establishes the stop from that
record (reason ``state_log_lost``, see :mod:`ess.core.recovery`), which it does before it
serves. That works because every ACTIVE record carries its proof: the ``activated`` entry
exactly as the processor sealed it in the log (``activation_entry``).

Events are idempotent across restarts, and deduplicated from the log: on start the projector
reads ``ess.events``; an entry's event counts as published when the topic holds exactly the
event the entry announces (same ``seq``, type, reason, time). A record on ``ess.events`` that
no log entry announces (a forgery with a huge ``seq``, say) is ignored: it suppresses
nothing. An entry older than the events topic's retention gets no event: its event would
have expired by now. Delivery is at-least-once (consumers dedupe on ``seq``). The PolicyStore
writer and the event publisher are independent tasks, so a dead PolicyStore never holds back
``emergency.stop`` and a dead broker never stops the record from being re-asserted (within
``log_timeout``).

Metrics counters are derived from the folded log, so the replay on every start does not
double count (see :mod:`ess.roles.project.metrics`). ESS's health beat is CRITICAL while ESS is
ACTIVE: detection must ignore ESS's own beats for ``system_critical`` (see :func:`health_beat`).

Run one projector per deployment. Two would both publish events (deduplicated by ``seq``
downstream) and each would see the other's writes as foreign.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from loguru import logger

from ess.api.protocols import EMERGENCY_STOP_KEY, PolicyStore
from ess.clock import Clock, SystemClock
from ess.core import EssState, derive_id
from ess.core.attestation import seal_problem
from ess.core.projection import NEVER, event_for, policy_record
from ess.core.reader import BatchReport, LogBroken, Trust
from ess.kafka.clients import KafkaSecurity, UnknownTopicError, consumer, producer, read_to_end
from ess.observability.status import ProjectorStatus, serve_status
from ess.policystore.base import PolicyStoreError, PolicyStoreUnavailable
from ess.roles.project.metrics import LogTally, ProjectorMetrics
from ess.roles.tasks import run_until, wait_any
from ess.settings import EssSettings
from ess.statelog import KafkaStateLog, RawRecord, StateLog, StateLogReader
from schemas import (
    ActivatedEntry,
    EmergencyEvent,
    EmergencyResetEvent,
    EmergencyStopEvent,
    HealthBeat,
    HealthStatus,
    PolicyRecord,
    ProcessorBeat,
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
    "WriterWatch",
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
#: Beats read back on start: they never vouch (they are from before the projector started),
#: but they tell the writer watch which beat numbers of the current run are old (replays).
_BEATS_ON_START: Final = 20
#: A beat stamped further than this from the projector's clock is not accepted (an old beat
#: replayed under a run the projector has not seen); freshness itself is judged by arrival.
_BEAT_CLOCK_SKEW: Final = timedelta(seconds=60)


# =========================================================================== pure functions


def should_publish(
    event: EmergencyStopEvent | EmergencyResetEvent,
    *,
    on_topic: Mapping[int, EmergencyStopEvent | EmergencyResetEvent],
    entry_ts: datetime,
    now: datetime,
    horizon: timedelta | None,
) -> bool:
    """Whether ``event`` (announced by a log entry at ``entry_ts``) still needs publishing:
    the events topic does not already hold exactly it, and the entry is younger than
    ``horizon`` (the events topic's retention; ``None`` = infinite). What else the topic holds
    under the same ``seq`` does not count: only the log says what was announced."""
    if on_topic.get(event.seq) == event:
        return False
    return horizon is None or entry_ts >= now - horizon


def store_is_ahead(current: Mapping[str, Any] | None, record: PolicyRecord) -> bool:
    """True when the stored record has a ``seq`` beyond ``record``'s. A missing or
    unreadable stored ``seq`` is never "ahead"."""
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
    UNTRUSTED = "untrusted"  # a foreign record awaits the processor's acknowledgement
    CORRUPT = "corrupt"  # the log cannot be folded: fault, permanent
    UNREACHABLE = "unreachable"  # no fetch answered for log_timeout seconds


#: Conditions under which the folded state is known (the log was read to its end once).
_KNOWN: Final = frozenset(
    {LogCondition.OK, LogCondition.UNTRUSTED, LogCondition.CORRUPT, LogCondition.UNREACHABLE}
)


def assess_health(
    state: EssState,
    log: LogCondition,
    *,
    policy_store_ok: bool,
    writer: str | None = None,
    store_failing: bool = False,
) -> tuple[HealthStatus, dict[str, str]]:
    """ESS's health status and checks for its beat.

    CRITICAL while ESS is ACTIVE (trading is stopped), whenever the projector cannot vouch
    for the log (untrusted, corrupt or unreachable), and while the command processor is gone
    (``writer`` says why; ``None`` means it is alive); DEGRADED while starting, catching up
    or when the PolicyStore record is not being kept fresh; HEALTHY otherwise.
    ``store_failing``: the projector tries to write the record and the writes fail (the
    ``policy_store_writes`` check, which the detector trips ``policy_store_stale`` on).

    While the log is not yet read (starting, catching up) ``state`` is ``UNKNOWN`` rather than
    the partial fold, and the ``policy_store`` check is left out rather than reported
    ``stale``: nothing has been written *yet*, which is not a stale store, and a detector
    that trips ``policy_store_stale`` on that check would otherwise stop trading on every
    projector restart.
    """
    known = log in _KNOWN
    checks = {"state": state.status.value if known else "UNKNOWN", "state_log": log.value}
    checks["command_processor"] = "ok" if writer is None else "gone"
    if known:
        checks["policy_store"] = "ok" if policy_store_ok else "stale"
        # Not "stale" for any reason, but "the writes themselves fail": what the detection
        # rule ess_policy_store_failing trips on (not vouching must not trip ESS).
        checks["policy_store_writes"] = "failing" if store_failing else "ok"
    if (
        (known and state.active)
        or log in {LogCondition.UNTRUSTED, LogCondition.CORRUPT, LogCondition.UNREACHABLE}
        or (known and writer is not None)
    ):
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


@dataclass(slots=True)
class WriterWatch:
    """Is the single writer alive and keeping up? Fed beats and the command topic's high
    watermark, asked with a monotonic time; does no I/O.

    Freshness is the *arrival* time of the last accepted beat from an owner (a standby's
    beats say nothing about who processes commands). Backlog: every time the command
    topic's high watermark grows, the time is noted; the oldest command the processor has
    not processed (its beat's ``next_command_offset``) has waited since the first note that
    covered it.
    """

    timeout: float
    backlog_timeout: float
    last: ProcessorBeat | None = None
    last_arrival: float | None = None
    highwater: int | None = None
    _arrivals: deque[tuple[int, float]] = field(default_factory=deque)
    _latest_beat: dict[str, int] = field(default_factory=dict)

    def beat(self, beat: ProcessorBeat, arrived: float) -> bool:
        """Take a verified beat; returns whether it was accepted (owner, newer)."""
        if beat.beat_no <= self._latest_beat.get(beat.run_id, -1):
            return False
        self._latest_beat[beat.run_id] = beat.beat_no
        if not beat.owner:
            return False
        self.last = beat
        self.last_arrival = arrived
        return True

    def seen(self, beat: ProcessorBeat) -> None:
        """Take a verified beat from before the watch started: it proves nothing about now,
        but beats of its run up to its number are old from now on (replays)."""
        latest = self._latest_beat.get(beat.run_id, -1)
        self._latest_beat[beat.run_id] = max(latest, beat.beat_no)

    def commands_seen(self, highwater: int, seen: float) -> None:
        """The command topic's high watermark as of ``seen``."""
        if self.highwater is None or highwater > self.highwater:
            self.highwater = highwater
            self._arrivals.append((highwater, seen))

    def backlog_age(self, now: float) -> float:
        """How long the oldest unprocessed command has waited (0 when none waits)."""
        if self.last is None or self.last.next_command_offset is None:
            return 0.0
        processed = self.last.next_command_offset
        while self._arrivals and self._arrivals[0][0] <= processed:
            self._arrivals.popleft()
        if self.highwater is None or self.highwater <= processed or not self._arrivals:
            return 0.0
        return max(0.0, now - self._arrivals[0][1])

    def problem(self, now: float) -> str | None:
        """Why the writer cannot be vouched for right now, or ``None`` when it can."""
        if self.last is None or self.last_arrival is None:
            return "no beat from a command processor that owns the command partition"
        silent = now - self.last_arrival
        if silent > self.timeout:
            return f"no beat from the command processor for {silent:.1f}s"
        waited = self.backlog_age(now)
        if waited > self.backlog_timeout:
            return (
                f"command at offset {self.last.next_command_offset} has waited {waited:.1f}s "
                "for the command processor"
            )
        return None


# =========================================================================== the projector


@dataclass(slots=True)
class _Clients:
    #: ``ess.liveness`` and ``ess.commands`` (``ess.state`` is read through the port).
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    #: End of ``ess.liveness`` when the projector connected: beats before it are history.
    liveness_end: int = 0


class Projector:
    """Follow ``ess.state`` into the PolicyStore record, ``ess.events``, ESS's health beat,
    a status snapshot and metrics. See the module docstring for when it vouches.

    ``registry`` is the *topic* registry; ``trust`` what the state-log reader trusts;
    Prometheus metrics go to ``metrics`` (a :class:`ProjectorMetrics` with a fresh
    ``CollectorRegistry`` when omitted). ``io_timeout`` bounds every PolicyStore call and
    every send, so a hung dependency delays one output, not the others. :meth:`run` never
    raises for I/O failures: it logs, counts and retries.

    ``ess.state`` is read through the :class:`~ess.statelog.StateLog` port (``state_log``, by
    default the Kafka topic on ``bootstrap``), so that what the projector folds can come from
    any adapter; liveness, commands and events stay on Kafka. A log built here is closed by
    :meth:`run`; one handed in belongs to the caller, who closes it.
    """

    def __init__(
        self,
        bootstrap: str,
        registry: TopicRegistry,
        policy_store: PolicyStore,
        *,
        trust: Trust,
        clock: Clock | None = None,
        refresh_interval: float = 1.0,
        health_interval: float = 1.0,
        component: str = "ess",
        metrics: ProjectorMetrics | None = None,
        io_timeout: float = 5.0,
        log_timeout: float = 10.0,
        processor_timeout: float = 3.0,
        backlog_timeout: float = 3.0,
        security: KafkaSecurity | None = None,
        state_log: StateLog | None = None,
    ) -> None:
        positive = (
            refresh_interval,
            health_interval,
            io_timeout,
            log_timeout,
            processor_timeout,
            backlog_timeout,
        )
        if min(positive) <= 0:
            raise ValueError("intervals and timeouts must be positive")
        self.bootstrap = bootstrap
        self.security = security
        self.topics = registry
        #: ``ess.state`` (the Kafka topic unless a test hands in another adapter).
        self.state_log: StateLog = (
            state_log
            if state_log is not None
            else KafkaStateLog(bootstrap, registry.state.name, security=security)
        )
        self._owns_state_log = state_log is None
        self.trust = trust
        self.policy_store = policy_store
        self.clock: Clock = clock or SystemClock()
        self.refresh_interval = refresh_interval
        self.health_interval = health_interval
        self.component = component
        self.metrics = metrics if metrics is not None else ProjectorMetrics()
        self.io_timeout = io_timeout
        self.log_timeout = log_timeout
        self.processor_timeout = processor_timeout
        self.backlog_timeout = backlog_timeout
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
        self._reader = StateLogReader(self.trust, name="projector")
        self._tally = LogTally()
        self._caught_up = False
        self._fault: str | None = None
        self._highwater: int | None = None  # end of ess.state as of its last answer
        self._listed_end = 0  # end of ess.state listed on connecting: catch up to at least it
        self._last_fetch: float | None = None  # time.monotonic() of the last answered fetch
        self._on_topic: dict[int, EmergencyStopEvent | EmergencyResetEvent] = {}
        self._published_seq: int | None = None
        self._pending: deque[EmergencyStopEvent | EmergencyResetEvent] = deque()
        self._written: PolicyRecord | None = None
        #: The current activation's entry as sealed in the log (the record's proof).
        self._activation_entry: dict[str, Any] | None = None
        self._store_ok = False
        self._store_problem: str | None = None
        self._write_failures = 0
        self._writer = WriterWatch(self.processor_timeout, self.backlog_timeout)
        self._changed.clear()
        self._events_ready.clear()
        self.metrics.observe_trusted(True)

    # ------------------------------------------------------------------ views

    @property
    def state(self) -> EssState:
        """The state folded from the trusted part of the log so far."""
        return self._reader.folded.state

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
        if not self._reader.trusted:
            return LogCondition.UNTRUSTED
        return LogCondition.OK

    def writer_problem(self) -> str | None:
        """Why the command processor cannot be vouched for now (``None``: it can)."""
        return self._writer.problem(time.monotonic())

    def _policy_store_ok(self, log: LogCondition, writer: str | None) -> bool:
        # "ok" means gates are seeing a fresh record: the last write worked and we keep
        # refreshing it (an ACTIVE record is refreshed whatever the writer's state).
        if not self._store_ok or self._store_problem is not None:
            return False
        if self.state.active:
            return log in {LogCondition.OK, LogCondition.UNTRUSTED}
        return log is LogCondition.OK and writer is None

    def _failing(self) -> bool:
        """The last write of the record failed, or was refused (store ahead of the log)."""
        return self._write_failures > 0 or self._store_problem is not None

    def _doing_its_job(self, log: LogCondition) -> bool:
        """``/healthz``: following a foldable log and able to write the store. Not vouching
        because the command processor is gone or the log holds a foreign record *is* this
        projector doing its job (a restart would not help); both show in ``health``."""
        return log in {LogCondition.OK, LogCondition.UNTRUSTED} and not self._failing()

    def status(self) -> ProjectorStatus:
        """A consistent snapshot for ``/status`` (never blocks, never does I/O)."""
        state = self.state
        log = self.log_condition()
        writer = self.writer_problem()
        store_ok = self._policy_store_ok(log, writer)
        health, checks = assess_health(
            state, log, policy_store_ok=store_ok, writer=writer, store_failing=self._failing()
        )
        activation = state.activation
        folded = self._reader.folded
        fault = self._fault or self._store_problem
        if fault is None and not folded.trusted and folded.last_foreign is not None:
            fault = (
                f"foreign record at offset {folded.last_foreign.offset}: {folded.last_foreign.why}"
            )
        if fault is None and writer is not None and log in _KNOWN:
            fault = writer
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
            log_offset=folded.next_offset,
            lag=self._lag(),
            caught_up=self._caught_up,
            healthy=self._doing_its_job(log),
            health=health.value,
            checks=checks,
            fault=fault,
            events_published_seq=self._published_seq,
            events_pending=len(self._pending),
            beats_sent=self._beats_sent,
        )

    def _lag(self) -> int:
        if self._highwater is None:
            return 0
        return max(self._highwater - self._reader.folded.next_offset, 0)

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
            events_on_topic=len(self._on_topic),
        ).info("projector started; replaying ess.state from offset 0")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._guard("state", self._follow_state(stop)))
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
        for, never created here. The end of ``ess.state`` is listed here too (through the
        port), after the check: catching up means reaching at least it."""
        topics = self.topics
        liveness_tp = TopicPartition(topics.liveness.name, 0)
        commands_tp = TopicPartition(topics.commands.name, 0)
        while not stop.is_set():
            follower: AIOKafkaConsumer | None = None
            sender: AIOKafkaProducer | None = None
            try:
                self._on_topic = await self._events_on_topic()
                follower = consumer(
                    self.bootstrap,
                    group_id=None,
                    client_id="ess-projector",
                    security=self.security,
                )
                await follower.start()
                existing = await follower.topics()
                for spec in (topics.state, topics.health, topics.liveness, topics.commands):
                    if spec.name not in existing:
                        raise UnknownTopicError(f"topic {spec.name} does not exist")
                self._listed_end = await self.state_log.end_offset()
                # Listed once per run: a log built here need not keep the client open.
                await self._close_state_log()
                follower.assign([liveness_tp, commands_tp])
                ends = await follower.end_offsets([liveness_tp])
                follower.seek(liveness_tp, max(0, int(ends[liveness_tp]) - _BEATS_ON_START))
                await follower.seek_to_end(commands_tp)
                # One record per batch: ess.events is read "to the end" on every start.
                sender = producer(self.bootstrap, read_to_end_safe=True, security=self.security)
                await sender.start()
                return _Clients(follower, sender, liveness_end=int(ends[liveness_tp]))
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "projector cannot connect; retrying"
                )
                for client in (follower, sender):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.stop()
                await wait_any(self.refresh_interval, stop)
        await self._close_state_log()
        return None

    async def _close_state_log(self) -> None:
        """Close the state log if this projector built it (bounded, best effort): what
        :meth:`~ess.statelog.StateLog.end_offset` opened (following opens and closes its own
        client). It reopens on its next use, so a later run can list the end again."""
        if not self._owns_state_log:
            return
        try:
            async with asyncio.timeout(self.io_timeout):
                await self.state_log.stop()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            logger.warning("projector state log stop was interrupted by its own fetch task")
        except Exception as exc:  # stopping is best effort; the process is going away
            logger.bind(error=str(exc)).warning("projector state log did not stop cleanly")

    async def _close(self, clients: _Clients) -> None:
        await self._close_state_log()
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

    async def _events_on_topic(self) -> dict[int, EmergencyStopEvent | EmergencyResetEvent]:
        """What ``ess.events`` holds, by ``seq`` (the last record per ``seq``). Undecodable
        records are skipped; whatever is there only counts where the log agrees."""
        found: dict[int, EmergencyStopEvent | EmergencyResetEvent] = {}
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
            found[event.seq] = event
        return found

    # ------------------------------------------------------------------ follower

    async def _follow_state(self, stop: asyncio.Event) -> None:
        """Fold ``ess.state`` through the port until ``stop``. After any failure it follows
        again from where the fold stands (the reader holds the position: nothing is applied
        twice, nothing skipped); a new :meth:`run` starts over from offset 0."""
        while not stop.is_set():
            try:
                await run_until(stop, self._fold_state(), grace=self.io_timeout, name="state")
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "ess.state fetch failed; retrying"
                )
            else:
                if stop.is_set():
                    return
                logger.error("ess.state follow ended; following again")
            await wait_any(self.refresh_interval, stop)

    async def _fold_state(self) -> None:
        """One follow of the port: apply each batch (none after a fault: the log does not
        heal), and see whether that caught up."""
        batches = self.state_log.follow(
            self._reader.folded.next_offset, on_fetch=self._state_answered, on_end=self._state_end
        )
        try:
            async for records in batches:
                if self._fault is None:
                    self._apply(records)
                    self._check_caught_up()
        finally:
            # Close the follow's client now, not whenever the generator is collected.
            if isinstance(batches, AsyncGenerator):
                await batches.aclose()

    def _state_answered(self) -> None:
        """``on_fetch``: the log answered (with or without records), the broker is there."""
        self._last_fetch = time.monotonic()

    def _state_end(self, end: int) -> None:
        """``on_end``: where the log ended as of that answer (before its records are
        yielded). An answer while the fold is already there (an idle log) catches up."""
        self._highwater = end
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        """Caught up once the fold reached both the end of the last answer and the end
        listed on connecting, as :func:`ess.kafka.clients.read_to_end` decides it: right on
        real Kafka and on Tansu (whose listed end can be short)."""
        if self._caught_up or self._fault is not None or self._highwater is None:
            return
        if self._reader.folded.next_offset >= max(self._highwater, self._listed_end):
            self._on_caught_up()

    async def _follow(self, clients: _Clients, stop: asyncio.Event) -> None:
        """Read ``ess.liveness`` (beats) and ``ess.commands`` (its high watermark) for the
        writer watch, and export the lag and writer metrics once per poll."""
        liveness_tp = TopicPartition(self.topics.liveness.name, 0)
        commands_tp = TopicPartition(self.topics.commands.name, 0)
        follower = clients.consumer
        while not stop.is_set():
            try:
                batches = await follower.getmany(timeout_ms=_POLL_MS)
                now = time.monotonic()
                for record in batches.get(liveness_tp, []):
                    self._take_beat(record.value, now, live=record.offset >= clients.liveness_end)
                commands_highwater = follower.highwater(commands_tp)
                if commands_highwater is not None:
                    self._writer.commands_seen(int(commands_highwater), now)
                self.metrics.observe_lag(self._lag())
                self.metrics.observe_writer(
                    self.writer_problem() is None, self._writer.backlog_age(now)
                )
            except Exception as exc:
                # aiokafka retries connections itself; this catches the rest without dying.
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "liveness/commands fetch failed; retrying"
                )
                await wait_any(self.refresh_interval, stop)

    def _take_beat(self, value: bytes | None, arrived: float, *, live: bool = True) -> None:
        """Verify a liveness record and hand it to the writer watch.

        A beat published before this projector connected (``live=False``, read back on
        start) says the processor was alive *then*, not now: it only tells the watch which
        beat numbers are old (so a replay of them is refused), it never vouches."""
        try:
            document = orjson.loads(value or b"")
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            problem = seal_problem(
                document, self.trust.processor_keys, scope=self.topics.liveness.name
            )
            if problem is not None:
                raise ValueError(problem)
            beat: ProcessorBeat = decode(ProcessorBeat, value or b"")
        except (ValueError, RecordError) as exc:
            self.metrics.foreign_beat()
            logger.bind(error=str(exc)[:300]).warning("liveness record refused")
            return
        now = self.clock.now()
        if abs(beat.ts - now) > _BEAT_CLOCK_SKEW:
            logger.bind(beat_ts=beat.ts.isoformat()).warning("liveness beat too far from now")
            return
        if not live:
            self._writer.seen(beat)
            return
        was_down = self.writer_problem() is not None
        if self._writer.beat(beat, arrived) and was_down:
            self._changed.set()  # vouch at once rather than at the next refresh

    def _fold(self, records: list[RawRecord]) -> tuple[BatchReport, LogBroken | None, int]:
        """Feed ``records`` to the reader: what it did, and the :class:`LogBroken` (with the
        offset it stopped at) if the log cannot be folded.

        The reader folds a batch all or nothing, so when a batch breaks, its records are fed
        again one at a time: the entries *before* the break are authentic and applied (an
        activation fetched together with a gap behind it is still ACTIVE, and announced)."""
        try:
            return self._reader.feed(records), None, records[0].offset
        except LogBroken as exc:
            if len(records) == 1:
                return BatchReport(), exc, records[0].offset
        reports: list[BatchReport] = []
        for record in records:
            try:
                reports.append(self._reader.feed([record]))
            except LogBroken as exc:
                return _merged(reports), exc, record.offset
        return _merged(reports), None, records[0].offset  # pragma: no cover - it broke above

    def _apply(self, records: list[RawRecord]) -> None:
        """Fold fetched records, queue new events, export metrics; fault when the log cannot
        be folded (after applying the authentic entries before the break)."""
        now = self.clock.now()
        trusted_before = self._reader.trusted
        report, broken, broken_at = self._fold(records)
        values = {record.offset: record.value for record in records} if report.applied else {}
        for logged in report.applied:
            entry = logged.entry
            self._tally = self._tally.add(entry)
            self._remember_activation(entry, values.get(logged.offset))
            event = event_for(entry)
            if event is not None:
                if should_publish(
                    event,
                    on_topic=self._on_topic,
                    entry_ts=entry.ts,
                    now=now,
                    horizon=self.event_horizon,
                ):
                    self._pending.append(event)
                    self._events_ready.set()
                else:
                    logger.bind(seq=entry.seq, type=event.type).debug(
                        "event already published (or expired); not republished"
                    )
            if self._caught_up:
                self._log_entry(entry)
        if report.foreign:
            self.metrics.foreign_state_records(len(report.foreign))
        if broken is not None:
            self._enter_fault(str(broken), broken_at)
        self.metrics.observe_trusted(self._reader.trusted and self._fault is None)
        self.metrics.observe_log(self.state, self._tally)
        if self._caught_up or self._reader.trusted != trusted_before or broken is not None:
            self._changed.set()

    def _remember_activation(self, entry: StateEntry, value: bytes | None) -> None:
        """Keep the current activation's entry exactly as it stands in the log: the ACTIVE
        record carries it (``activation_entry``), so the processor's signature proves the
        stop should the log be lost (:mod:`ess.core.recovery`). A reset clears it."""
        if isinstance(entry, ActivatedEntry):
            document = orjson.loads(value) if value else None
            self._activation_entry = document if isinstance(document, dict) else None
        elif isinstance(entry, ResetEntry):
            self._activation_entry = None

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
        state = self.state
        logger.bind(
            next_offset=self._reader.folded.next_offset,
            status=state.status.value,
            seq=state.last_seq,
            epoch=state.epoch,
            trusted=self._reader.trusted,
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
            trusted_seq=self.state.last_seq,
            status=self.state.status.value,
        ).critical(
            "ess.state cannot be folded: projector stops vouching for the PolicyStore record "
            "(gates go stale-closed) until the log is repaired and the projector restarted"
        )

    # ------------------------------------------------------------------ PolicyStore

    async def _write_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_any(self.refresh_interval, stop, self._changed)
            if stop.is_set():
                return
            self._changed.clear()
            await self._write_once()

    def _may_write(self) -> bool:
        """Whether the record of the current state may be (re-)asserted now."""
        log = self.log_condition()
        if log in {LogCondition.STARTING, LogCondition.CATCHING_UP}:
            return False  # partial state: do not vouch for anything yet
        if self.state.active:
            return log is not LogCondition.UNREACHABLE  # stopping is always safe
        return log is LogCondition.OK and self.writer_problem() is None

    async def _write_once(self) -> None:
        """Write (or re-assert) the record if the projector may; count and log failures."""
        if not self._may_write():
            return
        record = policy_record(
            self.state, refreshed_at=self.clock.now(), activation_entry=self._activation_entry
        )
        try:
            async with asyncio.timeout(self.io_timeout):
                current = await self._read_stored()
                self._check_stored(current)
                if not record.active and store_is_ahead(current, record):
                    assert current is not None
                    if current.get("active") is True:
                        raise _StoreAhead(
                            f"stored emergency_stop is ACTIVE at seq {current.get('seq')}, "
                            f"beyond the log's {record.seq}: the log may have been lost; not "
                            "replacing it with INACTIVE. The command processor re-establishes "
                            "such a stop (reason state_log_lost) when it takes over the "
                            "command partition with this PolicyStore configured "
                            "(ESS_REDIS_URL or ESS_POLICY_STORE_URL): check its log, or "
                            "restart it with the setting"
                        )
                await self.policy_store.set(EMERGENCY_STOP_KEY, record.model_dump(mode="json"))
        except _StoreAhead as exc:
            self._store_ok = False
            if self._store_problem != str(exc):
                logger.bind(seq=record.seq).critical(str(exc))
            self._store_problem = str(exc)
            self.metrics.policy_store_write_failed()
            return
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
        self._store_problem = None
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

    async def _read_stored(self) -> Mapping[str, Any] | None:
        """The stored record, read only to tell whether someone else wrote it.

        A value the store holds but cannot hand back as a record (not JSON, a Redis key of
        another type) was written by someone else too: it stands for itself here, so it is
        counted and overwritten like any foreign record. Refusing to write over it would
        close every gate for good: gates fail closed on it, and no reset could replace it.
        An unreachable store raises: the write would fail as well."""
        try:
            return await self.policy_store.get(EMERGENCY_STOP_KEY)
        except PolicyStoreUnavailable:
            raise
        except PolicyStoreError as exc:
            return {"unreadable": str(exc)[:300]}

    def _check_stored(self, current: Mapping[str, Any] | None) -> None:
        """Count and log a stored record this projector did not write (it is overwritten)."""
        if self._written is None:
            return
        if current == self._written.model_dump(mode="json"):
            return
        self.metrics.foreign_policy_record()
        logger.bind(
            stored_seq=None if current is None else current.get("seq"),
            stored_active=None if current is None else current.get("active"),
            written_seq=self._written.seq,
        ).error("emergency_stop was changed by another writer; overwriting it from the log")

    # ------------------------------------------------------------------ events

    async def _publish_loop(self, sender: AIOKafkaProducer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_any(None, stop, self._events_ready)
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
                    await wait_any(self.refresh_interval, stop)
                    continue
                self._pending.popleft()
                self._published_seq = event.seq
                self._on_topic[event.seq] = event
                self.metrics.event_published(event.type)
                logger.bind(seq=event.seq, type=event.type).info("event published")

    # ------------------------------------------------------------------ health beat

    async def _beat_loop(self, sender: AIOKafkaProducer, stop: asyncio.Event, run_id: str) -> None:
        beat_no = 0
        while not stop.is_set():
            log = self.log_condition()
            writer = self.writer_problem()
            status, checks = assess_health(
                self.state,
                log,
                policy_store_ok=self._policy_store_ok(log, writer),
                writer=writer,
                store_failing=self._failing(),
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
            await wait_any(self.health_interval, stop)


def _merged(reports: list[BatchReport]) -> BatchReport:
    """One report for several consecutive :meth:`StateLogReader.feed` calls."""
    return BatchReport(
        applied=tuple(item for report in reports for item in report.applied),
        skipped=tuple(item for report in reports for item in report.skipped),
        foreign=tuple(item for report in reports for item in report.foreign),
        acknowledged=tuple(item for report in reports for item in report.acknowledged),
    )


class _StoreAhead(Exception):
    """The stored record is ACTIVE beyond the log's end: do not replace it with INACTIVE."""


async def run_projector(
    settings: EssSettings,
    policy_store: PolicyStore,
    stop: asyncio.Event,
    *,
    trust: Trust | None = None,
    bootstrap: str | None = None,
    metrics: ProjectorMetrics | None = None,
    clock: Clock | None = None,
    refresh_interval: float | None = None,
    health_interval: float | None = None,
    component: str | None = None,
    status_host: str | None = None,
    status_port: int | None = None,
) -> None:
    """Entry point of ``ess worker --role project``: run a :class:`Projector` on the
    configured topics until ``stop``, with the status server when ``status_port`` is given.

    ``bootstrap`` overrides ``settings.kafka.bootstrap_servers`` (a worker that started the
    embedded broker passes its address); ``trust`` overrides the keys from ``settings``;
    ``refresh_interval``/``health_interval`` (``ESS_REFRESH_INTERVAL_SEC``), ``component``
    (``ESS_HEALTH_COMPONENT``) and ``status_host`` (``ESS_STATUS_HOST``) the settings. There
    is no embedded-broker fallback here: a projector following a private, empty broker would
    assert "inactive" for a log nobody writes to. Topics are expected to exist
    (``ensure_topics``); the projector waits for them.
    """
    target = bootstrap or settings.kafka.bootstrap_servers
    project = settings.project
    if not target:
        raise ValueError(
            "the projector follows a shared ess.state: set KAFKA_BOOTSTRAP_SERVERS "
            "(or pass bootstrap=)"
        )
    projector = Projector(
        target,
        settings.registry(),
        policy_store,
        trust=trust or settings.state_trust(),
        clock=clock,
        refresh_interval=refresh_interval or project.refresh_interval_sec,
        health_interval=health_interval or project.refresh_interval_sec,
        component=component or project.health_component,
        metrics=metrics,
        log_timeout=project.log_timeout_sec,
        processor_timeout=project.processor_timeout_sec,
        backlog_timeout=project.command_backlog_timeout_sec,
        security=settings.kafka_security(),
    )
    server = None
    if status_port is not None:
        host = status_host or settings.observability.status_host
        server = await serve_status(projector, projector.metrics.registry, host, status_port)
    try:
        await projector.run(stop)
    finally:
        if server is not None:
            await server.stop()

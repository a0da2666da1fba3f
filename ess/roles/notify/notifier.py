"""The notifier (role ``notify``): follows ESS's own topics and tells people what happened.

Inputs, all written by ESS itself:

* ``ess.state``, through the :class:`~ess.statelog.StateLog` port and the verifying
  :class:`~ess.statelog.StateLogReader` every reader uses (only authentic entries alert),
  folded from offset 0 on every start: trips, resets, rejected resets;
* ``ess.actions``: the executor's ``flatten/stalled`` and ``flatten/verified_flat`` reports;
* ``ess.deadletter``: dead letters of the command topic;
* ``ess.liveness``: the command processor's sealed beats (verified like the projector does),
  for "processor gone" and "back".

What becomes an alert is decided by :mod:`ess.notify.alerts` (pure); delivery is
:class:`~ess.notify.delivery.Dispatcher`. The Telegram bot (:mod:`ess.notify.telegram`) runs
here too when configured, answering from this notifier's fold of the log.

Progress. The notifier commits, under its own consumer group (``<prefix>-notify``), one
position per source topic (``ess.state``, ``ess.actions``, ``ess.deadletter``): the first
record not yet *settled*, i.e. whose alerts some receiver has not finished with
(:mod:`ess.notify.progress`). A restart resumes there: records before it were delivered,
records from it on are delivered again (receivers deduplicate by key). ``ess.state`` is still
folded from 0 (the chain must be verified from its start), but only entries at or after the
committed position alert. On the very first start (no committed position) the notifier begins
at the end of each topic and commits that at once: it announces what happens from now on, not
the history. Liveness is not committed: "gone" is a matter of time, judged from the moment the
notifier starts, and its key is the last beat, so a restart during an outage re-sends the same
key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from loguru import logger

from ess.clock import Clock, SystemClock
from ess.core import INITIAL_STATE, EssState, evolve
from ess.core.attestation import seal_problem
from ess.core.reader import LogBroken, LoggedEntry, Trust
from ess.kafka.clients import KafkaSecurity, UnknownTopicError, consumer
from ess.notify.alerts import (
    Alert,
    FlattenEpisodes,
    ProcessorWatch,
    alerts_for_action,
    alerts_for_dead_letter,
    alerts_for_entry,
)
from ess.notify.delivery import Dispatcher
from ess.notify.progress import Progress
from ess.notify.receivers import TelegramReceiver
from ess.notify.telegram import TelegramAction, TelegramBot, trip_command_id
from ess.operator.commands import (
    manual_trip,
    outcomes_end,
    send_command,
    state_summary,
    wait_for_outcome,
)
from ess.roles.notify.metrics import NotifyMetrics
from ess.roles.tasks import run_until, wait_any
from ess.statelog import KafkaStateLog, RawRecord, StateLog, StateLogReader
from schemas import (
    ActionReport,
    DeadLetter,
    ProcessorBeat,
    RecordError,
    TopicRegistry,
    TripCommand,
    decode,
)

__all__ = ["Notifier", "NotifyStatus", "default_group_id"]

#: Liveness beats read back on start: never "alive now", but the last one names the key of a
#: "gone" alert (the same key after a restart during an outage).
_BEATS_ON_START: Final = 20
#: How long one fetch of the topics waits before the loop looks at ``stop`` and commits.
_POLL_MS: Final = 200

#: How long the state-log follow may take to clean up when stopping (then it is left
#: to finish in the background: stopping never hangs on a client that cannot close).
_STOP_GRACE_S = 5.0


def default_group_id(prefix: str) -> str:
    """The notifier's consumer group: its committed progress lives there."""
    return f"{prefix}-notify"


@dataclass(frozen=True, slots=True)
class NotifyStatus:
    """What ``/status`` serves. ``healthy`` (``/healthz``): connected and following a
    foldable log; a failing receiver does *not* make it unhealthy (restarting the notifier
    would not revive a revoked webhook): it shows in ``checks`` and ``receivers`` and in the
    ``ess_notify_receiver_up`` gauge."""

    healthy: bool
    checks: dict[str, str]
    caught_up: bool
    state: dict[str, Any]
    positions: dict[str, int]
    in_flight: dict[str, int]
    receivers: dict[str, dict[str, object]]
    fault: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checks": dict(self.checks),
            "caught_up": self.caught_up,
            "state": dict(self.state),
            "positions": dict(self.positions),
            "in_flight": dict(self.in_flight),
            "receivers": {name: dict(item) for name, item in self.receivers.items()},
            "fault": self.fault,
        }


@dataclass(slots=True)
class _Clients:
    #: ``ess.actions``, ``ess.deadletter`` and ``ess.liveness`` are fetched; ``ess.state`` is
    #: assigned but paused (it is read through the port): assigned only so that its
    #: position can be committed under the group.
    consumer: AIOKafkaConsumer
    liveness_end: int
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class Notifier:
    """Follows ESS's topics into alerts (see the module docstring).

    ``dispatcher`` delivers (its receivers are the notifier's); ``trust`` is what the
    state-log reader and the beat verification trust; ``processor_gone_after`` the
    silence (seconds) after which the processor is "gone". ``telegram`` with a non-empty
    ``telegram_allowed`` runs the command bot. ``clock`` stamps processor alerts and
    Telegram trips' fallbacks, ``monotonic`` measures silences (both injectable).
    """

    def __init__(
        self,
        bootstrap: str,
        registry: TopicRegistry,
        dispatcher: Dispatcher,
        *,
        trust: Trust,
        metrics: NotifyMetrics,
        processor_gone_after: float = 10.0,
        group_id: str | None = None,
        security: KafkaSecurity | None = None,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        state_log: StateLog | None = None,
        retry_interval: float = 1.0,
        commit_interval: float = 1.0,
        outcome_timeout: float = 30.0,
        telegram: TelegramReceiver | None = None,
        telegram_allowed: frozenset[int] = frozenset(),
        telegram_poll_timeout_sec: float = 30.0,
    ) -> None:
        if min(processor_gone_after, retry_interval, commit_interval, outcome_timeout) <= 0:
            raise ValueError("intervals and timeouts must be positive")
        self.bootstrap = bootstrap
        self.topics = registry
        self.dispatcher = dispatcher
        self.trust = trust
        self.metrics = metrics
        self.processor_gone_after = processor_gone_after
        self.group_id = group_id or default_group_id(registry.prefix)
        self.security = security
        self.clock: Clock = clock or SystemClock()
        self._monotonic = monotonic
        self.state_log: StateLog = (
            state_log
            if state_log is not None
            else KafkaStateLog(bootstrap, registry.state.name, security=security)
        )
        self._owns_state_log = state_log is None
        self.retry_interval = retry_interval
        self.commit_interval = commit_interval
        self.outcome_timeout = outcome_timeout
        self._bot = (
            TelegramBot(
                telegram,
                telegram_allowed,
                self,
                observer=metrics,
                poll_timeout_sec=telegram_poll_timeout_sec,
            )
            if telegram is not None and telegram_allowed
            else None
        )
        self._tps = {
            name: TopicPartition(spec.name, 0)
            for name, spec in (
                ("state", registry.state),
                ("actions", registry.actions),
                ("deadletter", registry.deadletter),
                ("liveness", registry.liveness),
            )
        }
        #: Set once the start positions are known (and committed) and ``ess.state`` was read
        #: to its end: from then on every new record alerts.
        self.ready = asyncio.Event()
        self._outcomes_from: dict[str, int] = {}
        self._reset_run()

    def _reset_run(self) -> None:
        self._reader = StateLogReader(self.trust, name="notifier")
        self._state: EssState = INITIAL_STATE
        self._episodes = FlattenEpisodes()
        self._progress: dict[str, Progress] = {}
        #: Where each source's alerts start: its committed position (or first-start end).
        self._starts: dict[str, int] = {}
        self._watch = ProcessorWatch(
            scope=self.topics.liveness.name,
            gone_after=self.processor_gone_after,
            started=self._monotonic(),
        )
        self._connected = False
        self._caught_up = False
        self._fault: str | None = None
        self._listed_end = 0
        self._highwater: int | None = None
        self._last_commit = 0.0
        self.ready.clear()

    # ------------------------------------------------------------------ views

    @property
    def state(self) -> EssState:
        """ESS's state as this notifier folded the log so far."""
        return self._reader.folded.state

    def status(self) -> NotifyStatus:
        """A snapshot for ``/status`` (no I/O)."""
        receivers = self.dispatcher.details()
        checks = {
            "state_log": (
                "corrupt"
                if self._fault is not None
                else "ok"
                if self._caught_up
                else "catching_up"
                if self._connected
                else "connecting"
            ),
            "command_processor": "gone" if self._watch.gone else "ok",
        }
        for name, health in self.dispatcher.health().items():
            checks[f"receiver:{name}"] = health
        if self._bot is not None:
            checks["telegram_commands"] = "failing" if self._bot.failing else "ok"
        return NotifyStatus(
            healthy=self._connected and self._fault is None,
            checks=checks,
            caught_up=self._caught_up,
            state=state_summary(self._reader.folded),
            positions={name: item.position() for name, item in self._progress.items()},
            in_flight={name: item.in_flight for name, item in self._progress.items()},
            receivers=receivers,
            fault=self._fault,
        )

    # ------------------------------------------------------------------ Telegram handler

    def status_text(self) -> str:
        """ESS's state as ``ess status`` says it, from this notifier's fold of the log."""
        if self._fault is not None:
            return f"ESS state unknown: the state log cannot be folded ({self._fault})."
        if not self._caught_up:
            return "ESS state unknown yet: the notifier is still reading ess.state."
        summary = state_summary(self._reader.folded)
        lines = [f"ESS {summary['status']}"]
        for name, value in summary.items():
            if name == "status" or value is None or value in ("", []):
                continue
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            lines.append(f"{name}: {shown}")
        return "\n".join(lines)

    async def send_trip(self, action: TelegramAction) -> TripCommand:
        """A manual trip exactly as ``ess trip`` builds it (:func:`manual_trip`), stamped
        with the message's time and an id derived from the message, sent to the command
        topic (:func:`send_command`)."""
        clock = _At(action.date) if action.date is not None else self.clock
        command = manual_trip(
            clock, action.detail, operator=f"telegram:{action.who}@{action.chat_id}"
        ).model_copy(update={"command_id": trip_command_id(action)})
        start = await outcomes_end(self.bootstrap, self.topics, security=self.security)
        await send_command(self.bootstrap, self.topics, command, security=self.security)
        self._outcomes_from[command.command_id] = start
        return command

    async def trip_outcome(self, command: TripCommand) -> str:
        """The processor's signed verdict on ``command``, as a reply."""
        start = self._outcomes_from.pop(command.command_id, 0)
        try:
            outcome = await wait_for_outcome(
                self.bootstrap,
                self.topics,
                command.command_id,
                trust=self.trust,
                timeout=self.outcome_timeout,
                from_offset=start,
                security=self.security,
            )
        except TimeoutError:
            return (
                f"No verdict on command {command.command_id} within "
                f"{self.outcome_timeout:g}s: is the command processor running? The trip is "
                "queued on the command topic and will be applied when it runs."
            )
        if outcome.outcome.value == "applied":
            if outcome.entry_kind == "activated":
                return f"ESS ACTIVE at seq {outcome.seq}: trading is stopped."
            return f"Trip recorded at seq {outcome.seq} (ESS was already ACTIVE)."
        if outcome.outcome.value == "duplicate":
            return f"Already applied: {outcome.detail}"
        return f"Trip not applied ({outcome.outcome.value}): {outcome.detail}"

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        """Notify until ``stop``. Connects (retrying until the topics exist and the broker
        answers), then follows the state log and the other topics, watches the processor,
        delivers, commits, and runs the Telegram bot when configured."""
        self._reset_run()
        clients = await self._connect(stop)
        if clients is None:
            return
        self._connected = True
        self.dispatcher.start()
        logger.bind(
            receivers=list(self.dispatcher.receivers),
            group=self.group_id,
            positions={name: item.position() for name, item in self._progress.items()},
            telegram_commands=self._bot is not None,
        ).info("notifier started")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._guard("state", self._follow_state(stop)))
                group.create_task(self._guard("topics", self._poll(clients, stop)))
                group.create_task(self._guard("processor", self._watch_processor(stop)))
                if self._bot is not None:
                    group.create_task(self._guard("telegram", self._bot.run(stop)))
        finally:
            self._connected = False
            await self.dispatcher.aclose()
            if self._bot is not None:
                await self._bot.receiver.close()
            await self._commit(clients, force=True)
            await self._close(clients)
            logger.info("notifier stopped")

    async def _guard(self, name: str, loop: Coroutine[Any, Any, None]) -> None:
        """Each loop handles its own I/O errors; anything escaping is a defect, and rather
        than notify half-way the notifier stops (the worker then exits non-zero)."""
        try:
            await loop
        except Exception:
            logger.bind(task=name).opt(exception=True).critical("notifier task crashed")
            raise

    async def _connect(self, stop: asyncio.Event) -> _Clients | None:
        """Start the group's consumer and learn where each source starts (committing the
        end of the topic on the very first start), retrying until it works or ``stop``."""
        tps = self._tps
        while not stop.is_set():
            client: AIOKafkaConsumer | None = None
            try:
                client = consumer(
                    self.bootstrap,
                    group_id=self.group_id,
                    client_id="ess-notify",
                    security=self.security,
                )
                await client.start()
                existing = await client.topics()
                for spec in (
                    self.topics.state,
                    self.topics.actions,
                    self.topics.deadletter,
                    self.topics.liveness,
                    self.topics.commands,
                ):
                    if spec.name not in existing:
                        raise UnknownTopicError(f"topic {spec.name} does not exist")
                self._listed_end = await self.state_log.end_offset()
                if self._owns_state_log:
                    await self.state_log.stop()
                client.assign(list(tps.values()))
                client.pause(tps["state"])
                ends = await client.end_offsets(list(tps.values()))
                ends[tps["state"]] = max(int(ends[tps["state"]]), self._listed_end)
                first: dict[TopicPartition, int] = {}
                starts: dict[str, int] = {}
                for name in ("state", "actions", "deadletter"):
                    committed = await client.committed(tps[name])
                    if committed is None:
                        first[tps[name]] = int(ends[tps[name]])
                        starts[name] = int(ends[tps[name]])
                    else:
                        starts[name] = int(committed)
                if first:
                    await client.commit(first)
                    logger.bind(
                        group=self.group_id, starts={tp.topic: at for tp, at in first.items()}
                    ).info("notifier's first start: alerting from the end of each topic")
                self._starts = starts
                self._progress = {name: Progress(at) for name, at in starts.items()}
                client.seek(tps["actions"], starts["actions"])
                client.seek(tps["deadletter"], starts["deadletter"])
                liveness_end = int(ends[tps["liveness"]])
                client.seek(tps["liveness"], max(0, liveness_end - _BEATS_ON_START))
                self._watch.started = self._monotonic()
                clients = _Clients(client, liveness_end=liveness_end)
                clients.committed = {tps[name]: at for name, at in starts.items()}
                return clients
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "notifier cannot connect; retrying"
                )
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()
                await wait_any(self.retry_interval, stop)
        if self._owns_state_log:
            with contextlib.suppress(Exception):
                await self.state_log.stop()
        return None

    async def _close(self, clients: _Clients) -> None:
        if self._owns_state_log:
            with contextlib.suppress(Exception):
                await self.state_log.stop()
        try:
            async with asyncio.timeout(5.0):
                await clients.consumer.stop()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception as exc:  # stopping is best effort; the process is going away
            logger.bind(error=f"{type(exc).__name__}: {exc}").warning(
                "notifier consumer did not stop cleanly"
            )

    # ------------------------------------------------------------------ delivery

    def _submit(self, alert: Alert, progress: Progress | None, offset: int | None) -> int:
        """Hand ``alert`` to the dispatcher; each receiver's settlement settles ``offset``."""
        self.metrics.alert(alert)
        on_settled = None
        if progress is not None and offset is not None:
            source, at = progress, offset

            def on_settled() -> None:
                source.settled(at)

        logger.bind(kind=alert.kind.value, key=alert.key, origin=alert.origin).info(
            f"alert: {alert.title}"
        )
        return self.dispatcher.submit(alert, on_settled)

    # ------------------------------------------------------------------ ess.state

    async def _follow_state(self, stop: asyncio.Event) -> None:
        """Fold ``ess.state`` through the port until ``stop``, following again from where
        the fold stands after any failure."""
        while not stop.is_set():
            try:
                await run_until(stop, self._fold_state(), grace=_STOP_GRACE_S, name="state")
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "ess.state fetch failed; retrying"
                )
            if stop.is_set():
                return
            await wait_any(self.retry_interval, stop)

    async def _fold_state(self) -> None:
        batches = self.state_log.follow(self._reader.folded.next_offset, on_end=self._state_end)
        try:
            async for records in batches:
                if self._fault is None:
                    self._apply(records)
                    self._check_caught_up()
        finally:
            if isinstance(batches, AsyncGenerator):
                await batches.aclose()

    def _state_end(self, end: int) -> None:
        self._highwater = end
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self._caught_up or self._highwater is None:
            return
        if self._reader.folded.next_offset >= max(self._highwater, self._listed_end):
            self._caught_up = True
            state = self.state
            logger.bind(status=state.status.value, seq=state.last_seq).info(
                "notifier caught up with ess.state"
            )
            self.ready.set()

    def _apply(self, records: list[RawRecord]) -> None:
        """Fold ``records``, alert on the authentic entries at or after the committed
        position, and mark every record read (those after a break in the log are not: the
        next start reads them again)."""
        applied, broken_at = self._feed(records)
        progress = self._progress["state"]
        start = self._starts["state"]
        counts: dict[int, int] = defaultdict(int)
        for logged in applied:
            before = self._state
            self._state = evolve(before, logged.entry)
            if logged.offset < start:
                continue
            for alert in alerts_for_entry(logged, before, scope=self.topics.state.name):
                counts[logged.offset] += self._submit(alert, progress, logged.offset)
        for record in records:
            if broken_at is not None and record.offset >= broken_at:
                break
            if record.offset >= start:
                progress.read(record.offset, counts.get(record.offset, 0))

    def _feed(self, records: list[RawRecord]) -> tuple[list[LoggedEntry], int | None]:
        """The reader's authentic entries of ``records`` and the offset the log broke at
        (``None``: it did not). A broken batch is fed again one record at a time, so the
        entries before the break still alert."""
        try:
            return list(self._reader.feed(records).applied), None
        except LogBroken:
            pass
        applied: list[LoggedEntry] = []
        for record in records:
            try:
                applied += self._reader.feed([record]).applied
            except LogBroken as exc:
                self._fault = f"offset {record.offset}: {exc}"
                logger.bind(offset=record.offset, error=str(exc)).critical(
                    "ess.state cannot be folded: the notifier stops reading it until the log "
                    "is repaired and the notifier restarted"
                )
                return applied, record.offset
        return applied, None  # pragma: no cover - the batch broke above

    # ------------------------------------------------------------------ other topics

    async def _poll(self, clients: _Clients, stop: asyncio.Event) -> None:
        """Fetch ``ess.actions``, ``ess.deadletter`` and ``ess.liveness``; commit the
        settled positions every ``commit_interval``."""
        follower = clients.consumer
        while not stop.is_set():
            try:
                batches = await follower.getmany(timeout_ms=_POLL_MS)
                now = self._monotonic()
                wall = self.clock.now()
                for tp, records in batches.items():
                    for record in records:
                        self._take(
                            tp, record.offset, record.value, clients=clients, now=now, wall=wall
                        )
                if now - self._last_commit >= self.commit_interval:
                    await self._commit(clients)
            except Exception as exc:
                logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                    "notifier fetch failed; retrying"
                )
                await wait_any(self.retry_interval, stop)

    def _take(
        self,
        tp: TopicPartition,
        offset: int,
        value: bytes | None,
        *,
        clients: _Clients,
        now: float,
        wall: datetime,
    ) -> None:
        tps = self._tps
        if tp == tps["liveness"]:
            self._take_beat(value, live=offset >= clients.liveness_end, now=now, wall=wall)
        elif tp == tps["actions"]:
            self._take_action(tp, offset, value)
        elif tp == tps["deadletter"]:
            self._take_dead_letter(tp, offset, value)

    def _take_action(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        progress = self._progress["actions"]
        try:
            report = decode(ActionReport, value or b"")
        except RecordError as exc:
            self._refused(tp.topic, offset, str(exc))
            progress.read(offset)
            return
        self._episodes, alerts = alerts_for_action(
            report, self._episodes, topic=tp.topic, partition=tp.partition, offset=offset
        )
        progress.read(offset, sum(self._submit(alert, progress, offset) for alert in alerts))

    def _take_dead_letter(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        progress = self._progress["deadletter"]
        try:
            letter = decode(DeadLetter, value or b"")
        except RecordError as exc:
            self._refused(tp.topic, offset, str(exc))
            progress.read(offset)
            return
        alerts = alerts_for_dead_letter(
            letter,
            commands_topic=self.topics.commands.name,
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
        )
        progress.read(offset, sum(self._submit(alert, progress, offset) for alert in alerts))

    def _take_beat(self, value: bytes | None, *, live: bool, now: float, wall: datetime) -> None:
        """Verify a liveness record (sealed by a trusted processor key for this topic) and
        hand it to the watch."""
        topic = self.topics.liveness.name
        try:
            document = orjson.loads(value or b"")
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            problem = seal_problem(document, self.trust.processor_keys, scope=topic)
            if problem is not None:
                raise ValueError(problem)
            beat = decode(ProcessorBeat, value or b"")
        except (ValueError, RecordError) as exc:
            self._refused(topic, None, str(exc))
            return
        if not live:
            self._watch.seen(beat)
            return
        alert = self._watch.beat(beat, arrived=now, wall=wall)
        if alert is not None:
            self.metrics.processor_up.set(1)
            self._submit(alert, None, None)

    def _refused(self, topic: str, offset: int | None, why: str) -> None:
        self.metrics.refused_records.labels(topic).inc()
        logger.bind(topic=topic, offset=offset, error=why[:300]).warning(
            "notifier refused a record"
        )

    async def _watch_processor(self, stop: asyncio.Event) -> None:
        """Ask the watch whether the processor is gone, a few times per bound."""
        interval = min(1.0, self.processor_gone_after / 4)
        while not stop.is_set():
            alert = self._watch.check(self._monotonic(), wall=self.clock.now())
            if alert is not None:
                self.metrics.processor_up.set(0)
                self._submit(alert, None, None)
            await wait_any(interval, stop)

    # ------------------------------------------------------------------ progress

    async def _commit(self, clients: _Clients, *, force: bool = False) -> None:
        """Commit each source's settled position where it moved (``force``: try even after
        ``stop``, once, bounded)."""
        self._last_commit = self._monotonic()
        changed = {
            self._tps[name]: progress.position()
            for name, progress in self._progress.items()
            if clients.committed.get(self._tps[name]) != progress.position()
        }
        if not changed:
            return
        try:
            async with asyncio.timeout(5.0 if force else None):
                await clients.consumer.commit(changed)
        except Exception as exc:
            self.metrics.commit_errors.inc()
            logger.bind(error=f"{type(exc).__name__}: {exc}").error(
                "notifier progress not committed (a restart will redeliver)"
            )
            return
        clients.committed.update(changed)
        logger.bind(positions={tp.topic: at for tp, at in changed.items()}).debug(
            "notifier progress committed"
        )


class _At:
    """A clock stopped at one instant: a Telegram trip is stamped with its message's time."""

    def __init__(self, when: datetime) -> None:
        self._when = when

    def now(self) -> datetime:
        return self._when

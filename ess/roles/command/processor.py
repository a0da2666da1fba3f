"""The command processor: the only consumer of ``ess.commands``, the only writer of ``ess.state``.

Every trip and reset passes through here, one at a time, in the total order of the
single-partition command topic. The processor is a thin shell around the pure core: it decodes a
command, asks :func:`ess.core.decide` what to append, seals and appends it, and folds it in
with the same reader (:class:`ess.statelog.StateLogReader`) every reader uses.

Order of work for one command (at-least-once, deduplicated in the domain, no transactions):

1. look at the log's end first: entries another processor wrote mean this one is fenced;
   records that do not verify (someone else wrote to ``ess.state``) are answered with an
   ``unauthorized_access`` trip that acknowledges them (see :mod:`ess.core.reader`);
2. decode. A record that is not a valid command is dead-lettered *and recorded as a*
   ``manual`` *trip* (id derived from its offset): the command topic is privileged, and a stop
   request nobody can read must not be lost. A record without ``kind`` is read as a trip; a
   reset must say ``"kind": "reset"`` and never comes out of a malformed record;
3. ``decide(state, command, now=clock.now(), policy=...)``;
4. side effects derived from the decision (the ``unauthorized_access`` security event of a
   forged, unknown-operator or misdirected reset) are published *before* the append, with ids
   derived from the command, so a crash anywhere re-publishes rather than loses them;
5. each entry, stamped with ``command_offset`` (the tracking record), chained to the last one
   (``prev``) and signed with the processor's key, is appended and its ack awaited;
6. the command's outcome (applied, duplicate or rejected) goes to ``ess.outcomes``, then the
   command offset is committed.

A crash between 5 and 6 is harmless: on start the processor folds ``ess.state`` and resumes at
``max(committed offset, highest command_offset + 1)``, so the command is not even redelivered;
the outcomes of the commands it skips that way are published again (at least once).
Independently, ``decide`` appends nothing for a command already applied.

Its own retry is not a second writer. Where the broker grants idempotent producers the state
log's producer is idempotent (decided at start). Where it does not (the embedded broker), a
lost produce answer makes the client send the entry again and it lands twice: the second
copy is byte-identical, every reader skips it as a copy, and the processor does too.

Fencing: ``ess.state`` has one writer. Before each append the processor checks the log's
end; any *authentic* entry it did not write (one signed with the processor key and chained,
i.e. another processor with the same key) means a second writer exists, and the processor
stops with :class:`FencedError` instead of writing a diverging history. That discipline lives in
:class:`~ess.roles.command.writer.StateWriter`, over the state-log port, and is tested there
without a broker. The consumer group
adds a second guard: only one member owns the partition. When ownership moves (a restart, a
standby taking over), the new owner first adopts what the previous owner appended.

Liveness: about twice a second the processor publishes a signed :class:`~schemas.ProcessorBeat`
on ``ess.liveness`` with where it stands in ``ess.commands`` and ``ess.state``. The projector
vouches for an INACTIVE PolicyStore record only while these beats are fresh and the command
backlog is bounded, so gates close when the processor is dead, stopped, fenced or wedged.

A lost log: before it serves (each time it takes over the command partition) the processor
reads the PolicyStore record once. An ACTIVE record at a ``seq`` the log does not reach,
while the log says INACTIVE, is a stop the log has lost (an embedded broker keeps nothing on
disk); the processor re-establishes it with an ``activated`` entry, reason
``state_log_lost``, numbered past the record's (see :mod:`ess.core.recovery`). A record whose
activation does not verify under a trusted processor key is adopted too (fail closed), and
reported as an ``unauthorized_access`` security event. A PolicyStore that cannot be read is
tried again about every :data:`LOST_LOG_RETRY_S` seconds until one read works.

Run it alone with ``python -m ess.roles.command.processor`` (settings from the environment, see
:func:`run_processor`); SIGTERM/SIGINT finish the command in hand, commit and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from loguru import logger
from pydantic import ValidationError

from ess.api.protocols import EMERGENCY_STOP_KEY, PolicyStore
from ess.clock import Clock, SystemClock
from ess.core import EssState, ResetPolicy, decide
from ess.core.attestation import SigningKey, seal
from ess.core.decider import (
    SUSPICIOUS_REJECTIONS,
    TRIP_RECORDS_PER_ACTIVATION,
    trip_is_coalesced,
    trip_is_duplicate,
)
from ess.core.ids import derive_id
from ess.core.reader import LogBroken, Trust
from ess.core.recovery import LostStop, lost_stop, reestablish
from ess.core.signing import KeyMaterialError
from ess.kafka.broker import BrokerError, verify_topic_configs
from ess.kafka.clients import KafkaSecurity, consumer, producer, supports_idempotence
from ess.kafka.deadletter import DeadLetterWriter
from ess.observability.logging import configure_logging
from ess.observability.status import serve_status
from ess.policystore import (
    ClosablePolicyStore,
    CorruptPolicyValue,
    policy_store_from_url,
    redact_url,
)
from ess.roles.command.errors import FencedError, ProcessorError, StartupRefused, critical
from ess.roles.command.metrics import ProcessorMetrics
from ess.roles.command.writer import Fed, StateWriter
from ess.settings import EssSettings, warn_environment
from ess.statelog import Folded, KafkaStateLog, StateLog
from schemas import (
    ActivatedEntry,
    Command,
    CommandOutcome,
    CommandOutcomeKind,
    ProcessorBeat,
    ReasonCode,
    RecordError,
    ResetApprovalEntry,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    SecurityEvent,
    SecurityEventKind,
    StateEntry,
    TopicRegistry,
    TriggerRef,
    TripCommand,
    TripRecordedEntry,
    clip,
    decode,
    encode,
)

__all__ = [
    "EXIT_FENCED",
    "LOST_LOG_RETRY_S",
    "SOURCE",
    "CommandProcessor",
    "FencedError",
    "ProcessorError",
    "ProcessorHooks",
    "ProcessorStats",
    "ProcessorStatus",
    "StartupRefused",
    "configured_policy_store",
    "decode_command",
    "default_group_id",
    "foreign_acknowledgement",
    "main",
    "outcome_for",
    "resume_offset",
    "run_processor",
    "security_event_for",
    "undecodable_trip",
]

#: The processor's name as the source of the records it publishes (security events, trips).
SOURCE: Final = "ess-command-processor"
#: Exit status of ``python -m ess.roles.command.processor`` after :class:`FencedError`: distinct
#: from a plain failure (1) so that a supervisor can alert on "a second writer exists" instead of
#: looping.
EXIT_FENCED: Final = 3

#: How long one poll for commands may block before the loop re-checks ``stop``: the bound on
#: shutdown latency. Delivery latency is set by the consumer's fetch wait (``ess.kafka.clients``).
_POLL_MS: Final = 100

#: How often a PolicyStore that could not be read for the lost-log check is tried again.
LOST_LOG_RETRY_S: Final = 5.0
#: Bound on one read of the PolicyStore record (the processor holds its lock meanwhile).
_STORE_TIMEOUT_S: Final = 3.0

#: How many of the last entries appended for commands are remembered for re-publishing their
#: outcomes after a restart (:meth:`CommandProcessor._republish_outcomes`). The commit trails
#: the append by one command at most unless commits fail; this bounds the replay when the
#: group has no commit at all.
_OUTCOMES_REMEMBERED: Final = 16


class ProcessorHooks:
    """Named points in the processor's work where a harness may act; each does nothing here.

    The seam for fault injection: crash tests subclass it (``ess.chaos.crash_child`` kills
    the process at a chosen point) and hand it to :func:`main` or :class:`CommandProcessor`.
    Production passes none, so no setting or environment variable can make it misbehave.
    """

    def after_append(self, entry: StateEntry, offset: int) -> None:
        """An entry's append was acknowledged at ``offset`` and folded in; its command is not
        yet committed nor its outcome published (the worst moment to crash)."""


@dataclass(slots=True)
class ProcessorStats:
    """Counters since this processor started (the metrics carry the same by label).

    ``duplicates`` counts commands that appended nothing because they were already applied:
    skipped by the tracked offset, or deduplicated by ``decide`` (same command id).
    """

    commands_seen: int = 0
    entries_appended: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    security_events: int = 0
    undecodable: int = 0
    own_copies: int = 0
    acknowledgements: int = 0
    lost_log_reestablished: int = 0


def default_group_id(prefix: str) -> str:
    """The processor's consumer group under a topic prefix: ``ess-command-processor`` for the
    default prefix. Named after the prefix so that two ESS deployments sharing a cluster (or
    two test runs) never share committed offsets or group membership."""
    return f"{prefix}-command-processor"


def resume_offset(committed: int | None, max_command_offset: int | None) -> int:
    """Where to resume ``ess.commands``: after the committed offset *and* after the last
    command the state log says was applied. The tracking record wins when a commit was lost
    (a crash between append and commit); the commit wins when the last commands appended
    nothing (dead letters, duplicates)."""
    tracked = 0 if max_command_offset is None else max_command_offset + 1
    return max(committed or 0, tracked)


# =========================================================================== pure helpers


def decode_command(raw: bytes | None) -> TripCommand | ResetCommand:
    """The command in ``raw``. A record without ``kind`` is read as a trip (the trip's
    JSON Schema makes ``kind`` optional); a reset must say so. Raises :class:`RecordError`."""
    value = raw or b""
    try:
        command: TripCommand | ResetCommand = decode(Command, value)
    except RecordError:
        if not _lacks_kind(value):
            raise
        return decode(TripCommand, value)
    return command


def _lacks_kind(value: bytes) -> bool:
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and "kind" not in document


def undecodable_trip(
    *, topic: str, offset: int, error: str, now: datetime, minimal_of: TripCommand | None = None
) -> TripCommand:
    """The ``manual`` trip recorded for a command record that cannot be obeyed as sent.

    ``minimal_of``: a valid trip that could not be recorded in full keeps its id, reason and
    source. Otherwise the id is derived from the record's position, so processing the same
    record again records nothing twice.
    """
    if minimal_of is not None:
        return TripCommand(
            command_id=minimal_of.command_id,
            reason=minimal_of.reason,
            source=minimal_of.source,
            ts=minimal_of.ts,
            detail=clip(f"recorded with minimal fields: {error}"),
        )
    return TripCommand(
        command_id=derive_id("undecodable-command", topic, offset),
        reason=ReasonCode.MANUAL,
        source=SOURCE,
        detail=clip(f"undecodable command at {topic} offset {offset}, treated as a stop: {error}"),
        ts=now,
    )


def foreign_acknowledgement(folded: Folded, *, scope: str, now: datetime) -> TripCommand | None:
    """The ``unauthorized_access`` trip that acknowledges the foreign records ``folded`` has
    seen in the state log ``scope``, or ``None`` when there are none to acknowledge."""
    last = folded.last_unacknowledged
    if last is None:
        return None
    why = folded.last_foreign.why if folded.last_foreign is not None else "unknown"
    return TripCommand(
        command_id=derive_id("state-log-foreign", scope, last),
        reason=ReasonCode.UNAUTHORIZED_ACCESS,
        source=SOURCE,
        detail=clip(
            f"records in {scope} that the command processor did not write, up to offset "
            f"{last} ({why}); they were not applied"
        ),
        ts=now,
        trigger=TriggerRef(topic=scope, partition=0, offset=last, event_ts=now),
    )


def security_event_for(entry: StateEntry, *, ts: datetime) -> SecurityEvent | None:
    """The ``unauthorized_access`` event owed for ``entry``, if any.

    Resets that no registered key vouched for (unknown operator, bad signature) count, and
    authentic resets aimed at another activation (held back or replayed); an expired or
    reused one is an operator mistake, not an intrusion. The event id is derived from the
    command id, so a re-published event is recognisably the same one.
    """
    if not isinstance(entry, ResetRejectedEntry) or entry.why not in SUSPICIOUS_REJECTIONS:
        return None
    return SecurityEvent(
        event_id=derive_id(SOURCE, SecurityEventKind.UNAUTHORIZED_ACCESS, entry.command_id),
        kind=SecurityEventKind.UNAUTHORIZED_ACCESS,
        source=SOURCE,
        # The reason first: the quoted id and operator come from the sender, and escaped
        # non-printable characters can make them long enough to clip everything after them.
        detail=clip(
            f"reset rejected: {entry.why.value} ({entry.detail}); command "
            f"{entry.command_id!r} claiming operator {entry.operator!r}"
        ),
        ts=ts,
    )


def outcome_for(
    *,
    command_id: str,
    offset: int,
    command_kind: str,
    entries: list[StateEntry],
    now: datetime,
    detail: str = "",
    coalesced: bool = False,
) -> CommandOutcome:
    """The outcome record of one command given the entries appended for it (``coalesced``:
    a trip decided while the activation already held its maximum of recorded trips)."""
    if not entries and coalesced:
        outcome, entry_kind, seq = CommandOutcomeKind.COALESCED, None, None
        detail = detail or (
            f"ESS is ACTIVE and this activation already recorded "
            f"{TRIP_RECORDS_PER_ACTIVATION} trips: not appended (the stop is in force)"
        )
    elif not entries:
        outcome, entry_kind, seq = CommandOutcomeKind.DUPLICATE, None, None
        detail = detail or "already applied; nothing appended"
    else:
        last = entries[-1]
        entry_kind, seq = last.kind, last.seq
        outcome = (
            CommandOutcomeKind.REJECTED
            if isinstance(last, ResetRejectedEntry)
            else CommandOutcomeKind.APPLIED
        )
        if isinstance(last, ResetRejectedEntry):
            detail = detail or f"{last.why.value}: {last.detail}"
        elif isinstance(last, ResetApprovalEntry):
            detail = detail or f"approval {len(last.approvals)} of {last.quorum}"
    return CommandOutcome(
        command_id=command_id,
        command_offset=offset,
        command_kind=command_kind,
        outcome=outcome,
        entry_kind=entry_kind,
        seq=seq,
        detail=clip(detail),
        ts=now,
    )


@dataclass(frozen=True, slots=True)
class ProcessorStatus:
    """What ``GET /status`` of the command processor serves."""

    owner: bool
    running: bool
    next_command_offset: int
    state_next_offset: int
    seq: int | None
    status: str
    log_trusted: bool
    idempotent: bool | None
    key_id: str
    stats: dict[str, int] = field(default_factory=dict)
    failure: str | None = None
    #: How long the command in hand has been processed (``None``: idle).
    busy_s: float | None = None
    wedged_after_s: float = 30.0
    #: The lost-log check: ``off`` (no PolicyStore), ``pending`` (not read yet), ``done``.
    lost_log_check: str = "off"

    @property
    def wedged(self) -> bool:
        """One command has been in hand longer than ``wedged_after_s`` (Kafka retries that
        never end, a stuck broker): a restart is the remedy, so ``/healthz`` fails."""
        return self.busy_s is not None and self.busy_s > self.wedged_after_s

    @property
    def healthy(self) -> bool:
        """Running (an owner or a standby), not failed and not wedged."""
        return self.running and self.failure is None and not self.wedged

    @property
    def checks(self) -> Mapping[str, str]:
        return {
            "owner": "yes" if self.owner else "standby",
            "state_log": "ok" if self.log_trusted else "untrusted",
            "failure": self.failure or "none",
            "progress": "wedged" if self.wedged else "ok",
            "lost_log_check": self.lost_log_check,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "running": self.running,
            "healthy": self.healthy,
            "next_command_offset": self.next_command_offset,
            "state_next_offset": self.state_next_offset,
            "seq": self.seq,
            "status": self.status,
            "log_trusted": self.log_trusted,
            "idempotent_producer": self.idempotent,
            "key_id": self.key_id,
            "checks": dict(self.checks),
            "stats": dict(self.stats),
            "failure": self.failure,
        }


# =========================================================================== the processor


class CommandProcessor:
    """Consume ``ess.commands``, decide, append to ``ess.state``; see the module notes.

    Args:
        bootstrap: Kafka bootstrap servers. Topics must exist (the processor never creates
            them): ``ess.commands`` and ``ess.state`` with exactly one partition each, plus
            ``ess.deadletter``, ``ess.security``, ``ess.liveness`` and ``ess.outcomes``.
        registry: Topic names.
        reset_policy: Who may reset, quorum and time bounds.
        clock: Stamps entries, dead letters and security events; ``decide`` gets its ``now``.
        signing_key: The processor's own key: it signs every entry, beat and outcome.
        trust: What the processor's own reader of ``ess.state`` trusts (its own key among
            the processor keys).
        group_id: Consumer group (default :func:`default_group_id` of the registry's prefix):
            committed offsets live there, and membership makes one processor the owner.
        join_group: ``False`` assigns the partition directly instead of joining the group
            (offsets are still committed under ``group_id``). That saves tests and tools the
            group join (seconds on the embedded broker: docs/embedded-broker.md, "Group
            joins"), and gives up the group's single-owner guard; fencing remains.
        hooks: Named points a test harness acts on (:class:`ProcessorHooks`); none by default.
        security: TLS/SASL of every client (default PLAINTEXT).
        beat_interval: Seconds between liveness beats (and idle checks of the log's end).
        metrics: Prometheus metrics (a fresh registry when omitted).
        wedged_after: Seconds one command may be in hand before ``/status`` calls the
            processor wedged.
        state_log: ``ess.state`` (default: the Kafka topic on ``bootstrap``). Appends,
            fencing and catch-up go through :class:`~ess.roles.command.writer.StateWriter`
            on this port.
        policy_store: Where the projector writes ``emergency_stop``, read (never written)
            for the lost-log check before the processor serves; ``None`` turns the check off.
        lost_log_retry: Seconds between reads of a PolicyStore that could not be read for
            the lost-log check.
    """

    def __init__(
        self,
        bootstrap: str,
        registry: TopicRegistry,
        *,
        reset_policy: ResetPolicy,
        clock: Clock,
        signing_key: SigningKey,
        trust: Trust,
        group_id: str | None = None,
        join_group: bool = True,
        hooks: ProcessorHooks | None = None,
        security: KafkaSecurity | None = None,
        beat_interval: float = 0.5,
        metrics: ProcessorMetrics | None = None,
        wedged_after: float = 30.0,
        state_log: StateLog | None = None,
        policy_store: PolicyStore | None = None,
        lost_log_retry: float = LOST_LOG_RETRY_S,
    ) -> None:
        if signing_key.key_id not in trust.processor_keys:
            raise ValueError("the processor's own key must be among the trusted processor keys")
        self.stats = ProcessorStats()
        self.metrics = metrics if metrics is not None else ProcessorMetrics()
        self._bootstrap = bootstrap
        self._security = security
        self._registry = registry
        self._policy = reset_policy
        self._clock = clock
        self._key = signing_key
        self._trust = trust
        self._scope = registry.state.name
        self._group_id = group_id or default_group_id(registry.prefix)
        self._join_group = join_group
        self._hooks = hooks if hooks is not None else ProcessorHooks()
        self._beat_interval = beat_interval
        self._wedged_after = wedged_after
        #: Since when (monotonic) the command in hand is being processed; None when idle.
        self._busy_since: float | None = None
        self._commands = TopicPartition(registry.commands.name, 0)
        #: ``ess.state`` through the port: appended, read back and watched (its end offset).
        self._log = (
            state_log
            if state_log is not None
            else KafkaStateLog(bootstrap, registry.state.name, security=security)
        )
        self._writer = StateWriter(self._log, key=signing_key, trust=trust, on_fed=self._on_fed)
        #: The last entries appended for commands (``command_offset`` set), read or written.
        self._recent: deque[StateEntry] = deque(maxlen=_OUTCOMES_REMEMBERED)
        self._next_command = 0
        self._owned = False
        self._running = False
        self._idempotent: bool | None = None
        self._run_id = str(uuid.uuid4())
        #: Bumped on every assignment change: records fetched before it are stale.
        self._generation = 0
        #: Held while one command is processed and while ownership changes hands, so a
        #: rebalance waits for the command in hand to be appended and committed.
        self._lock = asyncio.Lock()
        #: aiokafka swallows exceptions raised in rebalance callbacks; they are parked here
        #: and re-raised by the loop.
        self._failure: ProcessorError | None = None
        self._clients: _Clients | None = None
        #: The lost-log check (module docstring): pending until one read of the record works.
        self._store = policy_store
        self._lost_log_pending = policy_store is not None
        self._lost_log_failures = 0
        self._lost_log_next_try = 0.0
        self._lost_log_retry = lost_log_retry

    # ------------------------------------------------------------------ observation

    @property
    def state(self) -> EssState:
        """The state folded from ``ess.state`` as far as this processor has read or written."""
        return self._writer.folded.state

    @property
    def folded(self) -> Folded:
        return self._writer.folded

    @property
    def next_command_offset(self) -> int:
        """Offset in ``ess.commands`` of the next command to process."""
        return self._next_command

    @property
    def owns_commands(self) -> bool:
        """True while this processor owns the command partition and is caught up."""
        return self._owned

    def status(self) -> ProcessorStatus:
        """A snapshot for ``/status`` (no I/O)."""
        folded = self._writer.folded
        return ProcessorStatus(
            owner=self._owned,
            running=self._running,
            next_command_offset=self._next_command,
            state_next_offset=folded.next_offset,
            seq=folded.state.last_seq,
            status=folded.state.status.value,
            log_trusted=folded.trusted,
            idempotent=self._idempotent,
            key_id=self._key.key_id,
            stats={name: getattr(self.stats, name) for name in ProcessorStats.__dataclass_fields__},
            failure=str(self._failure) if self._failure is not None else None,
            busy_s=None if self._busy_since is None else time.monotonic() - self._busy_since,
            wedged_after_s=self._wedged_after,
            lost_log_check=(
                "off" if self._store is None else "pending" if self._lost_log_pending else "done"
            ),
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Start, process commands until ``stop`` is set, then shut down cleanly.

        The command in hand when ``stop`` is set is finished (appended, committed). Raises
        :class:`StartupRefused` before processing anything if the topics or the state log
        cannot be trusted, :class:`FencedError` if a second writer shows up, and
        :class:`ProcessorError` if Kafka fails under it. Clients are closed in every case.
        """
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    await self._start(stack)
                except (KafkaError, TimeoutError) as exc:
                    raise critical(
                        ProcessorError, f"command processor could not start: {exc!r}"
                    ) from exc
                self._running = True
                beats = asyncio.create_task(self._beat_loop(stop), name="ess-processor-beat")
                try:
                    await self._loop(stop)
                finally:
                    beats.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beats
        finally:
            self._owned, self._clients, self._running = False, None, False
            self.metrics.observe_owner(False)
        logger.bind(**self._progress()).info("command processor stopped")

    @property
    def _io(self) -> _Clients:
        if self._clients is None:
            raise RuntimeError("the command processor is not running")
        return self._clients

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        commands = consumer(
            self._bootstrap, group_id=self._group_id, client_id=SOURCE, security=self._security
        )
        await commands.start()
        # Stopping leaves the group: a prompt handover on Kafka. (Tansu 0.6.0 ignores the
        # LeaveGroup and waits for the 6 s session to expire before it rebalances.)
        stack.push_async_callback(commands.stop)
        await self._check_topics(commands)
        await self._catch_up()
        logger.bind(
            operators=sorted(self._policy.operators),
            quorum=self._policy.quorum,
            key_id=self._key.key_id,
            **self._progress(),
        ).info("state rebuilt from the log")

        self._idempotent = await supports_idempotence(self._bootstrap, security=self._security)
        if isinstance(self._log, KafkaStateLog):
            self._log.idempotent = self._idempotent
        await self._log.start()
        stack.push_async_callback(self._log.stop)
        # Dead letters, security events, outcomes, beats; ess.state has its own producer.
        side = producer(self._bootstrap, client_id=SOURCE, security=self._security)
        await side.start()
        stack.push_async_callback(side.stop)
        self._clients = _Clients(
            commands, side, DeadLetterWriter(side, self._registry.deadletter.name, self._clock)
        )

        if self._join_group:
            commands.subscribe([self._commands.topic], listener=_Ownership(self))
        else:
            commands.assign([self._commands])
            async with self._lock:
                await self._take_ownership()

    async def _check_topics(self, client: AIOKafkaConsumer) -> None:
        """Refuse to start unless every topic exists and commands/state have one partition.

        Only topics seen in the full listing are looked at: naming a missing topic in a
        metadata request makes Tansu create it, with four partitions."""
        existing = await client.topics()
        problems: list[str] = []
        for spec in (self._registry.commands, self._registry.state):
            if spec.name not in existing:
                problems.append(f"{spec.name} does not exist")
                continue
            # The client's metadata is from its start a moment ago, which listed every topic.
            count = len(client.partitions_for_topic(spec.name) or ())
            if count != 1:
                problems.append(f"{spec.name} has {count} partitions, must have exactly 1")
        problems += [
            f"{spec.name} does not exist"
            for spec in (
                self._registry.deadletter,
                self._registry.security,
                self._registry.liveness,
                self._registry.outcomes,
            )
            if spec.name not in existing
        ]
        if problems:
            raise critical(
                StartupRefused,
                "command processor refuses to start: "
                + "; ".join(problems)
                + ". One partition is what gives ESS a total order of commands and a single "
                "state writer; create the topics from the registry "
                "(ess.kafka.broker.ensure_topics).",
                prefix=self._registry.prefix,
            )

    async def _catch_up(self) -> None:
        """Fold every entry after where this processor stands in ``ess.state``."""
        try:
            await self._writer.catch_up()
        except LogBroken as exc:
            raise critical(
                StartupRefused,
                f"state log {self._scope} cannot be folded: {exc}. The command processor "
                "refuses to run (fail closed); repair the log before restarting.",
                topic=self._scope,
            ) from exc

    def _on_fed(self, fed: Fed) -> None:
        """Count what a fold of the log brought, and remember the entries of recent commands
        (their outcomes are published again after a restart)."""
        self.metrics.foreign_records(fed.foreign)
        self.stats.own_copies += fed.own_copies
        self._recent.extend(
            item.entry for item in fed.applied if item.entry.command_offset is not None
        )

    async def _take_ownership(self) -> None:
        """Adopt what a previous owner appended, re-establish a stop the log has lost, then
        seek to the resume offset. Lock held."""
        await self._catch_up()
        if self._store is not None:
            self._lost_log_pending = True  # a new owner checks again
            await self._check_lost_log()
        committed = await self._io.commands.committed(self._commands)
        self._next_command = resume_offset(committed, self._writer.folded.max_command_offset)
        self._io.commands.seek(self._commands, self._next_command)
        # Warm the fencing check: the first ListOffsets of ess.state opens a connection and
        # fetches metadata (figures: BENCHMARKS.md), which would otherwise be added to the
        # first trip's latency.
        await self._log.end_offset()
        self._owned = True
        self.metrics.observe_owner(True)
        self._generation += 1
        logger.bind(committed=committed, **self._progress()).info(
            "command processor owns the command partition"
        )
        await self._republish_outcomes(committed)
        await self._acknowledge_foreign()

    async def _republish_outcomes(self, committed: int | None) -> None:
        """Publish again the outcomes of commands that are in the log but were never
        committed (a crash or a lost commit between the append and the commit). Resumption
        skips such a command, so without this its outcome, lost if the crash came before it
        was published, would never come: an operator waiting for it would be told the
        processor is down. At least once, as promised; a copy of an outcome that did go out
        is harmless. Lock held."""
        since = committed or 0
        for entry in list(self._recent):
            offset = entry.command_offset
            if offset is None or offset < since:
                continue
            undecodable = derive_id("undecodable-command", self._registry.commands.name, offset)
            kind = (
                "reset"
                if isinstance(entry, ResetEntry | ResetApprovalEntry | ResetRejectedEntry)
                else "undecodable"
                if entry.command_id == undecodable
                else "trip"
            )
            outcome = outcome_for(
                command_id=entry.command_id,
                offset=offset,
                command_kind=kind,
                entries=[entry],
                now=self._clock.now(),
            )
            detail = f"{outcome.detail} (published again after a restart)".lstrip()
            await self._publish_outcome(
                outcome.model_copy(update={"detail": clip(detail)}), count=False
            )

    async def _release(self) -> None:
        async with self._lock:  # the command in hand is appended and committed first
            owned, self._owned = self._owned, False
            self._generation += 1
        self.metrics.observe_owner(False)
        if owned:
            logger.bind(**self._progress()).info("command partition revoked")

    async def _acquire(self, assigned: set[TopicPartition]) -> None:
        if self._commands not in assigned:
            logger.info("standing by: another group member owns the command partition")
            return
        async with self._lock:
            try:
                await self._take_ownership()
            except ProcessorError as exc:
                self._failure = exc
            except (KafkaError, TimeoutError) as exc:
                self._failure = critical(
                    ProcessorError, f"taking over the command partition failed: {exc!r}"
                )

    # ------------------------------------------------------------------ the loop

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._failure is not None:
                raise self._failure
            try:
                batches = await self._io.commands.getmany(timeout_ms=_POLL_MS)
            except KafkaError as exc:
                raise critical(ProcessorError, f"consuming commands failed: {exc!r}") from exc
            generation = self._generation
            self._observe_lag()
            for record in batches.get(self._commands, ()):
                if stop.is_set():
                    break  # uncommitted records are fetched again by the next owner
                async with self._lock:
                    # Checked under the lock: the idle check (beat loop) or a rebalance may
                    # have failed while this batch was fetched. A fence found there has
                    # already folded the other writer's entries, so processing on would
                    # append after them, as a second writer.
                    if self._failure is not None:
                        raise self._failure
                    if generation != self._generation or not self._owned:
                        break  # assignment changed: the consumer re-fetches from the new seek
                    await self._process(record)

    def _observe_lag(self) -> None:
        """Export the commands waiting (the fetch responses keep the high watermark fresh,
        so this costs no request)."""
        if not self._owned:
            return
        try:
            highwater = self._io.commands.highwater(self._commands)
        except AssertionError:  # not assigned (any more): aiokafka asserts it
            return
        if highwater is not None:
            self.metrics.observe_lag(highwater - self._next_command)

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        offset: int = record.offset
        if offset < self._next_command:
            self.stats.duplicates += 1
            logger.bind(command_offset=offset).debug("command already applied (tracked offset)")
            return
        self.stats.commands_seen += 1
        self._busy_since = time.monotonic()
        try:
            await self._absorb_tail()
            await self._handle(record)
        except (KafkaError, TimeoutError) as exc:
            # Not committed: whoever processes next redoes this command from the log's view.
            raise critical(
                ProcessorError,
                f"Kafka failed while processing command at offset {offset}: {exc!r}",
                command_offset=offset,
            ) from exc
        finally:
            self._busy_since = None
        self._next_command = offset + 1
        self.metrics.observe_position(self._next_command, self.state.last_seq)
        await self._commit(offset + 1)

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Decode, decide, append, report one command. Nothing built from the command may
        raise out of here except Kafka failures (the command is then redone after a restart):
        a command that cannot be processed is dead-lettered, and a stop is never skipped."""
        offset: int = record.offset
        try:
            command = decode_command(record.value)
        except RecordError as exc:
            self.stats.undecodable += 1
            await self._dead_letter(record, str(exc))
            trip = undecodable_trip(
                topic=record.topic, offset=offset, error=str(exc), now=self._clock.now()
            )
            entries = await self._record_stop(trip, offset)
            await self._publish_outcome(
                outcome_for(
                    command_id=trip.command_id,
                    offset=offset,
                    command_kind="undecodable",
                    entries=entries,
                    now=self._clock.now(),
                    detail=f"not a valid command ({clip(str(exc), 300)}); recorded as a stop",
                )
            )
            return
        coalesced = (
            isinstance(command, TripCommand)
            and not trip_is_duplicate(self.state, command)
            and trip_is_coalesced(self.state)
        )
        try:
            entries = await self._decide_and_append(command, offset)
        except _Undecidable as exc:
            entries = await self._salvage(record, command, exc.error)
        await self._publish_outcome(
            outcome_for(
                command_id=command.command_id,
                offset=offset,
                command_kind=command.kind,
                entries=entries,
                now=self._clock.now(),
                coalesced=coalesced,
            )
        )

    async def _salvage(
        self, record: ConsumerRecord[bytes, bytes], command: TripCommand | ResetCommand, error: str
    ) -> list[StateEntry]:
        """A command that ``decide`` or the entry's model refused: a trip is recorded with its
        minimal fields (a stop is never skipped), anything else is dead-lettered."""
        await self._dead_letter(record, f"command could not be applied: {error}")
        if not isinstance(command, TripCommand):
            return []
        minimal = undecodable_trip(
            topic=record.topic,
            offset=record.offset,
            error=error,
            now=self._clock.now(),
            minimal_of=command,
        )
        return await self._record_stop(minimal, record.offset)

    async def _record_stop(self, trip: TripCommand, offset: int) -> list[StateEntry]:
        """Append ``trip``; should even that fail on its input, append a stop whose every
        field is the processor's own (a stop is never skipped)."""
        try:
            return await self._decide_and_append(trip, offset)
        except _Undecidable as exc:
            fallback = TripCommand(
                command_id=derive_id("unrecordable-command", self._registry.commands.name, offset),
                reason=ReasonCode.MANUAL,
                source=SOURCE,
                detail=clip(
                    f"a stop at command offset {offset} could not be recorded: {exc.error}"
                ),
                ts=self._clock.now(),
            )
            return await self._decide_and_append(fallback, offset)

    async def _decide_and_append(
        self, command: TripCommand | ResetCommand, offset: int | None
    ) -> list[StateEntry]:
        """Decide ``command`` against the current state and append what it yields. Raises
        :class:`_Undecidable` when deciding or building an entry fails on this input."""
        try:
            decided = decide(self.state, command, now=self._clock.now(), policy=self._policy)
            stamped = [entry.model_copy(update={"command_offset": offset}) for entry in decided]
        except (ValidationError, ValueError, TypeError, OverflowError) as exc:
            logger.bind(command_id=command.command_id, command_offset=offset).opt(
                exception=exc
            ).critical("deciding a command raised")
            raise _Undecidable(f"{type(exc).__name__}: {exc}") from exc
        if not decided:
            self.stats.duplicates += 1
            logger.bind(
                command_id=command.command_id, kind=command.kind, command_offset=offset
            ).info("nothing appended: command already applied, or a trip coalesced")
        appended: list[StateEntry] = []
        for entry in stamped:
            await self._publish_security_event(entry)
            appended.append(await self._append(entry))
        return appended

    async def _append(self, entry: StateEntry) -> StateEntry:
        """Append through the writer (seal, append, check where it landed, fold); returns
        the entry as written."""
        expected = self._writer.folded.next_offset
        try:
            sealed, offset = await self._writer.append(entry)
        except (KafkaError, TimeoutError) as exc:
            # The entry may be in the log without being in our fold. Going on (as the idle
            # check would, which tolerates Kafka errors) would later read it back as an
            # entry we did not write and fence us, a false "second writer". Stop instead: a
            # restart folds the log and adopts whatever landed.
            raise critical(
                ProcessorError,
                f"appending seq {entry.seq} to {self._scope} failed and whether it landed is "
                f"unknown: {exc!r}. Stopping; a restart adopts what the log holds.",
                seq=entry.seq,
                expected_offset=expected,
            ) from exc
        self.stats.entries_appended += 1
        self.metrics.entry_appended(sealed.kind)
        self._log_entry(sealed, offset)
        self._hooks.after_append(sealed, offset)
        if offset != expected:  # records before ours were read: acknowledge foreign ones
            await self._acknowledge_foreign()
        return sealed

    async def _absorb_tail(self) -> None:
        """Before deciding: fold whatever appeared after our last entry (entries of another
        writer fence us), then acknowledge foreign records with a trip."""
        await self._writer.absorb_tail()
        await self._acknowledge_foreign()

    async def _acknowledge_foreign(self) -> None:
        """Answer foreign records in the log with an ``unauthorized_access`` trip."""
        command = foreign_acknowledgement(
            self._writer.folded, scope=self._scope, now=self._clock.now()
        )
        if command is None:
            return
        logger.bind(upto_offset=command.trigger.offset if command.trigger else None).critical(
            "foreign records in the state log: recording an unauthorized_access trip"
        )
        self.stats.acknowledgements += 1
        await self._decide_and_append(command, None)

    async def _check_lost_log(self) -> None:
        """Read the PolicyStore record once and re-establish the stop it proves beyond the
        log's end, if any (:mod:`ess.core.recovery`). Lock held.

        A read that fails leaves the check pending (tried again from the idle loop every
        ``lost_log_retry`` seconds); a stored value that is not a record holds no stop (the
        projector overwrites it). Append failures raise like any append, and leave the check
        pending."""
        store = self._store
        if store is None or not self._lost_log_pending:
            return
        try:
            async with asyncio.timeout(_STORE_TIMEOUT_S):
                stored = await store.get(EMERGENCY_STOP_KEY)
        except CorruptPolicyValue as exc:
            logger.bind(error=clip(str(exc), 300)).warning(
                "lost-log check: the stored emergency_stop is not a record; no stop to "
                "re-establish (the projector overwrites it)"
            )
            stored = None
        except Exception as exc:  # any failure of the store: try again, never skip the check
            self._lost_log_failures += 1
            self._lost_log_next_try = time.monotonic() + self._lost_log_retry
            self.metrics.lost_log_check_failed()
            if self._lost_log_failures % 60 == 1:
                logger.bind(
                    error=f"{type(exc).__name__}: {clip(str(exc), 300)}",
                    failures=self._lost_log_failures,
                ).error(
                    "lost-log check: cannot read the PolicyStore record; trying again every "
                    f"{self._lost_log_retry:g} s (a stop lost with the state log is not "
                    "re-established until it can be read)"
                )
            return
        if self._lost_log_failures:
            logger.bind(failures=self._lost_log_failures).info("lost-log check: store readable")
            self._lost_log_failures = 0
        lost = lost_stop(stored, self.state, self._trust)
        entry = (
            None
            if lost is None
            else reestablish(
                lost, self.state, now=self._clock.now(), scope=self._scope, source=SOURCE
            )
        )
        if lost is None or entry is None:
            self._lost_log_pending = False
            return
        logger.bind(
            record_seq=lost.record_seq,
            verified=lost.verified,
            problem=lost.problem,
            seq=entry.seq,
            state_next_seq=self.state.next_seq,
        ).critical(
            "the PolicyStore record shows ESS ACTIVE beyond the state log's end: the log was "
            "lost (or the record is not ESS's); re-establishing the stop (state_log_lost)"
        )
        if not lost.verified:
            await self._publish_lost_log_event(entry, lost)
        await self._append(entry)
        # Done only now: should the event or the append fail, the check is still pending
        # (and deduplicated by the entry's id should the append have landed after all).
        self._lost_log_pending = False
        self.stats.lost_log_reestablished += 1
        self.metrics.lost_log_reestablished(verified=lost.verified)

    async def _publish_lost_log_event(self, entry: ActivatedEntry, lost: LostStop) -> None:
        """An unverified ACTIVE record was adopted: somebody may have written the PolicyStore.
        Reported like a forged reset (before the append; the id is derived from the entry's,
        so a redo publishes the same event)."""
        event = SecurityEvent(
            event_id=derive_id(SOURCE, SecurityEventKind.UNAUTHORIZED_ACCESS, entry.command_id),
            kind=SecurityEventKind.UNAUTHORIZED_ACCESS,
            source=SOURCE,
            detail=clip(
                f"PolicyStore record emergency_stop ACTIVE at seq {lost.record_seq}, beyond the "
                f"state log, with no verified activation ({lost.problem}); adopted as a stop"
            ),
            ts=self._clock.now(),
        )
        await self._io.producer.send_and_wait(
            self._registry.security.name, encode(event), key=SOURCE.encode()
        )
        self.stats.security_events += 1
        logger.bind(event_id=event.event_id, record_seq=lost.record_seq).warning(
            "unverified PolicyStore record published as a security event"
        )

    async def _publish_security_event(self, entry: StateEntry) -> None:
        try:
            event = security_event_for(entry, ts=self._clock.now())
        except ValidationError as exc:  # never expected (texts are clipped); never fatal
            logger.bind(command_id=entry.command_id, error=str(exc)).error(
                "security event could not be built"
            )
            return
        if event is None:
            return
        await self._io.producer.send_and_wait(
            self._registry.security.name, encode(event), key=SOURCE.encode()
        )
        self.stats.security_events += 1
        logger.bind(event_id=event.event_id, command_id=entry.command_id).warning(
            "unauthorized reset attempt published as a security event"
        )

    async def _publish_outcome(self, outcome: CommandOutcome, *, count: bool = True) -> None:
        value = orjson.dumps(
            seal(
                outcome.model_dump(mode="json"),
                self._key,
                scope=self._registry.outcomes.name,
            )
        )
        await self._io.producer.send_and_wait(
            self._registry.outcomes.name, value, key=outcome.command_id.encode()
        )
        if count:
            self.metrics.command_outcome(outcome.command_kind, outcome.outcome.value)
        logger.bind(
            command_id=outcome.command_id,
            command_offset=outcome.command_offset,
            outcome=outcome.outcome.value,
            entry_kind=outcome.entry_kind,
            seq=outcome.seq,
        ).info("command outcome")

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str) -> None:
        await self._io.dead_letters.send(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            raw=record.value,
            error=error,
        )
        self.stats.dead_lettered += 1
        self.metrics.dead_lettered()
        logger.bind(command_offset=record.offset, error=clip(error, 500)).warning(
            "command dead-lettered"
        )

    async def _commit(self, next_offset: int) -> None:
        try:
            await self._io.commands.commit({self._commands: next_offset})
        except KafkaError as exc:
            # Harmless: resumption takes the tracking record in ess.state into account, and a
            # command that appended nothing is safe to process again.
            logger.bind(next_offset=next_offset, error=repr(exc)).warning(
                "command offset commit failed"
            )

    # ------------------------------------------------------------------ liveness

    async def _beat_loop(self, stop: asyncio.Event) -> None:
        """Publish a signed beat every ``beat_interval``; while idle, also look at the log's
        end so that a foreign record is acknowledged without waiting for a command."""
        beat_no = 0
        while not stop.is_set():
            if self._owned and not self._lock.locked():
                async with self._lock:
                    try:
                        await self._absorb_tail()
                        if self._lost_log_pending and time.monotonic() >= self._lost_log_next_try:
                            await self._check_lost_log()
                    except ProcessorError as exc:
                        self._failure = exc
                        return
                    except (KafkaError, TimeoutError) as exc:
                        logger.bind(error=repr(exc)).warning("idle check of ess.state failed")
            await self._publish_beat(beat_no)
            beat_no += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._beat_interval)

    async def _publish_beat(self, beat_no: int) -> None:
        folded = self._writer.folded
        beat = ProcessorBeat(
            run_id=self._run_id,
            beat_no=beat_no,
            owner=self._owned,
            next_command_offset=self._next_command if self._owned else None,
            state_next_offset=folded.next_offset,
            state_next_seq=folded.state.next_seq,
            ts=self._clock.now(),
        )
        value = orjson.dumps(
            seal(beat.model_dump(mode="json"), self._key, scope=self._registry.liveness.name)
        )
        try:
            async with asyncio.timeout(max(self._beat_interval, 1.0)):
                await self._io.producer.send_and_wait(
                    self._registry.liveness.name, value, key=SOURCE.encode()
                )
        except (KafkaError, TimeoutError) as exc:
            self.metrics.beat_failed()
            logger.bind(error=repr(exc)).warning("liveness beat not published")
        else:
            self.metrics.beat_published(beat.ts)

    # ------------------------------------------------------------------ logging

    def _progress(self) -> dict[str, object]:
        return {
            "next_seq": self.state.next_seq,
            "status": self.state.status.value,
            "state_offset": self._writer.folded.next_offset,
            "next_command_offset": self._next_command,
        }

    @staticmethod
    def _log_entry(entry: StateEntry, offset: int) -> None:
        bound = logger.bind(
            seq=entry.seq,
            kind=entry.kind,
            command_id=entry.command_id,
            command_offset=entry.command_offset,
            offset=offset,
        )
        if isinstance(entry, ResetRejectedEntry):
            # Operator and reason only: the command's signature is never logged.
            bound.bind(operator=entry.operator, why=entry.why.value).warning("reset rejected")
        elif isinstance(entry, ActivatedEntry | TripRecordedEntry):
            bound.bind(reason=entry.reason.value).info("state entry appended")
        elif isinstance(entry, ResetEntry | ResetApprovalEntry):
            bound.info("state entry appended")


class _Undecidable(Exception):
    """Deciding a command, or building its entry, failed on this input."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True, slots=True)
class _Clients:
    """The running processor's Kafka clients (aiokafka builds them inside a running loop)."""

    commands: AIOKafkaConsumer
    producer: AIOKafkaProducer
    dead_letters: DeadLetterWriter


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Group rebalance callbacks: hand the partition over between whole commands."""

    def __init__(self, processor: CommandProcessor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._processor._release()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._processor._acquire(assigned)


# --------------------------------------------------------------------------- entry point


async def run_processor(
    settings: EssSettings,
    stop: asyncio.Event,
    *,
    bootstrap: str | None = None,
    signing_key: SigningKey | None = None,
    status_host: str | None = None,
    status_port: int | None = None,
    hooks: ProcessorHooks | None = None,
    policy_store: PolicyStore | None = None,
) -> None:
    """Run the command processor (the ``command`` role) with ``settings`` until ``stop``.

    Reads ``KAFKA_BOOTSTRAP_SERVERS`` unless ``bootstrap`` is given (required: the processor
    joins an existing cluster, whose topics must already exist), ``ESS_TOPIC_PREFIX``,
    ``ESS_OPERATOR_KEYS_DIR`` and the reset bounds, the processor key
    (``ESS_PROCESSOR_KEY_FILE``, unless ``signing_key`` is given) and the keys readers trust;
    ``hooks`` as for :class:`CommandProcessor`. Serves ``/status``, ``/metrics`` and
    ``/healthz`` on ``status_port`` (default ``ESS_COMMAND_STATUS_PORT``; ``-1`` disables).
    ``policy_store``: read for the lost-log check (``None``: no check; the ``command`` role
    and ``python -m`` pass the configured store). Raises :class:`StartupRefused` for unusable
    settings, otherwise as :meth:`CommandProcessor.run`.
    """
    bootstrap = (bootstrap or settings.kafka.bootstrap_servers).strip()
    if not bootstrap:
        raise critical(
            StartupRefused,
            "KAFKA_BOOTSTRAP_SERVERS is required for the command processor "
            "(for development, `ess broker` runs a broker and prints the value to use)",
        )
    try:
        policy = settings.reset_policy()
        key = signing_key or settings.processor_signing_key()
        trust = settings.state_trust(also_trust=key)
    except (KeyMaterialError, OSError, ValueError) as exc:
        raise critical(StartupRefused, f"command processor settings: {exc}") from exc
    try:
        await verify_topic_configs(
            bootstrap, settings.registry(), security=settings.kafka_security()
        )
    except BrokerError as exc:
        raise critical(StartupRefused, str(exc)) from exc
    processor = CommandProcessor(
        bootstrap,
        settings.registry(),
        reset_policy=policy,
        clock=SystemClock(),
        signing_key=key,
        trust=trust,
        hooks=hooks,
        security=settings.kafka_security(),
        beat_interval=settings.command.beat_interval_sec,
        wedged_after=settings.command.wedged_after_sec,
        policy_store=policy_store,
    )
    if policy_store is None:
        logger.warning(
            "command processor without a PolicyStore: a stop lost with the state log "
            "(state_log_lost) will not be re-established"
        )
    port = settings.command.status_port if status_port is None else status_port
    host = status_host or settings.observability.status_host
    server = None
    if port >= 0:
        server = await serve_status(processor, processor.metrics.registry, host, port)
    try:
        await processor.run(stop)
    finally:
        if server is not None:
            await server.stop()


@contextlib.asynccontextmanager
async def configured_policy_store(
    settings: EssSettings, given: PolicyStore | None = None
) -> AsyncIterator[PolicyStore]:
    """The PolicyStore the processor reads for its lost-log check: ``given`` (a process that
    shares one with its projector), else the configured one (``ESS_REDIS_URL`` or
    ``ESS_POLICY_STORE_URL``), opened so that it never creates a SQLite file (a processor
    running where no projector ever wrote finds no record, which is right), and closed after.

    A processor deployed on its own needs read access to the store the projector writes (a
    read-only Redis user suffices) for the check to see anything."""
    if given is not None:
        yield given
        return
    url = settings.resolved_policy_store_url()
    store = policy_store_from_url(url, create=False)
    logger.bind(policy_store=redact_url(url)).info("command processor reads the PolicyStore")
    try:
        yield store
    finally:
        if isinstance(store, ClosablePolicyStore):
            with contextlib.suppress(Exception):
                await store.close()


async def _serve(settings: EssSettings, hooks: ProcessorHooks | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with configured_policy_store(settings) as store:
        await run_processor(settings, stop, hooks=hooks, policy_store=store)


def main(hooks: ProcessorHooks | None = None) -> int:
    """``python -m ess.roles.command.processor``: 0 after a graceful stop, :data:`EXIT_FENCED` when
    fenced, 1 when refused or failed (the reason is logged as critical). ``hooks``: see
    :class:`ProcessorHooks` (crash tests only)."""
    settings = EssSettings()
    configure_logging(settings.observability.log_level, json=settings.observability.log_json)
    warn_environment()
    try:
        asyncio.run(_serve(settings, hooks))
    except FencedError:
        return EXIT_FENCED
    except ProcessorError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

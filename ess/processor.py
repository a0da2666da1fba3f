"""The command processor: the only consumer of ``ess.commands``, the only writer of ``ess.state``.

Every trip and reset passes through here, one at a time, in the total order of the
single-partition command topic. The processor is a thin shell around the pure core: it decodes a
command, asks :func:`ess.core.decide` what to append, appends it, and folds it in with the same
:func:`ess.statelog.fold_log` (hence :func:`ess.core.evolve`) every reader uses.

Order of work for one command (at-least-once, deduplicated in the domain, no transactions):

1. decode; undecodable or invalid input goes to ``ess.deadletter`` and the loop goes on;
2. ``decide(state, command, now=clock.now(), policy=...)``;
3. side effects derived from the decision (the ``unauthorized_access`` security event of a
   forged or unknown-operator reset) are published *before* the append, with ids derived from
   the command, so a crash anywhere re-publishes rather than loses them;
4. each entry, stamped with ``command_offset`` (the tracking record), is appended and its ack
   awaited, after a fencing check;
5. only then is the state evolved and the command offset committed.

A crash between 4 and 5 is harmless: on start the processor folds ``ess.state`` and resumes at
``max(committed offset, highest command_offset + 1)``, so the command is not even redelivered.
Independently, ``decide`` appends nothing for a command id already applied, which covers the
same command arriving twice at different offsets (a producer retrying, two detector groups).

Fencing: ``ess.state`` has one writer. Kafka has no conditional append, so before each append
the processor checks that the log still ends where its own last entry left it, and after the
append that the entry landed exactly there. Anything else means a second writer exists (a
processor started by mistake, a tool appending by hand): the processor logs it as critical and
stops with :class:`FencedError` instead of writing a diverging history. The consumer group adds
a second guard: only one member owns the partition. When ownership moves (a restart, a
standby taking over), the new owner first adopts what the previous owner appended.

Run it alone with ``python -m ess.processor`` (settings from the environment, see
:func:`run_processor`); SIGTERM/SIGINT finish the command in hand, commit and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from loguru import logger

from ess.clock import Clock, SystemClock
from ess.config import EssSettings
from ess.core import EssState, ResetPolicy, SequenceError, decide
from ess.core.decider import UNAUTHENTICATED_REJECTIONS
from ess.core.ids import derive_id
from ess.core.signing import KeyMaterialError
from ess.deadletter import DeadLetterWriter
from ess.kafka import KafkaSecurity, consumer, producer
from ess.logging import configure_logging
from ess.statelog import Folded, KafkaStateLog, LoggedEntry, fold_log
from schemas import (
    Command,
    RecordError,
    ResetCommand,
    ResetRejectedEntry,
    SecurityEvent,
    SecurityEventKind,
    StateEntry,
    TopicRegistry,
    TripCommand,
    decode,
    encode,
)

__all__ = [
    "EXIT_FENCED",
    "FAULT_ENV",
    "SOURCE",
    "CommandProcessor",
    "Fault",
    "FencedError",
    "ProcessorError",
    "ProcessorStats",
    "StartupRefused",
    "default_group_id",
    "fault_from_env",
    "main",
    "resume_offset",
    "run_processor",
    "security_event_for",
]

#: The processor's name as the source of the records it publishes (security events).
SOURCE: Final = "ess-command-processor"
#: Test-only fault injection, read by :func:`run_processor` (see :class:`Fault`).
FAULT_ENV: Final = "ESS_FAULT"
#: Exit status of ``python -m ess.processor`` after :class:`FencedError`: distinct from a plain
#: failure (1) so that a supervisor can alert on "a second writer exists" instead of looping.
EXIT_FENCED: Final = 3

#: How long one poll for commands may block before the loop re-checks ``stop``: the bound on
#: shutdown latency. Delivery latency is set by the consumer's fetch wait (``ess.kafka``).
_POLL_MS: Final = 100
#: Resets refused before any key vouched for them: someone without a key tried to reset ESS.
#: (The same two reasons the core files under its "unauthenticated" dedupe namespace.)

_E = TypeVar("_E", bound="ProcessorError")


class ProcessorError(RuntimeError):
    """The processor cannot run, or must not go on. Never raised for bad input: bad commands
    are dead-lettered. Raised for infrastructure failures too (an append or a send that
    failed): the processor then stops without committing, and a restart redoes the command."""


class StartupRefused(ProcessorError):
    """Refused to (re)start processing: the topic layout is wrong, or ``ess.state`` holds a
    corrupt record or a ``seq`` gap. Fail closed: a log nobody can trust must not grow."""


class FencedError(ProcessorError):
    """An entry this processor did not write appeared in ``ess.state``: a second writer
    exists. The processor stops rather than write a diverging history."""


class Fault(StrEnum):
    """Test-only fault injection (``ESS_FAULT``); never set it in production.

    ``crash_after_append``: SIGKILL the process right after the first state-log append is
    acknowledged and before the command offset is committed, the worst moment to crash.
    """

    CRASH_AFTER_APPEND = "crash_after_append"


def fault_from_env(environ: Mapping[str, str] = os.environ) -> Fault | None:
    """The fault named by ``ESS_FAULT``, or ``None``. An unknown name raises ``ValueError``:
    a misspelt fault would otherwise make a crash test pass without crashing anything."""
    value = environ.get(FAULT_ENV, "").strip()
    if not value:
        return None
    try:
        return Fault(value)
    except ValueError:
        known = ", ".join(fault.value for fault in Fault)
        raise ValueError(f"{FAULT_ENV}={value!r} is not a known fault ({known})") from None


@dataclass(slots=True)
class ProcessorStats:
    """Counters since this processor started (metrics hooks come later).

    ``duplicates`` counts commands that appended nothing because they were already applied:
    skipped by the tracked offset, or deduplicated by ``decide`` (same command id).
    """

    commands_seen: int = 0
    entries_appended: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    security_events: int = 0


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


def security_event_for(entry: StateEntry, *, ts: datetime) -> SecurityEvent | None:
    """The ``unauthorized_access`` event owed for ``entry``, if any.

    Only resets that no registered key vouched for (unknown operator, bad signature) count: an
    authentic but expired or replayed reset is an operator mistake, not an intrusion. The event
    id is derived from the command id, so a re-published event is recognisably the same one.
    """
    if not isinstance(entry, ResetRejectedEntry) or entry.why not in UNAUTHENTICATED_REJECTIONS:
        return None
    return SecurityEvent(
        event_id=derive_id(SOURCE, SecurityEventKind.UNAUTHORIZED_ACCESS, entry.command_id),
        kind=SecurityEventKind.UNAUTHORIZED_ACCESS,
        source=SOURCE,
        detail=(
            f"reset command {entry.command_id!r} claiming operator {entry.operator!r} "
            f"rejected: {entry.why.value} ({entry.detail})"
        ),
        ts=ts,
    )


class CommandProcessor:
    """Consume ``ess.commands``, decide, append to ``ess.state``; see the module notes.

    Args:
        bootstrap: Kafka bootstrap servers. Topics must exist (the processor never creates
            them): ``ess.commands`` and ``ess.state`` with exactly one partition each, plus
            ``ess.deadletter`` and ``ess.security``.
        registry: Topic names.
        reset_policy: Who may reset, quorum and time bounds.
        clock: Stamps entries, dead letters and security events; ``decide`` gets its ``now``.
        group_id: Consumer group (default :func:`default_group_id` of the registry's prefix):
            committed offsets live there, and membership makes one processor the owner.
        join_group: ``False`` assigns the partition directly instead of joining the group
            (offsets are still committed under ``group_id``). That saves the ~3 s group join
            of tests and tools, and gives up the group's single-owner guard; fencing remains.
        fault: Test-only fault injection (:class:`Fault`).
        security: TLS/SASL of every client (default PLAINTEXT).
    """

    def __init__(
        self,
        bootstrap: str,
        registry: TopicRegistry,
        *,
        reset_policy: ResetPolicy,
        clock: Clock,
        group_id: str | None = None,
        join_group: bool = True,
        fault: Fault | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.stats = ProcessorStats()
        self._bootstrap = bootstrap
        self._security = security
        self._registry = registry
        self._policy = reset_policy
        self._clock = clock
        self._group_id = group_id or default_group_id(registry.prefix)
        self._join_group = join_group
        self._fault = fault
        self._commands = TopicPartition(registry.commands.name, 0)
        self._state_tp = TopicPartition(registry.state.name, 0)
        self._log = KafkaStateLog(bootstrap, registry.state.name, security=security)
        self._folded = fold_log(())
        self._next_command = 0
        self._owned = False
        #: Bumped on every assignment change: records fetched before it are stale.
        self._generation = 0
        #: Held while one command is processed and while ownership changes hands, so a
        #: rebalance waits for the command in hand to be appended and committed.
        self._lock = asyncio.Lock()
        #: aiokafka swallows exceptions raised in rebalance callbacks; they are parked here
        #: and re-raised by the loop.
        self._failure: ProcessorError | None = None
        self._clients: _Clients | None = None

    # ------------------------------------------------------------------ observation

    @property
    def state(self) -> EssState:
        """The state folded from ``ess.state`` as far as this processor has read or written."""
        return self._folded.state

    @property
    def next_command_offset(self) -> int:
        """Offset in ``ess.commands`` of the next command to process."""
        return self._next_command

    @property
    def owns_commands(self) -> bool:
        """True while this processor owns the command partition and is caught up."""
        return self._owned

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
                    raise _critical(
                        ProcessorError, f"command processor could not start: {exc!r}"
                    ) from exc
                await self._loop(stop)
        finally:
            self._owned, self._clients = False, None
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
        self._folded = await self._catch_up(fold_log(()))
        logger.bind(
            operators=sorted(self._policy.operators), quorum=self._policy.quorum, **self._progress()
        ).info("state rebuilt from the log")

        await self._log.start()
        stack.push_async_callback(self._log.stop)
        # Dead letters and security events; ess.state has its own one-record-per-batch producer.
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
            for spec in (self._registry.deadletter, self._registry.security)
            if spec.name not in existing
        ]
        if problems:
            raise _critical(
                StartupRefused,
                "command processor refuses to start: "
                + "; ".join(problems)
                + ". One partition is what gives ESS a total order of commands and a single "
                "state writer; create the topics from the registry (ess.broker.ensure_topics).",
                prefix=self._registry.prefix,
            )

    async def _catch_up(self, start: Folded) -> Folded:
        """``start`` with every entry after it in ``ess.state`` folded in."""
        try:
            return fold_log(await self._log.read(start.next_offset), start)
        except SequenceError as exc:
            raise _critical(
                StartupRefused,
                f"state log {self._registry.state.name} cannot be trusted: {exc}. The command "
                "processor refuses to run (fail closed); repair the log before restarting.",
                topic=self._registry.state.name,
            ) from exc

    async def _take_ownership(self) -> None:
        """Adopt what a previous owner appended, then seek to the resume offset. Lock held."""
        self._folded = await self._catch_up(self._folded)
        committed = await self._io.commands.committed(self._commands)
        self._next_command = resume_offset(committed, self._folded.max_command_offset)
        self._io.commands.seek(self._commands, self._next_command)
        # Warm the fencing check: the first ListOffsets of ess.state costs ~100 ms (connection
        # and metadata), which would otherwise be added to the first trip's latency.
        await self._io.commands.end_offsets([self._state_tp])
        self._owned = True
        self._generation += 1
        logger.bind(committed=committed, **self._progress()).info(
            "command processor owns the command partition"
        )

    async def _release(self) -> None:
        async with self._lock:  # the command in hand is appended and committed first
            owned, self._owned = self._owned, False
            self._generation += 1
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
                self._failure = _critical(
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
                raise _critical(ProcessorError, f"consuming commands failed: {exc!r}") from exc
            generation = self._generation
            for record in batches.get(self._commands, ()):
                if stop.is_set():
                    break  # uncommitted records are fetched again by the next owner
                async with self._lock:
                    if generation != self._generation or not self._owned:
                        break  # assignment changed: the consumer re-fetches from the new seek
                    await self._process(record)

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        offset: int = record.offset
        if offset < self._next_command:
            self.stats.duplicates += 1
            logger.bind(command_offset=offset).debug("command already applied (tracked offset)")
            return
        self.stats.commands_seen += 1
        try:
            try:
                command: TripCommand | ResetCommand = decode(Command, record.value or b"")
            except RecordError as exc:
                await self._dead_letter(record, str(exc))
            else:
                await self._apply(record, command)
        except (KafkaError, TimeoutError) as exc:
            # Not committed: whoever processes next redoes this command from the log's view.
            raise _critical(
                ProcessorError,
                f"Kafka failed while processing command at offset {offset}: {exc!r}",
                command_offset=offset,
            ) from exc
        self._next_command = offset + 1
        await self._commit(offset + 1)

    async def _apply(
        self, record: ConsumerRecord[bytes, bytes], command: TripCommand | ResetCommand
    ) -> None:
        offset: int = record.offset
        try:
            entries = decide(self.state, command, now=self._clock.now(), policy=self._policy)
        except Exception as exc:
            # A core bug on one input must not stop every later trip: dead-letter it, loudly.
            logger.bind(command_id=command.command_id, command_offset=offset).opt(
                exception=exc
            ).critical("decide raised; command dead-lettered")
            await self._dead_letter(record, f"decide raised {type(exc).__name__}: {exc}")
            return
        if not entries:
            self.stats.duplicates += 1
            logger.bind(
                command_id=command.command_id, kind=command.kind, command_offset=offset
            ).info("command already applied; nothing appended")
        for decided in entries:
            entry = decided.model_copy(update={"command_offset": offset})
            await self._publish_security_event(entry)
            await self._append(entry)

    async def _append(self, entry: StateEntry) -> None:
        """Fence, append and await the ack, verify where it landed, then fold it in."""
        expected = self._folded.next_offset
        # ListOffsets is enough to see a foreign record even on Tansu: it under-reports only
        # *within* a multi-record batch, and any batch at or after ``expected`` moves the
        # reported end past ``expected``. A smaller end (an older multi-record batch) is fine.
        end: int = (await self._io.commands.end_offsets([self._state_tp]))[self._state_tp]
        if end > expected:
            raise await self._fenced(entry, expected, f"the log ends at {end}")
        offset = await self._log.append(entry)
        if offset != expected:
            raise await self._fenced(entry, expected, f"our entry landed at offset {offset}")
        self._folded = fold_log([LoggedEntry(offset, entry)], self._folded)
        self.stats.entries_appended += 1
        self._log_entry(entry, offset)
        if self._fault is Fault.CRASH_AFTER_APPEND:
            logger.bind(seq=entry.seq, offset=offset).critical(
                "fault injection: SIGKILL after append, before commit"
            )
            os.kill(os.getpid(), signal.SIGKILL)

    async def _fenced(self, entry: StateEntry, expected: int, observed: str) -> FencedError:
        try:
            foreign = await self._log.read(expected)
            found = "; ".join(
                f"offset {item.offset}: seq {item.entry.seq} {item.entry.kind} "
                f"{item.entry.command_id}"
                for item in foreign[:5]
            )
        except (SequenceError, KafkaError, TimeoutError) as exc:
            found = f"unreadable: {exc}"
        return _critical(
            FencedError,
            f"another writer appended to {self._registry.state.name}: this processor's next "
            f"entry belongs at offset {expected} but {observed} ({found}). Refusing to append "
            f"seq {entry.seq}; stop the other writer, then restart this processor.",
            expected_offset=expected,
            seq=entry.seq,
        )

    async def _publish_security_event(self, entry: StateEntry) -> None:
        event = security_event_for(entry, ts=self._clock.now())
        if event is None:
            return
        await self._io.producer.send_and_wait(
            self._registry.security.name, encode(event), key=SOURCE.encode()
        )
        self.stats.security_events += 1
        logger.bind(event_id=event.event_id, command_id=entry.command_id).warning(
            "unauthorized reset attempt published as a security event"
        )

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str) -> None:
        await self._io.dead_letters.send(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            raw=record.value,
            error=error,
        )
        self.stats.dead_lettered += 1
        logger.bind(command_offset=record.offset, error=error).warning("command dead-lettered")

    async def _commit(self, next_offset: int) -> None:
        try:
            await self._io.commands.commit({self._commands: next_offset})
        except KafkaError as exc:
            # Harmless: resumption takes the tracking record in ess.state into account, and a
            # command that appended nothing is safe to process again.
            logger.bind(next_offset=next_offset, error=repr(exc)).warning(
                "command offset commit failed"
            )

    # ------------------------------------------------------------------ logging

    def _progress(self) -> dict[str, object]:
        return {
            "next_seq": self.state.next_seq,
            "status": self.state.status.value,
            "state_offset": self._folded.next_offset,
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
        else:
            bound.info("state entry appended")


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


def _critical(kind: type[_E], message: str, **fields: object) -> _E:
    """Log ``message`` as critical and return the error to raise (one place for both)."""
    logger.bind(error=kind.__name__, **fields).critical(message)
    return kind(message)


# --------------------------------------------------------------------------- entry point


async def run_processor(settings: EssSettings, stop: asyncio.Event) -> None:
    """Run the command processor (the ``command`` role) with ``settings`` until ``stop``.

    Reads ``KAFKA_BOOTSTRAP_SERVERS`` (required: the processor joins an existing cluster,
    whose topics must already exist), ``ESS_TOPIC_PREFIX``, ``ESS_OPERATOR_KEYS_DIR`` and the
    reset bounds, and the test-only ``ESS_FAULT``. Raises :class:`StartupRefused` for unusable
    settings, otherwise as :meth:`CommandProcessor.run`.
    """
    bootstrap = settings.kafka_bootstrap_servers.strip()
    if not bootstrap:
        raise _critical(
            StartupRefused,
            "KAFKA_BOOTSTRAP_SERVERS is required for the command processor "
            "(for development, `ess broker` runs a broker and prints the value to use)",
        )
    try:
        policy = settings.reset_policy()
        fault = fault_from_env()
    except (KeyMaterialError, OSError, ValueError) as exc:
        raise _critical(StartupRefused, f"command processor settings: {exc}") from exc
    processor = CommandProcessor(
        bootstrap,
        settings.registry(),
        reset_policy=policy,
        clock=SystemClock(),
        fault=fault,
        security=settings.kafka_security(),
    )
    await processor.run(stop)


async def _serve(settings: EssSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_processor(settings, stop)


def main() -> int:
    """``python -m ess.processor``: 0 after a graceful stop, :data:`EXIT_FENCED` when fenced,
    1 when refused or failed (the reason is logged as critical)."""
    settings = EssSettings()
    configure_logging(settings.log_level, json=settings.log_json)
    try:
        asyncio.run(_serve(settings))
    except FencedError:
        return EXIT_FENCED
    except ProcessorError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

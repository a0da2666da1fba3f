"""Signed state logs for tests: keys, a builder that writes entries the way the command
processor does (decided by the real core, chained and sealed), and a stand-in liveness beat.

Entries in ``ess.state`` must verify (:mod:`ess.core.reader`), so tests that put entries in a
log build them here rather than by hand: :class:`LogBuilder` runs trips and resets through
:func:`ess.core.decide` (resets signed by the test operators for the current activation) and
seals what comes out with :data:`PROCESSOR`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer

from ess.core import INITIAL_STATE, EssState, ResetPolicy, decide, evolve
from ess.core.attestation import SigningKey, seal, trusted_keys
from ess.core.reader import RawRecord, Trust, digest, seal_entry
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from ess.kafka.clients import producer
from ess.statelog import STATE_KEY
from schemas import (
    ProcessorBeat,
    ReasonCode,
    ResetCommand,
    StateEntry,
    TopicRegistry,
    TriggerRef,
    TripCommand,
)

T0 = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)

#: The command processor key every test log is signed with.
PROCESSOR = SigningKey(generate_private_key())
ALICE = generate_private_key()
BOB = generate_private_key()
OPERATOR_KEYS = {"alice": public_bytes(ALICE), "bob": public_bytes(BOB)}
_PRIVATE = {"alice": ALICE, "bob": BOB}


def trust(scope: str = "ess.state", *, unsigned_before: int = 0) -> Trust:
    """What a reader of the test log ``scope`` trusts: :data:`PROCESSOR` and both operators."""
    return Trust(
        scope=scope,
        processor_keys=trusted_keys([PROCESSOR.public]),
        operator_keys=OPERATOR_KEYS,
        unsigned_before=unsigned_before,
    )


def policy(quorum: int = 1) -> ResetPolicy:
    return ResetPolicy(operators=OPERATOR_KEYS, quorum=quorum)


def operator_reset(
    state: EssState,
    operator: str = "alice",
    *,
    ts: datetime = T0,
    command_id: str | None = None,
    nonce: str | None = None,
) -> ResetCommand:
    """A reset of ``state``'s current activation signed by a test operator."""
    activation = state.activation
    return sign_reset(
        _PRIVATE[operator],
        command_id=command_id or f"reset-{uuid.uuid4().hex[:8]}",
        operator=operator,
        ts=ts,
        nonce=nonce or uuid.uuid4().hex,
        activation_seq=activation.seq if activation else None,
        activation_command_id=activation.command_id if activation else None,
    )


class LogBuilder:
    """Builds a state log as the command processor would write it.

    ``values`` are the record bytes (what ``ess.state`` holds), ``entries`` the entries as
    readers decode them; ``state`` is their fold.
    """

    def __init__(
        self, scope: str = "ess.state", *, key: SigningKey = PROCESSOR, quorum: int = 1
    ) -> None:
        self.scope = scope
        self.key = key
        self.policy = policy(quorum)
        self.state: EssState = INITIAL_STATE
        self.head: str | None = None
        self.values: list[bytes] = []
        self.entries: list[StateEntry] = []

    def add(self, entry: StateEntry) -> StateEntry:
        """Seal ``entry`` (its ``seq`` must be the next one) and append it."""
        sealed, value = seal_entry(entry, self.key, scope=self.scope, prev=self.head)
        self.state = evolve(self.state, sealed)
        self.head = digest(value)
        self.values.append(value)
        self.entries.append(sealed)
        return sealed

    def command(
        self, command: TripCommand | ResetCommand, *, now: datetime = T0
    ) -> list[StateEntry]:
        """What the processor appends for ``command`` (decided by the real core)."""
        return [
            self.add(entry) for entry in decide(self.state, command, now=now, policy=self.policy)
        ]

    def trip(
        self,
        command_id: str | None = None,
        *,
        reason: ReasonCode = ReasonCode.DAILY_LOSS,
        ts: datetime = T0,
        detail: str = "",
        source: str = "detector:test",
        trigger: TriggerRef | None = None,
        command_offset: int | None = None,
    ) -> StateEntry:
        """One trip: ``activated`` when INACTIVE, ``trip_recorded`` when ACTIVE."""
        command = TripCommand(
            command_id=command_id or f"trip-{len(self.values)}-{uuid.uuid4().hex[:6]}",
            reason=reason,
            detail=detail or f"trip at seq {self.state.next_seq}",
            source=source,
            ts=ts,
            trigger=trigger,
        )
        [entry] = decide(self.state, command, now=ts, policy=self.policy)
        return self.add(entry.model_copy(update={"command_offset": command_offset}))

    def reset(self, *operators: str, ts: datetime = T0) -> StateEntry:
        """A reset by ``operators`` (default alice); with a quorum, their approvals first.
        Returns the last entry (the ``reset``)."""
        entry: StateEntry | None = None
        for operator in operators or ("alice",):
            command = operator_reset(self.state, operator, ts=ts)
            [entry] = self.command(command, now=ts)
        assert entry is not None
        return entry

    def records(self, start: int = 0) -> list[RawRecord]:
        return [RawRecord(offset, value) for offset, value in enumerate(self.values)][start:]

    async def write(self, bootstrap: str, topic: str, *, start: int = 0) -> None:
        """Append ``values[start:]`` to ``topic`` (one record per batch, as the processor)."""
        out = producer(bootstrap, read_to_end_safe=True)
        await out.start()
        try:
            for value in self.values[start:]:
                await out.send_and_wait(topic, value, key=STATE_KEY)
        finally:
            await out.stop()


def sealed_beat(
    registry: TopicRegistry,
    *,
    run_id: str,
    beat_no: int,
    next_command_offset: int | None = 0,
    owner: bool = True,
    key: SigningKey = PROCESSOR,
    ts: datetime | None = None,
) -> bytes:
    """A command processor beat as the processor publishes it on ``ess.liveness``."""
    beat = ProcessorBeat(
        run_id=run_id,
        beat_no=beat_no,
        owner=owner,
        next_command_offset=next_command_offset if owner else None,
        state_next_offset=0,
        state_next_seq=0,
        ts=ts or datetime.now(UTC),
    )
    return orjson.dumps(seal(beat.model_dump(mode="json"), key, scope=registry.liveness.name))


@contextlib.asynccontextmanager
async def beating(
    bootstrap: str,
    registry: TopicRegistry,
    *,
    interval: float = 0.2,
    next_command_offset: int = 0,
) -> AsyncIterator[None]:
    """A stand-in command processor's liveness for tests of readers without a processor:
    signed owner beats every ``interval`` while the block runs."""
    out: AIOKafkaProducer = producer(bootstrap)
    await out.start()
    run_id = uuid.uuid4().hex

    async def beat() -> None:
        number = 0
        while True:
            value = sealed_beat(
                registry, run_id=run_id, beat_no=number, next_command_offset=next_command_offset
            )
            await out.send_and_wait(registry.liveness.name, value, key=b"ess-command-processor")
            number += 1
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await out.stop()


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def values_of(entries: Sequence[StateEntry]) -> list[bytes]:
    """Unsigned record bytes of hand-built entries (for tests of what readers refuse)."""
    return [orjson.dumps(entry.model_dump(mode="json")) for entry in entries]

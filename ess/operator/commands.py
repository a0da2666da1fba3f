"""What the operator CLI does, as plain async functions (the CLI only parses and prints).

Operators talk to ESS the same way any producer may: by writing a ``TripCommand`` or a signed
``ResetCommand`` to ``ess.commands``. They learn the outcome from the command processor's
signed outcome record on ``ess.outcomes`` and from ``ess.state``, the only source of truth,
read through the same verifying reader every role uses; nothing here writes to the state log.
A reset is signed for the activation it clears, so it is built from the state just read.
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import TopicPartition
from loguru import logger

from ess.clock import Clock
from ess.core import Activation
from ess.core.attestation import seal_problem
from ess.core.reader import BatchReport, ForeignRecord, Trust
from ess.core.signing import load_private_key, sign_reset
from ess.errors import EssError
from ess.kafka.clients import KafkaSecurity, consumer, follow_records, producer
from ess.statelog import Folded, KafkaStateLog, LoggedEntry, StateLogReader, follow_state
from schemas import (
    CommandOutcome,
    ReasonCode,
    RecordError,
    ResetCommand,
    StateEntry,
    TopicRegistry,
    TripCommand,
    decode,
    encode,
)

#: Key of every command record (the topic has one partition; the key documents intent).
COMMAND_KEY = b"ess"

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class OperatorError(EssError, RuntimeError):
    """An operator action that could not be carried out (message says what to do)."""


def operator_name() -> str:
    """Default operator identity for ``source``: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry in some containers
        return "unknown"


def manual_trip(clock: Clock, detail: str, operator: str | None = None) -> TripCommand:
    """A ``manual`` trip by ``operator`` (random id: an operator's trips are all distinct)."""
    return TripCommand(
        command_id=str(uuid.uuid4()),
        reason=ReasonCode.MANUAL,
        detail=detail,
        source=f"operator:{operator or operator_name()}",
        ts=clock.now(),
    )


def signed_reset(
    clock: Clock, operator: str, key_path: Path, detail: str, *, activation: Activation
) -> ResetCommand:
    """A reset of ``activation`` (the one the state log shows now) signed with the operator's
    private key, with a random id and nonce (random on purpose: a predictable id could be
    raced by someone able to write the command topic)."""
    key = load_private_key(key_path)
    return sign_reset(
        key,
        command_id=str(uuid.uuid4()),
        operator=operator,
        ts=clock.now(),
        nonce=secrets.token_urlsafe(16),
        detail=detail,
        activation_seq=activation.seq,
        activation_command_id=activation.command_id,
    )


async def send_command(
    bootstrap: str,
    registry: TopicRegistry,
    command: TripCommand | ResetCommand,
    *,
    security: KafkaSecurity | None = None,
) -> int:
    """Write ``command`` to the command topic; returns its offset once the broker acked it."""
    out = producer(bootstrap, read_to_end_safe=True, security=security)
    try:
        await out.start()  # inside: a start that fails half-way still holds connections
        metadata = await out.send_and_wait(registry.commands.name, encode(command), key=COMMAND_KEY)
    finally:
        await out.stop()
    return int(metadata.offset)


@dataclass(frozen=True, slots=True)
class StateView:
    """The state log as read: where the reader stands, and what it applied, skipped and
    refused (foreign records)."""

    folded: Folded
    report: BatchReport

    @property
    def entries(self) -> tuple[LoggedEntry, ...]:
        return self.report.applied


async def read_state(
    bootstrap: str,
    registry: TopicRegistry,
    trust: Trust,
    *,
    security: KafkaSecurity | None = None,
) -> StateView:
    """The whole state log, verified and folded (raises
    :class:`~ess.core.reader.LogBroken` when it cannot be folded)."""
    log = KafkaStateLog(bootstrap, registry.state.name, security=security)
    reader = StateLogReader(trust, name="operator")
    report = reader.feed(await log.read())
    return StateView(reader.folded, report)


async def outcomes_end(
    bootstrap: str, registry: TopicRegistry, *, security: KafkaSecurity | None = None
) -> int:
    """Where ``ess.outcomes`` ends now: read outcomes from here after sending a command.
    (On the embedded broker the listed end can be short; that only means reading more.)"""
    tp = TopicPartition(registry.outcomes.name, 0)
    client = consumer(bootstrap, group_id=None, client_id="ess-operator", security=security)
    try:
        await client.start()  # inside: a start that fails half-way still holds connections
        return int((await client.end_offsets([tp]))[tp])
    finally:
        await client.stop()


async def wait_for_outcome(
    bootstrap: str,
    registry: TopicRegistry,
    command_id: str,
    *,
    trust: Trust,
    timeout: float = 30.0,  # noqa: ASYNC109 - the error message reports what was waited for
    from_offset: int = 0,
    security: KafkaSecurity | None = None,
) -> CommandOutcome:
    """The command processor's signed outcome for ``command_id`` on ``ess.outcomes``
    (applied, duplicate or rejected). Records that do not verify are ignored.

    Raises ``TimeoutError`` with a hint when none appears: the processor may be down, which
    is itself worth knowing (the command stays in the topic and will be applied on restart).
    """
    scope = registry.outcomes.name
    return await _first_match(
        follow_records(bootstrap, scope, from_offset, security=security),
        lambda value: _verified_outcome(value, trust, scope, command_id),
        timeout,
        f"no outcome for command {command_id}",
    )


async def wait_for_entry(
    bootstrap: str,
    registry: TopicRegistry,
    command_id: str,
    *,
    trust: Trust,
    timeout: float = 30.0,  # noqa: ASYNC109 - the error message reports what was waited for
    security: KafkaSecurity | None = None,
) -> StateEntry:
    """The verified state-log entry the command processor appended for ``command_id``."""
    reader = StateLogReader(trust, name="operator")

    async def entries() -> AsyncIterator[list[StateEntry]]:
        async for records in follow_state(bootstrap, registry, security=security):
            yield [logged.entry for logged in reader.feed(records).applied]

    return await _first_match(
        entries(),
        lambda entry: entry if entry.command_id == command_id else None,
        timeout,
        f"no state-log entry for command {command_id}",
    )


async def _first_match(
    batches: AsyncIterator[list[_In]],
    match: Callable[[_In], _Out | None],
    timeout: float,  # noqa: ASYNC109
    what: str,
) -> _Out:
    deadline = time.monotonic() + timeout
    try:
        async with asyncio.timeout(timeout):
            async for batch in batches:
                for item in batch:
                    found = match(item)
                    if found is not None:
                        return found
    except TimeoutError:
        pass
    finally:
        await batches.aclose()  # type: ignore[attr-defined]
    waited = timeout - max(0.0, deadline - time.monotonic())
    raise TimeoutError(
        f"{what} after {waited:.0f}s: is the command processor running? (the command is "
        "queued and will be applied when it runs)"
    )


def _verified_outcome(
    value: bytes | None, trust: Trust, scope: str, command_id: str
) -> CommandOutcome | None:
    try:
        document = orjson.loads(value or b"")
        if not isinstance(document, dict) or document.get("command_id") != command_id:
            return None
        problem = seal_problem(document, trust.processor_keys, scope=scope)
        if problem is not None:
            logger.bind(command_id=command_id, why=problem).warning(
                "outcome record that does not verify ignored"
            )
            return None
        outcome: CommandOutcome = decode(CommandOutcome, value or b"")
    except (orjson.JSONDecodeError, RecordError):
        return None
    return outcome


def state_summary(folded: Folded) -> dict[str, Any]:
    """A flat, JSON-friendly summary of the folded state for ``ess status``. ``trusted`` is
    false while a foreign record in the log awaits the processor's acknowledgement."""
    state = folded.state
    activation = state.activation
    since: datetime | None = activation.ts if activation else state.last_change
    return {
        "status": state.status.value,
        "reason": activation.reason.value if activation else None,
        "detail": activation.detail if activation else "",
        "source": activation.source if activation else None,
        "since": since.isoformat() if since else None,
        "seq": state.last_seq,
        "epoch": state.epoch,
        "trips_recorded": state.trips_recorded,
        "pending_approvals": [a.operator for a in state.approvals],
        "activation_seq": activation.seq if activation else None,
        "activation_command_id": activation.command_id if activation else None,
        "log_entries": folded.next_offset,
        "duplicates_skipped": folded.skipped,
        "foreign_records": folded.foreign,
        "trusted": folded.trusted,
    }


def entry_row(logged: LoggedEntry) -> dict[str, str]:
    """One state-log entry as the columns ``ess log`` prints."""
    entry = logged.entry
    data = entry.model_dump(mode="json")
    what = {
        "activated": lambda: f"{data['reason']}: {data['detail']} ({data['source']})",
        "trip_recorded": lambda: f"{data['reason']}: {data['detail']} ({data['source']})",
        "reset_approval": lambda: (
            f"{data['operator']} approved ({len(data['approvals'])}/{data['quorum']})"
        ),
        "reset": lambda: f"by {', '.join(data['operators'])}: {data['detail']}",
        "reset_rejected": lambda: f"{data['operator']}: {data['why']} ({data['detail']})",
    }[entry.kind]()
    return {
        "seq": str(entry.seq),
        "ts": entry.ts.isoformat(timespec="milliseconds"),
        "kind": entry.kind,
        "what": what,
        "command": entry.command_id,
    }


def foreign_row(item: ForeignRecord) -> dict[str, str]:
    """A foreign state-log record as the columns ``ess log`` prints (never applied)."""
    return {
        "seq": "-",
        "ts": "",
        "kind": "FOREIGN",
        "what": f"offset {item.offset}, not applied: {item.why}",
        "command": "",
    }

"""What the operator CLI does, as plain async functions (the CLI only parses and prints).

Operators talk to ESS the same way any producer may: by writing a ``TripCommand`` or a signed
``ResetCommand`` to ``ess.commands``. They learn the outcome by reading ``ess.state``, the only
source of truth; nothing here writes to the state log.
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from ess.clock import Clock
from ess.core.signing import load_private_key, sign_reset
from ess.kafka import KafkaSecurity, producer
from ess.statelog import Folded, KafkaStateLog, LoggedEntry, fold_log, follow_state
from schemas import (
    ReasonCode,
    ResetCommand,
    StateEntry,
    TopicRegistry,
    TripCommand,
    encode,
)

#: Key of every command record (the topic has one partition; the key documents intent).
COMMAND_KEY = b"ess"


class OperatorError(RuntimeError):
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


def signed_reset(clock: Clock, operator: str, key_path: Path, detail: str) -> ResetCommand:
    """A reset signed with the operator's private key, with a random id and nonce (random on
    purpose: a predictable id could be raced by someone able to write the command topic)."""
    key = load_private_key(key_path)
    return sign_reset(
        key,
        command_id=str(uuid.uuid4()),
        operator=operator,
        ts=clock.now(),
        nonce=secrets.token_urlsafe(16),
        detail=detail,
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
    await out.start()
    try:
        metadata = await out.send_and_wait(registry.commands.name, encode(command), key=COMMAND_KEY)
    finally:
        await out.stop()
    return int(metadata.offset)


async def read_state(
    bootstrap: str, registry: TopicRegistry, *, security: KafkaSecurity | None = None
) -> tuple[Folded, list[LoggedEntry]]:
    """The whole state log, folded (raises ``SequenceError`` on a log that cannot be trusted)."""
    log = KafkaStateLog(bootstrap, registry.state.name, security=security)
    entries = await log.read()
    return fold_log(entries), entries


async def wait_for_outcome(
    bootstrap: str,
    registry: TopicRegistry,
    command_id: str,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - the error message reports what was waited for
    from_offset: int = 0,
    security: KafkaSecurity | None = None,
) -> StateEntry:
    """The state-log entry the command processor appended for ``command_id``.

    Raises ``TimeoutError`` with a hint when no entry appears: the processor may be down, which
    is itself worth knowing (the command stays in the topic and will be applied on restart).
    """
    deadline = time.monotonic() + timeout
    try:
        async with asyncio.timeout(timeout):
            async for logged in follow_state(bootstrap, registry, from_offset, security=security):
                if logged.entry.command_id == command_id:
                    return logged.entry
    except TimeoutError:
        pass
    waited = timeout - max(0.0, deadline - time.monotonic())
    raise TimeoutError(
        f"no state-log entry for command {command_id} after {waited:.0f}s: is the command "
        f"processor running? (the command is queued and will be applied when it runs)"
    )


def state_summary(folded: Folded) -> dict[str, Any]:
    """A flat, JSON-friendly summary of the folded state for ``ess status``."""
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
        "log_entries": folded.next_offset,
        "duplicates_skipped": len(folded.skipped),
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

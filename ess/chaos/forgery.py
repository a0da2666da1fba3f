"""Command forgery campaign: hostile resets against the real command processor, and a scan of
every log line for secrets.

What runs
---------
An embedded broker (or ``KAFKA_BOOTSTRAP_SERVERS``) with a unique topic prefix, and the
command processor as production starts it (:func:`ess.roles.command.processor.run_processor` with
:class:`ess.settings.EssSettings`): operators ``alice``, ``bob`` and ``carol`` (key pairs written
to a temporary directory, private keys as PKCS#8 PEM), quorum 2, max age 300 s, max skew 30 s.

Script: trip, a proper two-operator reset (alice then bob), a second trip; then, with ESS
ACTIVE, every hostile kind of :data:`KINDS` (each ``rounds`` times, with fresh ids), and at the
end a proper reset by carol, which must complete the quorum with the pending approval bob made
during the stale-quorum attack. Expected outcomes:

* ``forged`` (signed by an unregistered key, claiming alice or bob), ``tampered`` (alice's
  valid signature, then detail / operator / ts / nonce / command id / signature changed),
  ``transplanted`` (a valid signature of another command): ``reset_rejected`` /
  ``bad_signature``.
* ``unknown_operator`` (eve's own valid signature; look-alike names such as ``alice\\u200b``):
  ``unknown_operator``.
* ``expired`` (``ts`` older than the max age): ``expired``; ``future`` (beyond the skew):
  ``from_the_future``.
* ``nonce_reused`` (alice, a new command carrying the nonce of her accepted approval):
  ``nonce_reused``.
* ``replayed`` (the exact bytes of an accepted reset command, after the second trip; of a
  rejected authentic one; of a forgery): no new entry at all (the processor drops a command id
  it has applied), logged as "command already applied".
* ``stale_quorum`` (alice approves with a ``ts`` 3 s short of expiry, the approval lapses,
  bob approves): a ``reset_approval`` counting bob only; ``same_operator_twice`` (bob again,
  fresh nonce): ``duplicate_approval``. ``single_operator`` is the same bob approval seen as
  an attempt: one operator of a quorum of two never resets.
* ``malformed`` (undecodable bytes, a reset without signature, an oversized signature, a naive
  ``ts``, an unknown ``kind``...): a dead letter on ``ess.deadletter`` with the command's
  offset, and, since a command that cannot be read is a stop, a ``manual`` trip recorded by
  the processor for that offset (``trip_recorded``: ESS is ACTIVE), never a reset. Such a trip
  voids pending approvals, so the malformed records of every round are sent after all the
  rounds of the other attacks (which need bob's approval pending).

Then, on the same broker under a topic prefix of its own, the *state tampering* phase
(:mod:`ess.chaos.tamper`): the command processor, the projector writing to Redis and a trading
gate, all running, while the attacker writes to what ESS writes: ``ess.state`` (unsigned,
foreign-key and other-deployment entries, a byte copy of an old reset, garbage), the Redis
``emergency_stop`` record, ``ess.events``; and sends resets held back across activations,
trips squatting the ids of future detections, a reused manual trip id, and records at and
just past every field's size limit; and installs duplicate and weak operator keys.

Figures
-------
* ``attempts``, ``by_kind``; ``rejected``: attempts with the expected refusal (entry with the
  right ``why``, approval as described, no entry for a replay, or a dead letter and the stop
  recorded for it).
* ``accepted_forgeries`` (failure): hostile attempts that produced a ``reset`` entry, or an
  approval where none is expected, plus any moment ESS was INACTIVE between the second trip
  and the final proper reset (``inactive_during_attack``).
* ``wrong_reason`` (failure): refused, but with another ``why`` than expected, or a malformed
  record dead-lettered without the stop it must also be recorded as.
* ``unlogged`` (failure): an attempt whose refusal left no trace: no state entry / dead letter
  where one is expected, or no process log line naming the command (``command_id`` or
  ``command_offset``).
* ``final_reset_ok``: 1 when the proper reset at the end returned ESS to INACTIVE.
* ``secret_leaks`` (failure), ``log_lines_scanned``: every log record emitted in this process
  during the campaign (loguru, rendered with ESS's redaction as production writes it, and
  stdlib logging) plus the text of venue errors, scanned by :func:`scan_for_secrets` for the
  operator private keys (PEM text, base64 and hex of the raw key), the fake venue API key and
  secret of a short executor run against the simulator (including failing calls: an injected
  invalid-key fault and a wrong secret), and the Kafka SASL password of a processor started
  with SASL settings against the PLAINTEXT broker (which must fail, and log). Found leaks are
  listed in ``leaks`` (secret name and where, never the secret). ``unredacted_mentions``
  counts the same scan before redaction: text the code handed to the logger that only the
  redaction net caught (information, worth a look when not 0).

The state tampering phase adds (:mod:`ess.chaos.tamper` has the details):

* ``unauthenticated_entries_applied`` (failure): records the attacker wrote to ``ess.state``
  that a reader applied (a fresh fold of the whole log at the end, and a live follower).
* ``forged_state_effects`` (failure): attacks that had an effect: the gate open while ESS was
  ACTIVE (beyond the bound after a forged Redis record), not closed in time after a write to
  ``ess.state``, a forgery the processor did not answer with an ``unauthorized_access`` trip,
  a forged or unreadable Redis record not overwritten, a real ``emergency.stop`` not
  published, a reset across activations not refused, a duplicate or weak key accepted, a real
  detection or a reused manual trip id not recorded, a size-limit record not answered as
  specified (a stalled or crashed processor, or one applied as a reset), a command without an
  outcome. ``tamper_effects`` splits it by kind.
* ``tamper_attempts`` (by kind), ``tamper_problems`` (short lines: what failed),
  ``tamper_state_gate_closed_after_s`` / ``tamper_state_bound_s``,
  ``tamper_redis_gate_open_s`` / ``tamper_redis_bound_s``,
  ``tamper_redis_foreign_writes_counted``, ``tamper_foreign_records``,
  ``tamper_copies_skipped``, ``tamper_acknowledgements``, ``tamper_commands``,
  ``tamper_rounds``, ``tamper_duration_s``; ``tamper_error`` when the phase could not be set
  up (both failure figures are then ``None``, which fails the campaign).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets as pysecrets
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger
from pydantic import SecretStr

from ess.chaos import tamper
from ess.clock import SystemClock
from ess.core import Activation
from ess.core.attestation import SigningKey
from ess.core.reader import Trust
from ess.core.signing import generate_private_key, sign_reset, write_key_pair
from ess.kafka.broker import kafka_target
from ess.kafka.clients import producer, read_to_end
from ess.observability.logging import redact_text, redact_value
from ess.operator.commands import COMMAND_KEY, manual_trip, read_state, signed_reset, wait_for_entry
from ess.settings import EssSettings
from ess.statelog import LoggedEntry, fold_log
from schemas import (
    DeadLetter,
    ReasonCode,
    ResetApprovalEntry,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    TopicRegistry,
    TripRecordedEntry,
    decode,
    encode,
    topic_registry,
)

if TYPE_CHECKING:
    from loguru import Message

__all__ = [
    "FAILURES",
    "KINDS",
    "LogCapture",
    "key_secrets",
    "log_file_lines",
    "run_campaign",
    "scan_for_secrets",
]

FAILURES: Final[tuple[str, ...]] = (
    "accepted_forgeries",
    "wrong_reason",
    "unlogged",
    "secret_leaks",
    *tamper.FAILURES,
)

KINDS: Final[tuple[str, ...]] = (
    "forged",
    "tampered",
    "transplanted",
    "unknown_operator",
    "expired",
    "future",
    "nonce_reused",
    "replayed",
    "stale_quorum",
    "single_operator",
    "same_operator_twice",
    "malformed",
)

QUORUM: Final = 2
MAX_AGE_S: Final = 300.0
MAX_SKEW_S: Final = 30.0
#: Bound for anything the processor should do in milliseconds.
WAIT_S: Final = 30.0
#: Distinctive fake credentials: a leak is unmistakable.
VENUE_API_KEY: Final = "chaos-venue-key-Qm7Zt2Lx9Vb4"
VENUE_SECRET: Final = "chaos-venue-secret-Hr5Pw8Nc3Ky6"  # noqa: S105 - fake, for the scan
SASL_PASSWORD: Final = "chaos-sasl-password-Jd4Fs9Tg2We7"  # noqa: S105 - fake, for the scan


# --------------------------------------------------------------------------- secret scanning


def scan_for_secrets(lines: Iterable[str], secrets: Mapping[str, str]) -> list[str]:
    """Every ``(secret, line)`` hit as ``"<secret name> in line <n>"``; empty when clean.

    ``secrets`` maps a name to the secret text; give every spelling that matters as its own
    entry (see :func:`key_secrets`). Values shorter than 8 characters are refused: they would
    match by accident. The result never contains the secret itself, so it can be logged.
    """
    short = [name for name, value in secrets.items() if len(value) < 8]
    if short:
        raise ValueError(f"secrets too short to scan for reliably: {short}")
    # A JSON or repr rendering escapes newlines and quotes: a multi-line PEM appears as
    # "-----BEGIN...\\n...". Scan for those spellings too.
    spellings = {
        name: {value, json.dumps(value)[1:-1], repr(value)[1:-1]} for name, value in secrets.items()
    }
    found: list[str] = []
    for number, line in enumerate(lines):
        for name, variants in spellings.items():
            if any(variant in line for variant in variants):
                found.append(f"{name} in line {number}")
    return found


def key_secrets(name: str, key: Ed25519PrivateKey) -> dict[str, str]:
    """The spellings of an Ed25519 private key worth scanning for: its PKCS#8 PEM (whole and
    its base64 body line), and base64 / hex of the raw 32 bytes."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return {
        f"{name} private key PEM": pem.strip(),
        f"{name} private key PEM body": body,
        f"{name} private key base64": base64.b64encode(raw).decode(),
        f"{name} private key urlsafe base64": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        f"{name} private key hex": raw.hex(),
    }


class LogCapture:
    """Every log record emitted in this process while active, as text lines.

    loguru records are kept twice: ``raw`` (message, every bound field, exception and
    traceback, as handed to the logger) and ``lines`` (the same after ESS's redaction,
    :func:`ess.observability.logging.redact_text` /
    :func:`~ess.observability.logging.redact_value`, i.e. what a production sink writes). stdlib
    records (aiokafka, Faust, ccxt) reach both; their level filtering is left as the process
    configured it. ``extra`` adds other text to scan (log files, exception texts).
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.raw: list[str] = []
        self._sink_id: int | None = None
        self._handler: logging.Handler | None = None

    def _sink(self, message: Message) -> None:
        record = message.record
        # str, not repr: the raw line shows a bound value exactly as it was handed over.
        extra = " ".join(f"{k}={v}" for k, v in record["extra"].items())
        exc = record["exception"]
        exc_text = ""
        if exc is not None and exc.type is not None:
            exc_text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
        self.raw.append(f"{record['level'].name} {record['message']} {extra} {exc_text}")
        redacted = {k: redact_value(k, v) for k, v in record["extra"].items()}
        exc_short = redact_text(f"{exc.type.__name__}: {exc.value}") if exc and exc.type else ""
        self.lines.append(
            f"{record['level'].name} {redact_text(record['message'])} "
            f"{orjson.dumps(redacted, default=str).decode()} {exc_short}"
        )

    def add(self, text: str) -> None:
        """Scan ``text`` too (an exception's text, a log file's content)."""
        self.raw.append(text)
        self.lines.append(text)

    def __enter__(self) -> LogCapture:
        self._sink_id = logger.add(self._sink, level="TRACE", catch=True)
        capture = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = f"{record.levelname} {record.name} {record.getMessage()}"
                if record.exc_info:
                    text += " " + "".join(traceback.format_exception(*record.exc_info))
                capture.add(text)

        self._handler = _Handler(level=logging.NOTSET)
        logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._sink_id is not None:
            logger.remove(self._sink_id)
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)

    def mentions(self, *needles: str) -> bool:
        """Whether some captured line contains every one of ``needles``."""
        return any(all(needle in line for needle in needles) for line in self.lines)

    def mentions_offset(self, offset: int, message: str) -> bool:
        """Whether a line with ``message`` carries ``command_offset`` ``offset``."""
        pattern = re.compile(rf"[\"']command_offset[\"']:\s*{offset}\b")
        return any(message in line and pattern.search(line) for line in self.lines)


# --------------------------------------------------------------------------- attempts


@dataclass
class Attempt:
    """One hostile command and what must come of it: ``why`` for a rejection, ``"replay"``
    (no entry), ``"approval"`` (a ``reset_approval`` counting ``approvals``) or
    ``"dead_letter"``."""

    kind: str
    expect: str
    value: bytes
    command_id: str | None
    approvals: tuple[str, ...] = ()
    offset: int = -1


@dataclass
class _Keys:
    alice: Ed25519PrivateKey
    bob: Ed25519PrivateKey
    carol: Ed25519PrivateKey
    mallory: Ed25519PrivateKey  # never registered: forges
    eve: Ed25519PrivateKey  # never registered: signs in her own name
    paths: dict[str, Path] = field(default_factory=dict)


def _reset(
    key: Ed25519PrivateKey,
    operator: str,
    now: datetime,
    activation: Activation,
    *,
    nonce: str | None = None,
    command_id: str | None = None,
) -> ResetCommand:
    return sign_reset(
        key,
        command_id=command_id or str(uuid.uuid4()),
        operator=operator,
        ts=now,
        nonce=nonce or pysecrets.token_urlsafe(16),
        detail="chaos forgery campaign",
        activation_seq=activation.seq,
        activation_command_id=activation.command_id,
    )


def _bytes(command: ResetCommand, **changes: Any) -> bytes:
    """The command's wire bytes with ``changes`` applied *after* signing (tampering)."""
    data = command.model_dump(mode="json")
    data.update(changes)
    return orjson.dumps(data)


def _hostile(
    keys: _Keys, now: datetime, accepted: ResetCommand, rng_tag: str, activation: Activation
) -> list[Attempt]:
    """One round of signature/identity/time attacks (every kind but replay, quorum and
    malformed, which need the processor's state and are scripted in the campaign)."""
    out: list[Attempt] = []

    def add(kind: str, expect: str, value: bytes, command_id: str | None) -> None:
        out.append(Attempt(kind, expect, value, command_id))

    for claimed in ("alice", "bob"):
        forged = _reset(keys.mallory, claimed, now, activation)
        add("forged", "bad_signature", encode(forged), forged.command_id)
    garbage_sig = _reset(keys.alice, "alice", now, activation)
    add(
        "forged",
        "bad_signature",
        _bytes(garbage_sig, signature="!!not-base64!!"),
        garbage_sig.command_id,
    )
    empty_sig = _reset(keys.alice, "alice", now, activation)
    zero = base64.b64encode(bytes(64)).decode()
    add("forged", "bad_signature", _bytes(empty_sig, signature=zero), empty_sig.command_id)

    for changes in (
        {"detail": "tampered detail"},
        {"operator": "bob"},
        {"ts": (now + timedelta(seconds=1)).isoformat()},
        {"nonce": f"tampered-{rng_tag}"},
    ):
        signed = _reset(keys.alice, "alice", now, activation)
        add("tampered", "bad_signature", _bytes(signed, **changes), signed.command_id)
    signed = _reset(keys.alice, "alice", now, activation)
    new_id = str(uuid.uuid4())
    add("tampered", "bad_signature", _bytes(signed, command_id=new_id), new_id)
    signed = _reset(keys.alice, "alice", now, activation)
    flipped = bytearray(base64.b64decode(signed.signature))
    flipped[0] ^= 1
    add(
        "tampered",
        "bad_signature",
        _bytes(signed, signature=base64.b64encode(bytes(flipped)).decode()),
        signed.command_id,
    )
    other = _reset(keys.alice, "alice", now, activation)
    victim = _reset(keys.alice, "alice", now, activation)
    add(
        "transplanted",
        "bad_signature",
        _bytes(victim, signature=other.signature),
        victim.command_id,
    )
    add(
        "transplanted",
        "bad_signature",
        _bytes(victim, signature=accepted.signature, command_id=str(uuid.uuid4())),
        None,
    )
    out[-1].command_id = orjson.loads(out[-1].value)["command_id"]

    for name, key in (("eve", keys.eve), ("alice\u200b", keys.alice), ("Alice", keys.alice)):
        signed = _reset(key, name, now, activation)
        add("unknown_operator", "unknown_operator", encode(signed), signed.command_id)

    old = _reset(keys.alice, "alice", now - timedelta(seconds=MAX_AGE_S + 60), activation)
    add("expired", "expired", encode(old), old.command_id)
    ancient = _reset(keys.bob, "bob", datetime(2001, 1, 1, tzinfo=UTC), activation)
    add("expired", "expired", encode(ancient), ancient.command_id)
    ahead = _reset(keys.alice, "alice", now + timedelta(seconds=MAX_SKEW_S + 60), activation)
    add("future", "from_the_future", encode(ahead), ahead.command_id)
    # Far ahead, yet inside the contract's 2000-2099 range (beyond it, no command can even
    # be built, and the codec refuses the bytes).
    far = _reset(keys.bob, "bob", datetime(2099, 1, 1, tzinfo=UTC), activation)
    add("future", "from_the_future", encode(far), far.command_id)

    reused = _reset(keys.alice, "alice", now, activation, nonce=accepted.nonce)
    add("nonce_reused", "nonce_reused", encode(reused), reused.command_id)
    return out


def _malformed(now: datetime, keys: _Keys, activation: Activation) -> list[Attempt]:
    signed = _reset(keys.alice, "alice", now, activation)
    data = signed.model_dump(mode="json")
    values = [
        b"\xff\xfe\x00garbage",
        b"",
        b"{not json",
        b"[]",
        b"null",
        orjson.dumps({k: v for k, v in data.items() if k != "signature"}),
        orjson.dumps({**data, "signature": ""}),
        orjson.dumps({**data, "signature": "A" * 600}),
        orjson.dumps({**data, "ts": "2026-11-22T10:00:00"}),
        orjson.dumps({**data, "kind": "unlock"}),
        orjson.dumps({**data, "operator": "a" * 300}),
        orjson.dumps({**data, "nonce": None}),
        b'{"kind":"reset","ts":NaN}',
        b"[" * 5000 + b"]" * 5000,
        orjson.dumps({**data, "padding": "p" * (300 * 1024)}),
    ]
    return [Attempt("malformed", "dead_letter", value, None) for value in values]


# --------------------------------------------------------------------------- campaign


def _write_keys(directory: Path) -> _Keys:
    keys = _Keys(
        alice=generate_private_key(),
        bob=generate_private_key(),
        carol=generate_private_key(),
        mallory=generate_private_key(),
        eve=generate_private_key(),
    )
    operators = directory / "operators"
    private = directory / "private"
    for name in ("alice", "bob", "carol"):
        paths = write_key_pair(getattr(keys, name), private, name)
        (operators / f"{name}.pub").parent.mkdir(parents=True, exist_ok=True)
        (operators / f"{name}.pub").write_text(paths.public.read_text())
        keys.paths[name] = paths.private
    return keys


@dataclass
class _Outcome:
    entries: list[LoggedEntry]
    letters: list[DeadLetter]


class _Campaign:
    def __init__(
        self, bootstrap: str, registry: TopicRegistry, capture: LogCapture, trust: Trust
    ) -> None:
        self.bootstrap = bootstrap
        self.registry = registry
        self.capture = capture
        self.trust = trust
        self.attempts: list[Attempt] = []
        self.sender = producer(bootstrap, read_to_end_safe=True)

    async def send(self, value: bytes) -> int:
        meta = await self.sender.send_and_wait(self.registry.commands.name, value, key=COMMAND_KEY)
        return int(meta.offset)

    async def outcome(self, command_id: str) -> Any:
        return await wait_for_entry(
            self.bootstrap, self.registry, command_id, trust=self.trust, timeout=WAIT_S
        )

    async def activation(self) -> Activation:
        """The current activation, as the state log says."""
        view = await read_state(self.bootstrap, self.registry, self.trust)
        activation = view.folded.state.activation
        if activation is None:
            raise RuntimeError("forgery campaign: ESS is not ACTIVE when it should be")
        return activation

    async def attempt(self, attempt: Attempt) -> None:
        attempt.offset = await self.send(attempt.value)
        self.attempts.append(attempt)

    async def barrier(self) -> None:
        """Wait until everything sent so far is processed: a trip behind it is recorded."""
        trip = manual_trip(SystemClock(), "chaos forgery barrier", operator="chaos")
        await self.send(encode(trip))
        await self.outcome(trip.command_id)


async def _script(c: _Campaign, keys: _Keys, rounds: int) -> dict[str, Any]:
    """Drive the scenario; returns the command ids the judge needs."""
    clock = SystemClock()
    first = manual_trip(clock, "chaos forgery: first trip", operator="chaos")
    await c.send(encode(first))
    await c.outcome(first.command_id)
    activation = await c.activation()
    approve = _reset(keys.alice, "alice", clock.now(), activation)
    complete = _reset(keys.bob, "bob", clock.now(), activation)
    await c.send(encode(approve))
    assert isinstance(await c.outcome(approve.command_id), ResetApprovalEntry)
    await c.send(encode(complete))
    done = await c.outcome(complete.command_id)
    if not isinstance(done, ResetEntry):
        raise RuntimeError(f"the baseline two-operator reset did not reset: {done!r}")
    second = manual_trip(clock, "chaos forgery: second trip", operator="chaos")
    await c.send(encode(second))
    await c.outcome(second.command_id)
    activation = await c.activation()

    # Stale quorum first, while no approval is pending: alice's approval lapses before bob's.
    stale = _reset(keys.alice, "alice", clock.now() - timedelta(seconds=MAX_AGE_S - 3), activation)
    await c.send(encode(stale))
    await c.outcome(stale.command_id)
    await asyncio.sleep(4.0)
    lone = _reset(keys.bob, "bob", clock.now(), activation)
    await c.attempt(Attempt("stale_quorum", "approval", encode(lone), lone.command_id, ("bob",)))
    await c.outcome(lone.command_id)
    c.attempts.append(
        Attempt("single_operator", "approval", encode(lone), lone.command_id, ("bob",))
    )
    # From here bob's approval is pending: any forgery that counted would complete a quorum.
    for _ in range(rounds):
        again = _reset(keys.bob, "bob", clock.now(), activation)
        await c.attempt(
            Attempt("same_operator_twice", "duplicate_approval", encode(again), again.command_id)
        )
        for attempt in _hostile(keys, clock.now(), approve, uuid.uuid4().hex[:6], activation):
            await c.attempt(attempt)
    # Malformed records last: each is also recorded as a manual trip (a command that cannot be
    # read is a stop), and a trip voids bob's pending approval, which the attacks above need.
    for _ in range(rounds):
        for attempt in _malformed(clock.now(), keys, activation):
            await c.attempt(attempt)
    # Replays: exact bytes of the accepted approval and reset, of a rejected authentic command
    # and of a forgery.
    replays = [encode(approve), encode(complete)]
    for wanted in ("expired", "bad_signature", "unknown_operator"):
        replays.append(next(a.value for a in c.attempts if a.expect == wanted))
    for value in replays:
        command_id = orjson.loads(value)["command_id"]
        await c.attempt(Attempt("replayed", "replay", value, command_id))
    await c.barrier()

    # The proper reset at the end (the barrier's trip voided bob's approval, by design):
    # carol then alice, signed from their PEM key files as the operator CLI does.
    activation = await c.activation()
    carol = signed_reset(
        clock, "carol", keys.paths["carol"], "chaos forgery: proper reset", activation=activation
    )
    await c.send(encode(carol))
    await c.outcome(carol.command_id)
    final = signed_reset(
        clock, "alice", keys.paths["alice"], "chaos forgery: proper reset", activation=activation
    )
    await c.send(encode(final))
    return {
        "second": second.command_id,
        "final": final.command_id,
        "legit": {
            first.command_id,
            approve.command_id,
            complete.command_id,
            second.command_id,
            stale.command_id,
            carol.command_id,
            final.command_id,
        },
    }


#: Verdicts of one attempt; a verdict may also carry "unlogged".
REFUSED, ACCEPTED, WRONG = "refused", "accepted", "wrong_reason"


def _verdict(
    attempt: Attempt, entries: list[Any], letter: DeadLetter | None, capture: LogCapture
) -> tuple[str, bool, str]:
    """``(verdict, logged, problem)`` of one attempt given its state entries (by command id;
    for a malformed record, by command offset) or its dead letter (by offset)."""
    where = f"{attempt.kind} {attempt.command_id or attempt.offset}"
    if attempt.expect == "dead_letter":
        return _malformed_verdict(attempt, entries, letter, capture)
    if attempt.expect == "replay":
        # The original's entry is there (one); a second one would be the replay acted upon.
        logged = capture.mentions(str(attempt.command_id), "already applied")
        if len(entries) > 1:
            return ACCEPTED, logged, f"{where}: {len(entries)} entries"
        return REFUSED, logged, "" if logged else f"{where}: no log line"
    kinds = {type(entry) for entry in entries}
    if ResetEntry in kinds:
        return ACCEPTED, True, f"{where}: RESET ACCEPTED"
    approvals = [e for e in entries if isinstance(e, ResetApprovalEntry)]
    if attempt.expect == "approval":
        if not approvals:
            return REFUSED, False, f"{where}: no entry"
        if tuple(approvals[0].approvals) != attempt.approvals:
            return ACCEPTED, True, f"{where}: approval counted {approvals[0].approvals}"
        return REFUSED, True, ""
    if approvals:
        return ACCEPTED, True, f"{where}: counted as an approval"
    refusals = [e for e in entries if isinstance(e, ResetRejectedEntry)]
    if not refusals:
        return REFUSED, False, f"{where}: no reset_rejected entry"
    logged = capture.mentions(str(attempt.command_id), "reset rejected")
    if refusals[0].why.value != attempt.expect:
        return WRONG, logged, f"{where}: why={refusals[0].why.value}, expected {attempt.expect}"
    return REFUSED, logged, "" if logged else f"{where}: no log line"


def _malformed_verdict(
    attempt: Attempt, entries: list[Any], letter: DeadLetter | None, capture: LogCapture
) -> tuple[str, bool, str]:
    """A malformed record must be dead-lettered and recorded as exactly one ``manual`` stop
    (``entries``: what the state log holds for its offset); never a reset or an approval."""
    where = f"{attempt.kind} {attempt.offset}"
    if any(isinstance(entry, ResetEntry | ResetApprovalEntry) for entry in entries):
        return ACCEPTED, True, f"{where}: a malformed record counted as a reset"
    ok = letter is not None and bool(letter.error.strip())
    logged = ok and capture.mentions_offset(attempt.offset, "command dead-lettered")
    if not ok:
        return ACCEPTED, logged, f"{where}: no dead letter"
    stops = [
        entry
        for entry in entries
        if isinstance(entry, TripRecordedEntry) and entry.reason is ReasonCode.MANUAL
    ]
    if len(stops) != 1 or len(entries) != 1:
        return WRONG, logged, f"{where}: not recorded as one stop: {entries!r}"[:300]
    return REFUSED, logged, "" if logged else f"{where}: no log line"


def _judge(c: _Campaign, outcome: _Outcome, ids: dict[str, Any]) -> dict[str, Any]:
    by_id: dict[str, list[Any]] = {}
    by_offset: dict[int, list[Any]] = {}
    for logged_entry in outcome.entries:
        by_id.setdefault(logged_entry.entry.command_id, []).append(logged_entry.entry)
        if logged_entry.entry.command_offset is not None:
            by_offset.setdefault(logged_entry.entry.command_offset, []).append(logged_entry.entry)
    letters = {letter.offset: letter for letter in outcome.letters}
    counts = {REFUSED: 0, ACCEPTED: 0, WRONG: 0}
    unlogged = 0
    by_kind: dict[str, int] = {}
    problems: list[str] = []
    for attempt in c.attempts:
        by_kind[attempt.kind] = by_kind.get(attempt.kind, 0) + 1
        # A malformed record has no command id of its own: its stop is found by offset.
        entries = (
            by_offset.get(attempt.offset, [])
            if attempt.command_id is None
            else by_id.get(attempt.command_id or "", [])
        )
        verdict, logged, problem = _verdict(
            attempt, entries, letters.get(attempt.offset), c.capture
        )
        counts[verdict] += 1
        unlogged += not logged
        if problem:
            problems.append(problem)
    rejected, accepted, wrong = counts[REFUSED], counts[ACCEPTED], counts[WRONG]

    # ESS must stay ACTIVE from the second trip until the final proper reset, and no reset
    # entry may exist besides the two legitimate ones.
    inactive = 0
    folded = fold_log(())
    watching = False
    for logged_entry in outcome.entries:
        folded = fold_log([logged_entry], folded)
        entry = logged_entry.entry
        if entry.command_id == ids["second"]:
            watching = True
        if entry.command_id == ids["final"]:
            watching = False
        if watching and not folded.state.active:
            inactive += 1
        if isinstance(entry, ResetEntry) and entry.command_id not in ids["legit"]:
            inactive += 1
            problems.append(f"unexpected reset entry {entry.command_id}")
    final_entries = by_id.get(ids["final"], [])
    final_ok = bool(final_entries) and isinstance(final_entries[0], ResetEntry)
    if not final_ok:
        problems.append(f"final reset: {final_entries!r}, active={folded.state.active}")
    return {
        "attempts": len(c.attempts),
        "by_kind": by_kind,
        "rejected": rejected,
        "accepted_forgeries": accepted + inactive,
        "inactive_during_attack": inactive,
        "wrong_reason": wrong,
        "unlogged": unlogged,
        "final_reset_ok": int(final_ok),
        "problems": problems[:20],
    }


async def _venue_secrets(capture: LogCapture) -> int:
    """A short executor run against the simulator with the fake credentials, failing calls
    included; returns the number of venue calls made. Exception texts go into the scan."""
    from ess.sim import ExchangeSimulator, FaultKind  # noqa: PLC0415
    from ess.venues.binance import BinanceVenue  # noqa: PLC0415 - ccxt is heavy
    from ess.venues.config import VenueConfig, VenueCredentials  # noqa: PLC0415
    from ess.venues.ports import VenueError  # noqa: PLC0415

    calls = 0
    async with ExchangeSimulator() as sim:
        sim.add_account(VENUE_API_KEY, VENUE_SECRET, name="chaos")
        good = VenueCredentials(api_key=SecretStr(VENUE_API_KEY), secret=SecretStr(VENUE_SECRET))
        wrong = VenueCredentials(
            api_key=SecretStr(VENUE_API_KEY), secret=SecretStr(VENUE_SECRET[::-1])
        )
        for name, creds, fault in (
            ("chaos-ok", good, None),
            ("chaos-invalid-key", good, FaultKind.INVALID_KEY),
            ("chaos-bad-json", good, FaultKind.BAD_JSON),
            ("chaos-wrong-secret", wrong, None),
        ):
            config = VenueConfig(
                name=name, exchange="binanceusdm", account="chaos", base_url=sim.url, timeout_ms=500
            )
            venue = BinanceVenue(config, creds)
            sim.clear_faults()
            if fault is not None:
                sim.add_fault("GET", "/fapi/*", fault, times=None)
            try:
                await venue.open()
                calls += 1
                await venue.snapshot()
                calls += 1
            except VenueError as exc:
                logger.bind(venue=name).opt(exception=exc).warning("venue call failed: {}", exc)
                cause: BaseException | None = exc
                while cause is not None:
                    capture.add(f"{cause!s} {cause!r}")
                    cause = cause.__cause__ or cause.__context__
            finally:
                await venue.aclose()
    return calls


async def _sasl_attempt(bootstrap: str, prefix: str, keys_dir: Path) -> str:
    """A processor configured with SASL credentials against the PLAINTEXT broker: it must
    fail (bounded), and what it logs on the way is scanned."""
    from ess.roles.command.processor import run_processor  # noqa: PLC0415

    settings = EssSettings(
        kafka={
            "bootstrap_servers": bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "chaos",
            "sasl_password": SecretStr(SASL_PASSWORD),
            "topic_prefix": prefix,
        },
        keys={"operator_keys_dir": keys_dir},
        _env_file=None,
    )
    logger.bind(settings=repr(settings)).info("chaos: starting a processor with SASL settings")
    stop = asyncio.Event()
    try:
        await asyncio.wait_for(
            run_processor(
                settings, stop, signing_key=SigningKey(generate_private_key()), status_port=-1
            ),
            timeout=20,
        )
    except TimeoutError:
        return "timed out (stopped after 20 s)"
    except Exception as exc:
        logger.opt(exception=exc).warning("chaos: SASL processor failed: {}", exc)
        return f"failed: {type(exc).__name__}"
    return "returned"


def _broken_key_attempt(tmp: Path, keys: _Keys) -> None:
    """A corrupted private key file: the error path must not echo the key material."""
    broken = tmp / "private" / "broken.key"
    pem = keys.paths["alice"].read_text()
    broken.write_text(pem.replace("\n-----END", "x\n-----END"))
    activation = Activation(0, "x", ReasonCode.MANUAL, "", "chaos", None, SystemClock().now())
    try:
        signed_reset(SystemClock(), "alice", broken, "broken key", activation=activation)
    except Exception as exc:
        logger.opt(exception=exc).warning("chaos: operator key unusable: {}", exc)


async def run_campaign(*, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Forged, tampered, expired, replayed, unknown-operator, wrong-quorum and malformed
    resets against the real command processor, the state tampering phase
    (:func:`ess.chaos.tamper.run_phase`), then a secret scan of every log line. Quick: one
    round of the hostile set and of the tampering; full: five."""
    from ess.roles.command.processor import run_processor  # noqa: PLC0415

    del seed  # nothing random that changes outcomes: keys and nonces are fresh per run
    started = time.monotonic()
    rounds = 1 if quick else 5
    run = uuid.uuid4().hex[:8]
    registry = topic_registry(prefix=f"chaos-forgery-{run}")
    with tempfile.TemporaryDirectory(prefix="ess-chaos-forgery-") as tmp, LogCapture() as capture:
        keys = _write_keys(Path(tmp))
        secrets: dict[str, str] = {}
        for name in ("alice", "bob", "carol", "mallory", "eve"):
            secrets |= key_secrets(name, getattr(keys, name))
        secrets |= {
            "venue api key": VENUE_API_KEY,
            "venue secret": VENUE_SECRET,
            "kafka sasl password": SASL_PASSWORD,
        }
        async with kafka_target(registry) as bootstrap:
            settings = EssSettings(
                kafka={"bootstrap_servers": bootstrap, "topic_prefix": registry.prefix},
                keys={
                    "operator_keys_dir": Path(tmp) / "operators",
                    "reset_quorum": QUORUM,
                    "reset_max_age_sec": MAX_AGE_S,
                    "reset_max_skew_sec": MAX_SKEW_S,
                },
                _env_file=None,
            )
            logger.bind(settings=repr(settings)).info("chaos: forgery campaign settings")
            stop = asyncio.Event()
            processor_key = SigningKey(generate_private_key())
            trust = settings.state_trust(also_trust=processor_key)
            processor = asyncio.create_task(
                run_processor(settings, stop, signing_key=processor_key, status_port=-1)
            )
            campaign = _Campaign(bootstrap, registry, capture, trust)
            await campaign.sender.start()
            try:
                ids = await _script(campaign, keys, rounds)
                await campaign.outcome(ids["final"])
                await campaign.barrier()
                entries = list((await read_state(bootstrap, registry, trust)).entries)
                records = await read_to_end(bootstrap, registry.deadletter.name)
                letters = [decode(DeadLetter, record.value) for record in records]
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(processor, timeout=WAIT_S)
                await campaign.sender.stop()
            figures = _judge(campaign, _Outcome(entries, letters), ids)
            figures["processor_crashed"] = int(
                processor.done() and not processor.cancelled() and processor.exception() is not None
            )
            # Its own prefix: its processor, projector and gate must not see this log.
            figures |= await tamper.run_phase(
                bootstrap, quick=quick, prefix=f"{registry.prefix}-tamper"
            )
            figures["sasl_processor"] = await _sasl_attempt(
                bootstrap, registry.prefix, Path(tmp) / "operators"
            )
        figures["venue_calls"] = await _venue_secrets(capture)
        _broken_key_attempt(Path(tmp), keys)
    leaks = scan_for_secrets(capture.lines, secrets)
    figures["secret_leaks"] = len(leaks)
    figures["leaks"] = leaks[:20]
    figures["unredacted_mentions"] = len(scan_for_secrets(capture.raw, secrets))
    figures["log_lines_scanned"] = len(capture.lines)
    figures["duration_s"] = round(time.monotonic() - started, 1)
    return figures


def log_file_lines(paths: Iterable[Path]) -> Iterator[str]:
    """Lines of log files, for :func:`scan_for_secrets` over other campaigns' ``<role>.log``
    files."""
    for path in paths:
        with path.open(errors="replace") as handle:
            yield from handle

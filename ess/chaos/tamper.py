"""State tampering: the forgery campaign's attacks on what ESS *writes*, not on its commands.

The rest of the forgery campaign sends hostile commands, which the command processor reads.
But an attacker who can produce to ``ess.commands`` can usually produce to ``ess.state`` and
``ess.events`` too, and may reach the Redis PolicyStore the gates read. Each of those paths
was closed on its own (``tests/roles/command/test_processor_issue12.py``,
``test_projector_foreign.py``, ``test_projector_events.py``, ``test_projector_policystore.py``);
this phase replays them as attacks, several rounds, against every role running together, and
measures what got through, so that a regression anywhere shows up as a number.

What runs
---------
In this process, on the campaign's broker (embedded, or ``KAFKA_BOOTSTRAP_SERVERS``) under a
topic prefix of its own: the command processor as production starts it
(:func:`ess.roles.command.processor.run_processor`; operators ``alice``, ``bob``, ``carol``, quorum
2), the projector (:func:`ess.roles.project.projector.run_projector`) writing ``emergency_stop`` to
Redis (``$ESS_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379/0``, under a namespace of its own,
deleted at the end), and a :class:`~ess.gate.TradingGate` fed from that Redis by a
:class:`~ess.gate.PolicyStoreGateFeed`. A sampler watches the gate every few milliseconds
throughout; followers read ``ess.state`` (through the verifying reader), ``ess.outcomes``
(seal checked) and ``ess.events`` back.

After a baseline trip and proper reset (so there is an authentic reset entry to replay), each
round plays, in this order (kinds as counted in ``tamper_attempts``):

``state_inactive`` / ``state_active``
    Records written straight to ``ess.state``, first while ESS is INACTIVE, then while ACTIVE:
    a reset entry for the current (or last) activation, chained to the log's head and carrying
    alice's and bob's genuinely signed reset commands, written unsigned, sealed by an unknown
    key, and sealed by the processor's own key for another deployment's log; a byte copy of
    the last authentic reset entry; garbage bytes. None may be applied; the processor must
    answer with an ``unauthorized_access`` trip whose trigger covers them (the copy is an
    authentic record off the chain: skipped, needs no answer). INACTIVE: the gate must close
    within :func:`state_bound` of the first write. ACTIVE: it must stay closed throughout.
``redis``
    While ACTIVE, an INACTIVE ``emergency_stop`` record with ``seq`` 10^9 written to Redis:
    the projector must overwrite it with the log's ACTIVE record, and the gate (which may
    open on the forgery for a moment: Redis has no compare-and-set) must be closed again
    within :func:`redis_bound`. Then an unreadable value (not JSON) in its place: the gate
    fails closed, and the projector must replace it too, or the next reset could never reopen
    any gate (a stop nobody can lift is an outage); the same for a Redis hash under the key.
``events``
    While INACTIVE, forged ``ess.events`` records: a stop with ``seq`` 10^9 and a reset under
    the ``seq`` the next entry will get. The projector is restarted (it reads the topic on
    start), ESS is tripped: the real ``emergency.stop`` of that trip must be published.
``cross_activation``
    carol and alice sign resets (properly, registered keys) for an activation A1 before it is
    reset; they arrive after A1 was reset and A2 is active: each must be ``reset_rejected``
    with ``activation_mismatch``, and ESS stays ACTIVE (two of them would be a quorum).
``weak_keys``
    Operator key directories with two names sharing one key (PEM and base64 spellings, or the
    same PEM twice), a small-order key, non-canonical encodings (``y >= p``, negative zero),
    a point of order 2: both :meth:`ess.settings.EssSettings.reset_policy` and the processor's
    start must refuse. No broker involved.
``squatted_ids``
    While ACTIVE, trips carrying the ids a detector will use later (trigger event time before
    the coming reset); a proper reset; then the real detections under the same ids with
    event times after it: each must be recorded (the first activates, the rest are
    ``trip_recorded``). Quick: 20 ids, full: 200 per round.
``reused_manual_id``
    A manual trip with a fixed id, a proper reset, the same id with a newer ``ts``: ESS must
    be ACTIVE again.
``size_limit``
    While ACTIVE, trips and resets whose string fields are exactly at the contract's limits
    (:data:`~schemas.IDENT_MAX` identifiers, :data:`~schemas.TEXT_MAX` details, 512-character
    signatures, astral and non-printable characters included) and one past them. At the
    limit: trips are recorded as sent, resets are refused (unknown operator, bad signature,
    activation mismatch) except alice's genuine approval for the current activation, which
    is counted as an approval; one past the limit (bob's genuine completion of that quorum
    among them): dead-lettered *and* recorded as a ``manual`` stop, never a reset or an
    approval. The processor keeps running and every command gets an outcome.

Each round ends with a proper reset, and the gate must open again. At the end the whole log
is read once more and folded from scratch.

Figures
-------
* ``unauthenticated_entries_applied`` (failure): records written to ``ess.state`` by the
  attacker that a reader applied: the fresh fold at the end and the live follower, by offset
  and by the forged entries' command ids.
* ``forged_state_effects`` (failure): attacks that had an effect, i.e. where ESS did not
  answer exactly as described above: the gate open while ESS was ACTIVE (beyond the bound
  for the Redis forgery), not closed in time after a write to ``ess.state``, a forgery not
  acknowledged, a forged Redis record not overwritten, a real event not published, a reset
  across activations not refused, a weak or duplicate key accepted, a real detection or a
  reused manual trip not recorded, a size-limit record not answered as described (or a
  stalled or crashed processor), any command without an outcome, and a round that could not
  go on (a proper step failed: the attacks before it broke something). ``tamper_effects``
  splits it by kind (plus ``outcomes`` and ``aborted``).
* ``tamper_attempts``: attacks by kind; ``tamper_problems``: what went wrong, one short line
  each (the first 30).
* ``tamper_state_gate_closed_after_s`` (max of the INACTIVE-state writes) and
  ``tamper_state_bound_s``; ``tamper_redis_gate_open_s`` (max, after a forged Redis record)
  and ``tamper_redis_bound_s``; ``tamper_redis_foreign_writes_counted`` (the projector's
  ``ess_policy_store_foreign_writes_total``: a forgery overwritten before the projector read
  it is not counted, which is fine).
* ``tamper_foreign_records``, ``tamper_copies_skipped``, ``tamper_acknowledgements`` (as the
  final fold sees them), ``tamper_commands`` (commands sent), ``tamper_rounds``,
  ``tamper_duration_s``; ``tamper_error`` only when the phase could not be set up (then both
  failure figures are ``None``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import secrets as pysecrets
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.core.attestation import SigningKey, seal_problem
from ess.core.projection import event_for
from ess.core.reader import LogBroken, LoggedEntry, RawRecord, Trust, fold_records, seal_entry
from ess.core.signing import (
    canonical_reset_bytes,
    canonical_ts,
    generate_private_key,
    public_bytes,
    sign_reset,
    write_key_pair,
)
from ess.gate import PolicyStoreGateFeed, TradingGate
from ess.kafka.broker import ensure_topics
from ess.kafka.clients import follow_partition, producer, read_to_end
from ess.operator.commands import COMMAND_KEY
from ess.policystore import DEFAULT_REDIS_URL, RedisPolicyStore
from ess.roles.command.processor import SOURCE, StartupRefused, run_processor
from ess.roles.project.metrics import ProjectorMetrics
from ess.roles.project.projector import EVENTS_KEY, run_projector
from ess.settings import EssSettings
from ess.statelog import STATE_KEY, StateLogReader
from schemas import (
    IDENT_MAX,
    TEXT_MAX,
    ActivatedEntry,
    CommandOutcome,
    DeadLetter,
    EmergencyEvent,
    EmergencyResetEvent,
    EmergencyStopEvent,
    PolicyRecord,
    ReasonCode,
    RecordError,
    RejectReason,
    ResetApprovalEntry,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TopicRegistry,
    TriggerRef,
    TripCommand,
    TripRecordedEntry,
    decode,
    encode,
)

__all__ = [
    "FAILURES",
    "KINDS",
    "redis_bound",
    "run_phase",
    "size_limit_probes",
    "state_bound",
    "weak_key_cases",
    "weak_key_refused",
]

#: Figures that must be 0.
FAILURES: Final[tuple[str, ...]] = ("unauthenticated_entries_applied", "forged_state_effects")

#: Attack kinds, in the order a round plays them (``weak_keys`` needs no broker).
KINDS: Final[tuple[str, ...]] = (
    "state_inactive",
    "state_active",
    "redis",
    "events",
    "cross_activation",
    "weak_keys",
    "squatted_ids",
    "reused_manual_id",
    "size_limit",
)

QUORUM: Final = 2
OPERATORS: Final = ("alice", "bob", "carol")
MAX_AGE_S: Final = 300.0
MAX_SKEW_S: Final = 30.0
#: The processor's beat interval: also how often it looks at the log's end while idle, so
#: how soon it answers a foreign record when no command comes.
BEAT_S: Final = 0.25
#: The projector's refresh interval, the gate feed's poll interval, the gate's bounds.
REFRESH_S: Final = 0.2
POLL_S: Final = 0.02
MAX_RECORD_AGE_S: Final = 2.0
MAX_CLOCK_SKEW_S: Final = 0.5
#: Slack on every timing bound: scheduling on a busy 2-core machine, the sampler's period.
TOLERANCE_S: Final = 1.0
#: How often the gate sampler looks.
SAMPLE_S: Final = 0.005
#: Bound for anything the processor or a follower should do in milliseconds.
WAIT_S: Final = 20.0
#: Bound for the set-up (processor group join, the gate opening the first time).
SETUP_S: Final = 45.0
#: Bound for each teardown step.
TEARDOWN_S: Final = 10.0
#: How long the projector gets to replace a forged Redis record (many refreshes).
REPAIR_S: Final = 5.0
#: The forged ``seq`` of a Redis record and of an event: far beyond any real one.
FORGED_SEQ: Final = 10**9
#: Rounds, and squatted ids per round.
QUICK_ROUNDS, FULL_ROUNDS = 1, 5
QUICK_SQUATS, FULL_SQUATS = 20, 200
#: Environment variable naming the Redis to use (the tests' one).
REDIS_URL_ENV: Final = "ESS_TEST_REDIS_URL"
#: Characters that padding cycles through: astral (4 bytes of UTF-8, 2 UTF-16 units), a
#: non-printable astral tag character, a combining accent and a plain letter.
PAD: Final = ("\U0001f6d1", "\U000e0001", "e\u0301", "x")

_T = TypeVar("_T")


def state_bound() -> float:
    """From a write to ``ess.state`` while INACTIVE to every gate closed: the processor sees
    it at its next idle check (one beat), appends the acknowledging trip, the projector
    writes ACTIVE at once, the gate reads within a poll."""
    return BEAT_S + REFRESH_S + POLL_S + TOLERANCE_S


def redis_bound() -> float:
    """From a forged INACTIVE record in Redis to the gate closed again: the projector
    re-asserts the log's record within a refresh, the gate reads it within a poll."""
    return REFRESH_S + POLL_S + TOLERANCE_S


class _Abort(Exception):
    """A proper step failed (a reset did not reset, the processor died): the round cannot go
    on. Counted as an effect, never raised out of the phase."""


async def _until(check: Callable[[], _T], timeout_s: float, *, interval: float = 0.01) -> _T | None:
    """Poll ``check`` until it returns something truthy; that, or ``None`` after
    ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = check()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        return None


async def _until_async(
    check: Callable[[], Awaitable[_T]], timeout_s: float, *, interval: float = 0.01
) -> _T | None:
    """As :func:`_until` for an async ``check``."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = await check()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        return None


def _pad(prefix: str, length: int) -> str:
    """``prefix`` padded to exactly ``length`` characters (code points) from :data:`PAD`."""
    out = list(prefix)
    index = 0
    while len(out) < length:
        piece = PAD[index % len(PAD)]
        out.extend(piece[: length - len(out)])
        index += 1
    return "".join(out)[:length]


# --------------------------------------------------------------------------- weak keys


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def weak_key_cases() -> dict[str, dict[str, str]]:
    """Operator key directories (file name to content) that must be refused: two names for
    one key, and keys no honest signer has."""
    key = generate_private_key()
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    raw = public_bytes(key)
    good = _b64(public_bytes(generate_private_key()))
    p = 2**255 - 19
    return {
        "same key, PEM and base64": {"alice.pub": pem, "mallory.pub": _b64(raw)},
        "same key, PEM twice": {"alice.pub": pem, "bob.pub": pem},
        "same key, base64 with whitespace": {
            "alice.pub": _b64(raw),
            "bob.pub": f"\n {_b64(raw)}\n",
        },
        "small order (identity)": {"alice.pub": good, "evil.pub": _b64(bytes([1]) + bytes(31))},
        "order 2": {"alice.pub": good, "evil.pub": _b64((p - 1).to_bytes(32, "little"))},
        "non-canonical y >= p": {"alice.pub": good, "evil.pub": _b64(p.to_bytes(32, "little"))},
        "non-canonical identity (y = p + 1)": {
            "alice.pub": good,
            "evil.pub": _b64((p + 1).to_bytes(32, "little")),
        },
        "negative zero": {"alice.pub": good, "evil.pub": _b64(bytes([1]) + bytes(30) + b"\x80")},
    }


def _install_keys(directory: Path, files: Mapping[str, str]) -> None:
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)


async def weak_key_refused(directory: Path, files: Mapping[str, str]) -> list[str]:
    """Install ``files`` as an operator key directory; what accepted them (empty when both
    the reset policy and the processor's start refused)."""
    await asyncio.to_thread(_install_keys, directory, files)
    settings = EssSettings(
        kafka={
            # Nothing listens there: the processor must refuse before it connects anywhere.
            "bootstrap_servers": "127.0.0.1:9",
            "topic_prefix": "chaos-tamper-keys",
        },
        keys={
            "operator_keys_dir": directory,
            "processor_keys_dir": directory / "no-processors",
            "reset_quorum": 1,
        },
        _env_file=None,
    )
    accepted: list[str] = []
    try:
        settings.reset_policy()
        accepted.append("reset_policy")
    except ValueError:
        pass
    try:
        async with asyncio.timeout(TEARDOWN_S):
            await run_processor(
                settings,
                asyncio.Event(),
                signing_key=SigningKey(generate_private_key()),
                status_port=-1,
            )
        accepted.append("processor start (returned)")
    except StartupRefused as exc:
        # Refused for its settings, before connecting; any later refusal (nothing listens
        # at the bootstrap address) means the keys were taken.
        if not str(exc).startswith("command processor settings:"):
            accepted.append("processor start (got past the keys)")
    except TimeoutError:
        accepted.append("processor start (still running)")
    except Exception as exc:  # refused, but not the way it should say so
        accepted.append(f"processor start ({type(exc).__name__})")
    return accepted


# --------------------------------------------------------------------------- size limits


@dataclass
class Probe:
    """One size-limit command: ``expect`` is ``trip`` (recorded as sent), ``refused``
    (``reset_rejected``, with ``why`` when given), ``approval`` (counted for alice only) or
    ``stop`` (dead-lettered and recorded as a manual stop)."""

    name: str
    value: bytes
    expect: str
    command_id: str | None = None
    detail: str | None = None
    why: RejectReason | None = None
    offset: int = -1


def _reset_document(
    key: Ed25519PrivateKey | None,
    *,
    command_id: str,
    operator: str,
    detail: str,
    nonce: str,
    ts: datetime,
    activation: tuple[int, str],
    signature: str | None = None,
) -> dict[str, Any]:
    """A reset command as JSON, signed by ``key`` over exactly these fields (whatever their
    size: the contract's limits are the reader's to enforce), or carrying ``signature``."""
    if key is not None:
        message = canonical_reset_bytes(
            command_id=command_id,
            operator=operator,
            detail=detail,
            ts=ts,
            nonce=nonce,
            activation_seq=activation[0],
            activation_command_id=activation[1],
        )
        signature = _b64(key.sign(message))
    return {
        "command_id": command_id,
        "kind": "reset",
        "operator": operator,
        "detail": detail,
        "ts": canonical_ts(ts),
        "nonce": nonce,
        "activation_seq": activation[0],
        "activation_command_id": activation[1],
        "signature": signature,
    }


def _trip_document(
    command_id: str, *, source: str, detail: str, ts: datetime, topic: str | None = None
) -> dict[str, Any]:
    trigger = None
    if topic is not None:
        trigger = {"topic": topic, "partition": 0, "offset": 0, "event_ts": canonical_ts(ts)}
    return {
        "command_id": command_id,
        "kind": "trip",
        "reason": ReasonCode.MANUAL.value,
        "detail": detail,
        "source": source,
        "ts": canonical_ts(ts),
        "trigger": trigger,
    }


def size_limit_probes(
    keys: Mapping[str, Ed25519PrivateKey], activation: tuple[int, str], now: datetime, tag: str
) -> list[Probe]:
    """The size-limit commands of one round, for the current ``activation`` (see the module
    docstring); ``tag`` keeps ids unique across rounds."""
    at_id = IDENT_MAX
    over_id = IDENT_MAX + 1

    def ident(what: str, length: int = at_id) -> str:
        return _pad(f"{tag}-{what}-", length)

    def text(length: int = TEXT_MAX) -> str:
        return _pad(f"{tag} size limit detail ", length)

    probes: list[Probe] = []
    # At the limit: trips recorded as sent.
    astral_trip = TripCommand(
        command_id=ident("trip-astral"),
        reason=ReasonCode.MANUAL,
        detail=text(),
        source=ident("source"),
        ts=now,
        trigger=TriggerRef(topic=ident("topic"), partition=0, offset=0, event_ts=now),
    )
    ascii_trip = TripCommand(
        command_id=f"{tag}-trip-ascii-".ljust(at_id, "a"),
        reason=ReasonCode.MANUAL,
        detail="d" * TEXT_MAX,
        source="s" * at_id,
        ts=now,
    )
    for name, trip in (
        ("trip at limit, astral", astral_trip),
        ("trip at limit, ascii", ascii_trip),
    ):
        probes.append(Probe(name, encode(trip), "trip", trip.command_id, trip.detail))
    # At the limit: resets refused, one approval.
    alice = keys["alice"]
    unknown = _reset_document(
        None,
        command_id=ident("reset-unknown"),
        operator=ident("operator"),
        detail=text(),
        nonce=ident("nonce"),
        ts=now,
        activation=(activation[0], ident("activation")),
        signature="A" * 512,
    )
    bad_signature = _reset_document(
        None,
        command_id=ident("reset-bad-signature"),
        operator="alice",
        detail=text(),
        nonce=ident("nonce"),
        ts=now,
        activation=activation,
        signature=_b64(pysecrets.token_bytes(384)),
    )
    mismatch = _reset_document(
        alice,
        command_id=ident("reset-mismatch"),
        operator="alice",
        detail=text(),
        nonce=ident("nonce-mismatch"),
        ts=now,
        activation=(activation[0], ident("activation")),
    )
    approval = _reset_document(
        alice,
        command_id=ident("reset-approval"),
        operator="alice",
        detail=text(),
        nonce=ident("nonce-approval"),
        ts=now,
        activation=activation,
    )
    for name, document, expect, why in (
        ("reset at limit, unknown operator", unknown, "refused", RejectReason.UNKNOWN_OPERATOR),
        ("reset at limit, bad signature", bad_signature, "refused", RejectReason.BAD_SIGNATURE),
        ("reset at limit, other activation", mismatch, "refused", RejectReason.ACTIVATION_MISMATCH),
        ("reset at limit, alice approves", approval, "approval", None),
    ):
        probes.append(Probe(name, orjson.dumps(document), expect, document["command_id"], why=why))
    # One past the limit: stops, never resets. Bob's completes alice's quorum, if counted.
    bob_completes = _reset_document(
        keys["bob"],
        command_id=ident("reset-bob-over"),
        operator="bob",
        detail=text(TEXT_MAX + 1),
        nonce=ident("nonce-bob"),
        ts=now,
        activation=activation,
    )
    probes.append(Probe("reset over limit, bob completes", orjson.dumps(bob_completes), "stop"))

    def over(
        *,
        command_id: str = ident("reset-over"),
        operator: str = "alice",
        nonce: str = ident("nonce-over"),
        activation_id: str = activation[1],
    ) -> dict[str, Any]:
        """alice's genuine reset of the current activation with one field changed."""
        return _reset_document(
            alice,
            command_id=command_id,
            operator=operator,
            detail="over",
            nonce=nonce,
            ts=now,
            activation=(activation[0], activation_id),
        )

    signature_over = {**over(), "signature": "A" * 513}
    for name, document in (
        ("reset over limit, command_id", over(command_id=ident("reset-over", over_id))),
        ("reset over limit, nonce", over(nonce=ident("nonce-over", over_id))),
        ("reset over limit, activation id", over(activation_id=ident("a", over_id))),
        ("reset over limit, operator", over(operator=ident("operator", over_id))),
        ("reset over limit, signature", signature_over),
    ):
        probes.append(Probe(name, orjson.dumps(document), "stop"))
    for name, document in (
        (
            "trip over limit, command_id",
            _trip_document(ident("trip-over", over_id), source="s", detail="", ts=now),
        ),
        (
            "trip over limit, detail",
            _trip_document(
                ident("trip-over-detail"), source="s", detail=text(TEXT_MAX + 1), ts=now
            ),
        ),
        (
            "trip over limit, source",
            _trip_document(
                ident("trip-over-source"), source=ident("s", over_id), detail="", ts=now
            ),
        ),
        (
            "trip over limit, trigger topic",
            _trip_document(
                ident("trip-over-topic"), source="s", detail="", ts=now, topic=ident("t", over_id)
            ),
        ),
    ):
        probes.append(Probe(name, orjson.dumps(document), "stop"))
    return probes


# --------------------------------------------------------------------------- watchers


class _GateWatch:
    """Samples ``gate.allowed()`` every :data:`SAMPLE_S` and keeps the spans it was open
    (monotonic start, end; ``inf`` while still open)."""

    def __init__(self, gate: TradingGate) -> None:
        self.gate = gate
        self.spans: list[list[float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chaos-tamper-gate-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            still_open = bool(self.spans) and self.spans[-1][1] == math.inf
            if self.gate.allowed():
                if not still_open:
                    self.spans.append([now, math.inf])
            elif still_open:
                self.spans[-1][1] = now
            await asyncio.sleep(SAMPLE_S)

    def closed(self) -> bool:
        """Whether the sampler's latest look found the gate closed (its spans are final up
        to now: judge them only then)."""
        return not self.spans or self.spans[-1][1] != math.inf

    def open_during(self, start: float, end: float) -> float:
        """Seconds the gate was seen open between ``start`` and ``end``."""
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.spans)

    def open_until(self, start: float) -> float | None:
        """When the last span open after ``start`` ended (``inf``: still open), or ``None``."""
        ends = [e for s, e in self.spans if e > start]
        return max(ends) if ends else None


class _Follower:
    """What the phase reads back, followed live: ``ess.state`` through the verifying reader
    (:class:`~ess.statelog.StateLogReader`, the one every role uses), outcomes whose seal
    verifies, and events."""

    def __init__(self, bootstrap: str, registry: TopicRegistry, trust: Trust) -> None:
        self.bootstrap = bootstrap
        self.registry = registry
        self.trust = trust
        self.reader = StateLogReader(trust, name="chaos-tamper")
        self.raw: dict[int, bytes] = {}
        self.entries: list[LoggedEntry] = []
        self.by_command_offset: dict[int, list[LoggedEntry]] = {}
        self.foreign: set[int] = set()
        self.skipped: set[int] = set()
        self.outcomes: dict[int, CommandOutcome] = {}
        self.events: list[EmergencyStopEvent | EmergencyResetEvent] = []
        self.broken: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, loop in (
            ("state", self._state()),
            ("outcomes", self._outcomes()),
            ("events", self._events()),
        ):
            self._tasks.append(asyncio.create_task(loop, name=f"chaos-tamper-{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def state_offset(self) -> int:
        return self.reader.folded.next_offset

    async def _state(self) -> None:
        async for batch in follow_partition(self.bootstrap, self.registry.state.name):
            records = [RawRecord(record.offset, record.value) for record in batch]
            for record in records:
                self.raw[record.offset] = record.value or b""
            try:
                report = self.reader.feed(records)
            except LogBroken as exc:
                self.broken = str(exc)
                return
            self.foreign.update(item.offset for item in report.foreign)
            self.skipped.update(item.offset for item in report.skipped)
            for logged in report.applied:
                self.entries.append(logged)
                if logged.entry.command_offset is not None:
                    self.by_command_offset.setdefault(logged.entry.command_offset, []).append(
                        logged
                    )

    async def _outcomes(self) -> None:
        scope = self.registry.outcomes.name
        async for batch in follow_partition(self.bootstrap, scope):
            for record in batch:
                try:
                    document = orjson.loads(record.value or b"")
                    if not isinstance(document, dict):
                        continue
                    if seal_problem(document, self.trust.processor_keys, scope=scope):
                        continue
                    outcome: CommandOutcome = decode(CommandOutcome, record.value or b"")
                except (orjson.JSONDecodeError, RecordError):
                    continue
                self.outcomes.setdefault(outcome.command_offset, outcome)

    async def _events(self) -> None:
        async for batch in follow_partition(self.bootstrap, self.registry.events.name):
            for record in batch:
                try:
                    event: EmergencyStopEvent | EmergencyResetEvent = decode(
                        EmergencyEvent, record.value or b""
                    )
                except RecordError:
                    continue
                self.events.append(event)


# --------------------------------------------------------------------------- the phase


@dataclass
class _Figures:
    attempts: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    #: Offsets in ``ess.state`` the attacker wrote, and the command ids of forged entries.
    forged_offsets: set[int] = field(default_factory=set)
    forged_ids: set[str] = field(default_factory=set)
    #: Every command sent: offset to attack kind (``proper`` for the campaign's own).
    commands: dict[int, str] = field(default_factory=dict)
    state_closed_after: list[float] = field(default_factory=list)
    redis_open: list[float] = field(default_factory=list)


class _Phase:
    """The roles, the followers and the attacks of one phase run."""

    def __init__(self, bootstrap: str, work: Path, prefix: str, redis_url: str) -> None:
        self.bootstrap = bootstrap
        self.work = work
        self.run = uuid.uuid4().hex[:8]
        self.keys = {name: generate_private_key() for name in OPERATORS}
        for name, key in self.keys.items():
            write_key_pair(key, work / "operators", name)
        self.processor_key = SigningKey(generate_private_key())
        self.foreign_key = SigningKey(generate_private_key())
        self.settings = EssSettings(
            kafka={"bootstrap_servers": bootstrap, "topic_prefix": prefix},
            keys={
                "operator_keys_dir": work / "operators",
                "processor_keys_dir": work / "processors",
                "processor_key_file": work / "processor.key",
                "reset_quorum": QUORUM,
                "reset_max_age_sec": MAX_AGE_S,
                "reset_max_skew_sec": MAX_SKEW_S,
            },
            command={"beat_interval_sec": BEAT_S, "status_port": -1},
            project={"refresh_interval_sec": REFRESH_S, "status_port": -1},
            _env_file=None,
        )
        self.registry = self.settings.registry()
        self.scope = self.registry.state.name
        self.trust = self.settings.state_trust(also_trust=self.processor_key)
        self.redis_url = redis_url
        self.namespace = f"ess-chaos-tamper:{self.run}:"
        self.store = RedisPolicyStore(redis_url, namespace=self.namespace)
        self.gate_store = RedisPolicyStore(redis_url, namespace=self.namespace)
        self.forger = RedisPolicyStore(redis_url, namespace=self.namespace)
        self.gate = TradingGate(
            max_record_age=MAX_RECORD_AGE_S, max_clock_skew=MAX_CLOCK_SKEW_S, name="chaos-tamper"
        )
        self.feed = PolicyStoreGateFeed(self.gate_store, self.gate, POLL_S, read_timeout=1.0)
        self.watch = _GateWatch(self.gate)
        self.log = _Follower(bootstrap, self.registry, self.trust)
        self.metrics = ProjectorMetrics()
        self.sender: AIOKafkaProducer = producer(bootstrap, read_to_end_safe=True)
        self.figures = _Figures()
        self.round = 0
        self._processor_stop = asyncio.Event()
        self._processor: asyncio.Task[None] | None = None
        self._projector_stop = asyncio.Event()
        self._projector: asyncio.Task[None] | None = None
        self._sender_started = False

    # ------------------------------------------------------------------ set-up, teardown

    async def start(self) -> None:
        await self.store.ping()  # Redis is required: fail the set-up, naming it
        await ensure_topics(self.bootstrap, self.registry)
        await self.sender.start()
        self._sender_started = True
        self.log.start()
        self._processor = asyncio.create_task(
            run_processor(
                self.settings,
                self._processor_stop,
                signing_key=self.processor_key,
                status_port=-1,
            ),
            name="chaos-tamper-processor",
        )
        self._start_projector()
        await self.feed.start()
        self.watch.start()
        opened = await _until(self._gate_open_or_dead, SETUP_S)
        if opened is None:
            raise RuntimeError(f"tamper phase: the gate did not open within {SETUP_S:g} s")
        self._alive()

    def _gate_open_or_dead(self) -> bool:
        self._alive()
        return self.gate.allowed()

    def _start_projector(self) -> None:
        self._projector_stop = asyncio.Event()
        self._projector = asyncio.create_task(
            run_projector(
                self.settings,
                self.store,
                self._projector_stop,
                trust=self.trust,
                metrics=self.metrics,
                refresh_interval=REFRESH_S,
                health_interval=REFRESH_S,
                component="chaos-tamper",
            ),
            name="chaos-tamper-projector",
        )

    async def _stop_task(self, task: asyncio.Task[None] | None, stop: asyncio.Event) -> None:
        if task is None:
            return
        stop.set()
        try:
            async with asyncio.timeout(TEARDOWN_S):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def teardown(self) -> None:
        steps: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("gate feed", self.feed.stop),
            ("gate watch", self.watch.stop),
            ("followers", self.log.stop),
            ("projector", lambda: self._stop_task(self._projector, self._projector_stop)),
            ("processor", lambda: self._stop_task(self._processor, self._processor_stop)),
            ("producer", self._stop_sender),
            ("redis keys", self._delete_namespace),
            ("stores", self._close_stores),
        )
        for step, action in steps:
            try:
                async with asyncio.timeout(TEARDOWN_S):
                    await action()
            except Exception as exc:
                logger.bind(step=step, error=f"{type(exc).__name__}: {exc}").warning(
                    "tamper phase: teardown step failed"
                )

    async def _stop_sender(self) -> None:
        if self._sender_started:
            await self.sender.stop()

    async def _delete_namespace(self) -> None:
        client = aioredis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            keys = [key async for key in client.scan_iter(match=f"{self.namespace}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    async def _close_stores(self) -> None:
        for store in (self.store, self.gate_store, self.forger):
            await store.close()

    # ------------------------------------------------------------------ helpers

    def _alive(self) -> None:
        """Raise :class:`_Abort` when the processor or the projector is gone."""
        for name, task in (("processor", self._processor), ("projector", self._projector)):
            if task is not None and task.done():
                error = None if task.cancelled() else task.exception()
                raise _Abort(f"the {name} exited: {error!r}")
        if self.log.broken is not None:
            raise _Abort(f"the state log cannot be folded: {self.log.broken}")

    def effect(self, kind: str, problem: str) -> None:
        self.figures.effects[kind] += 1
        self.problem(f"{kind}: {problem}")

    def problem(self, text: str) -> None:
        self.figures.problems.append(f"round {self.round}: {text}"[:300])
        logger.bind(round=self.round).warning("tamper phase: {}", text)

    async def produce(self, topic: str, value: bytes, key: bytes) -> int:
        """Write one record (bounded); its offset."""
        async with asyncio.timeout(WAIT_S):
            meta = await self.sender.send_and_wait(topic, value, key=key)
        return int(meta.offset)

    async def send(self, value: bytes, kind: str = "proper") -> int:
        """Send a command; its offset (every command's outcome is checked at the end)."""
        offset = await self.produce(self.registry.commands.name, value, COMMAND_KEY)
        self.figures.commands[offset] = kind
        return offset

    async def result(
        self, offset: int, timeout_s: float = WAIT_S
    ) -> tuple[CommandOutcome, list[StateEntry]] | None:
        """The outcome of the command at ``offset`` and the entries appended for it, once
        both are read back; ``None`` after ``timeout_s``."""

        def ready() -> tuple[CommandOutcome, list[StateEntry]] | None:
            self._alive()
            outcome = self.log.outcomes.get(offset)
            if outcome is None:
                return None
            if outcome.seq is not None and self.log.reader.folded.state.next_seq <= outcome.seq:
                return None
            return outcome, [i.entry for i in self.log.by_command_offset.get(offset, [])]

        return await _until(ready, timeout_s)

    async def need(self, offset: int, what: str) -> list[StateEntry]:
        """The entries of a proper command; :class:`_Abort` when it gets no answer."""
        found = await self.result(offset)
        if found is None:
            raise _Abort(f"no outcome for {what} (command offset {offset}) within {WAIT_S:g} s")
        return found[1]

    def activation(self) -> tuple[int, str]:
        activation = self.log.reader.folded.state.activation
        if activation is None:
            raise _Abort("ESS is not ACTIVE when it should be")
        return activation.seq, activation.command_id

    def last_activation(self) -> tuple[int, str]:
        """The current activation, or the last one before the reset."""
        for logged in reversed(self.log.entries):
            if isinstance(logged.entry, ActivatedEntry):
                return logged.entry.seq, logged.entry.command_id
        raise _Abort("no activation in the log yet")

    def sign(
        self,
        operator: str,
        activation: tuple[int, str],
        detail: str,
        *,
        command_id: str | None = None,
    ) -> ResetCommand:
        """``operator``'s genuine reset of ``activation``, fresh id and nonce."""
        return sign_reset(
            self.keys[operator],
            command_id=command_id or f"tamper-{operator}-{uuid.uuid4().hex}",
            operator=operator,
            ts=datetime.now(UTC),
            nonce=pysecrets.token_urlsafe(16),
            detail=detail,
            activation_seq=activation[0],
            activation_command_id=activation[1],
        )

    async def trip(self, detail: str, command_id: str | None = None) -> StateEntry:
        command = TripCommand(
            command_id=command_id or f"tamper-trip-{uuid.uuid4().hex}",
            reason=ReasonCode.MANUAL,
            detail=detail,
            source="operator:chaos-tamper",
            ts=datetime.now(UTC),
        )
        entries = await self.need(await self.send(encode(command)), f"trip {detail!r}")
        if not entries:
            raise _Abort(f"trip {detail!r} appended nothing")
        return entries[-1]

    async def proper_reset(self, detail: str) -> ResetEntry:
        """alice approves, bob completes: the two-operator reset of the current activation."""
        activation = self.activation()
        entry: StateEntry | None = None
        for operator in ("alice", "bob"):
            command = self.sign(operator, activation, f"chaos tamper: {detail}")
            entries = await self.need(await self.send(encode(command)), f"{operator}'s reset")
            entry = entries[-1] if entries else None
        if not isinstance(entry, ResetEntry):
            raise _Abort(f"the proper reset ({detail}) did not reset: {entry!r}"[:300])
        return entry

    @contextlib.asynccontextmanager
    async def held_closed(self, kind: str) -> AsyncIterator[None]:
        """ESS is ACTIVE: the gate must be closed now and stay closed throughout."""
        if await _until(self._gate_holds_active, state_bound()) is None:
            self.effect(kind, f"the gate does not hold the log's ACTIVE record: {self.gate.why()}")
        start = time.monotonic()
        yield
        seen = self.watch.open_during(start, time.monotonic())
        if seen > 0:
            self.effect(kind, f"the gate was open {seen:.3f} s while ESS was ACTIVE")

    def _gate_holds_active(self) -> bool:
        """The gate is closed on the log's current ACTIVE record, and the sampler has seen it
        closed. Only from then on is an open moment the gate obeying something else than
        the log (before, it may still be catching up with a reset the log has moved past)."""
        self._alive()
        status = self.gate.status()
        record = status.record
        last = self.log.reader.folded.state.last_seq
        return (
            not status.allowed
            and record is not None
            and record.active
            and record.seq is not None
            and last is not None
            and record.seq >= last
            and self.watch.closed()
        )

    async def wait_gate_open(self, why: str) -> None:
        if await _until(self._gate_open_or_dead, WAIT_S) is None:
            raise _Abort(f"the gate did not open {why} (gate: {self.gate.why()})")

    # ------------------------------------------------------------------ the script

    async def play(self, rounds: int, squats: int) -> None:
        """The baseline, then ``rounds`` rounds; a round that cannot go on ends the phase."""
        try:
            await self.trip("baseline trip")
            await self.proper_reset("baseline")
            await self.wait_gate_open("after the baseline reset")
            for number in range(1, rounds + 1):
                self.round = number
                await self._round(squats)
        except _Abort as exc:
            self.effect("aborted", str(exc))

    async def _round(self, squats: int) -> None:
        await self.state_writes(active=False)
        await self.state_writes(active=True)
        await self.redis_forgery()
        await self.redis_garbage()
        held_back = [
            self.sign(operator, self.activation(), "chaos tamper: held back for later")
            for operator in ("carol", "alice")
        ]
        await self.proper_reset("after the state and Redis forgeries")
        await self.events_forgery()
        await self.cross_activation(held_back)
        await self.weak_keys()
        await self.squatted_ids(squats)
        await self.reused_manual_id()
        await self.size_limits()
        await self.proper_reset("end of round")
        await self.wait_gate_open("after the round's final reset")

    # ------------------------------------------------------------------ ess.state

    def _forged_reset(self, how: str, activation: tuple[int, str]) -> bytes:
        """A reset entry for ``activation`` chained to the log's head, carrying alice's and
        bob's genuinely signed reset commands; only the processor's seal is wrong."""
        folded = self.log.reader.folded
        forged_id = f"tamper-forged-{how}-{uuid.uuid4().hex[:12]}"
        self.figures.forged_ids.add(forged_id)
        alice = self.sign("alice", activation, "intercepted")
        # bob's is the command the entry claims to be for, so it carries the entry's id.
        bob = self.sign("bob", activation, "intercepted", command_id=forged_id)
        entry = ResetEntry(
            seq=folded.state.next_seq,
            command_id=forged_id,
            ts=datetime.now(UTC),
            operators=("alice", "bob"),
            detail="chaos tamper: forged reset entry",
            nonce=bob.nonce,
            authorizations=(alice, bob),
            prev=folded.head,
        )
        if how == "unsigned":
            return orjson.dumps(entry.model_dump(mode="json"))
        if how == "unknown_key":
            return seal_entry(entry, self.foreign_key, scope=self.scope, prev=folded.head)[1]
        # The processor's own key, another deployment's log (a key reused across them).
        return seal_entry(entry, self.processor_key, scope="other.ess.state", prev=folded.head)[1]

    def _acknowledgement(self, upto: int) -> StateEntry | None:
        """The verified ``unauthorized_access`` trip covering state-log offset ``upto``."""
        self._alive()
        if not self.log.reader.trusted or self.log.state_offset <= upto:
            return None
        for logged in reversed(self.log.entries):
            entry = logged.entry
            if (
                isinstance(entry, ActivatedEntry | TripRecordedEntry)
                and entry.reason is ReasonCode.UNAUTHORIZED_ACCESS
                and entry.trigger is not None
                and entry.trigger.topic == self.scope
                and entry.trigger.offset >= upto
                and logged.offset > upto
            ):
                return entry
        return None

    async def state_writes(self, *, active: bool) -> None:
        kind = "state_active" if active else "state_inactive"
        activation = self.activation() if active else self.last_activation()
        last_reset = next(
            (i.offset for i in reversed(self.log.entries) if isinstance(i.entry, ResetEntry)),
            None,
        )
        if last_reset is None:
            raise _Abort("no authentic reset entry to replay")
        values = [
            ("unsigned", self._forged_reset("unsigned", activation)),
            ("unknown_key", self._forged_reset("unknown_key", activation)),
            ("other_scope", self._forged_reset("other_scope", activation)),
            ("copy", self.log.raw[last_reset]),
            ("garbage", b"\xfe\xff\x00chaos tamper: garbage in ess.state"),
        ]
        async with contextlib.AsyncExitStack() as stack:
            if active:
                await stack.enter_async_context(self.held_closed(kind))
            else:
                await self.wait_gate_open("before writing to ess.state")
            started = time.monotonic()
            offsets: dict[str, int] = {}
            for how, value in values:
                offsets[how] = await self.produce(self.scope, value, STATE_KEY)
                self.figures.forged_offsets.add(offsets[how])
                self.figures.attempts[kind] += 1
            if not active:
                closed = await _until(lambda: not self.gate.allowed(), state_bound() + WAIT_S)
                after = None if closed is None else time.monotonic() - started
                if after is not None:
                    self.figures.state_closed_after.append(after)
                if after is None or after > state_bound():
                    took = "never" if after is None else f"after {after:.3f} s"
                    self.effect(kind, f"gate closed {took} (bound {state_bound():g} s)")
            ack = await _until(lambda: self._acknowledgement(offsets["garbage"]), WAIT_S)
            if ack is None:
                self.effect(kind, "no unauthorized_access trip acknowledged the forged records")
                raise _Abort("the state log stays untrusted")
        for how, offset in offsets.items():
            expected = self.log.skipped if how == "copy" else self.log.foreign
            if offset not in expected:
                label = "skipped as a copy" if how == "copy" else "refused as foreign"
                self.effect(kind, f"{how} record at offset {offset} was not {label}")
        state = self.log.reader.folded.state
        if not state.active or (active and self.activation() != activation):
            self.effect(kind, f"ESS is not ACTIVE on the original activation: {state.status}")

    # ------------------------------------------------------------------ Redis

    def _foreign_writes(self) -> float:
        value = self.metrics.registry.get_sample_value("ess_policy_store_foreign_writes_total")
        return value or 0.0

    async def _stored_is_log(self) -> bool:
        """Whether Redis holds the log's record (ACTIVE at the log's ``seq``)."""
        try:
            current = await self.forger.get(EMERGENCY_STOP_KEY)
        except Exception:  # unreadable: not the log's record
            return False
        state = self.log.reader.folded.state
        return (
            current is not None
            and current.get("active") is True
            and current.get("seq") == state.last_seq
        )

    async def redis_forgery(self) -> None:
        """A forged INACTIVE record with a huge ``seq`` while ESS is ACTIVE."""
        kind = "redis"
        if await _until_async(self._stored_is_log, WAIT_S) is None:
            raise _Abort("Redis does not hold the log's ACTIVE record before the forgery")
        now = datetime.now(UTC)
        forged = PolicyRecord(
            active=False, reason=None, timestamp=now, seq=FORGED_SEQ, refreshed_at=now
        ).model_dump(mode="json")
        started = time.monotonic()
        await self.forger.set(EMERGENCY_STOP_KEY, forged)
        self.figures.attempts[kind] += 1
        repaired = await _until_async(self._stored_is_log, REPAIR_S)
        if repaired is None:
            self.effect(kind, "the forged INACTIVE record was not overwritten from the log")
        # Judge the whole window once the sampler has seen the gate closed again.
        closed = await _until(self.watch.closed, redis_bound())
        end = self.watch.open_until(started)
        open_s = 0.0 if end is None else min(end, time.monotonic()) - started
        self.figures.redis_open.append(open_s)
        if closed is None or open_s > redis_bound():
            self.effect(kind, f"gate open {open_s:.3f} s after the forged record")

    async def redis_garbage(self) -> None:
        """Values the gates cannot read, while ESS is ACTIVE: text that is not JSON, and a
        Redis hash under the record's key. Gates fail closed on them; the projector must
        replace them, or no reset could ever reopen a gate."""
        kind = "redis"
        key = self.store.redis_key(EMERGENCY_STOP_KEY)
        client = aioredis.Redis.from_url(self.redis_url, socket_timeout=2)
        writes: dict[str, Callable[[], Awaitable[Any]]] = {
            "not JSON": lambda: client.set(key, b"{chaos tamper"),
            "a Redis hash": lambda: _replace_with_hash(client, key),
        }
        try:
            for what, write in writes.items():
                async with self.held_closed(kind):
                    await write()
                    self.figures.attempts[kind] += 1
                    repaired = await _until_async(self._stored_is_log, REPAIR_S)
                if repaired is None:
                    self.effect(kind, f"an unreadable record ({what}) was not replaced")
                    # Let the rounds go on: with no value at all the projector writes again.
                    await client.delete(key)
        finally:
            await client.aclose()

    # ------------------------------------------------------------------ ess.events

    async def events_forgery(self) -> None:
        """Forged events on ``ess.events`` before a projector start must not silence the
        stop the next trip announces."""
        kind = "events"
        next_seq = self.log.reader.folded.state.next_seq
        now = datetime.now(UTC)
        forged: list[EmergencyStopEvent | EmergencyResetEvent] = [
            EmergencyStopEvent(
                reason=ReasonCode.MANUAL,
                detail="chaos tamper: forged",
                timestamp=now,
                seq=FORGED_SEQ,
            ),
            EmergencyResetEvent(reset_by="mallory", timestamp=now, seq=next_seq),
        ]
        for event in forged:
            await self.produce(self.registry.events.name, encode(event), EVENTS_KEY)
            self.figures.attempts[kind] += 1
        await self._stop_task(self._projector, self._projector_stop)
        self._start_projector()
        entry = await self.trip("after forged events")
        expected = event_for(entry)
        if not isinstance(expected, EmergencyStopEvent):
            raise _Abort(f"the trip after the forged events did not activate: {entry!r}"[:300])
        if await _until(lambda: expected in self.log.events, WAIT_S) is None:
            self.effect(kind, f"emergency.stop of seq {entry.seq} was not published")

    # ------------------------------------------------------------------ resets across activations

    async def cross_activation(self, held_back: list[ResetCommand]) -> None:
        kind = "cross_activation"
        current = self.activation()
        async with self.held_closed(kind):
            for command in held_back:
                offset = await self.send(encode(command), kind)
                self.figures.attempts[kind] += 1
                found = await self.result(offset)
                entries = [] if found is None else found[1]
                if not (
                    len(entries) == 1
                    and isinstance(entries[0], ResetRejectedEntry)
                    and entries[0].why is RejectReason.ACTIVATION_MISMATCH
                ):
                    self.effect(kind, f"{command.operator}'s held-back reset: {entries!r}"[:200])
        if self.activation() != current:
            self.effect(kind, "the activation changed")

    # ------------------------------------------------------------------ keys

    async def weak_keys(self) -> None:
        kind = "weak_keys"
        for index, (case, files) in enumerate(weak_key_cases().items()):
            directory = self.work / f"weak-{self.round}-{index}"
            accepted = await weak_key_refused(directory, files)
            self.figures.attempts[kind] += 1
            if accepted:
                self.effect(kind, f"{case}: accepted by {', '.join(accepted)}")

    # ------------------------------------------------------------------ trip ids

    def _detection(self, command_id: str, event_ts: datetime, n: int) -> TripCommand:
        return TripCommand(
            command_id=command_id,
            reason=ReasonCode.DAILY_LOSS,
            detail=f"chaos tamper detection {n}",
            source="detector:daily_loss",
            ts=event_ts,
            trigger=TriggerRef(
                topic=self.registry.fills.name, partition=0, offset=n, event_ts=event_ts
            ),
        )

    async def squatted_ids(self, count: int) -> None:
        """Ids of future detections, used up front while ACTIVE, must not suppress them."""
        kind = "squatted_ids"
        ids = [f"detector:daily_loss:tamper-{self.run}-{self.round}-{n}" for n in range(count)]
        async with self.held_closed(kind):
            early = datetime.now(UTC)
            last = -1
            for n, command_id in enumerate(ids):
                last = await self.send(encode(self._detection(command_id, early, n)), kind)
                self.figures.attempts[kind] += 1
            await self.need(last, "the last squatted trip")
        reset = await self.proper_reset("between squatted and real detections")
        offsets = []
        for n, command_id in enumerate(ids):
            real = self._detection(command_id, max(datetime.now(UTC), reset.ts), n)
            offsets.append(await self.send(encode(real), "proper"))
        suppressed = 0
        for n, offset in enumerate(offsets):
            found = await self.result(offset)
            entries = [] if found is None else found[1]
            wanted = ActivatedEntry if n == 0 else TripRecordedEntry
            if len(entries) != 1 or not isinstance(entries[0], wanted):
                suppressed += 1
        if suppressed:
            self.figures.effects[kind] += suppressed
            self.problem(f"{kind}: {suppressed} of {count} real detections not recorded")

    async def reused_manual_id(self) -> None:
        """An operator script's fixed trip id stops trading again after a reset."""
        kind = "reused_manual_id"
        await self.proper_reset("before the reused manual id")
        fixed = f"operator-stop-{self.run}-{self.round}"
        first = await self.trip("fixed id, first use", command_id=fixed)
        if not isinstance(first, ActivatedEntry):
            raise _Abort(f"the first manual trip did not activate: {first!r}"[:300])
        await self.proper_reset("between the manual trips")
        again = TripCommand(
            command_id=fixed,
            reason=ReasonCode.MANUAL,
            detail="fixed id, used again",
            source="operator:chaos-tamper",
            ts=datetime.now(UTC),
        )
        offset = await self.send(encode(again), kind)
        self.figures.attempts[kind] += 1
        found = await self.result(offset)
        entries = [] if found is None else found[1]
        if len(entries) != 1 or not isinstance(entries[0], ActivatedEntry):
            self.effect(kind, f"the reused id did not stop trading: {entries!r}"[:200])
            if not self.log.reader.folded.state.active:
                await self.trip("the reused id was ignored; stop for the next attack")

    # ------------------------------------------------------------------ size limits

    async def size_limits(self) -> None:
        kind = "size_limit"
        probes = size_limit_probes(
            self.keys, self.activation(), datetime.now(UTC), f"{self.run}-{self.round}"
        )
        async with self.held_closed(kind):
            for probe in probes:
                probe.offset = await self.send(probe.value, kind)
                self.figures.attempts[kind] += 1
            results = {probe.offset: await self.result(probe.offset) for probe in probes}
        letters = {
            letter.offset: letter
            for letter in (
                decode(DeadLetter, record.value or b"")
                for record in await read_to_end(self.bootstrap, self.registry.deadletter.name)
            )
        }
        for probe in probes:
            found = results[probe.offset]
            problem = (
                "no outcome: the processor stalled"
                if found is None
                else _probe_problem(probe, found[0], found[1], probe.offset in letters)
            )
            if problem:
                self.effect(kind, f"{probe.name}: {problem}")
        if not self.log.reader.folded.state.active:
            raise _Abort("a size-limit record reset ESS")

    # ------------------------------------------------------------------ judging

    async def judge(self) -> dict[str, Any]:
        """The final figures: a fresh fold of the whole log, outcomes of every command."""
        figures = self.figures
        applied: list[LoggedEntry] = list(self.log.entries)
        foreign = copies = acknowledgements = 0
        try:
            records = [
                RawRecord(record.offset, record.value)
                for record in await read_to_end(self.bootstrap, self.scope)
            ]
            folded, report = fold_records(records, self.trust)
            applied += report.applied
            foreign, copies = folded.foreign, folded.skipped
            acknowledgements = sum(
                1
                for item in report.applied
                if isinstance(item.entry, ActivatedEntry | TripRecordedEntry)
                and item.entry.reason is ReasonCode.UNAUTHORIZED_ACCESS
                and item.entry.trigger is not None
                and item.entry.trigger.topic == self.scope
            )
            if not folded.trusted:
                self.effect("state_active", "the final fold of ess.state is untrusted")
        except (LogBroken, TimeoutError) as exc:
            self.effect("aborted", f"the final fold of ess.state failed: {exc}")
        unauthenticated = len(
            {
                item.offset
                for item in applied
                if item.offset in figures.forged_offsets
                or item.entry.command_id in figures.forged_ids
            }
        )
        missing = [offset for offset in figures.commands if offset not in self.log.outcomes]
        if missing:
            figures.effects["outcomes"] += len(missing)
            self.problem(f"commands without an outcome at offsets {missing[:10]}")
        return {
            "unauthenticated_entries_applied": unauthenticated,
            "forged_state_effects": sum(figures.effects.values()),
            "tamper_rounds": self.round,
            "tamper_attempts": {kind: figures.attempts[kind] for kind in KINDS},
            "tamper_effects": dict(figures.effects),
            "tamper_problems": figures.problems[:30],
            "tamper_state_gate_closed_after_s": _max(figures.state_closed_after),
            "tamper_state_bound_s": round(state_bound(), 3),
            "tamper_redis_gate_open_s": _max(figures.redis_open),
            "tamper_redis_bound_s": round(redis_bound(), 3),
            "tamper_redis_foreign_writes_counted": int(self._foreign_writes()),
            "tamper_foreign_records": foreign,
            "tamper_copies_skipped": copies,
            "tamper_acknowledgements": acknowledgements,
            "tamper_commands": len(figures.commands),
        }


@contextlib.asynccontextmanager
async def _open_phase(
    bootstrap: str, work: Path, prefix: str, redis_url: str
) -> AsyncIterator[_Phase]:
    """A phase with every role running, torn down (tasks, clients, Redis keys) whatever
    happens."""
    phase = _Phase(bootstrap, work, prefix, redis_url)
    try:
        await phase.start()
        yield phase
    finally:
        await phase.teardown()


async def _replace_with_hash(client: aioredis.Redis, key: str) -> None:
    """``key`` becomes a hash, in one transaction (the projector may write in between)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping={"active": "false"})
        await pipe.execute()


def _max(values: list[float]) -> float | None:
    return round(max(values), 3) if values else None


def _probe_problem(
    probe: Probe, outcome: CommandOutcome, entries: list[StateEntry], dead_lettered: bool
) -> str:
    """What is wrong with a size-limit command's answer (empty: nothing)."""
    kinds = [entry.kind for entry in entries]
    if any(isinstance(entry, ResetEntry) for entry in entries):
        return "APPLIED AS A RESET"
    if probe.expect == "stop":
        stops = [
            entry
            for entry in entries
            if isinstance(entry, ActivatedEntry | TripRecordedEntry)
            and entry.reason is ReasonCode.MANUAL
            and entry.source == SOURCE
        ]
        if not dead_lettered:
            return f"not dead-lettered (entries {kinds})"
        if len(stops) != 1 or len(entries) != 1:
            return f"not recorded as one stop: {kinds}"
        return "" if outcome.command_kind == "undecodable" else f"outcome {outcome.command_kind}"
    if len(entries) != 1:
        return f"expected one entry, got {kinds} (outcome {outcome.outcome})"
    entry = entries[0]
    if probe.expect == "trip":
        if not isinstance(entry, ActivatedEntry | TripRecordedEntry):
            return f"not recorded as a trip: {entry.kind}"
        if (entry.command_id, entry.detail) != (probe.command_id, probe.detail):
            return "recorded with other fields than sent"
        return ""
    if probe.expect == "approval":
        if not isinstance(entry, ResetApprovalEntry) or tuple(entry.approvals) != ("alice",):
            return f"not an approval by alice alone: {entry.kind}"
        return ""
    if not isinstance(entry, ResetRejectedEntry):
        return f"not refused: {entry.kind}"
    if probe.why is not None and entry.why is not probe.why:
        return f"refused as {entry.why.value}, expected {probe.why.value}"
    return "" if outcome.outcome == "rejected" else f"outcome {outcome.outcome}"


async def run_phase(
    bootstrap: str, *, quick: bool, seed: int = 0, prefix: str | None = None
) -> dict[str, Any]:
    """Play the tampering attacks (quick: one round and 20 squatted ids; full: five rounds of
    200) on ``bootstrap`` under ``prefix`` (default: a fresh one); returns the figures of the
    module docstring. Never raises for what an attack did; a set-up that fails is reported
    as ``tamper_error`` with both failure figures ``None``."""
    del seed  # nothing random changes outcomes: keys, ids and nonces are fresh per run
    started = time.monotonic()
    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    squats = QUICK_SQUATS if quick else FULL_SQUATS
    redis_url = os.environ.get(REDIS_URL_ENV, "").strip() or DEFAULT_REDIS_URL
    prefix = prefix or f"chaos-tamper-{uuid.uuid4().hex[:8]}"
    figures: dict[str, Any]
    try:
        with tempfile.TemporaryDirectory(prefix="ess-chaos-tamper-") as tmp:
            async with _open_phase(bootstrap, Path(tmp), prefix, redis_url) as phase:
                await phase.play(rounds, squats)
                figures = await phase.judge()
    except Exception as exc:
        logger.opt(exception=exc).error("tamper phase could not run")
        figures = {
            **dict.fromkeys(FAILURES),
            "tamper_error": f"{type(exc).__name__}: {exc}"[:500],
        }
    figures["tamper_duration_s"] = round(time.monotonic() - started, 1)
    return figures

"""Pydantic v2 models of every record in the ESS contract (``docs/contract.md``).

Design notes
------------
* Every model is frozen: a record is a fact, never edited after it is built.
* Unknown extra fields are accepted and ignored, as the contract promises producers on input
  topics; the same rule on ESS's own records keeps old and new versions mutually readable.
* Numbers must be finite (``allow_inf_nan=False``) and timestamps must carry a time zone
  (``AwareDatetime``): a naive timestamp is ambiguous, and ambiguity in an audit trail is a bug.
* Money and sizes are ``float``. Detection thresholds are ratios, and the decode cost of
  ``Decimal`` would be paid on every record of every input topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    SerializerFunctionWrapHandler,
    computed_field,
    field_validator,
    model_serializer,
    model_validator,
)

#: Longest identifier and longest free text a record may hold.
IDENT_MAX: Final = 256
TEXT_MAX: Final = 4096
#: Identifiers (event ids, command ids, names) are short; a megabyte "id" is an attack.
Ident = Annotated[str, Field(min_length=1, max_length=IDENT_MAX)]
#: Free human text: bounded so that one record cannot balloon a log or a table.
Text = Annotated[str, Field(max_length=TEXT_MAX)]
#: An Ed25519 signature, base64 (88 characters); bounded generously for other encodings.
Signature = Annotated[str, Field(min_length=1, max_length=512)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ReasonCode(StrEnum):
    """Stable reason identifiers; alerts and dashboards key on them."""

    DAILY_LOSS = "daily_loss"
    EQUITY_DRAWDOWN = "equity_drawdown"
    FLASH_CRASH = "flash_crash"
    SYSTEM_CRITICAL = "system_critical"
    HEARTBEAT_LOST = "heartbeat_lost"
    EXCHANGE_DISCONNECTED = "exchange_disconnected"
    DATA_FEED_CORRUPT = "data_feed_corrupt"
    DATA_FEED_STALE = "data_feed_stale"
    EXECUTION_ERRORS = "execution_errors"
    LATENCY_SPIKE = "latency_spike"
    POLICY_STORE_STALE = "policy_store_stale"
    TRADE_RATE = "trade_rate"
    STOP_LOSS_CLUSTER = "stop_loss_cluster"
    ORDER_REJECTS = "order_rejects"
    POSITION_SIZE_ANOMALY = "position_size_anomaly"
    API_KEY_INVALID = "api_key_invalid"
    API_KEY_CHANGED = "api_key_changed"
    UNAUTHORIZED_ACCESS = "unauthorized_access"
    ENVIRONMENT_MODIFIED = "environment_modified"
    MANUAL = "manual"
    #: Extension, recorded by the command processor only: the PolicyStore record says ESS is
    #: ACTIVE at a ``seq`` the state log does not reach (the log was lost, e.g. an embedded
    #: broker restarted); the stop is re-established (see docs/contract.md, "Lost state log").
    STATE_LOG_LOST = "state_log_lost"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderErrorKind(StrEnum):
    REJECT = "reject"
    ERROR = "error"
    TIMEOUT = "timeout"


class HealthStatus(StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    CRITICAL = "CRITICAL"


class ComponentLifecycle(StrEnum):
    """What a component says about its own beats (``HealthBeat.lifecycle``, extension).

    It speaks only about *silence*: whether ESS should expect further beats. ``status`` and
    ``checks`` of the same beat keep their meaning whatever the lifecycle."""

    #: Beats keep coming; silence longer than the timeout is ``heartbeat_lost`` (the default).
    RUNNING = "running"
    #: Beats stop until ``maintenance_until`` (capped by the detection config's
    #: ``max_maintenance_sec``); silence counts from then.
    MAINTENANCE = "maintenance"
    #: The component stopped on purpose: no more beats, no ``heartbeat_lost``. A later
    #: ``running`` beat registers it again.
    RETIRED = "retired"


class SecurityEventKind(StrEnum):
    API_KEY_INVALID = "api_key_invalid"
    API_KEY_CHANGED = "api_key_changed"
    UNAUTHORIZED_ACCESS = "unauthorized_access"
    ENVIRONMENT_MODIFIED = "environment_modified"


class RejectReason(StrEnum):
    """Why a reset was refused; recorded in ``reset_rejected`` entries."""

    NOT_ACTIVE = "not_active"
    UNKNOWN_OPERATOR = "unknown_operator"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    FROM_THE_FUTURE = "from_the_future"
    NONCE_REUSED = "nonce_reused"
    DUPLICATE_APPROVAL = "duplicate_approval"
    #: The reset names another activation than the current one (or none): it was signed for a
    #: different situation and must not clear this one.
    ACTIVATION_MISMATCH = "activation_mismatch"


def clip(text: str, limit: int = TEXT_MAX) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut: the one place
    where text built from input (errors quoting it, details) is fitted to a record's field."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Record(BaseModel):
    """Base of every contract record: frozen, finite numbers, extra fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


#: Event times ESS accepts: anything outside is a broken or hostile clock. Rules do date
#: arithmetic on event times (windows, timeouts), which overflows near years 1 and 9999.
EARLIEST_TS: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TS: Final = datetime(2100, 1, 1, tzinfo=UTC)


def _plausible_time(value: datetime) -> datetime:
    try:
        plausible = EARLIEST_TS <= value < LATEST_TS
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 has no UTC equivalent
        plausible = False
    if not plausible:
        raise ValueError(f"timestamp outside {EARLIEST_TS.year}-{LATEST_TS.year - 1}")
    return value


class TimedRecord(Record):
    ts: AwareDatetime

    @field_validator("ts")
    @classmethod
    def _plausible(cls, value: datetime) -> datetime:
        return _plausible_time(value)


# --------------------------------------------------------------------------- input topics


class Fill(TimedRecord):
    event_id: Ident
    account_id: Ident
    venue: Ident
    symbol: Ident
    side: Side
    qty: PositiveFloat
    price: PositiveFloat
    realized_pnl: FiniteFloat
    is_stop_loss: bool
    order_id: Ident


class PnlTick(TimedRecord):
    event_id: Ident
    account_id: Ident
    equity: FiniteFloat


class OrderSubmitted(TimedRecord):
    event_id: Ident
    account_id: Ident
    venue: Ident
    symbol: Ident
    side: Side
    qty: PositiveFloat
    price: PositiveFloat
    notional: NonNegativeFloat


class OrderError(TimedRecord):
    event_id: Ident
    account_id: Ident
    venue: Ident
    symbol: Ident
    kind: OrderErrorKind
    code: Annotated[str, Field(max_length=256)]
    message: Text


class HealthBeat(TimedRecord):
    """A component's beat. ``lifecycle`` and ``maintenance_until`` extend the contract
    (optional; a beat without them is ``running``, exactly as before): a component announces
    that it stops on purpose, for good (``retired``) or until a time (``maintenance``), so
    that stopping a bot does not trip ``heartbeat_lost`` (see ``docs/contract.md``)."""

    event_id: Ident
    component: Ident
    status: HealthStatus
    checks: dict[Ident, Ident] = Field(default_factory=dict, max_length=64)
    lifecycle: ComponentLifecycle = ComponentLifecycle.RUNNING
    #: End of an announced maintenance (event time; any offset, compared as an instant).
    #: Required with ``lifecycle="maintenance"``, refused otherwise, and must be after ``ts``.
    maintenance_until: AwareDatetime | None = None

    @field_validator("maintenance_until")
    @classmethod
    def _plausible_until(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _plausible_time(value)

    @model_validator(mode="after")
    def _maintenance_has_an_end(self) -> HealthBeat:
        # A maintenance without an end would be a retirement that a later beat cannot tell
        # from a crash; an end on any other beat is a producer bug worth refusing loudly.
        until = self.maintenance_until
        if self.lifecycle is ComponentLifecycle.MAINTENANCE:
            if until is None:
                raise ValueError("maintenance_until is required when lifecycle is maintenance")
            if until <= self.ts:
                raise ValueError(
                    f"maintenance_until ({until.isoformat()}) must be after ts "
                    f"({self.ts.isoformat()})"
                )
        elif until is not None:
            raise ValueError(
                f"maintenance_until is only allowed when lifecycle is maintenance "
                f"(lifecycle is {self.lifecycle.value})"
            )
        return self


class LatencySample(TimedRecord):
    event_id: Ident
    component: Ident
    operation: Ident
    latency_ms: NonNegativeFloat


class MarketTick(TimedRecord):
    """A top-of-book tick. Prices are *not* constrained here on purpose: a non-positive or
    crossed price is valid JSON from a broken feed, and the ``data_feed_corrupt`` rule must
    see it to count it."""

    event_id: Ident
    symbol: Ident
    bid: FiniteFloat
    ask: FiniteFloat
    last: FiniteFloat


class SecurityEvent(TimedRecord):
    event_id: Ident
    kind: SecurityEventKind
    source: Ident
    detail: Text


# --------------------------------------------------------------------------- commands


class TriggerRef(Record):
    """Coordinates of the record that crossed a threshold: enough to find it again."""

    topic: Ident
    partition: NonNegativeInt
    offset: NonNegativeInt
    event_ts: AwareDatetime


class TripCommand(TimedRecord):
    """Stop trading. Needs no signature: stopping is always allowed."""

    command_id: Ident
    kind: Literal["trip"] = "trip"
    reason: ReasonCode
    detail: Text = ""
    source: Ident
    trigger: TriggerRef | None = None


class ResetCommand(TimedRecord):
    """Re-enable trading. ``signature`` is Ed25519 over the canonical JSON of the other
    fields (see :func:`ess.core.signing.canonical_reset_bytes`), base64-encoded.

    ``kind`` is required (unlike a trip's): a record that does not say it is a reset is never
    read as one. ``activation_seq`` and ``activation_command_id`` name the activation this
    reset clears (extension); both are signed, and a reset for another activation, or for
    none, is refused (``activation_mismatch``)."""

    command_id: Ident
    kind: Literal["reset"]
    operator: Ident
    detail: Text = ""
    nonce: Ident
    signature: Signature
    activation_seq: NonNegativeInt | None = None
    activation_command_id: Ident | None = None


Command = Annotated[TripCommand | ResetCommand, Field(discriminator="kind")]


# --------------------------------------------------------------------------- state log


class LogEntry(TimedRecord):
    """Common part of every ``ess.state`` entry. ``seq`` is contiguous from 0."""

    seq: NonNegativeInt
    command_id: Ident
    #: Offset in ``ess.commands`` of the command that produced this entry (extension; a
    #: tracking record: the processor resumes after the highest one). ``None`` in-process.
    command_offset: NonNegativeInt | None = None
    #: SHA-256 (hex) of the exact bytes of the previous entry the processor wrote, ``None``
    #: for the first (extension): entries form a chain, so one verified signature vouches
    #: for every entry behind it (see :mod:`ess.core.reader`).
    prev: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    #: Key id of the command processor key that signed this entry, and the signature
    #: (extension; see :mod:`ess.core.attestation`). Readers apply only verified entries.
    signer: Ident | None = None
    signature: Signature | None = None


class ActivatedEntry(LogEntry):
    kind: Literal["activated"] = "activated"
    reason: ReasonCode
    detail: Text = ""
    source: Ident
    trigger: TriggerRef | None = None


class TripRecordedEntry(LogEntry):
    """A further trip while already ACTIVE: recorded, never lost, never re-flattens."""

    kind: Literal["trip_recorded"] = "trip_recorded"
    reason: ReasonCode
    detail: Text = ""
    source: Ident
    trigger: TriggerRef | None = None


class ResetApprovalEntry(LogEntry):
    """An authorized reset signature counted towards a quorum that is not yet met.

    This kind extends the contract (it allows implementations to add kinds): with the default
    quorum of 1 it never appears."""

    kind: Literal["reset_approval"] = "reset_approval"
    operator: Ident
    nonce: Ident
    #: Every operator whose approval is still valid, this one included.
    approvals: Annotated[tuple[Ident, ...], Field(min_length=1)]
    quorum: Annotated[int, Field(ge=1)]
    #: When this approval stops counting (the command's ``ts`` plus the configured max age).
    expires_at: AwareDatetime
    #: The operator's signed command (extension): the reset that completes the quorum carries
    #: every approval's command, so any reader can check the authorization itself.
    command: ResetCommand | None = None


class ResetEntry(LogEntry):
    kind: Literal["reset"] = "reset"
    operators: Annotated[tuple[Ident, ...], Field(min_length=1)]
    detail: Text = ""
    #: Nonce of the command that completed the quorum (earlier approvals carry their own).
    nonce: Ident
    #: The operators' signed reset commands that authorized this reset, one per operator of
    #: ``operators`` (extension). Every reader re-verifies them against the operators' public
    #: keys and the activation they name; a reset without them is never applied.
    authorizations: Annotated[tuple[ResetCommand, ...], Field(max_length=16)] = ()


class ResetRejectedEntry(LogEntry):
    kind: Literal["reset_rejected"] = "reset_rejected"
    operator: Ident
    why: RejectReason
    detail: Text = ""
    #: Set only when the signature verified: an authentic command burns its nonce even when
    #: refused (so it cannot be replayed later), a forgery must not burn a real operator's.
    nonce: Ident | None = None


StateEntry = Annotated[
    ActivatedEntry | TripRecordedEntry | ResetApprovalEntry | ResetEntry | ResetRejectedEntry,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- ESS outputs


class EmergencyStopEvent(Record):
    """Published on ``ess.events`` when ESS becomes ACTIVE."""

    type: Literal["emergency.stop"] = "emergency.stop"
    reason: ReasonCode
    detail: Text = ""
    timestamp: AwareDatetime
    seq: NonNegativeInt

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ts(self) -> AwareDatetime:
        """The contract gives every record a ``ts``; for events it equals ``timestamp``."""
        return self.timestamp


class EmergencyResetEvent(Record):
    """Published on ``ess.events`` when an authorized reset returns ESS to INACTIVE."""

    type: Literal["emergency.reset"] = "emergency.reset"
    reset_by: Ident
    operators: tuple[Ident, ...] = ()
    timestamp: AwareDatetime
    seq: NonNegativeInt

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ts(self) -> AwareDatetime:
        """The contract gives every record a ``ts``; for events it equals ``timestamp``."""
        return self.timestamp


EmergencyEvent = Annotated[EmergencyStopEvent | EmergencyResetEvent, Field(discriminator="type")]


class PolicyRecord(Record):
    """Value of the PolicyStore key ``emergency_stop``.

    ``auto_recover`` is always ``False``: nothing but a signed reset re-enables trading."""

    active: bool
    reason: ReasonCode | None
    timestamp: AwareDatetime
    auto_recover: Literal[False] = False
    seq: NonNegativeInt | None = None
    detail: Text = ""
    #: When the writer last re-asserted this record (extension). ``timestamp`` is when the
    #: state changed; a gate judges staleness by ``refreshed_at`` (or ``timestamp`` if absent).
    refreshed_at: AwareDatetime | None = None
    #: While active (extension): the ``activated`` state-log entry this record projects,
    #: exactly as the command processor sealed it. Its signature proves the stop to whoever
    #: trusts the processor's key, e.g. a processor that finds its log lost; gates ignore it.
    activation_entry: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _absent_when_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out rather than ``null`` when there is none: an inactive record stays
        # byte-for-byte what it was before the extension.
        data: dict[str, Any] = handler(self)
        if data.get("activation_entry") is None:
            data.pop("activation_entry", None)
        return data


class DeadLetter(TimedRecord):
    """A record ESS could not accept, with why. ``raw`` is UTF-8 text when the bytes decode,
    otherwise base64 (``raw_encoding`` says which)."""

    source_topic: Ident
    partition: NonNegativeInt
    offset: NonNegativeInt
    raw: str
    raw_encoding: Literal["utf-8", "base64"] = "utf-8"
    error: Text
    #: Why, as a short stable code (extension; ``None`` from writers that do not set it).
    #: Detection sets ``invalid``, ``decode_failed``, ``future_ts``, ``rule_failed`` or
    #: ``key_mismatch`` (the record's Kafka key is not its key field: see the contract).
    reason: Ident | None = None


class ActionReport(TimedRecord):
    """One executor step on one venue/account, reported to ``ess.actions``."""

    venue: Ident
    account: Ident
    action: Ident
    outcome: Ident
    detail: Text = ""
    activation_seq: NonNegativeInt | None = None


class ProcessorBeat(TimedRecord):
    """The command processor's liveness, on ``ess.liveness`` about twice a second (extension).

    Signed like state entries, so that nobody else can keep a dead processor looking alive.
    The projector vouches for an INACTIVE PolicyStore record only while these arrive from the
    processor that owns the command partition and its backlog stays bounded."""

    kind: Literal["processor_beat"] = "processor_beat"
    #: Random per process start: beat numbers restart with each run.
    run_id: Ident
    beat_no: NonNegativeInt
    #: Whether this processor owns the command partition (a standby does not).
    owner: bool
    #: The next ``ess.commands`` offset it will process (``None`` while it owns nothing).
    next_command_offset: NonNegativeInt | None = None
    #: Where its fold of ``ess.state`` stands.
    state_next_offset: NonNegativeInt
    state_next_seq: NonNegativeInt
    signer: Ident | None = None
    signature: Signature | None = None


class CommandOutcomeKind(StrEnum):
    """What happened to one record of ``ess.commands``."""

    APPLIED = "applied"  # an entry that changes or records state was appended
    DUPLICATE = "duplicate"  # already applied: nothing appended
    REJECTED = "rejected"  # a reset refused (``reset_rejected`` entry) or a command not obeyed
    #: A trip while ESS is ACTIVE and the activation holds its maximum of ``trip_recorded``
    #: entries: nothing appended (the stop is in force), so that the log stays bounded.
    COALESCED = "coalesced"


class CommandOutcome(TimedRecord):
    """The visible outcome of one command, on ``ess.outcomes`` (extension; key: command id).

    Every record the processor takes from ``ess.commands`` gets exactly one (at least once
    across crashes). ``command_kind`` is ``undecodable`` for a record that is not a valid
    command: it is recorded as a ``manual`` trip (``entry_kind`` says how), never as a
    reset."""

    command_id: Ident
    command_offset: NonNegativeInt
    command_kind: Literal["trip", "reset", "undecodable"]
    outcome: CommandOutcomeKind
    #: Kind and ``seq`` of the state entry appended for it, if any.
    entry_kind: Ident | None = None
    seq: NonNegativeInt | None = None
    detail: Text = ""
    signer: Ident | None = None
    signature: Signature | None = None


#: Every record type of the contract by name: the single list used for JSON Schema export.
RECORD_TYPES: dict[str, type[BaseModel]] = {
    model.__name__: model
    for model in (
        Fill,
        PnlTick,
        OrderSubmitted,
        OrderError,
        HealthBeat,
        LatencySample,
        MarketTick,
        SecurityEvent,
        TripCommand,
        ResetCommand,
        ActivatedEntry,
        TripRecordedEntry,
        ResetApprovalEntry,
        ResetEntry,
        ResetRejectedEntry,
        EmergencyStopEvent,
        EmergencyResetEvent,
        PolicyRecord,
        DeadLetter,
        ActionReport,
        ProcessorBeat,
        CommandOutcome,
    )
}


def json_dict(record: BaseModel) -> dict[str, Any]:
    """The record as a JSON-compatible dict (timestamps as ISO-8601 strings)."""
    return record.model_dump(mode="json")

"""Property tests of the ESS decider: random command streams through ``decide`` + ``evolve``.

A stream mixes trips (random reasons, with or without a trigger), trips reusing an earlier
trip's id with a fresh time (an operator's fixed id, or a squatted detection id), resets
(valid and bound to the current activation, unknown operator, forged, tampered, stale, from
the future, unbound, bound to an earlier activation, reusing nonces) and re-sends of earlier
commands, with a non-decreasing ``now``. The driver records every step; each property below
checks one invariant over the recorded trace.

Trip dedupe is checked against a small model of the documented rule (a trip is a duplicate
when its id was applied in the current epoch, or in an earlier one and what triggered it
happened before the last reset), computed from the log, not from ``EssState``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ess.core import INITIAL_STATE, Activation, EssState, ResetPolicy, decide, evolve, fold
from ess.core.decider import reset_authorization_problem
from ess.core.signing import public_bytes, sign_reset, verify_reset
from schemas import (
    ActivatedEntry,
    ReasonCode,
    RejectReason,
    ResetApprovalEntry,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TriggerRef,
    TripCommand,
    TripRecordedEntry,
)

# Keys are generated once (fixed seeds; Ed25519 signing is deterministic) to keep runs fast.
KEYS = {
    "alice": Ed25519PrivateKey.from_private_bytes(bytes([11]) * 32),
    "bob": Ed25519PrivateKey.from_private_bytes(bytes([12]) * 32),
    "mallory": Ed25519PrivateKey.from_private_bytes(bytes([13]) * 32),
}
REGISTERED = {name: public_bytes(KEYS[name]) for name in ("alice", "bob")}
MAX_AGE = timedelta(minutes=5)
MAX_SKEW = timedelta(seconds=30)
POLICIES = {
    q: ResetPolicy(operators=REGISTERED, quorum=q, max_age=MAX_AGE, max_skew=MAX_SKEW)
    for q in (1, 2)
}
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

PROFILE = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Trip:
    reason: ReasonCode
    dt: int  # seconds the clock advances first
    lag: int | None = None  # trigger event this many seconds before now; None: no trigger


@dataclass(frozen=True)
class ReuseTripId:
    """A new trip (fresh time) with the id of an earlier one."""

    index: int  # into the trip ids used so far (modulo their number)
    dt: int
    lag: int | None = None


@dataclass(frozen=True)
class Reset:
    operator: str
    #: valid | unknown | forged | tampered | stale | future (bound to the current activation)
    #: unbound (no activation) | previous (bound to an earlier activation)
    flavour: str
    nonce: int | None  # None: a fresh nonce; else one from a tiny shared pool
    age: int  # seconds between the command's ts and now (for valid commands)
    dt: int


@dataclass(frozen=True)
class BothApprove:
    """alice then bob send valid resets back to back (reaches a quorum of 2 often)."""

    dt: int


@dataclass(frozen=True)
class Resend:
    index: int  # into the commands sent so far (modulo their number)
    dt: int


Action = Trip | ReuseTripId | Reset | BothApprove | Resend

#: Seconds the clock advances before an action: mostly small steps, sometimes past MAX_AGE.
clock_steps = st.one_of(st.integers(0, 20), st.integers(0, 20), st.integers(0, 400))
lags = st.one_of(st.none(), st.integers(0, 30))
#: Reset flavours, weighted towards valid resets so that quorums are actually reached.
flavours = st.sampled_from(
    ["valid"] * 6 + ["unknown", "forged", "tampered", "stale", "future", "unbound", "previous"]
)
trips = st.builds(Trip, reason=st.sampled_from(list(ReasonCode)), dt=clock_steps, lag=lags)
reuses = st.builds(ReuseTripId, index=st.integers(0, 10_000), dt=clock_steps, lag=lags)
resets = st.builds(
    Reset,
    operator=st.sampled_from(["alice", "bob"]),
    flavour=flavours,
    nonce=st.one_of(st.none(), st.none(), st.integers(0, 2)),
    age=st.integers(0, 60),
    dt=clock_steps,
)
both = st.builds(BothApprove, dt=clock_steps)
resends = st.builds(Resend, index=st.integers(0, 10_000), dt=clock_steps)
scripts = st.lists(st.one_of(trips, reuses, resets, resets, both, resends), min_size=6, max_size=40)


@dataclass(frozen=True)
class Step:
    before: EssState
    command: TripCommand | ResetCommand
    now: datetime
    entries: list[StateEntry]
    after: EssState
    resend: bool
    #: Whether the command is authentic: a trip, or a reset signed by the named operator.
    genuine: bool
    #: Whether a reset names the activation current when it was processed.
    bound: bool


@dataclass
class Trace:
    quorum: int
    steps: list[Step] = field(default_factory=list)
    log: list[StateEntry] = field(default_factory=list)
    state: EssState = INITIAL_STATE


def build_reset(
    action: Reset, command_id: str, now: datetime, state: EssState, earlier: list[Activation]
) -> tuple[ResetCommand, bool]:
    """A reset command of the action's flavour and whether its signature is genuine."""
    ts = now - timedelta(seconds=action.age)
    if action.flavour == "stale":
        ts = now - MAX_AGE - timedelta(seconds=1 + action.age)
    elif action.flavour == "future":
        ts = now + MAX_SKEW + timedelta(seconds=1 + action.age)
    name = "mallory" if action.flavour == "unknown" else action.operator
    signer = "mallory" if action.flavour in {"unknown", "forged"} else action.operator
    nonce = f"fresh-{command_id}" if action.nonce is None else f"n{action.nonce}"
    activation: tuple[int | None, str | None] = (
        (state.activation.seq, state.activation.command_id) if state.activation else (None, None)
    )
    if action.flavour == "unbound":
        activation = (None, None)
    elif action.flavour == "previous":
        old = earlier[-1] if earlier else None
        activation = (old.seq, old.command_id) if old else (99, "never-activated")
    command = sign_reset(
        KEYS[signer],
        command_id=command_id,
        operator=name,
        ts=ts,
        nonce=nonce,
        detail="ok",
        activation_seq=activation[0],
        activation_command_id=activation[1],
    )
    if action.flavour == "tampered":
        command = command.model_copy(update={"detail": "tampered"})
    genuine = action.flavour in {"valid", "stale", "future", "unbound", "previous"}
    return command, genuine


def binds(command: TripCommand | ResetCommand, state: EssState) -> bool:
    if not isinstance(command, ResetCommand) or state.activation is None:
        return False
    return (command.activation_seq, command.activation_command_id) == (
        state.activation.seq,
        state.activation.command_id,
    )


def run(quorum: int, script: list[Action]) -> Trace:
    """Apply ``script`` through decide + evolve with a non-decreasing clock."""
    policy = POLICIES[quorum]
    trace = Trace(quorum=quorum)
    sent: list[tuple[TripCommand | ResetCommand, bool]] = []
    trip_ids: list[str] = []
    earlier: list[Activation] = []  # activations that have ended
    now = T0
    # Trip and reset ids come from separate counters: ids collide across kinds on purpose,
    # which must not count as duplicates (dedupe is per kind).
    counters = {"trip": 0, "reset": 0}

    def next_id(kind: str) -> str:
        counters[kind] += 1
        return f"c{counters[kind]}"

    def trigger(lag: int | None) -> TriggerRef | None:
        if lag is None:
            return None
        return TriggerRef(
            topic="ess.pnl", partition=0, offset=0, event_ts=now - timedelta(seconds=lag)
        )

    def send(command: TripCommand | ResetCommand, genuine: bool, resend: bool) -> None:
        before = trace.state
        entries = decide(before, command, now=now, policy=policy)
        after = before
        for entry in entries:
            after = evolve(after, entry)
        if before.activation is not None and after.activation != before.activation:
            earlier.append(before.activation)
        bound = binds(command, before)
        trace.steps.append(Step(before, command, now, entries, after, resend, genuine, bound))
        trace.log.extend(entries)
        trace.state = after
        if not resend:
            sent.append((command, genuine))

    def new_trip(command_id: str, reason: ReasonCode, lag: int | None) -> TripCommand:
        return TripCommand(
            command_id=command_id,
            reason=reason,
            detail="random trip",
            source="detector:prop",
            ts=now,
            trigger=trigger(lag),
        )

    for action in script:
        now += timedelta(seconds=action.dt)
        match action:
            case Trip(reason=reason, lag=lag):
                command_id = next_id("trip")
                trip_ids.append(command_id)
                send(new_trip(command_id, reason, lag), genuine=True, resend=False)
            case ReuseTripId(index=index, lag=lag) if trip_ids:
                reused = trip_ids[index % len(trip_ids)]
                send(new_trip(reused, ReasonCode.MANUAL, lag), genuine=True, resend=False)
            case Reset():
                command, genuine = build_reset(action, next_id("reset"), now, trace.state, earlier)
                send(command, genuine, resend=False)
            case BothApprove():
                for operator in ("alice", "bob"):
                    approve = Reset(operator, "valid", None, 0, 0)
                    command, genuine = build_reset(
                        approve, next_id("reset"), now, trace.state, earlier
                    )
                    send(command, genuine, resend=False)
            case Resend(index=index) if sent:
                command, genuine = sent[index % len(sent)]
                send(command, genuine, resend=True)
    return trace


class DedupeModel:
    """The documented trip dedupe rule, over the entries of the log."""

    def __init__(self) -> None:
        self.this_epoch: set[str] = set()
        self.ever: set[str] = set()
        self.last_reset: datetime | None = None

    def duplicate(self, command: TripCommand) -> bool:
        if command.command_id in self.this_epoch:
            return True
        if command.command_id not in self.ever or self.last_reset is None:
            return False
        happened = command.trigger.event_ts if command.trigger is not None else command.ts
        return happened < self.last_reset

    def observe(self, entries: list[StateEntry]) -> None:
        for entry in entries:
            if isinstance(entry, ActivatedEntry | TripRecordedEntry):
                self.this_epoch.add(entry.command_id)
                self.ever.add(entry.command_id)
            elif isinstance(entry, ResetEntry):
                self.this_epoch = set()
                self.last_reset = entry.ts


quorums = st.sampled_from([1, 2])


# --------------------------------------------------------------------------- properties


@PROFILE
@given(quorum=quorums, script=scripts)
def test_active_to_inactive_only_via_authorized_quorum_reset(
    quorum: int, script: list[Action]
) -> None:
    """(a) ACTIVE -> INACTIVE only through a ResetEntry of >= quorum distinct registered
    operators, each of whom sent a genuinely signed reset *bound to this activation* since
    it began; the entry carries their signed commands, and a reader accepts them."""
    trace = run(quorum, script)
    signed_since_trip: set[str] = set()
    for step in trace.steps:
        if not step.before.active:
            signed_since_trip = set()
        resets = [e for e in step.entries if isinstance(e, ResetEntry)]
        if step.before.active and not step.after.active:
            assert len(resets) == 1
            entry = resets[0]
            operators = entry.operators
            assert set(operators) <= set(REGISTERED)
            assert len(set(operators)) == len(operators) >= quorum
            current = (
                {step.command.operator}
                if isinstance(step.command, ResetCommand) and step.genuine and step.bound
                else set()
            )
            assert set(operators) <= signed_since_trip | current
            assert [c.operator for c in entry.authorizations] == list(operators)
            assert entry.authorizations[-1] == step.command
            for command in entry.authorizations:
                assert verify_reset(command, REGISTERED[command.operator])
                assert binds(command, step.before)
            assert reset_authorization_problem(step.before, entry, REGISTERED) is None
        else:
            assert resets == [], "a ResetEntry must always end an activation"
        if not step.before.active and step.after.active:
            assert [type(e) for e in step.entries] == [ActivatedEntry]
        # Nothing but a genuine reset bound to the current activation produces a ResetEntry.
        if resets:
            assert isinstance(step.command, ResetCommand)
            assert step.genuine
            assert step.bound
        command = step.command
        if isinstance(command, ResetCommand) and step.genuine and step.bound and not step.resend:
            signed_since_trip.add(command.operator)
        if any(isinstance(e, TripRecordedEntry) for e in step.entries):
            signed_since_trip = set()  # a new trip voids pending approvals


@PROFILE
@given(quorum=quorums, script=scripts)
def test_reset_not_bound_to_current_activation_never_counts(
    quorum: int, script: list[Action]
) -> None:
    """An unbound reset, or one signed for an earlier activation, never resets and never
    approves; when everything else about it is fine it is an ``activation_mismatch`` that
    burns its nonce."""
    trace = run(quorum, script)

    for step in trace.steps:
        if not isinstance(step.command, ResetCommand) or step.bound or not step.entries:
            continue
        (entry,) = step.entries
        assert isinstance(entry, ResetRejectedEntry)
        assert step.after.status is step.before.status
        if entry.why is RejectReason.ACTIVATION_MISMATCH:
            assert step.genuine
            assert step.before.active
            assert (step.command.operator, step.command.nonce) in step.after.used_nonces


@PROFILE
@given(quorum=quorums, script=scripts)
def test_fold_of_log_equals_incremental_state(quorum: int, script: list[Action]) -> None:
    """(b) Rebuilding from the log gives the state built step by step, at every prefix."""
    trace = run(quorum, script)

    assert fold(trace.log) == trace.state
    position = 0
    for step in trace.steps:
        position += len(step.entries)
        assert fold(trace.log[:position]) == step.after


@PROFILE
@given(quorum=quorums, script=scripts)
def test_duplicates_change_nothing(quorum: int, script: list[Action]) -> None:
    """(c) A reset already applied, or a trip that is a duplicate (applied in this epoch, or
    a late redelivery of an earlier epoch's trip), yields no entries and leaves the state as
    it was; every other command is recorded exactly once."""
    trace = run(quorum, script)
    model = DedupeModel()

    for step in trace.steps:
        if isinstance(step.command, TripCommand):
            duplicate = model.duplicate(step.command)
        else:
            duplicate = step.resend  # reset ids are applied at most once, ever
        if duplicate:
            assert step.entries == []
            assert step.after == step.before
        else:
            assert len(step.entries) == 1
        model.observe(step.entries)
    # And re-sending every command once more at the end obeys the same rule.
    later = (trace.steps[-1].now if trace.steps else T0) + timedelta(hours=1)
    for step in trace.steps:
        again = decide(trace.state, step.command, now=later, policy=POLICIES[quorum])
        if isinstance(step.command, ResetCommand):
            assert again == []
        else:
            assert len(again) == (0 if model.duplicate(step.command) else 1)


@PROFILE
@given(quorum=quorums, script=scripts)
def test_trip_applied_in_this_epoch_is_always_a_duplicate(
    quorum: int, script: list[Action]
) -> None:
    """Within one epoch a trip id counts once, whatever its time or trigger."""
    trace = run(quorum, script)

    for step in trace.steps:
        if isinstance(step.command, TripCommand) and (
            step.command.command_id in step.before.epoch_trips
        ):
            assert step.entries == []
    applied_per_epoch: dict[int, list[str]] = {}
    state = INITIAL_STATE
    for entry in trace.log:
        if isinstance(entry, ActivatedEntry | TripRecordedEntry):
            applied_per_epoch.setdefault(state.epoch, []).append(entry.command_id)
        state = evolve(state, entry)
    for ids in applied_per_epoch.values():
        assert len(ids) == len(set(ids))


@PROFILE
@given(quorum=quorums, script=scripts)
def test_log_seq_is_contiguous_from_zero(quorum: int, script: list[Action]) -> None:
    """(d) seq values are exactly 0..n-1 and the state points past the last one."""
    trace = run(quorum, script)

    assert [entry.seq for entry in trace.log] == list(range(len(trace.log)))
    assert trace.state.next_seq == len(trace.log)


@PROFILE
@given(quorum=quorums, script=scripts)
def test_no_trip_is_ever_lost(quorum: int, script: list[Action]) -> None:
    """(e) A trip that is not a duplicate activates while INACTIVE and is recorded while
    ACTIVE: one entry per such trip, including ids reused after a reset."""
    trace = run(quorum, script)
    model = DedupeModel()
    new_trips = 0

    for step in trace.steps:
        if isinstance(step.command, TripCommand) and not model.duplicate(step.command):
            new_trips += 1
            (entry,) = step.entries
            expected = TripRecordedEntry if step.before.active else ActivatedEntry
            assert type(entry) is expected
            assert entry.command_id == step.command.command_id
            assert entry.reason is step.command.reason
            assert step.after.active
        model.observe(step.entries)

    trip_entries = [e for e in trace.log if isinstance(e, ActivatedEntry | TripRecordedEntry)]
    assert len(trip_entries) == new_trips


@PROFILE
@given(quorum=quorums, script=scripts)
def test_rejected_or_pending_resets_never_leave_active(quorum: int, script: list[Action]) -> None:
    """Supplement: a rejection or an approval never changes status; forgeries never burn a
    nonce; approvals appear only when the quorum is above one."""
    trace = run(quorum, script)

    for step in trace.steps:
        for entry in step.entries:
            if isinstance(entry, ResetRejectedEntry | ResetApprovalEntry):
                assert step.after.status is step.before.status
            if isinstance(entry, ResetRejectedEntry) and not step.genuine:
                assert entry.nonce is None
                assert step.after.used_nonces == step.before.used_nonces
            if isinstance(entry, ResetApprovalEntry):
                assert quorum > 1
                assert len(entry.approvals) < quorum
                assert step.bound
                assert entry.command == step.command


@pytest.mark.parametrize("quorum", [1, 2])
def test_driver_smoke_when_reset_by_quorum_then_inactive(quorum: int) -> None:
    """The driver itself works: one trip and enough valid resets end INACTIVE."""
    script: list[Action] = [Trip(ReasonCode.MANUAL, 0), BothApprove(1), Resend(0, 1)]

    trace = run(quorum, script)

    assert not trace.state.active
    assert trace.state.epoch == 1
    assert [e.kind for e in trace.log][:2] == [
        "activated",
        "reset" if quorum == 1 else "reset_approval",
    ]
    assert trace.steps[-1].resend
    assert trace.steps[-1].entries == []


def test_driver_smoke_when_reset_for_previous_activation_then_mismatch() -> None:
    """The driver's ``previous`` flavour names the activation that has just ended."""
    script: list[Action] = [
        Trip(ReasonCode.MANUAL, 0),
        Reset("alice", "valid", None, 0, 1),
        Trip(ReasonCode.MANUAL, 1),
        Reset("bob", "previous", None, 0, 1),
    ]

    trace = run(1, script)

    last = trace.steps[-1]
    (entry,) = last.entries
    assert isinstance(entry, ResetRejectedEntry)
    assert entry.why is RejectReason.ACTIVATION_MISMATCH
    assert isinstance(last.command, ResetCommand)
    assert last.command.activation_command_id == "c1"
    assert trace.state.active


def test_driver_smoke_when_trip_id_reused_after_reset_then_activates_again() -> None:
    script: list[Action] = [
        Trip(ReasonCode.MANUAL, 0),
        Reset("alice", "valid", None, 0, 1),
        ReuseTripId(0, 1),
    ]

    trace = run(1, script)

    assert [e.kind for e in trace.log] == ["activated", "reset", "activated"]
    assert trace.log[0].command_id == trace.log[2].command_id

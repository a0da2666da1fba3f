"""Property tests of the ESS decider: random command streams through ``decide`` + ``evolve``.

A stream mixes trips (random reasons), resets (valid, unknown operator, forged, stale, from the
future, reusing nonces) and re-sends of earlier commands, with a non-decreasing ``now``. The
driver records every step; each property below checks one invariant over the recorded trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ess.core import INITIAL_STATE, EssState, ResetPolicy, decide, evolve, fold
from ess.core.signing import public_bytes, sign_reset
from schemas import (
    ActivatedEntry,
    ReasonCode,
    ResetApprovalEntry,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
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


@dataclass(frozen=True)
class Reset:
    operator: str
    flavour: str  # valid | unknown | forged | tampered | stale | future
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


Action = Trip | Reset | BothApprove | Resend

#: Seconds the clock advances before an action: mostly small steps, sometimes past MAX_AGE.
clock_steps = st.one_of(st.integers(0, 20), st.integers(0, 20), st.integers(0, 400))
#: Reset flavours, weighted towards valid resets so that quorums are actually reached.
flavours = st.sampled_from(["valid"] * 6 + ["unknown", "forged", "tampered", "stale", "future"])
trips = st.builds(Trip, reason=st.sampled_from(list(ReasonCode)), dt=clock_steps)
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
scripts = st.lists(st.one_of(trips, resets, resets, both, resends), min_size=6, max_size=40)


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


@dataclass
class Trace:
    quorum: int
    steps: list[Step] = field(default_factory=list)
    log: list[StateEntry] = field(default_factory=list)
    state: EssState = INITIAL_STATE


def build_reset(action: Reset, command_id: str, now: datetime) -> tuple[ResetCommand, bool]:
    """A reset command of the action's flavour and whether its signature is genuine."""
    ts = now - timedelta(seconds=action.age)
    if action.flavour == "stale":
        ts = now - MAX_AGE - timedelta(seconds=1 + action.age)
    elif action.flavour == "future":
        ts = now + MAX_SKEW + timedelta(seconds=1 + action.age)
    name = "mallory" if action.flavour == "unknown" else action.operator
    signer = "mallory" if action.flavour in {"unknown", "forged"} else action.operator
    nonce = f"fresh-{command_id}" if action.nonce is None else f"n{action.nonce}"
    command = sign_reset(
        KEYS[signer], command_id=command_id, operator=name, ts=ts, nonce=nonce, detail="ok"
    )
    if action.flavour == "tampered":
        command = command.model_copy(update={"detail": "tampered"})
    return command, action.flavour in {"valid", "stale", "future"}


def run(quorum: int, script: list[Action]) -> Trace:
    """Apply ``script`` through decide + evolve with a non-decreasing clock."""
    policy = POLICIES[quorum]
    trace = Trace(quorum=quorum)
    sent: list[tuple[TripCommand | ResetCommand, bool]] = []
    now = T0
    # Trip and reset ids come from separate counters: ids collide across kinds on purpose,
    # which must not count as duplicates (dedupe is per kind).
    counters = {"trip": 0, "reset": 0}

    def next_id(kind: str) -> str:
        counters[kind] += 1
        return f"c{counters[kind]}"

    def send(command: TripCommand | ResetCommand, genuine: bool, resend: bool) -> None:
        before = trace.state
        entries = decide(before, command, now=now, policy=policy)
        after = before
        for entry in entries:
            after = evolve(after, entry)
        trace.steps.append(Step(before, command, now, entries, after, resend, genuine))
        trace.log.extend(entries)
        trace.state = after
        if not resend:
            sent.append((command, genuine))

    for action in script:
        now += timedelta(seconds=action.dt)
        match action:
            case Trip(reason=reason):
                command = TripCommand(
                    command_id=next_id("trip"),
                    reason=reason,
                    detail="random trip",
                    source="detector:prop",
                    ts=now,
                )
                send(command, genuine=True, resend=False)
            case Reset():
                send(*build_reset(action, next_id("reset"), now), resend=False)
            case BothApprove():
                for operator in ("alice", "bob"):
                    approve = Reset(operator, "valid", None, 0, 0)
                    send(*build_reset(approve, next_id("reset"), now), resend=False)
            case Resend(index=index) if sent:
                command, genuine = sent[index % len(sent)]
                send(command, genuine, resend=True)
    return trace


quorums = st.sampled_from([1, 2])


# --------------------------------------------------------------------------- properties


@PROFILE
@given(quorum=quorums, script=scripts)
def test_active_to_inactive_only_via_authorized_quorum_reset(
    quorum: int, script: list[Action]
) -> None:
    """(a) ACTIVE -> INACTIVE only through a ResetEntry of >= quorum distinct registered
    operators, each of whom sent a genuinely signed reset since the activation."""
    trace = run(quorum, script)
    signed_since_trip: set[str] = set()
    for step in trace.steps:
        if not step.before.active:
            signed_since_trip = set()
        resets = [e for e in step.entries if isinstance(e, ResetEntry)]
        if step.before.active and not step.after.active:
            assert len(resets) == 1
            operators = resets[0].operators
            assert set(operators) <= set(REGISTERED)
            assert len(set(operators)) == len(operators) >= quorum
            current = (
                {step.command.operator}
                if isinstance(step.command, ResetCommand) and step.genuine
                else set()
            )
            assert set(operators) <= signed_since_trip | current
        else:
            assert resets == [], "a ResetEntry must always end an activation"
        if not step.before.active and step.after.active:
            assert [type(e) for e in step.entries] == [ActivatedEntry]
        # Nothing but a reset command ever produces a ResetEntry.
        if resets:
            assert isinstance(step.command, ResetCommand)
            assert step.genuine
        if isinstance(step.command, ResetCommand) and step.genuine and not step.resend:
            signed_since_trip.add(step.command.operator)
        if any(isinstance(e, TripRecordedEntry) for e in step.entries):
            signed_since_trip = set()  # a new trip voids pending approvals


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
def test_resending_an_applied_command_changes_nothing(quorum: int, script: list[Action]) -> None:
    """(c) A command already applied yields no entries and leaves the state as it was."""
    trace = run(quorum, script)

    for step in trace.steps:
        if step.resend:
            assert step.entries == []
            assert step.after == step.before
        else:
            assert len(step.entries) == 1  # every new command is recorded exactly once
    # And re-sending every command once more at the end changes nothing either.
    later = (trace.steps[-1].now if trace.steps else T0) + timedelta(hours=1)
    for step in trace.steps:
        assert decide(trace.state, step.command, now=later, policy=POLICIES[quorum]) == []


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
    """(e) A trip while INACTIVE activates, while ACTIVE is recorded; one entry per trip."""
    trace = run(quorum, script)
    distinct_trips = set()

    for step in trace.steps:
        if not isinstance(step.command, TripCommand) or step.resend:
            continue
        distinct_trips.add(step.command.command_id)
        (entry,) = step.entries
        expected = TripRecordedEntry if step.before.active else ActivatedEntry
        assert type(entry) is expected
        assert entry.command_id == step.command.command_id
        assert entry.reason is step.command.reason
        assert step.after.active

    trip_entries = [e for e in trace.log if isinstance(e, ActivatedEntry | TripRecordedEntry)]
    assert len(trip_entries) == len(distinct_trips)


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

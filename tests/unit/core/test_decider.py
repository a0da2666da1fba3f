"""The ESS decider: trips, resets, quorum, dedupe and log sequencing (Arrange/Act/Assert)."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from ess.core import (
    INITIAL_STATE,
    EssState,
    ResetPolicy,
    SequenceError,
    Status,
    decide,
    evolve,
    fold,
)
from ess.core.decider import DEFAULT_MAX_AGE, DEFAULT_MAX_SKEW
from schemas import (
    ActivatedEntry,
    ReasonCode,
    RejectReason,
    ResetApprovalEntry,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TripRecordedEntry,
)

from .support import (
    REGISTERED,
    SECOND,
    T0,
    TRIGGER,
    apply,
    only,
    policy,
    reset,
    trip,
)


def active_state() -> EssState:
    """ESS after one trip (seq 0), ACTIVE."""
    _, state = apply(INITIAL_STATE, trip("trip-0"))
    assert state.active
    return state


def assert_rejected(entries: list[StateEntry], why: RejectReason) -> ResetRejectedEntry:
    entry = only(entries)
    assert isinstance(entry, ResetRejectedEntry), entry
    assert entry.why is why, entry
    return entry


# --------------------------------------------------------------------------- initial state


def test_initial_state_when_created_then_inactive_and_empty() -> None:
    assert INITIAL_STATE.status is Status.INACTIVE
    assert not INITIAL_STATE.active
    assert INITIAL_STATE.next_seq == 0
    assert INITIAL_STATE.last_seq is None
    assert INITIAL_STATE.epoch == 0
    assert INITIAL_STATE.activation is None
    assert fold([]) == INITIAL_STATE


# --------------------------------------------------------------------------- trips


def test_trip_when_inactive_then_activated() -> None:
    command = trip("trip-1", reason=ReasonCode.FLASH_CRASH, detail="BTC -11%", source="detector:fc")
    now = T0 + 3 * SECOND

    entries, state = apply(INITIAL_STATE, command, now=now)

    entry = only(entries)
    assert isinstance(entry, ActivatedEntry)
    assert entry.seq == 0
    assert entry.command_id == "trip-1"
    assert entry.reason is ReasonCode.FLASH_CRASH
    assert entry.detail == "BTC -11%"
    assert entry.source == "detector:fc"
    assert entry.trigger == TRIGGER
    assert entry.ts == now
    assert state.status is Status.ACTIVE
    assert state.activation is not None
    assert state.activation.command_id == "trip-1"
    assert state.activation.reason is ReasonCode.FLASH_CRASH
    assert state.activation.trigger == TRIGGER
    assert state.activation.seq == 0
    assert state.last_change == now
    assert state.last_seq == 0


def test_trip_without_trigger_when_inactive_then_activated_with_no_trigger() -> None:
    command = trip("op-trip", reason=ReasonCode.MANUAL, source="operator:alice", trigger=None)

    entries, _ = apply(INITIAL_STATE, command)

    entry = only(entries)
    assert isinstance(entry, ActivatedEntry)
    assert entry.trigger is None
    assert entry.source == "operator:alice"


def test_trip_when_active_then_trip_recorded() -> None:
    state = active_state()
    command = trip("trip-2", reason=ReasonCode.LATENCY_SPIKE, detail="p99 900ms", source="d:lat")

    entries, after = apply(state, command, now=T0 + SECOND)

    entry = only(entries)
    assert isinstance(entry, TripRecordedEntry)
    assert entry.seq == 1
    assert entry.command_id == "trip-2"
    assert entry.reason is ReasonCode.LATENCY_SPIKE
    assert entry.detail == "p99 900ms"
    assert entry.source == "d:lat"
    assert after.active
    assert after.activation == state.activation  # the first trip stays the activation
    assert after.trips_recorded == 1
    assert after.last_change == state.last_change


def test_many_trips_when_active_then_each_recorded() -> None:
    state = active_state()

    for i in range(5):
        entries, state = apply(state, trip(f"more-{i}"))
        assert isinstance(only(entries), TripRecordedEntry)

    assert state.trips_recorded == 5
    assert state.next_seq == 6


def test_trip_with_duplicate_command_id_when_active_then_no_entries() -> None:
    state = active_state()

    entries = decide(state, trip("trip-0", reason=ReasonCode.MANUAL), now=T0, policy=policy())

    assert entries == []


def test_trip_with_duplicate_command_id_when_inactive_again_then_no_entries() -> None:
    state = active_state()
    _, state = apply(state, reset())
    assert not state.active

    entries = decide(state, trip("trip-0"), now=T0 + SECOND, policy=policy())

    assert entries == []


def test_reset_with_id_of_a_trip_when_active_then_not_a_duplicate() -> None:
    state = active_state()

    entries, after = apply(state, reset("trip-0"))

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_trip_with_id_of_a_rejected_reset_when_inactive_then_activated() -> None:
    # A forged reset must never "use up" the id of a future trip.
    _, state = apply(INITIAL_STATE, reset("shared-id", operator="mallory"))

    entries, after = apply(state, trip("shared-id"))

    assert isinstance(only(entries), ActivatedEntry)
    assert after.active


def test_reset_with_duplicate_command_id_when_resent_then_no_entries() -> None:
    state = active_state()
    command = reset("reset-1")
    _, state = apply(state, command)
    _, state = apply(state, trip("trip-again"))

    entries = decide(state, command, now=T0 + SECOND, policy=policy())

    assert entries == []


def test_trip_when_after_reset_then_activated_again_with_next_seq() -> None:
    state = active_state()
    _, state = apply(state, reset())

    entries, after = apply(state, trip("trip-next"), now=T0 + SECOND)

    entry = only(entries)
    assert isinstance(entry, ActivatedEntry)
    assert entry.seq == 2
    assert after.activation is not None
    assert after.activation.command_id == "trip-next"
    assert after.trips_recorded == 0


# --------------------------------------------------------------------------- resets, quorum 1


def test_valid_reset_when_active_then_reset_and_inactive_with_next_epoch() -> None:
    state = active_state()
    now = T0 + 10 * SECOND

    entries, after = apply(state, reset("reset-1", nonce="n-1", ts=T0), now=now)

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.seq == 1
    assert entry.command_id == "reset-1"
    assert entry.operators == ("alice",)
    assert entry.nonce == "n-1"
    assert entry.detail == "root cause fixed"
    assert entry.ts == now
    assert after.status is Status.INACTIVE
    assert after.epoch == state.epoch + 1
    assert after.activation is None
    assert after.trips_recorded == 0
    assert after.last_change == now
    assert ("alice", "n-1") in after.used_nonces


def test_second_reset_cycle_when_completed_then_epoch_two() -> None:
    state = active_state()
    _, state = apply(state, reset("r1", nonce="n1"))
    _, state = apply(state, trip("t2"))

    _, state = apply(state, reset("r2", operator="bob", nonce="n1"))

    assert state.epoch == 2
    assert not state.active


def test_reset_by_unknown_operator_when_active_then_rejected_and_still_active() -> None:
    state = active_state()

    entries, after = apply(state, reset(operator="mallory"))

    entry = assert_rejected(entries, RejectReason.UNKNOWN_OPERATOR)
    assert entry.operator == "mallory"
    assert entry.nonce is None
    assert after.active
    assert after.epoch == state.epoch
    assert after.used_nonces == state.used_nonces


def test_reset_by_registered_name_signed_with_unregistered_key_when_active_then_bad_signature() -> (
    None
):
    state = active_state()

    entries, after = apply(state, reset(operator="alice", signer="mallory"))

    entry = assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert entry.nonce is None
    assert after.active


def test_reset_signed_by_other_registered_operator_when_active_then_bad_signature() -> None:
    state = active_state()

    entries, after = apply(state, reset(operator="alice", signer="bob"))

    assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert after.active


@pytest.mark.parametrize(
    "field",
    ["detail", "command_id", "nonce", "ts", "operator"],
)
def test_reset_with_tampered_signed_field_when_active_then_bad_signature(field: str) -> None:
    state = active_state()
    genuine = reset("reset-1", nonce="n-1", detail="root cause fixed")
    tampered_values = {
        "detail": "all good, trust me",
        "command_id": "reset-other",
        "nonce": "n-2",
        "ts": T0 + SECOND,
        "operator": "bob",
    }
    tampered = genuine.model_copy(update={field: tampered_values[field]})

    entries, after = apply(state, tampered, now=T0 + SECOND)

    entry = assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert entry.nonce is None
    assert after.active


@pytest.mark.parametrize(
    "signature",
    [
        "!!!not base64!!!",
        "c2lnbmF0dXJl",  # valid base64, not 64 bytes
        base64.b64encode(bytes(64)).decode(),  # right length, all zero
        "QUJD\nREVG",  # embedded newline
    ],
    ids=["garbage", "short", "zeros", "newline"],
)
def test_reset_with_garbage_signature_when_active_then_bad_signature(signature: str) -> None:
    state = active_state()
    forged = reset().model_copy(update={"signature": signature})

    entries, after = apply(state, forged)

    assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert after.active


def test_reset_for_operator_with_malformed_registered_key_when_active_then_bad_signature() -> None:
    state = active_state()
    broken = ResetPolicy(operators={"alice": b"short"})

    entries, after = apply(state, reset(), reset_policy=broken)

    assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert after.active


def test_reset_when_older_than_max_age_then_expired() -> None:
    state = active_state()
    now = T0 + DEFAULT_MAX_AGE + SECOND

    entries, after = apply(state, reset(ts=T0), now=now)

    entry = assert_rejected(entries, RejectReason.EXPIRED)
    assert entry.nonce == "nonce-1"  # authentic: its nonce is burnt
    assert after.active
    assert ("alice", "nonce-1") in after.used_nonces


def test_reset_when_exactly_max_age_old_then_accepted() -> None:
    state = active_state()

    entries, after = apply(state, reset(ts=T0), now=T0 + DEFAULT_MAX_AGE)

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_reset_when_custom_max_age_exceeded_then_expired() -> None:
    state = active_state()
    short = policy(max_age=timedelta(seconds=10))

    entries, _ = apply(state, reset(ts=T0), now=T0 + 11 * SECOND, reset_policy=short)

    assert_rejected(entries, RejectReason.EXPIRED)


def test_reset_when_further_than_max_skew_in_future_then_from_the_future() -> None:
    state = active_state()

    entries, after = apply(state, reset(ts=T0 + DEFAULT_MAX_SKEW + SECOND), now=T0)

    assert_rejected(entries, RejectReason.FROM_THE_FUTURE)
    assert after.active


def test_reset_when_slightly_in_future_within_skew_then_accepted() -> None:
    state = active_state()

    entries, after = apply(state, reset(ts=T0 + DEFAULT_MAX_SKEW), now=T0)

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_reset_with_used_nonce_when_active_again_then_nonce_reused() -> None:
    state = active_state()
    _, state = apply(state, reset("reset-1", nonce="n-1"))
    _, state = apply(state, trip("trip-2"))

    replay = reset("reset-2", nonce="n-1")  # new id, validly signed, same operator + nonce
    entries, after = apply(state, replay, now=T0 + SECOND)

    entry = assert_rejected(entries, RejectReason.NONCE_REUSED)
    assert entry.command_id == "reset-2"
    assert after.active


def test_same_nonce_when_used_by_another_operator_then_accepted() -> None:
    state = active_state()
    _, state = apply(state, reset("reset-1", operator="alice", nonce="n-1"))
    _, state = apply(state, trip("trip-2"))

    entries, after = apply(state, reset("reset-2", operator="bob", nonce="n-1"))

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_reset_when_not_active_then_rejected_and_nonce_burnt() -> None:
    entries, state = apply(INITIAL_STATE, reset("early", nonce="n-early"))

    entry = assert_rejected(entries, RejectReason.NOT_ACTIVE)
    assert entry.nonce == "n-early"
    assert ("alice", "n-early") in state.used_nonces
    assert not state.active


def test_replay_of_nonce_burnt_while_inactive_when_active_then_refused() -> None:
    _, state = apply(INITIAL_STATE, reset("early", nonce="n-early"))
    _, state = apply(state, trip("trip-1"), now=T0 + SECOND)

    entries, after = apply(state, reset("later", nonce="n-early"), now=T0 + 2 * SECOND)

    assert_rejected(entries, RejectReason.NONCE_REUSED)
    assert after.active


def test_replay_of_exact_command_rejected_while_inactive_when_active_then_ignored() -> None:
    # The same command (same id) is deduplicated: it can never be "re-played" into a reset.
    early = reset("early", nonce="n-early")
    _, state = apply(INITIAL_STATE, early)
    _, state = apply(state, trip("trip-1"))

    entries, after = apply(state, early)

    assert entries == []
    assert after.active


@pytest.mark.parametrize(
    "forgery",
    [
        {"signer": "mallory"},
        {"signer": "bob"},
    ],
    ids=["unregistered-key", "other-operators-key"],
)
def test_forged_reset_when_rejected_then_nonce_not_burnt(forgery: dict[str, str]) -> None:
    state = active_state()
    _, state = apply(state, reset("forged", operator="alice", nonce="n-1", **forgery))
    assert ("alice", "n-1") not in state.used_nonces

    entries, after = apply(state, reset("genuine", operator="alice", nonce="n-1"))

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_tampered_reset_when_rejected_then_nonce_not_burnt() -> None:
    state = active_state()
    genuine = reset("genuine", nonce="n-1")
    tampered = genuine.model_copy(update={"command_id": "forged", "detail": "evil"})
    _, state = apply(state, tampered)

    entries, after = apply(state, genuine)

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_unknown_operator_reset_when_rejected_then_nobody_nonce_burnt() -> None:
    state = active_state()

    _, after = apply(state, reset(operator="mallory", nonce="n-1"))

    assert after.used_nonces == state.used_nonces


def test_rejected_reset_when_applied_then_only_seq_applied_and_nonces_change() -> None:
    state = active_state()

    entries, after = apply(state, reset(operator="mallory"))

    assert after.next_seq == state.next_seq + 1
    assert ("unauthenticated", entries[0].command_id) in after.applied
    assert after.status is state.status
    assert after.activation == state.activation
    assert after.epoch == state.epoch


# --------------------------------------------------------------------------- quorum 2


def test_first_approval_when_quorum_two_then_reset_approval_and_still_active() -> None:
    state = active_state()
    q2 = policy(quorum=2)

    entries, after = apply(state, reset("r-a", nonce="na"), now=T0 + SECOND, reset_policy=q2)

    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry)
    assert entry.operator == "alice"
    assert entry.approvals == ("alice",)
    assert entry.quorum == 2
    assert entry.nonce == "na"
    assert entry.expires_at == T0 + DEFAULT_MAX_AGE
    assert after.active
    assert [a.operator for a in after.approvals] == ["alice"]
    assert ("alice", "na") in after.used_nonces


def test_same_operator_approving_twice_when_quorum_two_then_duplicate_approval() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a1", nonce="na1"), reset_policy=q2)

    entries, after = apply(state, reset("r-a2", nonce="na2"), reset_policy=q2)

    assert_rejected(entries, RejectReason.DUPLICATE_APPROVAL)
    assert after.active
    assert [a.operator for a in after.approvals] == ["alice"]


def test_second_distinct_operator_when_quorum_two_then_reset_with_both() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na"), reset_policy=q2)

    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb"), now=T0 + SECOND, reset_policy=q2
    )

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("alice", "bob")
    assert entry.nonce == "nb"
    assert not after.active
    assert after.approvals == ()
    assert after.epoch == 1
    assert {("alice", "na"), ("bob", "nb")} <= after.used_nonces


def test_duplicate_then_second_operator_when_quorum_two_then_reset() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a1", nonce="na1"), reset_policy=q2)
    _, state = apply(state, reset("r-a2", nonce="na2"), reset_policy=q2)

    entries, after = apply(state, reset("r-b", operator="bob", nonce="nb"), reset_policy=q2)

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("alice", "bob")
    assert not after.active


def test_approval_expired_before_second_when_quorum_two_then_not_counted() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", ts=T0), now=T0, reset_policy=q2)
    later = T0 + DEFAULT_MAX_AGE + SECOND

    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb", ts=later), now=later, reset_policy=q2
    )

    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry)
    assert entry.approvals == ("bob",)
    assert after.active
    assert [a.operator for a in after.approvals] == ["bob"]


def test_operator_whose_approval_expired_when_approving_again_then_counts() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", ts=T0), now=T0, reset_policy=q2)
    later = T0 + DEFAULT_MAX_AGE + SECOND
    _, state = apply(
        state, reset("r-b", operator="bob", nonce="nb", ts=later), now=later, reset_policy=q2
    )

    entries, after = apply(
        state, reset("r-a2", nonce="na2", ts=later), now=later + SECOND, reset_policy=q2
    )

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("bob", "alice")
    assert not after.active


def test_approval_at_expiry_instant_when_quorum_two_then_still_counted() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", ts=T0), now=T0, reset_policy=q2)
    edge = T0 + DEFAULT_MAX_AGE

    entries, _ = apply(
        state, reset("r-b", operator="bob", nonce="nb", ts=edge), now=edge, reset_policy=q2
    )

    assert isinstance(only(entries), ResetEntry)


def test_new_trip_when_approvals_pending_then_approvals_voided() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na"), reset_policy=q2)
    assert state.approvals

    trip_entries, state = apply(state, trip("trip-2"), now=T0 + SECOND)
    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb"), now=T0 + 2 * SECOND, reset_policy=q2
    )

    assert isinstance(only(trip_entries), TripRecordedEntry)
    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry)
    assert entry.approvals == ("bob",)
    assert after.active


def test_voided_approver_when_approving_again_with_new_nonce_then_completes_quorum() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na"), reset_policy=q2)
    _, state = apply(state, trip("trip-2"))
    _, state = apply(state, reset("r-b", operator="bob", nonce="nb"), reset_policy=q2)

    entries, after = apply(state, reset("r-a2", nonce="na2"), reset_policy=q2)

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("bob", "alice")
    assert not after.active


def test_approvals_when_reset_completes_then_do_not_carry_into_next_activation() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na"), reset_policy=q2)
    _, state = apply(state, reset("r-b", operator="bob", nonce="nb"), reset_policy=q2)
    _, state = apply(state, trip("trip-2"))

    entries, after = apply(state, reset("r-a2", nonce="na2"), reset_policy=q2)

    assert isinstance(only(entries), ResetApprovalEntry)
    assert after.active


def test_unknown_operator_when_quorum_two_then_not_counted() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na"), reset_policy=q2)

    entries, after = apply(state, reset("r-m", operator="mallory", nonce="nm"), reset_policy=q2)

    assert_rejected(entries, RejectReason.UNKNOWN_OPERATOR)
    assert after.active
    assert [a.operator for a in after.approvals] == ["alice"]


def test_approval_when_quorum_two_and_not_active_then_not_active() -> None:
    entries, state = apply(INITIAL_STATE, reset(), reset_policy=policy(quorum=2))

    assert_rejected(entries, RejectReason.NOT_ACTIVE)
    assert state.approvals == ()


# --------------------------------------------------------------------------- evolve, fold


def test_evolve_when_seq_has_gap_then_sequence_error() -> None:
    entry = only(decide(INITIAL_STATE, trip(), now=T0, policy=policy()))
    gapped = entry.model_copy(update={"seq": 1})

    with pytest.raises(SequenceError, match="expected seq 0, got 1"):
        evolve(INITIAL_STATE, gapped)


def test_evolve_when_seq_repeated_then_sequence_error() -> None:
    entry = only(decide(INITIAL_STATE, trip(), now=T0, policy=policy()))
    state = evolve(INITIAL_STATE, entry)

    with pytest.raises(SequenceError):
        evolve(state, entry)


def test_evolve_when_seq_goes_backwards_then_sequence_error() -> None:
    state = active_state()
    _, state = apply(state, trip("t2"))
    stale = only(decide(active_state(), trip("t3"), now=T0, policy=policy()))  # seq 1

    with pytest.raises(SequenceError):
        evolve(state, stale)


def test_fold_when_given_log_with_gap_then_sequence_error() -> None:
    first = only(decide(INITIAL_STATE, trip("t1"), now=T0, policy=policy()))
    third = TripRecordedEntry(
        seq=2, command_id="t3", ts=T0, reason=ReasonCode.MANUAL, source="operator:alice"
    )

    with pytest.raises(SequenceError):
        fold([first, third])


def test_fold_when_given_log_then_same_state_as_incremental() -> None:
    q2 = policy(quorum=2)
    commands = [
        trip("t1"),
        trip("t2"),
        reset("r-m", operator="mallory"),
        reset("r-a", nonce="na"),
        reset("r-a-dup", nonce="na2"),
        reset("r-b", operator="bob", nonce="nb"),
        reset("r-late", nonce="nl"),
        trip("t3"),
    ]
    state = INITIAL_STATE
    log: list[StateEntry] = []
    for i, command in enumerate(commands):
        entries, state = apply(state, command, now=T0 + i * SECOND, reset_policy=q2)
        log.extend(entries)

    rebuilt = fold(log)

    assert rebuilt == state
    assert [e.seq for e in log] == list(range(len(log)))
    assert [e.kind for e in log] == [
        "activated",
        "trip_recorded",
        "reset_rejected",
        "reset_approval",
        "reset_rejected",
        "reset",
        "reset_rejected",
        "activated",
    ]


def test_fold_when_given_prefix_state_then_continues_from_it() -> None:
    state = active_state()
    entries, expected = apply(state, trip("t-more"))

    assert fold(entries, state) == expected


# --------------------------------------------------------------------------- ResetPolicy


@pytest.mark.parametrize("quorum", [0, -1])
def test_policy_when_quorum_below_one_then_rejected(quorum: int) -> None:
    with pytest.raises(ValueError, match="quorum"):
        ResetPolicy(operators=REGISTERED, quorum=quorum)


def test_policy_when_quorum_exceeds_operators_then_rejected() -> None:
    with pytest.raises(ValueError, match="cannot be met"):
        ResetPolicy(operators=REGISTERED, quorum=3)


def test_policy_when_quorum_equals_operators_then_accepted() -> None:
    assert ResetPolicy(operators=REGISTERED, quorum=2).quorum == 2


def test_default_policy_when_built_then_quorum_one_no_operators() -> None:
    default = ResetPolicy()

    assert default.quorum == 1
    assert dict(default.operators) == {}
    assert default.max_age == DEFAULT_MAX_AGE
    assert default.max_skew == DEFAULT_MAX_SKEW


def test_default_policy_when_reset_arrives_then_nobody_can_reset() -> None:
    state = active_state()

    entries, after = apply(state, reset(), reset_policy=ResetPolicy())

    assert_rejected(entries, RejectReason.UNKNOWN_OPERATOR)
    assert after.active


def test_policy_operators_when_source_dict_mutated_then_unchanged() -> None:
    source = dict(REGISTERED)
    frozen = ResetPolicy(operators=source)

    source["mallory"] = b"x" * 32

    assert "mallory" not in frozen.operators
    with pytest.raises(TypeError):
        frozen.operators["mallory"] = b"x" * 32  # type: ignore[index]


def test_forged_reset_when_its_id_is_reused_by_a_real_reset_then_real_one_applies() -> None:
    state = active_state()
    _, state = apply(state, reset("shared-id", operator="alice", signer="mallory", nonce="x"))

    entries, after = apply(state, reset("shared-id", operator="alice", nonce="n-real"))

    assert [entry.kind for entry in entries] == ["reset"]
    assert after.status is Status.INACTIVE


def test_forged_reset_when_redelivered_then_logged_once() -> None:
    state = active_state()
    forged = reset("forged-1", operator="alice", signer="mallory")
    _, state = apply(state, forged)

    entries, after = apply(state, forged)

    assert entries == []
    assert after == state

"""The ESS decider: trips, resets, quorum, dedupe and log sequencing (Arrange/Act/Assert)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from ess.core import (
    INITIAL_STATE,
    EssState,
    ResetPolicy,
    SequenceError,
    Status,
    decide,
    derive_id,
    evolve,
    fold,
)
from ess.core.decider import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_SKEW,
    TRIP_RECORDS_PER_ACTIVATION,
    reset_authorization_problem,
    trip_is_coalesced,
    trip_is_duplicate,
)
from ess.core.signing import public_bytes
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

from .support import (
    CAROL_KEY,
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


def test_trip_redelivered_after_reset_when_triggered_before_the_reset_then_no_entries() -> None:
    # Trips are deduplicated per epoch; a trip id from an earlier epoch is still a duplicate
    # when what triggered it happened before the reset (a late redelivery).
    state = active_state()
    _, state = apply(state, reset(of=state), now=T0)
    assert not state.active
    assert TRIGGER.event_ts < T0

    entries = decide(state, trip("trip-0"), now=T0 + SECOND, policy=policy())

    assert entries == []


def test_reset_with_id_of_a_trip_when_active_then_not_a_duplicate() -> None:
    state = active_state()

    entries, after = apply(state, reset("trip-0", of=state))

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_trip_with_id_of_a_rejected_reset_when_inactive_then_activated() -> None:
    # A forged reset must never "use up" the id of a future trip.
    _, state = apply(INITIAL_STATE, reset("shared-id", operator="mallory", of=INITIAL_STATE))

    entries, after = apply(state, trip("shared-id"))

    assert isinstance(only(entries), ActivatedEntry)
    assert after.active


def test_reset_with_duplicate_command_id_when_resent_then_no_entries() -> None:
    state = active_state()
    command = reset("reset-1", of=state)
    _, state = apply(state, command)
    _, state = apply(state, trip("trip-again"))

    entries = decide(state, command, now=T0 + SECOND, policy=policy())

    assert entries == []


def test_trip_when_after_reset_then_activated_again_with_next_seq() -> None:
    state = active_state()
    _, state = apply(state, reset(of=state))

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

    entries, after = apply(state, reset("reset-1", nonce="n-1", ts=T0, of=state), now=now)

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
    _, state = apply(state, reset("r1", nonce="n1", of=state))
    _, state = apply(state, trip("t2"))

    _, state = apply(state, reset("r2", operator="bob", nonce="n1", of=state))

    assert state.epoch == 2
    assert not state.active


def test_reset_by_unknown_operator_when_active_then_rejected_and_still_active() -> None:
    state = active_state()

    entries, after = apply(state, reset(operator="mallory", of=state))

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

    entries, after = apply(state, reset(operator="alice", signer="mallory", of=state))

    entry = assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert entry.nonce is None
    assert after.active


def test_reset_signed_by_other_registered_operator_when_active_then_bad_signature() -> None:
    state = active_state()

    entries, after = apply(state, reset(operator="alice", signer="bob", of=state))

    assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert after.active


@pytest.mark.parametrize(
    "field",
    ["detail", "command_id", "nonce", "ts", "operator"],
)
def test_reset_with_tampered_signed_field_when_active_then_bad_signature(field: str) -> None:
    state = active_state()
    genuine = reset("reset-1", nonce="n-1", detail="root cause fixed", of=state)
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
    forged = reset(of=state).model_copy(update={"signature": signature})

    entries, after = apply(state, forged)

    assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert after.active


@pytest.mark.parametrize("key", [b"short", b"\x01" * 33, b""], ids=["short", "long", "empty"])
def test_policy_when_operator_key_malformed_then_refused_before_any_reset(key: bytes) -> None:
    # Such a key could never authenticate a reset (it used to yield bad_signature); the
    # policy now refuses it when built, naming the operator, so it cannot be configured.
    with pytest.raises(ValueError, match="'alice'"):
        ResetPolicy(operators={"alice": key})


def test_reset_when_older_than_max_age_then_expired() -> None:
    state = active_state()
    now = T0 + DEFAULT_MAX_AGE + SECOND

    entries, after = apply(state, reset(ts=T0, of=state), now=now)

    entry = assert_rejected(entries, RejectReason.EXPIRED)
    assert entry.nonce == "nonce-1"  # authentic: its nonce is burnt
    assert after.active
    assert ("alice", "nonce-1") in after.used_nonces


def test_reset_when_exactly_max_age_old_then_accepted() -> None:
    state = active_state()

    entries, after = apply(state, reset(ts=T0, of=state), now=T0 + DEFAULT_MAX_AGE)

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_reset_when_custom_max_age_exceeded_then_expired() -> None:
    state = active_state()
    short = policy(max_age=timedelta(seconds=10))

    entries, _ = apply(state, reset(ts=T0, of=state), now=T0 + 11 * SECOND, reset_policy=short)

    assert_rejected(entries, RejectReason.EXPIRED)


def test_reset_when_further_than_max_skew_in_future_then_from_the_future() -> None:
    state = active_state()

    entries, after = apply(state, reset(ts=T0 + DEFAULT_MAX_SKEW + SECOND, of=state), now=T0)

    assert_rejected(entries, RejectReason.FROM_THE_FUTURE)
    assert after.active


def test_reset_when_slightly_in_future_within_skew_then_accepted() -> None:
    state = active_state()

    entries, after = apply(state, reset(ts=T0 + DEFAULT_MAX_SKEW, of=state), now=T0)

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_reset_with_used_nonce_when_active_again_then_nonce_reused() -> None:
    state = active_state()
    _, state = apply(state, reset("reset-1", nonce="n-1", of=state))
    _, state = apply(state, trip("trip-2"))

    # A new id, validly signed and bound, but the same operator and nonce.
    replay = reset("reset-2", nonce="n-1", of=state)
    entries, after = apply(state, replay, now=T0 + SECOND)

    entry = assert_rejected(entries, RejectReason.NONCE_REUSED)
    assert entry.command_id == "reset-2"
    assert after.active


def test_same_nonce_when_used_by_another_operator_then_accepted() -> None:
    state = active_state()
    _, state = apply(state, reset("reset-1", operator="alice", nonce="n-1", of=state))
    _, state = apply(state, trip("trip-2"))

    entries, after = apply(state, reset("reset-2", operator="bob", nonce="n-1", of=state))

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_reset_when_not_active_then_rejected_and_nonce_burnt() -> None:
    entries, state = apply(INITIAL_STATE, reset("early", nonce="n-early", of=INITIAL_STATE))

    entry = assert_rejected(entries, RejectReason.NOT_ACTIVE)
    assert entry.nonce == "n-early"
    assert ("alice", "n-early") in state.used_nonces
    assert not state.active


def test_replay_of_nonce_burnt_while_inactive_when_active_then_refused() -> None:
    _, state = apply(INITIAL_STATE, reset("early", nonce="n-early", of=INITIAL_STATE))
    _, state = apply(state, trip("trip-1"), now=T0 + SECOND)

    entries, after = apply(state, reset("later", nonce="n-early", of=state), now=T0 + 2 * SECOND)

    assert_rejected(entries, RejectReason.NONCE_REUSED)
    assert after.active


def test_replay_of_exact_command_rejected_while_inactive_when_active_then_ignored() -> None:
    # The same command (same id) is deduplicated: it can never be "re-played" into a reset.
    early = reset("early", nonce="n-early", of=None)
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
    _, state = apply(state, reset("forged", operator="alice", nonce="n-1", **forgery, of=state))
    assert ("alice", "n-1") not in state.used_nonces

    entries, after = apply(state, reset("genuine", operator="alice", nonce="n-1", of=state))

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_tampered_reset_when_rejected_then_nonce_not_burnt() -> None:
    state = active_state()
    genuine = reset("genuine", nonce="n-1", of=state)
    tampered = genuine.model_copy(update={"command_id": "forged", "detail": "evil"})
    _, state = apply(state, tampered)

    entries, after = apply(state, genuine)

    assert isinstance(only(entries), ResetEntry)
    assert not after.active


def test_unknown_operator_reset_when_rejected_then_nobody_nonce_burnt() -> None:
    state = active_state()

    _, after = apply(state, reset(operator="mallory", nonce="n-1", of=state))

    assert after.used_nonces == state.used_nonces


def test_rejected_reset_when_applied_then_only_seq_applied_and_nonces_change() -> None:
    state = active_state()

    entries, after = apply(state, reset(operator="mallory", of=state))

    assert after.next_seq == state.next_seq + 1
    assert ("unauthenticated", entries[0].command_id) in after.applied
    assert after.status is state.status
    assert after.activation == state.activation
    assert after.epoch == state.epoch


# --------------------------------------------------------------------------- quorum 2


def test_first_approval_when_quorum_two_then_reset_approval_and_still_active() -> None:
    state = active_state()
    q2 = policy(quorum=2)

    entries, after = apply(
        state, reset("r-a", nonce="na", of=state), now=T0 + SECOND, reset_policy=q2
    )

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
    _, state = apply(state, reset("r-a1", nonce="na1", of=state), reset_policy=q2)

    entries, after = apply(state, reset("r-a2", nonce="na2", of=state), reset_policy=q2)

    assert_rejected(entries, RejectReason.DUPLICATE_APPROVAL)
    assert after.active
    assert [a.operator for a in after.approvals] == ["alice"]


def test_second_distinct_operator_when_quorum_two_then_reset_with_both() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=q2)

    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb", of=state), now=T0 + SECOND, reset_policy=q2
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
    _, state = apply(state, reset("r-a1", nonce="na1", of=state), reset_policy=q2)
    _, state = apply(state, reset("r-a2", nonce="na2", of=state), reset_policy=q2)

    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb", of=state), reset_policy=q2
    )

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("alice", "bob")
    assert not after.active


def test_approval_expired_before_second_when_quorum_two_then_not_counted() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", ts=T0, of=state), now=T0, reset_policy=q2)
    later = T0 + DEFAULT_MAX_AGE + SECOND

    entries, after = apply(
        state,
        reset("r-b", operator="bob", nonce="nb", ts=later, of=state),
        now=later,
        reset_policy=q2,
    )

    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry)
    assert entry.approvals == ("bob",)
    assert after.active
    assert [a.operator for a in after.approvals] == ["bob"]


def test_operator_whose_approval_expired_when_approving_again_then_counts() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", ts=T0, of=state), now=T0, reset_policy=q2)
    later = T0 + DEFAULT_MAX_AGE + SECOND
    _, state = apply(
        state,
        reset("r-b", operator="bob", nonce="nb", ts=later, of=state),
        now=later,
        reset_policy=q2,
    )

    entries, after = apply(
        state, reset("r-a2", nonce="na2", ts=later, of=state), now=later + SECOND, reset_policy=q2
    )

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("bob", "alice")
    assert not after.active


def test_approval_at_expiry_instant_when_quorum_two_then_still_counted() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", ts=T0, of=state), now=T0, reset_policy=q2)
    edge = T0 + DEFAULT_MAX_AGE

    entries, _ = apply(
        state,
        reset("r-b", operator="bob", nonce="nb", ts=edge, of=state),
        now=edge,
        reset_policy=q2,
    )

    assert isinstance(only(entries), ResetEntry)


def test_new_trip_when_approvals_pending_then_approvals_voided() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=q2)
    assert state.approvals

    trip_entries, state = apply(state, trip("trip-2"), now=T0 + SECOND)
    entries, after = apply(
        state,
        reset("r-b", operator="bob", nonce="nb", of=state),
        now=T0 + 2 * SECOND,
        reset_policy=q2,
    )

    assert isinstance(only(trip_entries), TripRecordedEntry)
    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry)
    assert entry.approvals == ("bob",)
    assert after.active


def test_voided_approver_when_approving_again_with_new_nonce_then_completes_quorum() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=q2)
    _, state = apply(state, trip("trip-2"))
    _, state = apply(state, reset("r-b", operator="bob", nonce="nb", of=state), reset_policy=q2)

    entries, after = apply(state, reset("r-a2", nonce="na2", of=state), reset_policy=q2)

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("bob", "alice")
    assert not after.active


def test_approvals_when_reset_completes_then_do_not_carry_into_next_activation() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=q2)
    _, state = apply(state, reset("r-b", operator="bob", nonce="nb", of=state), reset_policy=q2)
    _, state = apply(state, trip("trip-2"))

    entries, after = apply(state, reset("r-a2", nonce="na2", of=state), reset_policy=q2)

    assert isinstance(only(entries), ResetApprovalEntry)
    assert after.active


def test_unknown_operator_when_quorum_two_then_not_counted() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=q2)

    entries, after = apply(
        state, reset("r-m", operator="mallory", nonce="nm", of=state), reset_policy=q2
    )

    assert_rejected(entries, RejectReason.UNKNOWN_OPERATOR)
    assert after.active
    assert [a.operator for a in after.approvals] == ["alice"]


def test_approval_when_quorum_two_and_not_active_then_not_active() -> None:
    entries, state = apply(INITIAL_STATE, reset(of=INITIAL_STATE), reset_policy=policy(quorum=2))

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
    # Each command is built against the state it is sent to (resets name its activation).
    commands: list[Callable[[EssState], TripCommand | ResetCommand]] = [
        lambda _: trip("t1"),
        lambda _: trip("t2"),
        lambda s: reset("r-m", operator="mallory", of=s),
        lambda s: reset("r-a", nonce="na", of=s),
        lambda s: reset("r-a-dup", nonce="na2", of=s),
        lambda s: reset("r-b", operator="bob", nonce="nb", of=s),
        lambda s: reset("r-late", nonce="nl", of=s),
        lambda _: trip("t3"),
    ]
    state = INITIAL_STATE
    log: list[StateEntry] = []
    for i, build in enumerate(commands):
        entries, state = apply(state, build(state), now=T0 + i * SECOND, reset_policy=q2)
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

    entries, after = apply(state, reset(of=state), reset_policy=ResetPolicy())

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
    _, state = apply(
        state, reset("shared-id", operator="alice", signer="mallory", nonce="x", of=state)
    )

    entries, after = apply(state, reset("shared-id", operator="alice", nonce="n-real", of=state))

    assert [entry.kind for entry in entries] == ["reset"]
    assert after.status is Status.INACTIVE


def test_forged_reset_when_redelivered_then_logged_once() -> None:
    state = active_state()
    forged = reset("forged-1", operator="alice", signer="mallory", of=state)
    _, state = apply(state, forged)

    entries, after = apply(state, forged)

    assert entries == []
    assert after == state


# --------------------------------------------------------------------------- binding


def test_reset_bound_to_current_activation_when_active_then_reset() -> None:
    state = active_state()
    command = reset("r-bound", nonce="nb", of=state)
    assert state.activation is not None
    assert (command.activation_seq, command.activation_command_id) == (0, "trip-0")

    entries, after = apply(state, command)

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.authorizations == (command,)
    assert not after.active


def test_reset_signed_for_previous_activation_when_processed_after_next_then_mismatch() -> None:
    # alice signs a reset of activation A1; bob resets A1 first; A2 follows. alice's reset,
    # processed now, must not clear A2: it was signed for another situation.
    first = active_state()
    held_back = reset("r-alice", operator="alice", nonce="n-alice", of=first)
    _, state = apply(first, reset("r-bob", operator="bob", nonce="n-bob", of=first))
    _, state = apply(state, trip("trip-a2", trigger=None, ts=T0 + SECOND), now=T0 + SECOND)
    assert state.activation is not None
    assert state.activation.command_id == "trip-a2"

    entries, after = apply(state, held_back, now=T0 + 2 * SECOND)

    entry = assert_rejected(entries, RejectReason.ACTIVATION_MISMATCH)
    assert entry.nonce == "n-alice", "an authentic reset burns its nonce"
    assert ("alice", "n-alice") in after.used_nonces
    assert after.active
    assert after.activation == state.activation
    assert "seq 0" in entry.detail
    assert "seq 2" in entry.detail
    # The burnt nonce cannot be reused, even correctly bound.
    again, _ = apply(after, reset("r-alice-2", nonce="n-alice", of=after), now=T0 + 2 * SECOND)
    assert_rejected(again, RejectReason.NONCE_REUSED)


def test_unbound_reset_when_active_then_activation_mismatch_and_nonce_burnt() -> None:
    state = active_state()
    unbound = reset("r-unbound", nonce="n-u", of=None)
    assert unbound.activation_seq is None
    assert unbound.activation_command_id is None

    entries, after = apply(state, unbound)

    entry = assert_rejected(entries, RejectReason.ACTIVATION_MISMATCH)
    assert entry.nonce == "n-u"
    assert ("alice", "n-u") in after.used_nonces
    assert after.active


@pytest.mark.parametrize(
    ("seq", "command_id"),
    [(0, "trip-other"), (1, "trip-0"), (None, "trip-0"), (0, None)],
    ids=["other-id", "other-seq", "seq-missing", "id-missing"],
)
def test_reset_naming_activation_partially_wrong_when_active_then_mismatch(
    seq: int | None, command_id: str | None
) -> None:
    state = active_state()
    assert state.activation is not None
    activation = replace(state.activation, seq=seq, command_id=command_id)  # type: ignore[arg-type]

    entries, after = apply(state, reset("r-wrong", nonce="n-w", of=activation))

    assert_rejected(entries, RejectReason.ACTIVATION_MISMATCH)
    assert after.active


def test_activation_fields_when_tampered_after_signing_then_bad_signature() -> None:
    # The binding is signed: rebinding an old reset to the current activation breaks it.
    state = active_state()
    assert state.activation is not None
    old = reset("r-old", nonce="n-old", of=replace(state.activation, seq=7, command_id="old"))
    rebound = old.model_copy(update={"activation_seq": 0, "activation_command_id": "trip-0"})

    entries, after = apply(state, rebound)

    entry = assert_rejected(entries, RejectReason.BAD_SIGNATURE)
    assert entry.nonce is None
    assert after.active


def test_mismatched_approval_when_quorum_two_then_not_counted_toward_quorum() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", of=None), reset_policy=q2)
    assert state.approvals == ()

    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb", of=state), reset_policy=q2
    )

    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry)
    assert entry.approvals == ("bob",)
    assert after.active


# --------------------------------------------------------------------------- approvals re-checked

THREE = {**REGISTERED, "carol": public_bytes(CAROL_KEY)}


def test_approval_by_operator_removed_from_policy_when_quorum_two_then_not_counted() -> None:
    state = active_state()
    before = ResetPolicy(operators=THREE, quorum=2)
    after_removal = ResetPolicy(operators={"bob": THREE["bob"], "carol": THREE["carol"]}, quorum=2)
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=before)
    assert [a.operator for a in state.approvals] == ["alice"]

    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb", of=state), reset_policy=after_removal
    )

    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry), "alice's approval must not count any more"
    assert entry.approvals == ("bob",)
    assert after.active
    assert [a.operator for a in after.approvals] == ["bob"]


def test_approval_whose_operator_was_rekeyed_when_quorum_two_then_not_counted() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    rekeyed = ResetPolicy(
        operators={"alice": public_bytes(CAROL_KEY), "bob": REGISTERED["bob"]}, quorum=2
    )
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=q2)

    entries, after = apply(
        state, reset("r-b", operator="bob", nonce="nb", of=state), reset_policy=rekeyed
    )

    entry = only(entries)
    assert isinstance(entry, ResetApprovalEntry)
    assert entry.approvals == ("bob",)
    assert after.active


def test_approval_of_rekeyed_operator_when_it_approves_again_with_new_key_then_quorum() -> None:
    # Not a duplicate: the old approval no longer counts, so the re-keyed operator may approve.
    state = active_state()
    q2 = policy(quorum=2)
    rekeyed = ResetPolicy(
        operators={"alice": public_bytes(CAROL_KEY), "bob": REGISTERED["bob"]}, quorum=2
    )
    _, state = apply(state, reset("r-a", nonce="na", of=state), reset_policy=q2)
    _, state = apply(
        state, reset("r-b", operator="bob", nonce="nb", of=state), reset_policy=rekeyed
    )

    entries, after = apply(
        state,
        reset("r-a2", operator="alice", signer="carol", nonce="na2", of=state),
        reset_policy=rekeyed,
    )

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("bob", "alice")
    assert not after.active


# --------------------------------------------------------------------------- authorizations


def test_reset_entry_when_quorum_two_then_carries_authorizations_in_operator_order() -> None:
    state = active_state()
    q2 = policy(quorum=2)
    by_bob = reset("r-b", operator="bob", nonce="nb", of=state)
    by_alice = reset("r-a", operator="alice", nonce="na", of=state)
    first, approved = apply(state, by_bob, reset_policy=q2)
    approval = only(first)
    assert isinstance(approval, ResetApprovalEntry)
    assert approval.command == by_bob

    entries, after = apply(approved, by_alice, now=T0 + SECOND, reset_policy=q2)

    entry = only(entries)
    assert isinstance(entry, ResetEntry)
    assert entry.operators == ("bob", "alice")
    assert entry.authorizations == (by_bob, by_alice)
    assert [c.operator for c in entry.authorizations] == list(entry.operators)
    assert reset_authorization_problem(approved, entry, REGISTERED) is None
    assert not after.active


def reset_entry_for(state: EssState, *commands: ResetCommand) -> ResetEntry:
    """A reset entry as a (possibly compromised) processor could write it."""
    return ResetEntry(
        seq=state.next_seq,
        command_id=commands[-1].command_id,
        ts=T0,
        operators=tuple(c.operator for c in commands),
        nonce=commands[-1].nonce,
        authorizations=commands,
    )


def test_reset_authorization_when_entry_is_decided_by_core_then_accepted() -> None:
    state = active_state()

    entry = only(decide(state, reset(of=state), now=T0, policy=policy()))

    assert isinstance(entry, ResetEntry)
    assert reset_authorization_problem(state, entry, REGISTERED) is None


def test_reset_authorization_when_missing_then_problem() -> None:
    state = active_state()
    entry = reset_entry_for(state, reset(of=state)).model_copy(update={"authorizations": ()})

    assert reset_authorization_problem(state, entry, REGISTERED) == (
        "the reset carries no signed authorization"
    )


def test_reset_authorization_when_operator_unknown_to_reader_then_problem() -> None:
    state = active_state()
    entry = reset_entry_for(state, reset(operator="mallory", of=state))

    problem = reset_authorization_problem(state, entry, REGISTERED)

    assert problem is not None
    assert "'mallory' has no public key" in problem


def test_reset_authorization_when_signature_forged_then_problem() -> None:
    state = active_state()
    entry = reset_entry_for(state, reset(signer="mallory", of=state))

    assert reset_authorization_problem(state, entry, REGISTERED) == (
        "the authorization by 'alice' does not verify"
    )


def test_reset_authorization_when_for_another_activation_then_problem() -> None:
    state = active_state()
    assert state.activation is not None
    other = replace(state.activation, seq=5, command_id="trip-5")
    entry = reset_entry_for(state, reset(of=other))

    problem = reset_authorization_problem(state, entry, REGISTERED)

    assert problem == "the authorization by 'alice' is for another activation"


def test_reset_authorization_when_unbound_then_problem() -> None:
    state = active_state()
    entry = reset_entry_for(state, reset(of=None))

    assert reset_authorization_problem(state, entry, REGISTERED) is not None


def test_reset_authorization_when_operator_duplicated_then_problem() -> None:
    state = active_state()
    entry = reset_entry_for(
        state, reset("r1", nonce="n1", of=state), reset("r2", nonce="n2", of=state)
    )

    problem = reset_authorization_problem(state, entry, REGISTERED)

    assert problem is not None
    assert "do not match" in problem


def test_reset_authorization_when_operators_do_not_match_then_problem() -> None:
    state = active_state()
    entry = reset_entry_for(state, reset(of=state)).model_copy(update={"operators": ("bob",)})

    assert reset_authorization_problem(state, entry, REGISTERED) is not None


def test_reset_authorization_when_last_is_not_the_entry_command_then_problem() -> None:
    state = active_state()
    entry = reset_entry_for(state, reset(of=state)).model_copy(update={"nonce": "other"})

    problem = reset_authorization_problem(state, entry, REGISTERED)

    assert problem == "the last authorization is not the command this reset was recorded for"


def test_reset_authorization_when_two_names_share_a_key_in_reader_then_problem() -> None:
    # A reader's key set is not a ResetPolicy (it keeps retired keys), so it re-checks this.
    state = active_state()
    shared = {"alice": REGISTERED["alice"], "eve": REGISTERED["alice"]}
    entry = reset_entry_for(
        state,
        reset("r1", nonce="n1", of=state),
        reset("r2", operator="eve", signer="alice", nonce="n2", of=state),
    )

    assert reset_authorization_problem(state, entry, shared) == (
        "two authorizations were signed with one key"
    )


def test_reset_authorization_when_not_active_then_problem() -> None:
    entry = reset_entry_for(INITIAL_STATE, reset(of=None))

    assert reset_authorization_problem(INITIAL_STATE, entry, REGISTERED) is not None


# --------------------------------------------------------------------------- trip dedupe per epoch


def test_same_trip_id_twice_in_one_epoch_then_second_appends_nothing() -> None:
    entries, state = apply(INITIAL_STATE, trip("t-x"), now=T0)
    assert isinstance(only(entries), ActivatedEntry)
    assert "t-x" in state.epoch_trips

    again = decide(state, trip("t-x", trigger=None, ts=T0 + 99 * SECOND), now=T0, policy=policy())

    assert again == []
    assert trip_is_duplicate(state, trip("t-x"))


def test_trip_id_from_previous_epoch_when_triggered_after_reset_then_new_trip() -> None:
    state = active_state()  # trip-0 in epoch 0, triggered at T0 - 2s
    _, state = apply(state, reset(of=state), now=T0 + 10 * SECOND)
    assert state.epoch_trips == frozenset()
    assert state.last_reset == T0 + 10 * SECOND
    fresh = TRIGGER.model_copy(update={"event_ts": T0 + 11 * SECOND})

    entries, after = apply(state, trip("trip-0", trigger=fresh), now=T0 + 12 * SECOND)

    entry = only(entries)
    assert isinstance(entry, ActivatedEntry)
    assert entry.command_id == "trip-0"
    assert after.active
    assert after.epoch_trips == frozenset({"trip-0"})


def test_trip_id_from_previous_epoch_when_triggered_at_reset_instant_then_new_trip() -> None:
    state = active_state()
    _, state = apply(state, reset(of=state), now=T0 + 10 * SECOND)
    at_reset = TRIGGER.model_copy(update={"event_ts": T0 + 10 * SECOND})

    entries, _ = apply(state, trip("trip-0", trigger=at_reset), now=T0 + 10 * SECOND)

    assert isinstance(only(entries), ActivatedEntry)


def test_trip_id_from_previous_epoch_when_redelivered_late_then_duplicate() -> None:
    state = active_state()
    _, state = apply(state, reset(of=state), now=T0 + 10 * SECOND)

    # The same detection (trigger at T0 - 2s), delivered again after the reset.
    entries, after = apply(state, trip("trip-0"), now=T0 + 60 * SECOND)

    assert entries == []
    assert after == state


@pytest.mark.parametrize(
    ("offset", "duplicate"),
    [(-1, True), (0, False), (1, False)],
    ids=["before-reset", "at-reset", "after-reset"],
)
def test_trip_without_trigger_from_previous_epoch_when_ts_vs_reset_then_uses_ts(
    offset: int, duplicate: bool
) -> None:
    _, state = apply(INITIAL_STATE, trip("op-trip", trigger=None, ts=T0), now=T0)
    reset_at = T0 + 10 * SECOND
    _, state = apply(state, reset(of=state, ts=reset_at), now=reset_at)

    again = trip("op-trip", trigger=None, ts=reset_at + offset * SECOND)

    assert trip_is_duplicate(state, again) is duplicate
    entries = decide(state, again, now=reset_at + 5 * SECOND, policy=policy())
    assert len(entries) == (0 if duplicate else 1)


def test_squatted_trip_ids_while_active_when_real_detection_after_reset_then_activates() -> None:
    # The finding behind per-epoch dedupe: detection ids are predictable (derived from the
    # source partition and offset), so a producer could send trips with the ids of future
    # detections while ESS is ACTIVE (they are merely recorded), and with dedupe-forever
    # the real detections would be swallowed as duplicates after the reset.
    def detection_id(offset: int) -> str:
        return derive_id("detector:daily_loss", "ess.pnl", 3, offset)

    state = active_state()
    one = policy()
    for offset in range(2000, 3000):
        squat = trip(detection_id(offset), source="intruder", trigger=None, ts=T0)
        entries, state = apply(state, squat, now=T0 + SECOND, reset_policy=one)
        assert isinstance(only(entries), TripRecordedEntry)
    assert state.trips_recorded == 1000
    reset_at = T0 + 10 * SECOND
    _, state = apply(state, reset(of=state, ts=reset_at), now=reset_at)
    assert not state.active
    real_trigger = TriggerRef(
        topic="ess.pnl", partition=3, offset=2500, event_ts=reset_at + 5 * SECOND
    )

    entries, after = apply(
        state, trip(detection_id(2500), trigger=real_trigger), now=reset_at + 6 * SECOND
    )

    entry = only(entries)
    assert isinstance(entry, ActivatedEntry)
    assert entry.command_id == detection_id(2500)
    assert entry.source == "detector:daily_loss"
    assert after.active


def test_operator_reusing_fixed_manual_id_after_reset_then_activates_again() -> None:
    def stop(ts: datetime) -> TripCommand:
        return trip(
            "manual-stop", reason=ReasonCode.MANUAL, source="operator:alice", trigger=None, ts=ts
        )

    entries, state = apply(INITIAL_STATE, stop(T0), now=T0)
    assert isinstance(only(entries), ActivatedEntry)
    _, state = apply(state, reset(of=state, ts=T0 + SECOND), now=T0 + SECOND)
    assert not state.active

    entries, after = apply(state, stop(T0 + 60 * SECOND), now=T0 + 60 * SECOND)

    entry = only(entries)
    assert isinstance(entry, ActivatedEntry)
    assert entry.seq == 2
    assert after.active
    assert after.epoch == 1


def test_epoch_trips_when_reset_then_cleared_and_last_reset_recorded() -> None:
    state = active_state()
    _, state = apply(state, trip("t-2"))
    assert state.epoch_trips == {"trip-0", "t-2"}

    _, after = apply(state, reset(of=state), now=T0 + 3 * SECOND)

    assert after.epoch_trips == frozenset()
    assert after.last_reset == T0 + 3 * SECOND
    assert ("trip", "t-2") in after.applied


# --------------------------------------------------------------------------- ResetPolicy keys


def test_policy_when_two_names_share_one_key_then_value_error_naming_both() -> None:
    with pytest.raises(ValueError, match="same public key") as raised:
        ResetPolicy(operators={"alice": REGISTERED["alice"], "eve": REGISTERED["alice"]})

    assert "'alice'" in str(raised.value)
    assert "'eve'" in str(raised.value)


@pytest.mark.parametrize(
    "key",
    [
        bytes([1]) + bytes(31),  # the identity
        bytes(32),  # order 4
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    ],
    ids=["identity", "order-4", "order-8"],
)
def test_policy_when_operator_key_has_small_order_then_value_error(key: bytes) -> None:
    with pytest.raises(ValueError, match="small-order"):
        ResetPolicy(operators={"alice": REGISTERED["alice"], "mallory": key})


@pytest.mark.xfail(
    strict=True,
    reason="design gap (reported): an id squatted while ACTIVE still swallows the real "
    "detection of an event that happened before the reset but is detected after it (a "
    "lagging detector), because the earlier-epoch rule compares only times",
)
def test_squatted_id_when_lagging_detector_reports_pre_reset_event_after_reset_then_trips() -> None:
    def detection_id(offset: int) -> str:
        return derive_id("detector", "daily_loss", "acct-1", "ess.pnl", 3, offset)

    state = active_state()
    squat = trip(detection_id(77), source="intruder", trigger=None, ts=T0)
    _, state = apply(state, squat, now=T0 + SECOND)
    reset_at = T0 + 10 * SECOND
    _, state = apply(state, reset(of=state, ts=reset_at), now=reset_at)
    # The loss happened at reset_at - 1s; the detector, behind, reports it after the reset.
    lagging = TriggerRef(topic="ess.pnl", partition=3, offset=77, event_ts=reset_at - SECOND)

    entries, after = apply(
        state, trip(detection_id(77), trigger=lagging), now=reset_at + 30 * SECOND
    )

    assert isinstance(only(entries), ActivatedEntry)
    assert after.active


# --------------------------------------------------------------------------- coalescing


def test_trips_beyond_the_per_activation_limit_are_coalesced_until_the_reset() -> None:
    """Issue 13, item 4: a flood of trips while ACTIVE cannot grow the log without bound."""
    state = active_state()
    for index in range(TRIP_RECORDS_PER_ACTIVATION):
        entries, state = apply(state, trip(f"flood-{index}", trigger=None, source="bot:7"))
        assert isinstance(only(entries), TripRecordedEntry)
    assert state.trips_recorded == TRIP_RECORDS_PER_ACTIVATION
    assert trip_is_coalesced(state)

    entries, after = apply(state, trip("one-more", trigger=None))
    assert entries == []
    assert after == state
    assert state.active  # the stop is in force whatever was coalesced

    entries, state = apply(state, reset(of=state))
    assert isinstance(only(entries), ResetEntry)
    assert not trip_is_coalesced(state)
    entries, state = apply(state, trip("after-the-reset", trigger=None, ts=T0 + SECOND))
    assert isinstance(only(entries), ActivatedEntry)
    assert not trip_is_coalesced(state)

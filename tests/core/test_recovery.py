"""A stop the state log lost, proven by the PolicyStore record: what counts as proof, the
entry that re-establishes it, and how the log's numbering carries past the record's.

Logs are built as the command processor writes them (decided by the real core, chained and
sealed: :class:`tests.statelog_support.LogBuilder`); the record is the projector's own
projection of such a log, proof included."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from ess.core import INITIAL_STATE, SequenceError, decide, evolve
from ess.core.attestation import SigningKey
from ess.core.decider import carries_seq_forward
from ess.core.projection import policy_record
from ess.core.reader import LogBroken, RawRecord, fold_records, seal_entry
from ess.core.recovery import MAX_CARRIED_SEQ, LostStop, lost_stop, reestablish
from ess.core.signing import generate_private_key
from schemas import (
    ActivatedEntry,
    ReasonCode,
    ResetEntry,
    TripRecordedEntry,
    validate,
)
from schemas.records import PolicyRecord
from tests.statelog_support import T0, LogBuilder, operator_reset, policy, trust

SCOPE = "ess.state"
SOURCE = "ess-command-processor"
LATER = T0 + timedelta(hours=1)


def lost_log(trips: int = 2, *, key: SigningKey | None = None) -> LogBuilder:
    """The log that was lost: ``trips`` manual trips (ACTIVE at seq ``trips - 1``)."""
    log = LogBuilder(SCOPE) if key is None else LogBuilder(SCOPE, key=key)
    for number in range(trips):
        log.trip(f"trip-{number}", reason=ReasonCode.MANUAL, detail=f"desk stop {number}")
    return log


def stored_record(log: LogBuilder) -> dict[str, Any]:
    """What the projector of ``log`` leaves in the PolicyStore: the record, with the
    activation entry exactly as the log holds it."""
    activation = log.state.activation
    proof = None
    if activation is not None:
        proof = orjson.loads(log.values[activation.seq])
    record = policy_record(log.state, refreshed_at=T0, activation_entry=proof)
    return record.model_dump(mode="json")


# --------------------------------------------------------------------------- numbering


def recovery_entry(seq: int, *, reason: ReasonCode = ReasonCode.STATE_LOG_LOST) -> ActivatedEntry:
    return ActivatedEntry(
        seq=seq, command_id="recovered", ts=T0, reason=reason, detail="", source=SOURCE
    )


def test_only_a_state_log_lost_activation_carries_the_seq_forward() -> None:
    state = evolve(INITIAL_STATE, recovery_entry(5))

    assert state.active
    assert state.last_seq == 5
    assert state.next_seq == 6
    assert state.activation is not None
    assert state.activation.seq == 5
    assert carries_seq_forward(recovery_entry(5))
    assert not carries_seq_forward(recovery_entry(5, reason=ReasonCode.MANUAL))


@pytest.mark.parametrize(
    "entry",
    [
        recovery_entry(5, reason=ReasonCode.MANUAL),  # an ordinary activation: a gap
        TripRecordedEntry(
            seq=5,
            command_id="t",
            ts=T0,
            reason=ReasonCode.STATE_LOG_LOST,
            source=SOURCE,
        ),  # the same reason on another kind
    ],
)
def test_every_other_entry_out_of_sequence_is_still_a_gap(entry: Any) -> None:
    with pytest.raises(SequenceError, match="expected seq 0, got 5"):
        evolve(INITIAL_STATE, entry)


def test_a_state_log_lost_activation_never_goes_backwards() -> None:
    log = lost_log(trips=1)
    log.reset()
    assert log.state.next_seq == 2

    with pytest.raises(SequenceError, match="expected seq 2, got 1"):
        evolve(log.state, recovery_entry(1))


def test_readers_fold_a_log_that_starts_past_zero_with_the_recovery_and_its_reset() -> None:
    new = LogBuilder(SCOPE)
    lost = lost_stop(stored_record(lost_log(trips=3)), new.state, trust(SCOPE))
    assert lost is not None
    entry = reestablish(lost, new.state, now=LATER, scope=SCOPE, source=SOURCE)
    assert entry is not None
    new.add(entry)
    reset = new.reset(ts=LATER)

    folded, report = fold_records(new.records(), trust(SCOPE))

    assert folded.trusted
    assert [item.entry.seq for item in report.applied] == [3, 4]
    assert isinstance(reset, ResetEntry)
    assert not folded.state.active
    assert folded.state.last_seq == 4
    assert folded.state.epoch == 1


def test_a_log_whose_start_is_missing_is_still_broken() -> None:
    # The head of an ordinary log deleted (retention): its first record chains to a record
    # that is gone, so nothing is authentic from the start: a fault, not a fresh start.
    log = lost_log(trips=3)

    with pytest.raises(LogBroken, match="does not continue the chain"):
        fold_records(log.records(start=1), trust(SCOPE))


def test_an_ordinary_activation_cannot_open_a_log_past_zero() -> None:
    key = LogBuilder(SCOPE).key
    entry = recovery_entry(4, reason=ReasonCode.MANUAL)
    _, value = seal_entry(entry, key, scope=SCOPE, prev=None)

    with pytest.raises(LogBroken, match="expected seq 0, got 4"):
        fold_records([RawRecord(0, value)], trust(SCOPE))


# --------------------------------------------------------------------------- what is a loss


def test_an_active_record_beyond_an_empty_log_is_a_verified_lost_stop() -> None:
    old = lost_log(trips=2)

    lost = lost_stop(stored_record(old), INITIAL_STATE, trust(SCOPE))

    assert lost is not None
    assert lost.verified
    assert lost.record_seq == 1
    assert lost.reason == "manual"
    assert lost.proof is not None
    assert lost.proof.command_id == "trip-0"
    assert lost.proof.seq == 0


@pytest.mark.parametrize(
    "stored",
    [
        None,
        {"unreadable": "x"},
        {"active": False, "seq": 9},
        {"active": "true", "seq": 9},  # not the JSON true
        {"active": True, "seq": None},  # cannot be placed beyond the log
        {"active": True},
        {"active": True, "seq": True},  # a bool is not a seq
        {"active": True, "seq": "9"},
    ],
)
def test_records_that_prove_no_lost_stop(stored: dict[str, Any] | None) -> None:
    assert lost_stop(stored, INITIAL_STATE, trust(SCOPE)) is None


def test_a_record_the_log_reaches_is_no_loss() -> None:
    log = lost_log(trips=1)
    log.reset()  # INACTIVE at seq 1
    stale_active = {**stored_record(lost_log(trips=1)), "seq": 1}

    assert lost_stop(stale_active, log.state, trust(SCOPE)) is None
    # One beyond the log's last entry is a loss.
    assert lost_stop({**stale_active, "seq": 2}, log.state, trust(SCOPE)) is not None


def test_a_log_that_is_active_already_enforces_the_stop() -> None:
    log = lost_log(trips=1)

    assert lost_stop({**stored_record(log), "seq": 50}, log.state, trust(SCOPE)) is None


def unverified(cases: dict[str, tuple[dict[str, Any], str]], scope: str = SCOPE) -> None:
    for name, (stored, problem) in cases.items():
        lost = lost_stop(stored, INITIAL_STATE, trust(scope))
        assert lost is not None, name
        assert not lost.verified, name
        assert lost.problem is not None, name
        assert problem in lost.problem, (name, lost.problem)


def test_a_record_without_proof_or_with_a_foreign_one_is_unverified() -> None:
    record = stored_record(lost_log(trips=2))
    mallory = SigningKey(generate_private_key())
    tampered = {**record["activation_entry"], "detail": "edited"}
    later_activation = orjson.loads(lost_log(trips=3).values[2])  # a trip_recorded at seq 2
    third = LogBuilder(SCOPE)
    for number in range(3):
        third.trip(f"x-{number}", reason=ReasonCode.MANUAL)
        third.reset()
    activation_at_4 = orjson.loads(third.values[4])  # the third activation, seq 4

    unverified(
        {
            "no proof": (
                {k: v for k, v in record.items() if k != "activation_entry"},
                "carries no signed activation",
            ),
            "not an object": ({**record, "activation_entry": "x"}, "not a JSON object"),
            "unknown key": (stored_record(lost_log(trips=2, key=mallory)), "unknown key"),
            "tampered": ({**record, "activation_entry": tampered}, "does not verify"),
            "reason differs": ({**record, "reason": "daily_loss"}, "reason is not"),
            "not an activation": (
                {**record, "seq": 5, "activation_entry": later_activation},
                "trip_recorded entry, not an activation",
            ),
            "proof after the record": (
                {**record, "seq": 3, "activation_entry": activation_at_4},
                "is later than the record's seq 3",
            ),
        }
    )
    # Sealed for another deployment's log (its state topic): not this log's proof.
    unverified({"another deployment": (record, "does not verify")}, scope="staging.state")


# --------------------------------------------------------------------------- re-establishing


def test_the_stop_is_re_established_past_the_record_and_a_signed_reset_ends_it() -> None:
    old = lost_log(trips=3)
    lost = lost_stop(stored_record(old), INITIAL_STATE, trust(SCOPE))
    assert lost is not None

    entry = reestablish(lost, INITIAL_STATE, now=LATER, scope=SCOPE, source=SOURCE)

    assert entry is not None
    assert (entry.seq, entry.reason, entry.source, entry.ts) == (
        3,
        ReasonCode.STATE_LOG_LOST,
        SOURCE,
        LATER,
    )
    assert entry.trigger is None
    assert "the state log was lost" in entry.detail
    assert "seq 2" in entry.detail
    assert "trip-0" in entry.detail
    assert "the log continues at seq 3" in entry.detail
    assert "UNVERIFIED" not in entry.detail
    # Deterministic: the same record re-establishes with the same id.
    again = reestablish(
        lost, INITIAL_STATE, now=LATER + timedelta(seconds=5), scope=SCOPE, source=SOURCE
    )
    assert again is not None
    assert again.command_id == entry.command_id

    state = evolve(INITIAL_STATE, entry)
    assert state.active
    assert state.activation is not None
    assert state.activation.reason is ReasonCode.STATE_LOG_LOST
    assert reestablish(lost, state, now=LATER, scope=SCOPE, source=SOURCE) is None

    [reset] = decide(state, operator_reset(state, ts=LATER), now=LATER, policy=policy())
    assert isinstance(reset, ResetEntry)
    assert reset.seq == 4


def test_an_unverified_stop_is_re_established_and_says_so() -> None:
    record = {**stored_record(lost_log(trips=2)), "activation_entry": None}
    lost = lost_stop(record, INITIAL_STATE, trust(SCOPE))
    assert lost is not None
    assert not lost.verified

    entry = reestablish(lost, INITIAL_STATE, now=LATER, scope=SCOPE, source=SOURCE)

    assert entry is not None
    assert entry.seq == 2
    assert entry.reason is ReasonCode.STATE_LOG_LOST
    assert entry.detail.startswith("UNVERIFIED:")
    assert "someone else wrote the record" in entry.detail


def test_an_absurd_record_seq_is_not_carried_forward() -> None:
    lost = LostStop(
        record_seq=MAX_CARRIED_SEQ, reason="manual", since="x", proof=None, problem="none"
    )

    entry = reestablish(lost, INITIAL_STATE, now=LATER, scope=SCOPE, source=SOURCE)

    assert entry is not None
    assert entry.seq == 0
    assert "not carried forward" in entry.detail


def test_the_detail_fits_its_field_whatever_the_record_says() -> None:
    log = LogBuilder(SCOPE)
    log.trip("t", reason=ReasonCode.MANUAL, detail="x" * 4096)
    record = {**stored_record(log), "timestamp": "y" * 10_000}
    lost = lost_stop(record, INITIAL_STATE, trust(SCOPE))
    assert lost is not None

    entry = reestablish(lost, INITIAL_STATE, now=LATER, scope=SCOPE, source=SOURCE)

    assert entry is not None
    assert len(entry.detail) <= 4096


# --------------------------------------------------------------------------- the projection


def test_an_active_record_carries_its_proof_and_an_inactive_one_none() -> None:
    log = lost_log(trips=1)
    proof = orjson.loads(log.values[0])

    active = policy_record(log.state, refreshed_at=T0, activation_entry=proof)
    log.reset()
    inactive = policy_record(log.state, refreshed_at=T0, activation_entry=proof)

    assert active.activation_entry == proof
    assert active.model_dump(mode="json")["activation_entry"] == proof
    assert inactive.activation_entry is None
    # Absent, not null: an inactive record is exactly what it was before the extension.
    assert "activation_entry" not in inactive.model_dump(mode="json")
    assert validate(PolicyRecord, active.model_dump(mode="json")) == active

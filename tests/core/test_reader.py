"""Reading ``ess.state`` (``ess.core.reader``): only sealed, chained entries are folded.

Logs are built with :class:`tests.statelog_support.LogBuilder` (entries decided by the real
core, sealed by the test processor key); foreign records are made here. Pure: no broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

import ess.core.reader
from ess.core import INITIAL_STATE, EssState, Status, decide, fold
from ess.core.attestation import SigningKey
from ess.core.reader import (
    Folded,
    LogBroken,
    LoggedEntry,
    RawRecord,
    Trust,
    digest,
    fold_log,
    fold_records,
    seal_entry,
)
from ess.core.signing import generate_private_key, sign_reset
from schemas import (
    ActivatedEntry,
    ReasonCode,
    ResetCommand,
    ResetEntry,
    StateEntry,
    TriggerRef,
    TripCommand,
    TripRecordedEntry,
)
from tests.statelog_support import (
    ALICE,
    BOB,
    OPERATOR_KEYS,
    PROCESSOR,
    T0,
    LogBuilder,
    later,
    operator_reset,
    trust,
)

SCOPE = "ess.state"
INTRUDER = SigningKey(generate_private_key())


def records(*values: bytes | None, start: int = 0) -> list[RawRecord]:
    return [RawRecord(start + index, value) for index, value in enumerate(values)]


def next_trip(log: LogBuilder, command_id: str | None = None) -> StateEntry:
    """The entry the processor would append next for a trip (not added to ``log``)."""
    command = TripCommand(
        command_id=command_id or f"next-{uuid.uuid4().hex[:6]}",
        reason=ReasonCode.MANUAL,
        detail="next",
        source="detector:test",
        ts=T0,
    )
    [entry] = decide(log.state, command, now=T0, policy=log.policy)
    return entry


def one_at_a_time(raw: list[RawRecord], trust_: Trust, start: Folded | None = None) -> Folded:
    folded = start or Folded()
    for record in raw:
        folded, _ = fold_records([record], trust_, folded)
    return folded


def tampered(value: bytes, **changes: Any) -> bytes:
    document = orjson.loads(value)
    document.update(changes)
    return orjson.dumps(document)


def sample_log(quorum: int = 1) -> LogBuilder:
    """Trips, a rejected reset, a quorum reset and a new activation."""
    log = LogBuilder(quorum=quorum)
    log.trip("t-1", ts=T0)
    log.trip("t-2", ts=later(1))
    forged = sign_reset(
        BOB,
        command_id="forged",
        operator="alice",
        ts=later(2),
        nonce="n-f",
        activation_seq=0,
        activation_command_id="t-1",
    )
    log.command(forged, now=later(2))
    log.reset(*(("alice", "bob") if quorum == 2 else ("alice",)), ts=later(3))
    log.trip("t-3", ts=later(4))
    return log


# --------------------------------------------------------------------------- authentic chain


@pytest.mark.parametrize("quorum", [1, 2])
def test_sealed_chain_when_folded_then_same_state_as_core_fold(quorum: int) -> None:
    log = sample_log(quorum)

    folded, report = fold_records(log.records(), trust())

    assert folded.state == fold(log.entries) == log.state
    assert [item.entry for item in report.applied] == log.entries
    assert [item.offset for item in report.applied] == list(range(len(log.values)))
    assert folded.head == digest(log.values[-1])
    assert folded.next_offset == len(log.values)
    assert folded.trusted
    assert (folded.foreign, folded.skipped) == (0, 0)
    assert report.foreign == report.skipped == ()
    assert [item.digest for item in report.applied] == [digest(v) for v in log.values]
    assert [entry.kind for entry in log.entries][:4] == [
        "activated",
        "trip_recorded",
        "reset_rejected",
        "reset_approval" if quorum == 2 else "reset",
    ]


def test_sealed_chain_when_fed_in_any_split_then_same_folded() -> None:
    log = sample_log(quorum=2)
    raw = log.records()
    whole, _ = fold_records(raw, trust())

    for cut in range(1, len(raw)):
        first, _ = fold_records(raw[:cut], trust())
        second, _ = fold_records(raw[cut:], trust(), first)
        assert second == whole, cut
    assert one_at_a_time(raw, trust()) == whole


def test_fold_log_when_given_the_verified_entries_then_same_state() -> None:
    log = sample_log()
    folded, report = fold_records(log.records(), trust())

    again = fold_log(report.applied, scope=SCOPE)

    assert again.state == folded.state
    assert again.head == folded.head
    assert again.next_offset == folded.next_offset


def test_authentic_entry_restarting_the_chain_when_log_not_empty_then_skipped_or_broken() -> None:
    # A processor (same key) that believed the log empty: its seq 0 lost the race to the
    # real seq 0 and is skipped; a seq 1 chained to nothing would be history of its own.
    log = LogBuilder()
    log.trip("t-1")
    restarted = LogBuilder()
    restarted.trip("other-0")
    _, orphan = seal_entry(next_trip(log), PROCESSOR, scope=SCOPE, prev=None)  # seq 1

    folded, report = fold_records(records(log.values[0], restarted.values[0]), trust())
    assert [item.offset for item in report.skipped] == [1]
    assert folded.state == log.state
    assert folded.trusted
    with pytest.raises(LogBroken):
        fold_records(records(log.values[0], orphan), trust())


def test_entry_sealed_for_another_log_when_read_then_foreign() -> None:
    other = LogBuilder(scope="other.state")
    other.trip("t-1")

    folded, report = fold_records(other.records(), trust(SCOPE))

    assert folded.state == INITIAL_STATE
    assert [item.offset for item in report.foreign] == [0]
    assert not folded.trusted


# --------------------------------------------------------------------------- catch-up cost


@pytest.fixture
def seal_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts signature checks of state-log records made by the reader."""
    calls: list[int] = []
    real = ess.core.reader.seal_problem

    def counting(*args: Any, **kwargs: Any) -> str | None:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ess.core.reader, "seal_problem", counting)
    return calls


def long_log(count: int) -> LogBuilder:
    log = LogBuilder()
    for index in range(count):
        log.trip(f"t-{index}", ts=later(index))
        if index % 50 == 49:
            log.reset(ts=later(index))
    return log


def test_long_log_when_caught_up_in_one_batch_then_one_signature_check(
    seal_checks: list[int],
) -> None:
    log = long_log(400)

    folded, report = fold_records(log.records(), trust())

    assert folded.state == log.state
    assert len(report.applied) == len(log.values) > 400
    assert len(seal_checks) == 1


def test_long_log_with_forged_link_when_caught_up_then_binary_search_finds_it(
    seal_checks: list[int],
) -> None:
    log = long_log(300)
    cut = 200
    forged_entry, forged = seal_entry(
        next_trip(_prefix(log, cut)), INTRUDER, scope=SCOPE, prev=digest(log.values[cut - 1])
    )
    values = [*log.values[:cut], forged, *log.values[cut:]]

    folded, report = fold_records(records(*values), trust())

    assert folded.state == log.state
    assert [item.offset for item in report.foreign] == [cut]
    assert forged_entry.command_id not in {item.entry.command_id for item in report.applied}
    # One check of the whole provisional chain, a binary search, one check of the rest.
    assert len(seal_checks) <= 2 + (len(values) - 1).bit_length()


def _prefix(log: LogBuilder, count: int, *, key: SigningKey = PROCESSOR) -> LogBuilder:
    """A builder standing after the first ``count`` entries of ``log`` (its own entries
    sealed with ``key``): a fork of ``log`` at that point."""
    prefix = LogBuilder(key=key)
    prefix.state = fold(log.entries[:count])
    prefix.head = digest(log.values[count - 1])
    return prefix


# --------------------------------------------------------------------------- foreign records


def unsigned(log: LogBuilder) -> bytes:
    entry = next_trip(log).model_copy(update={"prev": log.head})
    return orjson.dumps(entry.model_dump(mode="json"))


def by_intruder(log: LogBuilder) -> bytes:
    return seal_entry(next_trip(log), INTRUDER, scope=SCOPE, prev=log.head)[1]


def wrong_prev(log: LogBuilder) -> bytes:
    """The processor's real next entry with its ``prev`` rewritten: the seal breaks."""
    value = seal_entry(next_trip(log), PROCESSOR, scope=SCOPE, prev=log.head)[1]
    return tampered(value, prev="0" * 64)


def edited(log: LogBuilder) -> bytes:
    """The processor's real next entry, edited after sealing."""
    value = seal_entry(next_trip(log), PROCESSOR, scope=SCOPE, prev=log.head)[1]
    return tampered(value, detail="edited after sealing")


FOREIGN: dict[str, Callable[[LogBuilder], bytes | None]] = {
    "unsigned": unsigned,
    "other-key": by_intruder,
    "garbage": lambda _: b"\x00\xffnot json{",
    "json-not-an-entry": lambda _: b'{"kind": "reset", "seq": 1}',
    "empty": lambda _: b"",
    "tombstone": lambda _: None,
    "wrong-prev": wrong_prev,
    "edited": edited,
}


@pytest.mark.parametrize("make", FOREIGN.values(), ids=FOREIGN.keys())
def test_foreign_record_when_read_then_never_applied_and_log_untrusted(
    make: Callable[[LogBuilder], bytes | None],
) -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.reset()
    junk = make(log)
    log.trip("t-2", ts=later(5))
    raw = records(log.values[0], log.values[1], junk, log.values[2])

    folded, report = fold_records(raw, trust())

    assert [item.entry for item in report.applied] == log.entries
    assert folded.state == log.state
    assert [item.offset for item in report.foreign] == [2]
    assert report.foreign[0].why
    assert not folded.trusted
    assert folded.unacknowledged == ((2, 2),)
    assert folded.last_unacknowledged == 2
    assert folded.foreign == 1
    assert folded.last_foreign == report.foreign[0]
    assert one_at_a_time(raw, trust()) == folded


def test_foreign_record_alone_when_log_inactive_then_state_unchanged_but_untrusted() -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.reset()
    forged_reset = ResetEntry(
        seq=2, command_id="evil", ts=T0, operators=("alice",), nonce="n", prev=log.head
    )

    folded, _ = fold_records(
        records(*log.values, orjson.dumps(forged_reset.model_dump(mode="json"))), trust()
    )

    assert folded.state.status is Status.INACTIVE
    assert folded.state == log.state
    assert not folded.trusted


def test_byte_identical_copy_when_read_then_skipped_and_log_still_trusted() -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.trip("t-2")
    log.trip("t-3")
    raw = records(log.values[0], log.values[1], log.values[1], log.values[2], log.values[1])

    folded, report = fold_records(raw, trust())

    assert [item.offset for item in report.applied] == [0, 1, 3]
    assert [item.offset for item in report.skipped] == [2, 4]
    assert folded.trusted
    assert (folded.foreign, folded.skipped) == (0, 2)
    assert folded.state == log.state
    assert one_at_a_time(raw, trust()) == folded


def test_copy_of_head_when_in_the_next_batch_then_skipped() -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.trip("t-2")
    first, _ = fold_records(records(log.values[0]), trust())

    folded, report = fold_records(records(*log.values[:2], start=1), trust(), first)

    assert [item.offset for item in report.skipped] == [1]
    assert [item.offset for item in report.applied] == [2]
    assert folded.trusted


def test_forged_entry_with_prev_of_head_when_before_the_real_one_then_real_one_wins() -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.trip("t-2")
    forged = by_intruder(_prefix(log, 1))  # prev = head after t-1, seq 1, lands first
    log.trip("t-3")
    raw = records(log.values[0], forged, log.values[1], log.values[2])

    folded, report = fold_records(raw, trust())

    assert [item.offset for item in report.applied] == [0, 2, 3]
    assert [item.offset for item in report.foreign] == [1]
    assert folded.state == log.state
    assert one_at_a_time(raw, trust()) == folded


def test_forged_chain_behind_a_forged_link_when_read_then_every_link_foreign() -> None:
    log = LogBuilder()
    log.trip("t-1")
    fork = _prefix(log, 1, key=INTRUDER)
    for _ in range(3):
        fork.add(next_trip(fork))
    log.trip("t-2")
    raw = records(log.values[0], *fork.values, log.values[1])

    folded, report = fold_records(raw, trust())

    assert [item.offset for item in report.foreign] == [1, 2, 3]
    assert [item.offset for item in report.applied] == [0, 4]
    assert folded.state == log.state


def test_two_authentic_forks_with_one_prev_when_read_then_first_wins_second_skipped() -> None:
    log = LogBuilder()
    log.trip("t-1")
    rival = _prefix(log, 1)  # a second processor with the same key, at the same head
    rival.add(next_trip(rival, "t-lost"))
    [losing] = rival.values
    log.trip("t-won")
    log.trip("t-after")
    raw = records(log.values[0], log.values[1], losing, log.values[2])

    folded, report = fold_records(raw, trust())

    assert [item.entry.command_id for item in report.applied] == ["t-1", "t-won", "t-after"]
    assert [item.offset for item in report.skipped] == [2]
    assert folded.trusted
    assert folded.foreign == 0
    assert folded.state == log.state
    assert one_at_a_time(raw, trust()) == folded


def test_authentic_fork_continuing_its_own_history_when_read_then_log_broken() -> None:
    log = LogBuilder()
    log.trip("t-1")
    fork = _prefix(log, 1)  # a second processor with the same key, at the same head
    fork.add(next_trip(fork, "b-1"))
    fork.add(next_trip(fork, "b-2"))
    log.trip("a-1")
    log.trip("a-2")
    raw = records(log.values[0], log.values[1], *fork.values, log.values[2])

    with pytest.raises(LogBroken, match="two processors"):
        fold_records(raw, trust())
    with pytest.raises(LogBroken):
        one_at_a_time(raw, trust())


# --------------------------------------------------------------------------- acknowledgement


def acknowledging(offset: int) -> TriggerRef:
    return TriggerRef(topic=SCOPE, partition=0, offset=offset, event_ts=T0)


def test_acknowledging_trip_when_covers_foreign_record_then_trusted_again_and_active() -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.reset()
    junk = by_intruder(log)
    log.trip("ack", reason=ReasonCode.UNAUTHORIZED_ACCESS, trigger=acknowledging(2))
    raw = records(log.values[0], log.values[1], junk, log.values[2])

    folded, report = fold_records(raw, trust())

    assert folded.trusted
    assert folded.unacknowledged == ()
    assert report.acknowledged == (2,)
    assert folded.state.status is Status.ACTIVE
    assert isinstance(report.applied[-1].entry, ActivatedEntry)
    assert folded.foreign == 1, "acknowledged, but still counted"


def test_acknowledging_trip_when_active_then_recorded_and_acknowledges() -> None:
    log = LogBuilder()
    log.trip("t-1")
    junk = unsigned(log)
    log.trip("ack", trigger=acknowledging(5))  # covers everything up to offset 5
    raw = records(log.values[0], junk, log.values[1])

    folded, report = fold_records(raw, trust())

    assert isinstance(report.applied[-1].entry, TripRecordedEntry)
    assert folded.trusted
    assert folded.state.active


def test_trip_with_trigger_on_another_topic_when_applied_then_acknowledges_nothing() -> None:
    log = LogBuilder()
    log.trip("t-1")
    junk = unsigned(log)
    other = TriggerRef(topic="ess.pnl", partition=0, offset=99, event_ts=T0)
    log.trip("not-ack", trigger=other)

    folded, report = fold_records(records(log.values[0], junk, log.values[1]), trust())

    assert not folded.trusted
    assert report.acknowledged == ()


def test_acknowledgement_of_lower_offset_when_later_foreign_records_then_they_stay() -> None:
    log = LogBuilder()
    log.trip("t-1")
    first = by_intruder(log)
    second = b"garbage"
    log.trip("ack", trigger=acknowledging(1))
    third = unsigned(log)
    raw = records(log.values[0], first, second, log.values[1], third)

    folded, report = fold_records(raw, trust())

    assert [item.offset for item in report.foreign] == [1, 2, 4]
    assert folded.unacknowledged == ((2, 2), (4, 4))
    assert not folded.trusted
    assert folded.last_unacknowledged == 4
    assert one_at_a_time(raw, trust()) == folded


def test_acknowledgement_when_in_a_later_batch_than_the_foreign_records_then_same_result() -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.reset()
    junk = [b"", by_intruder(log), wrong_prev(log)]
    log.trip("ack", trigger=acknowledging(4))
    raw = records(log.values[0], log.values[1], *junk, log.values[2])
    whole, _ = fold_records(raw, trust())

    early, early_report = fold_records(raw[:5], trust())
    late, late_report = fold_records(raw[5:], trust(), early)

    assert not early.trusted
    assert early.unacknowledged == ((2, 4),)
    assert [item.offset for item in early_report.foreign] == [2, 3, 4]
    assert late_report.acknowledged == (4,)
    assert late == whole
    assert late.trusted
    assert late.state.active
    assert one_at_a_time(raw, trust()) == whole


def test_many_foreign_ranges_when_beyond_the_limit_then_merged_and_still_acknowledgeable() -> None:
    log = LogBuilder()
    log.trip("t-1")
    values: list[bytes | None] = [log.values[0]]
    for index in range(100):
        values.append(b"junk")
        log.trip(f"fill-{index}")
        values.append(log.values[-1])
    folded, _ = fold_records(records(*values), trust())
    assert not folded.trusted
    assert len(folded.unacknowledged) <= 64
    assert folded.unacknowledged[0][0] == 1
    assert folded.last_unacknowledged == len(values) - 2

    log.trip("ack", trigger=acknowledging(len(values) - 2))
    after, _ = fold_records(records(log.values[-1], start=len(values)), trust(), folded)

    assert after.trusted


# --------------------------------------------------------------------------- broken logs


def test_authentic_entry_with_seq_gap_on_the_chain_when_read_then_log_broken() -> None:
    log = LogBuilder()
    log.trip("t-1")
    gapped = next_trip(log).model_copy(update={"seq": 2})
    _, value = seal_entry(gapped, PROCESSOR, scope=SCOPE, prev=log.head)

    with pytest.raises(LogBroken, match="expected seq 1, got 2"):
        fold_records(records(log.values[0], value), trust())


def test_log_whose_first_entries_were_deleted_when_read_then_log_broken() -> None:
    # Retention (or DeleteRecords) removed offsets 0-1: the rest must not fold to INACTIVE.
    log = LogBuilder()
    for index in range(4):
        log.trip(f"t-{index}")

    with pytest.raises(LogBroken, match="missing"):
        fold_records(log.records(2), trust())
    with pytest.raises(LogBroken):
        one_at_a_time(log.records(2), trust())


def test_log_missing_an_entry_in_the_middle_when_read_then_log_broken() -> None:
    log = LogBuilder()
    log.trip("t-1")
    log.reset()
    log.trip("t-2")  # seq 2 never reached the broker
    log.trip("t-3")
    raw = records(log.values[0], log.values[1], log.values[3])

    with pytest.raises(LogBroken):
        fold_records(raw, trust())
    first, _ = fold_records(raw[:2], trust())
    assert first.state.status is Status.INACTIVE
    with pytest.raises(LogBroken):
        fold_records(raw[2:], trust(), first)


def sealed_reset(log: LogBuilder, *authorizations: ResetCommand, **changes: Any) -> bytes:
    last = authorizations[-1] if authorizations else operator_reset(log.state)
    entry = ResetEntry(
        seq=log.state.next_seq,
        command_id=last.command_id,
        ts=T0,
        operators=tuple(c.operator for c in authorizations) or ("alice",),
        nonce=last.nonce,
        authorizations=authorizations,
    ).model_copy(update=changes)
    return seal_entry(entry, PROCESSOR, scope=SCOPE, prev=log.head)[1]


def active_log() -> LogBuilder:
    log = LogBuilder()
    log.trip("t-1")
    return log


def mallory_reset(state: EssState) -> ResetCommand:
    assert state.activation is not None
    return sign_reset(
        generate_private_key(),
        command_id="r-m",
        operator="mallory",
        ts=T0,
        nonce="n-m",
        activation_seq=state.activation.seq,
        activation_command_id=state.activation.command_id,
    )


RESET_FAULTS: dict[str, Callable[[LogBuilder], bytes]] = {
    "missing": sealed_reset,
    "unknown-operator": lambda log: sealed_reset(log, mallory_reset(log.state)),
    "forged-signature": lambda log: sealed_reset(
        log, operator_reset(log.state).model_copy(update={"detail": "edited"})
    ),
    "other-activation": lambda log: sealed_reset(
        log,
        sign_reset(
            ALICE,
            command_id="r-old",
            operator="alice",
            ts=T0,
            nonce="n-old",
            activation_seq=7,
            activation_command_id="t-old",
        ),
    ),
    "unbound": lambda log: sealed_reset(log, operator_reset(INITIAL_STATE)),
    "duplicated-operator": lambda log: sealed_reset(
        log, operator_reset(log.state, nonce="n-1"), operator_reset(log.state, nonce="n-2")
    ),
}


@pytest.mark.parametrize("make", RESET_FAULTS.values(), ids=RESET_FAULTS.keys())
def test_reset_whose_authorization_does_not_verify_when_read_then_log_broken(
    make: Callable[[LogBuilder], bytes],
) -> None:
    log = active_log()
    value = make(log)

    with pytest.raises(LogBroken, match="not authorized"):
        fold_records(records(log.values[0], value), trust())


def test_reset_by_operator_unknown_to_this_reader_when_read_then_log_broken() -> None:
    log = active_log()
    log.reset("bob")
    alice_only = Trust(
        scope=SCOPE,
        processor_keys=trust().processor_keys,
        operator_keys={"alice": OPERATOR_KEYS["alice"]},
    )

    assert fold_records(log.records(), trust())[0].state.status is Status.INACTIVE
    with pytest.raises(LogBroken, match="'bob' has no public key"):
        fold_records(log.records(), alice_only)


def test_properly_authorized_reset_when_read_then_applied() -> None:
    log = active_log()
    log.reset("alice")

    folded, _ = fold_records(log.records(), trust())

    assert folded.state.status is Status.INACTIVE
    assert folded.state.epoch == 1


# --------------------------------------------------------------------------- legacy entries


def legacy_log(count: int) -> tuple[list[StateEntry], list[bytes]]:
    """Unsigned entries as written before entries were sealed."""
    state = INITIAL_STATE
    entries: list[StateEntry] = []
    for index in range(count):
        command = TripCommand(
            command_id=f"old-{index}",
            reason=ReasonCode.MANUAL,
            source="operator:old",
            ts=T0 - timedelta(days=1),
        )
        [entry] = decide(state, command, now=T0, policy=LogBuilder().policy)
        state = fold([entry], state)
        entries.append(entry)
    return entries, [orjson.dumps(e.model_dump(mode="json")) for e in entries]


def continued(entries: list[StateEntry], prev: bytes) -> tuple[LogBuilder, bytes]:
    """The first sealed entry, chained after the legacy entries."""
    log = LogBuilder()
    log.state = fold(entries)
    log.head = digest(prev)
    log.trip("first-sealed")
    return log, log.values[0]


def test_legacy_entries_below_unsigned_before_when_read_then_applied_and_chain_continues() -> None:
    entries, values = legacy_log(3)
    log, first_sealed = continued(entries, values[-1])
    raw = records(*values, first_sealed)
    reader_trust = trust(unsigned_before=3)

    folded, report = fold_records(raw, reader_trust)

    assert [item.offset for item in report.applied] == [0, 1, 2, 3]
    assert folded.state == log.state
    assert folded.trusted
    assert folded.head == digest(first_sealed)
    assert one_at_a_time(raw, reader_trust) == folded


def test_legacy_entry_at_or_above_unsigned_before_when_read_then_foreign() -> None:
    entries, values = legacy_log(3)

    folded, report = fold_records(records(*values), trust(unsigned_before=2))

    assert [item.offset for item in report.applied] == [0, 1]
    assert [item.offset for item in report.foreign] == [2]
    assert report.foreign[0].why == "unsigned"
    assert not folded.trusted
    assert folded.state == fold(entries[:2])


def test_legacy_duplicate_seq_when_last_before_sealed_entry_then_chain_still_continues() -> None:
    # Old rules: first writer per seq wins. The first sealed entry chains to the entry that
    # was applied, not to a later duplicate of its seq.
    entries, values = legacy_log(2)
    duplicate = entries[1].model_copy(update={"detail": "second writer"})
    duplicate_value = orjson.dumps(duplicate.model_dump(mode="json"))
    log, first_sealed = continued(entries, values[-1])
    raw = records(*values, duplicate_value, first_sealed)
    reader_trust = trust(unsigned_before=3)

    folded, report = fold_records(raw, reader_trust)

    assert [item.offset for item in report.applied] == [0, 1, 3]
    assert [item.offset for item in report.skipped] == [2]
    assert folded.state == log.state
    assert one_at_a_time(raw, reader_trust) == folded


def test_legacy_log_with_gap_when_read_then_log_broken() -> None:
    _, values = legacy_log(3)

    with pytest.raises(LogBroken):
        fold_records(records(values[0], values[2]), trust(unsigned_before=5))


def test_empty_batch_when_folded_then_start_unchanged() -> None:
    log = sample_log()
    start, _ = fold_records(log.records(), trust())

    folded, report = fold_records([], trust(), start)

    assert folded == start
    assert report.applied == report.skipped == report.foreign == ()


def test_logged_entries_when_folded_with_fold_log_then_duplicates_skipped() -> None:
    log = sample_log()
    logged = [
        LoggedEntry(offset, entry, digest(value))
        for offset, (entry, value) in enumerate(zip(log.entries, log.values, strict=True))
    ]

    folded = fold_log([*logged[:2], logged[1], *logged[2:]], scope=SCOPE)

    assert folded.state == log.state
    assert folded.skipped == 1

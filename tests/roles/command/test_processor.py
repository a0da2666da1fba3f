"""The command processor's pure parts: resume offset, decoding, the trips and outcomes it
builds itself, security events, faults, dead letters."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from ess.chaos.crash_child import CrashAfterAppend, hooks_for
from ess.chaos.crash_child import main as crash_child_main
from ess.core.deadletter import MAX_ERROR_CHARS, MAX_RAW_BYTES, build_dead_letter
from ess.core.ids import derive_id
from ess.roles.command.processor import (
    SOURCE,
    ProcessorHooks,
    ProcessorStatus,
    StartupRefused,
    decode_command,
    default_group_id,
    foreign_acknowledgement,
    outcome_for,
    resume_offset,
    run_processor,
    security_event_for,
    undecodable_trip,
)
from ess.settings import EssSettings
from ess.statelog import Folded, ForeignRecord
from schemas import (
    TEXT_MAX,
    ActivatedEntry,
    DeadLetter,
    ReasonCode,
    RecordError,
    RejectReason,
    ResetApprovalEntry,
    ResetCommand,
    ResetRejectedEntry,
    SecurityEventKind,
    TripCommand,
    decode,
    encode,
)

T0 = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


def rejected(why: RejectReason, command_id: str = "reset-1") -> ResetRejectedEntry:
    return ResetRejectedEntry(
        seq=3, command_id=command_id, ts=T0, operator="alice", why=why, detail="because"
    )


# --------------------------------------------------------------------------- resume offset


@pytest.mark.parametrize(
    ("committed", "max_command_offset", "expected"),
    [
        (None, None, 0),  # nothing ever processed
        (5, None, 5),  # only dead letters and duplicates so far: nothing tracked
        (None, 7, 8),  # crashed between append and commit: the tracking record says 8
        (4, 7, 8),  # the commit lagged behind the log
        (10, 7, 10),  # commands after the last entry appended nothing
    ],
)
def test_resume_offset_is_after_both_the_commit_and_the_tracking_record(
    committed: int | None, max_command_offset: int | None, expected: int
) -> None:
    assert resume_offset(committed, max_command_offset) == expected


def test_default_group_is_named_after_the_topic_prefix() -> None:
    assert default_group_id("ess") == "ess-command-processor"
    assert default_group_id("staging") == "staging-command-processor"


# --------------------------------------------------------------------------- security events


@pytest.mark.parametrize(
    "why",
    [
        RejectReason.UNKNOWN_OPERATOR,
        RejectReason.BAD_SIGNATURE,
        # Authentic, but signed for another activation: held back or replayed (finding 6).
        RejectReason.ACTIVATION_MISMATCH,
    ],
)
def test_suspicious_reset_rejections_become_unauthorized_access_events(
    why: RejectReason,
) -> None:
    event = security_event_for(rejected(why), ts=T0)

    assert event is not None
    assert event.kind is SecurityEventKind.UNAUTHORIZED_ACCESS
    assert event.source == SOURCE
    assert event.ts == T0
    assert "'alice'" in event.detail
    assert why.value in event.detail
    # Deterministic: the same rejection published again is recognisably the same event.
    assert event.event_id == derive_id(SOURCE, "unauthorized_access", "reset-1")
    assert security_event_for(rejected(why), ts=T0) == event
    assert security_event_for(rejected(why, "reset-2"), ts=T0) != event


@pytest.mark.parametrize(
    "why",
    [
        RejectReason.EXPIRED,
        RejectReason.FROM_THE_FUTURE,
        RejectReason.NONCE_REUSED,
        RejectReason.NOT_ACTIVE,
        RejectReason.DUPLICATE_APPROVAL,
    ],
)
def test_authentic_rejections_and_other_entries_raise_no_security_event(
    why: RejectReason,
) -> None:
    assert security_event_for(rejected(why), ts=T0) is None
    trip = ActivatedEntry(seq=0, command_id="t", ts=T0, reason="manual", source="operator:x")
    assert security_event_for(trip, ts=T0) is None


# --------------------------------------------------------------------------- fault injection


def test_crash_points_are_named_and_typos_are_refused() -> None:
    assert isinstance(hooks_for("crash_after_append"), CrashAfterAppend)
    assert isinstance(hooks_for(" crash_after_append "), CrashAfterAppend)
    with pytest.raises(ValueError, match=r"crash_after_apend.*crash_after_append"):
        hooks_for("crash_after_apend")
    assert crash_child_main(["crash_after_apend"]) == 2
    assert crash_child_main([]) == 2


def test_default_hooks_do_nothing() -> None:
    entry = ActivatedEntry(seq=0, command_id="t", ts=T0, reason="manual", source="operator:x")
    ProcessorHooks().after_append(entry, 0)  # returns: no crash, no error


def test_production_code_never_reads_a_fault_from_the_environment() -> None:
    root = Path(__file__).resolve().parents[3] / "ess"
    readers = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if "ESS_FAULT" in path.read_text(encoding="utf-8")
    ]
    assert readers == []


def test_run_processor_refuses_without_a_bootstrap_server(tmp_path: Path) -> None:
    settings = EssSettings(kafka={"bootstrap_servers": ""}, keys={"operator_keys_dir": tmp_path})

    with pytest.raises(StartupRefused, match="KAFKA_BOOTSTRAP_SERVERS is required"):
        asyncio.run(run_processor(settings, asyncio.Event()))


def test_run_processor_refuses_unreadable_operator_keys(tmp_path: Path) -> None:
    (tmp_path / "alice.pub").write_text("not a key")
    settings = EssSettings(
        kafka={"bootstrap_servers": "127.0.0.1:9"}, keys={"operator_keys_dir": tmp_path}
    )

    with pytest.raises(StartupRefused, match="not an Ed25519 public key"):
        asyncio.run(run_processor(settings, asyncio.Event()))


# --------------------------------------------------------------------------- dead letters


def letter(raw: bytes | None, error: str = "invalid TripCommand: ts: ...") -> DeadLetter:
    return build_dead_letter(
        source_topic="ess.commands", partition=0, offset=41, raw=raw, error=error, ts=T0
    )


def test_dead_letter_keeps_utf8_text_and_where_it_came_from() -> None:
    built = letter('{"kind": "trîp"'.encode())

    assert (built.source_topic, built.partition, built.offset, built.ts) == (
        "ess.commands",
        0,
        41,
        T0,
    )
    assert built.raw == '{"kind": "trîp"'
    assert built.raw_encoding == "utf-8"
    assert built.error == "invalid TripCommand: ts: ..."
    read_back: DeadLetter = decode(DeadLetter, encode(built))
    assert read_back == built


def test_dead_letter_of_binary_is_base64_and_of_a_tombstone_is_empty() -> None:
    binary = letter(b"\xff\xfe\x00")
    assert binary.raw_encoding == "base64"
    assert base64.b64decode(binary.raw) == b"\xff\xfe\x00"

    tombstone = letter(None)
    assert (tombstone.raw, tombstone.raw_encoding) == ("", "utf-8")


def test_dead_letter_of_a_huge_record_is_cut_and_says_so() -> None:
    huge = b"x" * (MAX_RAW_BYTES + 10)
    built = letter(huge, error="e" * 10_000)

    assert len(built.raw) == MAX_RAW_BYTES
    assert len(built.error) == MAX_ERROR_CHARS
    assert built.error.endswith(f"... [raw cut to the first {MAX_RAW_BYTES} of {len(huge)} bytes]")
    # Still a record every reader accepts (the codec refuses records over 256 KiB).
    read_back: DeadLetter = decode(DeadLetter, encode(built))
    assert read_back == built
    assert letter(b"x", error="e" * 10_000).error == "e" * (MAX_ERROR_CHARS - 3) + "..."


def test_dead_letter_cut_inside_a_utf8_character_falls_back_to_base64() -> None:
    raw = b"a" * (MAX_RAW_BYTES - 1) + "é".encode()  # the cut splits the two-byte "é"
    built = letter(raw)

    assert built.raw_encoding == "base64"
    assert base64.b64decode(built.raw) == raw[:MAX_RAW_BYTES]


def test_a_hostile_reset_s_event_is_clipped_and_keeps_its_reason() -> None:
    """Issue 13, finding 1: 256 non-printable astral characters as id and operator are 2,560
    characters each once quoted; the event is clipped to the field's limit, reason first."""
    astral = "\U000e0001" * 256
    entry = ResetRejectedEntry(
        seq=3,
        command_id=astral,
        ts=T0,
        operator=astral,
        why=RejectReason.UNKNOWN_OPERATOR,
        detail="operator has no registered key",
    )
    event = security_event_for(entry, ts=T0)

    assert event is not None
    assert len(event.detail) == TEXT_MAX
    assert event.detail.startswith("reset rejected: unknown_operator")
    assert decode(type(event), encode(event)) == event


# --------------------------------------------------------------------------- decoding


def trip_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = orjson.loads(
        encode(TripCommand(command_id="t", reason="manual", source="operator:x", ts=T0))
    )
    document.update(changes)
    return document


def test_a_record_without_kind_is_a_trip() -> None:
    document = trip_document()
    del document["kind"]

    command = decode_command(orjson.dumps(document))

    assert isinstance(command, TripCommand)
    assert command.command_id == "t"


def test_a_reset_must_say_so_and_a_malformed_reset_is_never_one() -> None:
    reset = ResetCommand(
        command_id="r",
        kind="reset",
        operator="alice",
        nonce="n",
        signature="AAAA",
        ts=T0,
        activation_seq=0,
        activation_command_id="t",
    )
    document = orjson.loads(encode(reset))
    assert isinstance(decode_command(encode(reset)), ResetCommand)

    del document["kind"]
    with pytest.raises(RecordError):  # not a trip either: no reason, no source
        decode_command(orjson.dumps(document))
    # With a trip's fields it is a trip: a record without kind is never a reset.
    as_trip = decode_command(orjson.dumps({**document, "reason": "manual", "source": "x"}))
    assert isinstance(as_trip, TripCommand)
    for raw in (None, b"", b"[]", b'"reset"', orjson.dumps({**document, "kind": "RESET"})):
        with pytest.raises(RecordError):
            decode_command(raw)


def test_an_undecodable_record_becomes_a_manual_trip_named_after_its_offset() -> None:
    trip = undecodable_trip(topic="ess.commands", offset=41, error="e" * 10_000, now=T0)

    assert trip.command_id == derive_id("undecodable-command", "ess.commands", 41)
    assert (trip.reason, trip.source, trip.ts, trip.trigger) == (
        ReasonCode.MANUAL,
        SOURCE,
        T0,
        None,
    )
    assert trip.detail.startswith("undecodable command at ess.commands offset 41")
    assert len(trip.detail) == TEXT_MAX
    again = undecodable_trip(topic="ess.commands", offset=41, error="other", now=T0)
    assert again.command_id == trip.command_id  # processed again, recorded once


def test_a_trip_recorded_with_minimal_fields_keeps_its_id_reason_and_source() -> None:
    original = TripCommand(
        command_id="t-9", reason="daily_loss", source="detector:x", ts=T0, detail="d"
    )

    trip = undecodable_trip(
        topic="ess.commands", offset=9, error="boom", now=T0, minimal_of=original
    )

    assert (trip.command_id, trip.reason, trip.source, trip.ts) == (
        "t-9",
        ReasonCode.DAILY_LOSS,
        "detector:x",
        T0,
    )
    assert trip.detail == "recorded with minimal fields: boom"


# --------------------------------------------------------------------------- acknowledgements


def test_foreign_records_are_acknowledged_by_a_trip_pointing_at_the_last_one() -> None:
    assert foreign_acknowledgement(Folded(), scope="ess.state", now=T0) is None
    folded = Folded(
        next_offset=8,
        foreign=3,
        unacknowledged=((2, 3), (6, 6)),
        last_foreign=ForeignRecord(6, "unsigned"),
    )

    trip = foreign_acknowledgement(folded, scope="ess.state", now=T0)

    assert trip is not None
    assert trip.command_id == derive_id("state-log-foreign", "ess.state", 6)
    assert trip.reason is ReasonCode.UNAUTHORIZED_ACCESS
    assert trip.source == SOURCE
    assert trip.trigger is not None
    assert (trip.trigger.topic, trip.trigger.partition, trip.trigger.offset) == (
        "ess.state",
        0,
        6,
    )
    assert "unsigned" in trip.detail


# --------------------------------------------------------------------------- outcomes


def test_outcomes_say_applied_duplicate_or_rejected() -> None:
    activated = ActivatedEntry(seq=4, command_id="t", ts=T0, reason="manual", source="x")
    applied = outcome_for(
        command_id="t", offset=7, command_kind="trip", entries=[activated], now=T0
    )
    assert (applied.outcome, applied.entry_kind, applied.seq, applied.command_offset) == (
        "applied",
        "activated",
        4,
        7,
    )

    duplicate = outcome_for(command_id="t", offset=8, command_kind="trip", entries=[], now=T0)
    assert (duplicate.outcome, duplicate.entry_kind, duplicate.seq) == ("duplicate", None, None)
    assert duplicate.detail == "already applied; nothing appended"

    refused = outcome_for(
        command_id="reset-1",
        offset=9,
        command_kind="reset",
        entries=[rejected(RejectReason.ACTIVATION_MISMATCH)],
        now=T0,
    )
    assert (refused.outcome, refused.entry_kind) == ("rejected", "reset_rejected")
    assert refused.detail == "activation_mismatch: because"

    approval = ResetApprovalEntry(
        seq=5,
        command_id="a",
        ts=T0,
        operator="alice",
        nonce="n",
        approvals=("alice",),
        quorum=2,
        expires_at=T0,
    )
    approved = outcome_for(
        command_id="a", offset=10, command_kind="reset", entries=[approval], now=T0
    )
    assert (approved.outcome, approved.detail) == ("applied", "approval 1 of 2")

    coalesced = outcome_for(
        command_id="t9", offset=11, command_kind="trip", entries=[], now=T0, coalesced=True
    )
    assert (coalesced.outcome, coalesced.entry_kind) == ("coalesced", None)
    assert "already recorded 1000 trips" in coalesced.detail


def test_run_processor_refuses_without_its_key(tmp_path: Path) -> None:
    settings = EssSettings(
        kafka={"bootstrap_servers": "127.0.0.1:9"},
        keys={"operator_keys_dir": tmp_path, "processor_key_file": tmp_path / "missing.key"},
    )

    with pytest.raises(StartupRefused, match="no command processor key"):
        asyncio.run(run_processor(settings, asyncio.Event()))


def test_a_processor_holding_one_command_too_long_is_wedged_and_unhealthy() -> None:
    """Issue 13, item 7: ``/healthz`` fails when the processor makes no progress."""
    base = {
        "owner": True,
        "running": True,
        "next_command_offset": 3,
        "state_next_offset": 2,
        "seq": 1,
        "status": "INACTIVE",
        "log_trusted": True,
        "idempotent": False,
        "key_id": "k",
        "wedged_after_s": 30.0,
    }
    idle = ProcessorStatus(**base, busy_s=None)  # type: ignore[arg-type]
    busy = ProcessorStatus(**base, busy_s=5.0)  # type: ignore[arg-type]
    stuck = ProcessorStatus(**base, busy_s=31.0)  # type: ignore[arg-type]
    assert (idle.healthy, busy.healthy, stuck.healthy) == (True, True, False)
    assert stuck.checks["progress"] == "wedged"
    assert busy.checks["progress"] == "ok"

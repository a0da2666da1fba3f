"""The command processor's pure parts: resume offset, security events, faults, dead letters."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ess.config import EssSettings
from ess.core.ids import derive_id
from ess.deadletter import MAX_ERROR_CHARS, MAX_RAW_BYTES, build_dead_letter
from ess.processor import (
    SOURCE,
    Fault,
    StartupRefused,
    default_group_id,
    fault_from_env,
    resume_offset,
    run_processor,
    security_event_for,
)
from schemas import (
    ActivatedEntry,
    DeadLetter,
    RejectReason,
    ResetRejectedEntry,
    SecurityEventKind,
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


@pytest.mark.parametrize("why", [RejectReason.UNKNOWN_OPERATOR, RejectReason.BAD_SIGNATURE])
def test_unauthenticated_reset_rejections_become_unauthorized_access_events(
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


def test_fault_comes_from_the_environment_and_typos_are_refused() -> None:
    assert fault_from_env({}) is None
    assert fault_from_env({"ESS_FAULT": " "}) is None
    assert fault_from_env({"ESS_FAULT": "crash_after_append"}) is Fault.CRASH_AFTER_APPEND
    with pytest.raises(ValueError, match=r"crash_after_apend.*crash_after_append"):
        fault_from_env({"ESS_FAULT": "crash_after_apend"})


def test_run_processor_refuses_without_a_bootstrap_server(tmp_path: Path) -> None:
    settings = EssSettings(kafka_bootstrap_servers="", operator_keys_dir=tmp_path)

    with pytest.raises(StartupRefused, match="KAFKA_BOOTSTRAP_SERVERS is required"):
        asyncio.run(run_processor(settings, asyncio.Event()))


def test_run_processor_refuses_unreadable_operator_keys(tmp_path: Path) -> None:
    (tmp_path / "alice.pub").write_text("not a key")
    settings = EssSettings(kafka_bootstrap_servers="127.0.0.1:9", operator_keys_dir=tmp_path)

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

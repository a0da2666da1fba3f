"""The replay engine on hand-made recordings (no broker anywhere): it must decide what the
live run decided, apply resets where they happened, order partitions by log time, and tick
silence rules on the data's clock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ess.audit.compare import Outcome, compare
from ess.audit.recording import RecordingError
from ess.audit.replay import Decision, ReplayResult, replay
from ess.rules.config import DetectionConfig
from schemas import ActivatedEntry, ReasonCode, encode
from tests.audit import (
    T0,
    TRUST,
    Builder,
    beat,
    pnl,
    reset_entry,
    s,
    security,
    trip_entry,
)
from tests.statelog_support import PROCESSOR

#: A 60 s heartbeat timeout; flash crashes out of the way of the daily-loss cases.
CONFIG = DetectionConfig(
    account=DetectionConfig().account.model_copy(update={"flash_crash": 0.5}),
    heartbeat_timeout_sec=60,
    data_feed_stale_sec=3600,
)


def essentials(decisions: list[Decision]) -> list[tuple[object, ...]]:
    """What the contract says a replay reproduces, plus the decision's kind and epoch."""
    return [
        (
            d.rule,
            d.reason,
            (d.trigger.topic, d.trigger.partition, d.trigger.offset),
            d.trigger.event_ts,
            d.command_id,
            d.kind,
            d.epoch,
        )
        for d in decisions
    ]


def session(directory: Path) -> Builder:
    """Daily loss, a security event, a silent component and a poison record, with the state
    log the live run wrote for them."""
    b = Builder(directory)
    b.add("pnl", "acct-1", pnl("acct-1", 1000, T0), T0)
    b.add("pnl", "acct-1", pnl("acct-1", 950, T0 + s(1)), T0 + s(1))
    loss = b.add("pnl", "acct-1", pnl("acct-1", 890, T0 + s(2)), T0 + s(2))
    quiet = b.add("health", "svc-a", beat("svc-a", T0 + s(3)), T0 + s(3))
    b.add("fills", "acct-1", b"\xff\xfe{garbage", T0 + s(3.5))
    key = b.add("security", "gw", security("api_key_changed", "gw", T0 + s(4)), T0 + s(4))
    for i in range(1, 11):  # another component keeps beating: the log's clock runs on
        b.add("health", "svc-b", beat("svc-b", T0 + s(10 * i)), T0 + s(10 * i))
    b.state(trip_entry(0, "daily_loss", ReasonCode.DAILY_LOSS, "acct-1", loss, T0 + s(2)))
    b.state(
        trip_entry(
            1,
            "api_key_changed",
            ReasonCode.API_KEY_CHANGED,
            "gw",
            key,
            T0 + s(4),
            kind="trip_recorded",
        )
    )
    # Silent since T0+3 s, timeout 60 s: the trip's event time is T0+63 s, whenever the
    # live worker's tick noticed (here it was logged at T0+64 s).
    b.state(
        trip_entry(
            2,
            "heartbeat_lost",
            ReasonCode.HEARTBEAT_LOST,
            "svc-a",
            quiet,
            T0 + s(63),
            kind="trip_recorded",
            ts=T0 + s(64),
        )
    )
    return b


def test_a_replay_decides_exactly_what_the_live_run_recorded(tmp_path: Path) -> None:
    session(tmp_path).close()

    result = replay(tmp_path, CONFIG, trust=TRUST)

    assert essentials(result.replayed) == essentials(result.recorded)
    assert [d.reason for d in result.replayed] == [
        ReasonCode.DAILY_LOSS,
        ReasonCode.API_KEY_CHANGED,
        ReasonCode.HEARTBEAT_LOST,
    ]
    silence = result.replayed[2]
    assert silence.trigger.event_ts == T0 + s(63)
    assert silence.subject == "svc-a"
    assert (result.records, result.valid, result.dead_letters) == (16, 15, 1)
    assert result.dead_letter_samples[0].topic == "ess.fills"
    comparison = compare(result.recorded, result.replayed)
    assert comparison.ok
    assert {row.outcome for row in comparison.rows} == {Outcome.MATCH}


def test_parallel_workers_decide_the_same(tmp_path: Path) -> None:
    session(tmp_path).close()

    one, two = (
        replay(tmp_path, CONFIG, trust=TRUST, workers=1),
        replay(tmp_path, CONFIG, trust=TRUST, workers=2),
    )

    assert two.workers == 2
    assert essentials(two.replayed) == essentials(one.replayed)
    assert (two.records, two.dead_letters) == (one.records, one.dead_letters)


def test_a_difference_from_the_live_run_is_reported(tmp_path: Path) -> None:
    # The live run's heartbeat timeout was 60 s; a replay with another config (30 s) finds
    # the silence 30 s earlier, and the audit must fail on it.
    b = session(tmp_path)
    b.close()
    strict = replay(
        tmp_path, CONFIG.model_copy(update={"heartbeat_timeout_sec": 30.0}), trust=TRUST
    )

    comparison = compare(strict.recorded, strict.replayed)

    assert not comparison.ok
    [differs] = comparison.differences
    assert differs.outcome is Outcome.DIFFERS
    assert differs.note == "event time -30s"


def test_what_if_thresholds_move_decisions(tmp_path: Path) -> None:
    session(tmp_path).close()
    lower = CONFIG.model_copy(
        update={"account": CONFIG.account.model_copy(update={"daily_loss": 0.05})}
    )

    result = replay(tmp_path, lower, trust=TRUST)
    comparison = compare(result.recorded, result.replayed, what_if=True)

    [moved] = [row for row in comparison.rows if row.decision.rule == "daily_loss"]
    assert moved.outcome is Outcome.EARLIER
    assert moved.replayed is not None
    assert moved.recorded is not None
    assert moved.replayed.trigger.offset == moved.recorded.trigger.offset - 1
    assert comparison.ok


def test_resets_apply_where_they_happened_in_log_time(tmp_path: Path) -> None:
    def recording(directory: Path, reset_at: float) -> ReplayResult:
        b = Builder(directory)
        first = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
        second = b.add("security", "gw", security("api_key_changed", "gw", T0 + s(20)), T0 + s(20))
        entries = [
            trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", first, T0),
            reset_entry(1, T0 + s(reset_at)),
            trip_entry(2, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", second, T0 + s(20)),
        ]
        for entry in entries:
            b.state(entry)
        b.close()
        return replay(directory, CONFIG, trust=TRUST)

    before = recording(tmp_path / "reset-between", reset_at=10)
    # The rule latches per key and epoch: only a reset *before* the second event re-arms it.
    assert essentials(before.replayed) == essentials(before.recorded)
    assert [d.epoch for d in before.replayed] == [0, 1]
    assert [d.kind for d in before.replayed] == ["activated", "activated"]

    after = recording(tmp_path / "reset-later", reset_at=30)
    comparison = compare(after.recorded, after.replayed)
    assert [row.outcome for row in comparison.rows] == [Outcome.MATCH, Outcome.MISSING]


def test_partitions_merge_by_log_time_and_a_partition_never_reorders(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    b.add("pnl", "acct-x", pnl("acct-x", 1000, T0), T0 + s(10), partition=0)
    # Its producer's clock went back: the record stays after its predecessor (clamped to
    # T0+10 s), it does not jump ahead of partition 1.
    x = b.add("pnl", "acct-x", pnl("acct-x", 800, T0 + s(1)), T0 + s(5), partition=0)
    b.add("pnl", "acct-y", pnl("acct-y", 1000, T0), T0 + s(6), partition=1)
    y = b.add("pnl", "acct-y", pnl("acct-y", 800, T0 + s(1)), T0 + s(8), partition=1)
    b.close()

    result = replay(tmp_path, CONFIG, trust=TRUST)

    daily = [d for d in result.replayed if d.rule == "daily_loss"]
    assert [(d.subject, d.kind) for d in daily] == [
        ("acct-y", "activated"),
        ("acct-x", "trip_recorded"),
    ]
    assert [d.trigger.offset for d in daily] == [y.offset, x.offset]


def test_recorded_operator_trips_shape_the_replay_state(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    b.state(
        ActivatedEntry(
            seq=0,
            command_id="manual-1",
            ts=T0,
            reason=ReasonCode.MANUAL,
            source="operator:carol",
        )
    )
    key = b.add("security", "gw", security("api_key_invalid", "gw", T0 + s(1)), T0 + s(1))
    b.state(
        trip_entry(
            1,
            "api_key_invalid",
            ReasonCode.API_KEY_INVALID,
            "gw",
            key,
            T0 + s(1),
            kind="trip_recorded",
        )
    )
    b.close()

    result = replay(tmp_path, CONFIG, trust=TRUST)

    assert result.external_trips == 1
    assert [d.kind for d in result.replayed] == ["trip_recorded"]
    assert essentials(result.replayed) == essentials(result.recorded)


def test_a_recorded_trip_whose_record_was_not_recorded_is_set_aside(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    coords = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    later = replace(coords, offset=coords.offset + 1)  # produced after the snapshot
    b.state(trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", coords, T0))
    b.state(
        trip_entry(
            1,
            "api_key_changed",
            ReasonCode.API_KEY_CHANGED,
            "gw2",
            later,
            T0 + s(1),
            kind="trip_recorded",
        )
    )
    b.close()

    result = replay(tmp_path, CONFIG, trust=TRUST)

    assert [d.trigger.offset for d in result.unreplayable] == [later.offset]
    assert compare(result.recorded, result.replayed, unreplayable=result.unreplayable).ok


def test_a_corrupt_state_log_is_refused(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    coords = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    # seq 1 without seq 0: a gap among authentic entries
    b.state(trip_entry(1, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", coords, T0))
    b.close()

    with pytest.raises(RecordingError, match="cannot be trusted"):
        replay(tmp_path, CONFIG, trust=TRUST)


def test_a_reset_without_a_verifying_authorization_is_refused(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    coords = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    b.state(trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", coords, T0))
    b.state(reset_entry(1, T0 + s(5)))
    b.close()
    # A reader that does not know alice's key cannot take the processor's word for it.
    without_alice = replace(TRUST, operator_keys={})

    with pytest.raises(RecordingError, match="not authorized"):
        replay(tmp_path, CONFIG, trust=without_alice)


def test_a_foreign_state_record_is_reported_and_never_applied(tmp_path: Path) -> None:
    """A hand-made (unsigned) reset in the recorded state log: the replay reports it as
    foreign and does not apply it, so the latch is not re-armed and the second event of the
    same key decides nothing new; the live run (which could not apply it either) agrees."""
    b = Builder(tmp_path)
    first = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    b.add("security", "gw", security("api_key_changed", "gw", T0 + s(20)), T0 + s(20))
    b.state(trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", first, T0))
    forged = reset_entry(1, T0 + s(10))
    b.raw_state(encode(forged), T0 + s(10))
    b.close()

    result = replay(tmp_path, CONFIG, trust=TRUST)

    [foreign] = result.foreign
    assert foreign.offset == 1
    assert foreign.why == "unsigned"
    assert result.resets == []
    assert [d.epoch for d in result.replayed] == [0]
    assert compare(result.recorded, result.replayed).ok


def test_a_forged_signature_in_the_state_log_is_foreign(tmp_path: Path) -> None:
    """A record sealed by a key the reader does not trust is foreign too, even when it
    chains onto the real log."""
    b = Builder(tmp_path)
    first = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    b.state(trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", first, T0))
    b.close()
    untrusting = replace(TRUST, processor_keys={})

    result = replay(tmp_path, CONFIG, trust=untrusting)

    assert [(record.offset, record.why) for record in result.foreign] == [
        (0, f"signed by unknown key {PROCESSOR.key_id!r}")
    ]
    assert result.recorded == []

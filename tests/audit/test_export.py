"""The ``ess.replay/1`` JSON document of a replay (``ess replay --json``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from ess.audit.compare import Outcome, compare
from ess.audit.export import FORMAT, comparison_json, dumps
from ess.audit.replay import ReplayResult, replay
from ess.audit.report import overrides_hash
from ess.rules.config import DetectionConfig
from schemas import ReasonCode, encode
from tests.audit import T0, TRUST, Builder, reset_entry, s, security, trip_entry
from tests.audit.test_operator_actions import operator_session
from tests.audit.test_replay_engine import CONFIG, session

#: Every top-level key of the document, in order: tooling relies on them being there.
TOP_LEVEL = [
    "format",
    "verdict",
    "recording",
    "config",
    "replay",
    "decisions",
    "matching",
    "unreplayable",
    "operator_actions",
    "report",
]


def document(
    result: ReplayResult, *, what_if: bool = False, overrides: tuple[str, ...] = ()
) -> dict[str, Any]:
    comparison = compare(
        result.recorded, result.replayed, what_if=what_if, unreplayable=result.unreplayable
    )
    doc = comparison_json(result, comparison, overrides)
    # What --json prints parses back to the same document: nothing is lost in rendering.
    assert orjson.loads(dumps(doc)) == doc
    return doc


def test_an_audit_replay_document_holds_the_recording_the_decisions_and_the_verdict(
    tmp_path: Path,
) -> None:
    session(tmp_path).close()
    result = replay(tmp_path, CONFIG, trust=TRUST)

    doc = document(result)

    assert list(doc) == TOP_LEVEL
    assert doc["format"] == FORMAT == "ess.replay/1"
    assert doc["verdict"] == {
        "result": "match",
        "ok": True,
        "what_if": False,
        "differences": 0,
        "counts": {
            "matched": 3,
            "moved": 0,
            "only_recorded": 0,
            "only_replayed": 0,
            "not_replayable": 0,
        },
        "outcomes": {outcome.value: 3 if outcome is Outcome.MATCH else 0 for outcome in Outcome},
    }
    recording = doc["recording"]
    assert recording["directory"] == str(tmp_path)
    assert recording["prefix"] == "ess"
    assert recording["recorded_at"] == "2026-11-23T09:00:00.000000+00:00"
    topics = {t["name"]: t for t in recording["topics"]}
    assert topics["ess.pnl"]["records"] == 3
    assert topics["ess.health"]["records"] == 11
    assert topics["ess.state"]["records"] == 3
    assert recording["records"] == 19
    assert doc["config"]["what_if"] is False
    assert doc["config"]["overrides"] == []
    assert doc["config"]["overrides_hash"] is None
    assert doc["config"]["detection"]["heartbeat_timeout_sec"] == 60
    assert doc["replay"]["records"] == 16
    assert doc["replay"]["dead_letters"] == 1
    assert doc["replay"]["dead_letter_samples"][0]["topic"] == "ess.fills"
    assert doc["replay"]["tick_interval_sec"] == 1.0
    assert doc["report"] is None

    recorded, replayed = doc["decisions"]["recorded"], doc["decisions"]["replayed"]
    # The test's live run wrote its own detail texts; everything else is the same.
    assert [{**d, "detail": ""} for d in recorded] == [{**d, "detail": ""} for d in replayed]
    assert replayed[0]["detail"] == result.replayed[0].detail != ""
    silence = recorded[2]
    assert silence == {
        "seq": 2,
        "kind": "trip_recorded",
        "command_id": result.recorded[2].command_id,
        "rule": "heartbeat_lost",
        "reason": "heartbeat_lost",
        "key": "svc-a",
        "epoch": 0,
        "event_time": "2026-11-23T09:01:03.000000+00:00",
        "trigger": {
            "topic": "ess.health",
            "partition": result.recorded[2].trigger.partition,
            "offset": result.recorded[2].trigger.offset,
            "event_time": "2026-11-23T09:01:03.000000+00:00",
        },
        "detail": result.recorded[2].detail,
    }
    assert [row["category"] for row in doc["matching"]] == ["matched"] * 3
    first = doc["matching"][0]
    assert first["recorded_seq"] == first["replayed_seq"] == 0
    assert first["event_time_delta_s"] == 0.0
    assert first["trigger_moved"] is False
    assert first["difference"] is False


def test_a_difference_is_a_moved_row_with_its_time_delta(tmp_path: Path) -> None:
    session(tmp_path).close()
    # The live heartbeat timeout was 60 s; replayed with 30 s the silence trips 30 s early.
    result = replay(
        tmp_path, CONFIG.model_copy(update={"heartbeat_timeout_sec": 30.0}), trust=TRUST
    )

    doc = document(result)

    assert doc["verdict"]["result"] == "different"
    assert doc["verdict"]["ok"] is False
    assert doc["verdict"]["differences"] == 1
    [moved] = [row for row in doc["matching"] if row["category"] == "moved"]
    assert moved["outcome"] == "differs"
    assert moved["difference"] is True
    assert moved["event_time_delta_s"] == -30.0
    assert moved["recorded_event_time"] == "2026-11-23T09:01:03.000000+00:00"
    assert moved["replayed_event_time"] == "2026-11-23T09:00:33.000000+00:00"
    assert moved["note"] == "event time -30s"


def test_only_recorded_and_only_replayed_trips(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    first = b.add("security", "gw", security("api_key_changed", "gw", T0), T0)
    b.add("security", "gw", security("api_key_changed", "gw", T0 + s(20)), T0 + s(20))
    b.state(trip_entry(0, "api_key_changed", ReasonCode.API_KEY_CHANGED, "gw", first, T0))
    b.state(reset_entry(1, T0 + s(30)))  # after the second event: the latch held live
    b.close()
    result = replay(tmp_path, CONFIG, trust=TRUST)
    # Pretend the live run had not recorded its trip: the replay's is only replayed.
    doc = document(replace(result, recorded=[]))

    assert doc["verdict"]["counts"]["only_replayed"] == 1
    [row] = doc["matching"]
    assert (row["category"], row["outcome"], row["recorded_seq"]) == (
        "only_replayed",
        "extra in replay",
        None,
    )
    assert row["event_time_delta_s"] is None
    assert row["trigger_moved"] is None

    gone = document(replace(result, replayed=[]), what_if=True, overrides=("a.b=1",))
    assert [(r["category"], r["outcome"]) for r in gone["matching"]] == [("only_recorded", "gone")]
    assert gone["verdict"]["result"] == "what_if"
    assert gone["verdict"]["ok"] is True


def test_a_what_if_document_names_its_overrides(tmp_path: Path) -> None:
    session(tmp_path).close()
    overrides = ("account.daily_loss=5%",)
    lower = CONFIG.model_copy(
        update={"account": CONFIG.account.model_copy(update={"daily_loss": 0.05})}
    )
    result = replay(tmp_path, lower, trust=TRUST)

    doc = document(result, what_if=True, overrides=overrides)

    assert doc["config"] == {
        "what_if": True,
        "overrides": ["account.daily_loss=5%"],
        "overrides_hash": overrides_hash(overrides),
        "detection": doc["config"]["detection"],
    }
    assert doc["config"]["detection"]["account"]["daily_loss"] == 0.05
    assert doc["verdict"]["result"] == "what_if"
    [earlier] = [row for row in doc["matching"] if row["rule"] == "daily_loss"]
    assert earlier["category"] == "moved"
    assert earlier["outcome"] == "earlier"
    assert earlier["trigger_moved"] is True
    assert earlier["event_time_delta_s"] == -1.0


def test_unreplayable_parts_are_listed_with_why(tmp_path: Path) -> None:
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
    b.raw_state(encode(reset_entry(2, T0 + s(2))), T0 + s(2))  # unsigned: foreign
    b.close()
    result = replay(tmp_path, CONFIG, trust=TRUST)

    doc = document(result)

    [outside] = doc["unreplayable"]["trips"]
    assert outside["seq"] == 1
    assert outside["why"] == (
        f"offset {later.offset} of partition {later.partition} is outside the recorded "
        f"offsets {coords.offset}..{coords.offset}"
    )
    assert doc["unreplayable"]["foreign_state_records"] == [{"offset": 2, "why": "unsigned"}]
    assert doc["unreplayable"]["topics_without_detectors"] == []
    assert [r["category"] for r in doc["matching"]] == ["matched", "not_replayable"]
    assert doc["verdict"]["ok"] is True


def test_operator_actions_are_in_the_document_marked_not_replayable(tmp_path: Path) -> None:
    operator_session(tmp_path).close()
    result = replay(tmp_path, DetectionConfig(), trust=TRUST)

    doc = document(result)

    actions = doc["operator_actions"]
    assert [(a["kind"], a["who"], a["outcome"]) for a in actions] == [
        ("activated", "operator:carol", "activated: ESS ACTIVE"),
        ("reset_rejected", "bob", "rejected: activation_mismatch"),
        ("reset", "alice", "applied: ESS INACTIVE (epoch 1)"),
    ]
    assert all(a["replayable"] is False for a in actions)
    manual, rejected, reset = actions
    assert manual["reason"] == "manual"
    assert manual["why"] is None
    assert manual["when"] == "2026-11-23T09:00:01.000000+00:00"
    assert manual["what"] == "manual trip (manual)"
    assert rejected["why"] == "activation_mismatch"
    assert rejected["reason"] is None
    assert (reset["seq"], reset["offset"], reset["epoch"]) == (3, 3, 1)
    assert reset["detail"] == "root cause fixed"
    # Not counted: the one compared trip matches.
    assert doc["verdict"]["counts"]["matched"] == 1
    assert doc["verdict"]["differences"] == 0


def test_the_document_depends_only_on_the_recording_and_the_thresholds(tmp_path: Path) -> None:
    session(tmp_path).close()
    one = replay(tmp_path, CONFIG, trust=TRUST, workers=1)
    two = replay(tmp_path, CONFIG, trust=TRUST, workers=2)
    assert two.workers == 2

    # Not the worker count, not the time taken, not a set's iteration order.
    assert dumps(document(one)) == dumps(document(two))
    rules = document(one)["config"]["detection"]["enabled_rules"]
    assert rules == sorted(rules)


def test_the_report_path_is_in_the_document_when_one_was_written(tmp_path: Path) -> None:
    session(tmp_path).close()
    result = replay(tmp_path, CONFIG, trust=TRUST)
    comparison = compare(result.recorded, result.replayed)

    doc = comparison_json(result, comparison, report=tmp_path / "replay-report.html")

    assert doc["report"] == str(tmp_path / "replay-report.html")
    assert dumps(doc).endswith("}\n")

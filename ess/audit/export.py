"""A replay as one JSON document (``ess replay --json``), for auditors' tooling.

The document (format ``ess.replay/1``, described field by field in ``docs/audit.md``) holds
what the terminal table and the HTML report show, in a shape a program can rely on:

* the recording (directory, prefix, topics with record counts and offsets);
* the thresholds (the effective detection config, the ``--set`` overrides and their hash);
* every recorded and every replayed detector trip, with its reason, rule, key, event time,
  triggering record and detail;
* the matching of the two (matched, moved, only recorded, only replayed, not replayable),
  with event-time deltas;
* the verdict, the parts a replay cannot judge, and the operator actions (manual trips,
  resets, approvals, rejected resets), which are human decisions and never compared.

Stable means: keys are never renamed or removed within ``ess.replay/1`` (new keys may be
added; readers ignore keys they do not know), every documented key is always present
(``null`` or empty when it does not apply), lists have a defined order, and the document is
a function of the recording, the config and the overrides only: two replays of the same
recording with the same thresholds give the same document, whatever the machine, the number
of worker processes or the time taken (none of which it contains). Only ``recording.directory``
and ``report`` repeat the paths as the caller gave them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic_core import to_jsonable_python

from ess.audit.compare import AGREEING, Comparison, Outcome, Row
from ess.audit.recording import Manifest
from ess.audit.replay import Decision, OperatorAction, ReplayResult
from ess.audit.report import overrides_hash
from ess.rules.catalog import TOPICS
from ess.rules.config import DetectionConfig

__all__ = ["CATEGORIES", "FORMAT", "category", "comparison_json", "dumps"]

#: Name and version of the document. A change that could break a reader (a key renamed,
#: removed or changing meaning) makes a new version; adding keys does not.
FORMAT: Final = "ess.replay/1"

#: How each comparison outcome is grouped in ``matching[].category``.
CATEGORIES: Final[Mapping[Outcome, str]] = {
    Outcome.MATCH: "matched",
    Outcome.UNCHANGED: "matched",
    Outcome.DIFFERS: "moved",
    Outcome.EARLIER: "moved",
    Outcome.LATER: "moved",
    Outcome.CHANGED: "moved",
    Outcome.MISSING: "only_recorded",
    Outcome.GONE: "only_recorded",
    Outcome.EXTRA: "only_replayed",
    Outcome.NEW: "only_replayed",
    Outcome.OUTSIDE: "not_replayable",
}
_CATEGORY_ORDER: Final = ("matched", "moved", "only_recorded", "only_replayed", "not_replayable")


def category(outcome: Outcome) -> str:
    """The ``matching[].category`` of ``outcome``."""
    return CATEGORIES[outcome]


def _time(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds, one shape for every time in the document."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _plain(value: Any) -> Any:
    """``value`` as JSON data, sets as sorted lists (a frozenset's order changes with every
    process's hash seed; the document must not)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=orjson.dumps)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return _time(value)
    if isinstance(value, Enum):
        return _plain(value.value)
    return to_jsonable_python(value)


def _decision(decision: Decision) -> dict[str, Any]:
    trigger = decision.trigger
    return {
        "seq": decision.seq,
        "kind": decision.kind,
        "command_id": decision.command_id,
        "rule": decision.rule,
        "reason": decision.reason.value,
        "key": decision.subject,
        "epoch": decision.epoch,
        "event_time": _time(decision.event_ts),
        "trigger": {
            "topic": trigger.topic,
            "partition": trigger.partition,
            "offset": trigger.offset,
            "event_time": _time(trigger.event_ts),
        },
        "detail": decision.detail,
    }


def _coordinates(decision: Decision) -> tuple[str, int, int]:
    trigger = decision.trigger
    return (trigger.topic, trigger.partition, trigger.offset)


def _row(row: Row) -> dict[str, Any]:
    decision = row.decision
    recorded, replayed = row.recorded, row.replayed
    delta: float | None = None
    trigger_moved: bool | None = None
    if recorded is not None and replayed is not None:
        delta = (replayed.event_ts - recorded.event_ts).total_seconds()
        trigger_moved = _coordinates(recorded) != _coordinates(replayed)
    return {
        "category": category(row.outcome),
        "outcome": row.outcome.value,
        "difference": row.outcome not in AGREEING,
        "rule": decision.rule,
        "reason": decision.reason.value,
        "key": decision.subject,
        "epoch": decision.epoch,
        "recorded_seq": recorded.seq if recorded is not None else None,
        "replayed_seq": replayed.seq if replayed is not None else None,
        "recorded_event_time": _time(recorded.event_ts) if recorded is not None else None,
        "replayed_event_time": _time(replayed.event_ts) if replayed is not None else None,
        "event_time_delta_s": delta,
        "trigger_moved": trigger_moved,
        "note": row.note,
    }


def _action(action: OperatorAction) -> dict[str, Any]:
    return {
        "seq": action.seq,
        "offset": action.offset,
        "kind": action.kind,
        "when": _time(action.at),
        "log_time_ms": action.log_ms,
        "who": action.who,
        "what": action.what,
        "detail": action.detail,
        "outcome": action.outcome,
        "reason": action.reason.value if action.reason is not None else None,
        "why": action.why,
        "command_id": action.command_id,
        "epoch": action.epoch,
        "replayable": False,
    }


def _unreplayable_why(manifest: Manifest, decision: Decision) -> str:
    trigger = decision.trigger
    entry = next((e for e in manifest.topics if e.name == trigger.topic), None)
    if entry is None:
        return f"topic {trigger.topic} was not recorded"
    if entry.logical not in TOPICS:
        return f"topic {trigger.topic} has no detectors"
    start = entry.start_offsets.get(trigger.partition, 0)
    end = entry.end_offsets.get(trigger.partition, 0)
    return (
        f"offset {trigger.offset} of partition {trigger.partition} is outside the recorded "
        f"offsets {start}..{end - 1}"
        if end > start
        else f"partition {trigger.partition} has no recorded records"
    )


def _recording(result: ReplayResult) -> dict[str, Any]:
    manifest = result.manifest
    return {
        "directory": str(result.directory),
        "prefix": manifest.prefix,
        "recorded_at": _time(manifest.recorded_at),
        "records": sum(entry.records for entry in manifest.topics),
        "topics": [
            {
                "name": entry.name,
                "logical": entry.logical,
                "role": entry.role,
                "partitions": entry.partitions,
                "records": entry.records,
                "start_offsets": {str(p): o for p, o in sorted(entry.start_offsets.items())},
                "end_offsets": {str(p): o for p, o in sorted(entry.end_offsets.items())},
                "max_timestamp_ms": entry.max_timestamp,
            }
            for entry in manifest.topics
        ],
    }


def _config(config: DetectionConfig, overrides: Sequence[str]) -> dict[str, Any]:
    return {
        "what_if": bool(overrides),
        "overrides": list(overrides),
        "overrides_hash": overrides_hash(overrides) if overrides else None,
        "detection": _plain(config.model_dump(mode="python")),
    }


def comparison_json(
    result: ReplayResult,
    comparison: Comparison,
    overrides: Sequence[str] = (),
    *,
    report: Path | None = None,
) -> dict[str, Any]:
    """The ``ess.replay/1`` document of a replay and its comparison (see ``docs/audit.md``).

    ``overrides`` are the ``--set`` assignments as given (empty for an audit replay);
    ``report`` is where the HTML report was written, if it was. Pure: reads no file and no
    clock, so the same inputs give the same document (render it with :func:`dumps`)."""
    manifest = result.manifest
    counts = comparison.counts()
    by_category = dict.fromkeys(_CATEGORY_ORDER, 0)
    for outcome, n in counts.items():
        by_category[category(outcome)] += n
    verdict = "match" if comparison.ok else "different"
    if comparison.what_if:
        verdict = "what_if"
    ignored = sorted(
        e.name for e in manifest.topics if e.role == "input" and e.logical not in TOPICS
    )
    return {
        "format": FORMAT,
        "verdict": {
            "result": verdict,
            "ok": comparison.ok,
            "what_if": comparison.what_if,
            "differences": len(comparison.differences),
            "counts": by_category,
            "outcomes": {outcome.value: counts.get(outcome, 0) for outcome in Outcome},
        },
        "recording": _recording(result),
        "config": _config(result.config, overrides),
        "replay": {
            "tick_interval_sec": result.tick_interval,
            "records": result.records,
            "valid": result.valid,
            "dead_letters": result.dead_letters,
            "dead_letter_samples": [
                {"topic": s.topic, "partition": s.partition, "offset": s.offset, "error": s.error}
                for s in result.dead_letter_samples
            ],
            "records_by_topic": dict(sorted(result.by_topic.items())),
            "ticks": result.ticks,
            "resets_applied": len(result.resets),
            "external_trips": result.external_trips,
        },
        "decisions": {
            "recorded": [_decision(d) for d in sorted(result.recorded, key=lambda d: d.seq)],
            "replayed": [_decision(d) for d in sorted(result.replayed, key=lambda d: d.seq)],
        },
        "matching": [_row(row) for row in comparison.rows],
        "unreplayable": {
            "trips": [
                {**_decision(d), "why": _unreplayable_why(manifest, d)}
                for d in sorted(result.unreplayable, key=lambda d: d.seq)
            ],
            "topics_without_detectors": ignored,
            "foreign_state_records": [
                {"offset": record.offset, "why": record.why} for record in result.foreign
            ],
        },
        "operator_actions": [_action(action) for action in result.operator_actions],
        "report": str(report) if report is not None else None,
    }


def dumps(document: Mapping[str, Any]) -> str:
    """``document`` as indented JSON text with a final newline (what ``--json`` prints)."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode("utf-8") + "\n"

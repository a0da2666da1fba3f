"""Side by side: the trips the live run recorded versus the trips a replay decided.

A trip decision is compared on what the contract promises a replay reproduces: its reason,
its triggering record (topic, partition, offset) and its event time. Its kind (``activated``
or ``trip_recorded``) and ``seq`` are shown but not compared: which of two trips found at
the same moment by different topics' agents reached the live processor first is a race,
not a decision.

Pairing, in this order:

1. the same ``command_id`` (derived from rule, key and triggering record, so one decision
   has one id in the live run and in any replay);
2. what is left, by rule, subject (the triggering record's key: account, component,
   symbol, source) and epoch, in event-time order: the "same" trip of a key moved to
   another record (a different threshold, or a difference in the replay);
3. the rest is a trip one side has and the other has not.

In the strict (audit) mode every pair must agree exactly, and anything unpaired is a
difference. In what-if mode (thresholds overridden) nothing is a failure: pairs are labelled
by how the decision moved (earlier, later, changed) and unpaired trips as new or gone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ess.audit.replay import Decision

__all__ = ["Comparison", "Outcome", "Row", "compare", "trigger_text"]


class Outcome(StrEnum):
    """How one recorded or replayed decision compares."""

    MATCH = "match"
    DIFFERS = "differs"
    MISSING = "missing in replay"
    EXTRA = "extra in replay"
    UNCHANGED = "unchanged"
    EARLIER = "earlier"
    LATER = "later"
    CHANGED = "changed"
    NEW = "new"
    GONE = "gone"
    #: A recorded trip whose triggering record is not in the recording: not judged.
    OUTSIDE = "not in recording"


#: Outcomes that are not a difference (in strict mode everything else fails the audit).
AGREEING = frozenset({Outcome.MATCH, Outcome.UNCHANGED, Outcome.OUTSIDE})


def trigger_text(decision: Decision) -> str:
    """``ess.fills[2]@1234``: where the triggering record sits."""
    trigger = decision.trigger
    return f"{trigger.topic}[{trigger.partition}]@{trigger.offset}"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the comparison: a recorded decision, a replayed one, or both."""

    outcome: Outcome
    recorded: Decision | None
    replayed: Decision | None
    note: str = ""

    @property
    def decision(self) -> Decision:
        """The recorded decision if there is one, else the replayed one."""
        found = self.recorded or self.replayed
        if found is None:  # pragma: no cover - a row always holds at least one side
            raise ValueError("empty row")
        return found

    @property
    def when(self) -> datetime:
        return self.decision.event_ts


@dataclass(frozen=True, slots=True)
class Comparison:
    """Every row, ordered by event time; ``what_if`` says how to read them."""

    rows: tuple[Row, ...]
    what_if: bool

    @property
    def differences(self) -> tuple[Row, ...]:
        """Rows where the replay and the recording disagree."""
        return tuple(row for row in self.rows if row.outcome not in AGREEING)

    @property
    def ok(self) -> bool:
        """Strict mode: the replay decided exactly what the live run did. What-if: always."""
        return self.what_if or not self.differences

    def counts(self) -> dict[Outcome, int]:
        counts: dict[Outcome, int] = defaultdict(int)
        for row in self.rows:
            counts[row.outcome] += 1
        return dict(counts)


def _differences(recorded: Decision, replayed: Decision) -> list[str]:
    notes = []
    if recorded.reason != replayed.reason:
        notes.append(f"reason {recorded.reason.value} -> {replayed.reason.value}")
    if trigger_text(recorded) != trigger_text(replayed):
        notes.append(f"trigger {trigger_text(recorded)} -> {trigger_text(replayed)}")
    if recorded.event_ts != replayed.event_ts:
        delta = (replayed.event_ts - recorded.event_ts).total_seconds()
        notes.append(f"event time {delta:+g}s")
    return notes


def _pair(recorded: Decision, replayed: Decision, what_if: bool) -> Row:
    notes = _differences(recorded, replayed)
    if not what_if:
        return Row(
            Outcome.DIFFERS if notes else Outcome.MATCH, recorded, replayed, "; ".join(notes)
        )
    if not notes:
        outcome = Outcome.UNCHANGED
    elif replayed.event_ts < recorded.event_ts:
        outcome = Outcome.EARLIER
    elif replayed.event_ts > recorded.event_ts:
        outcome = Outcome.LATER
    else:
        outcome = Outcome.CHANGED
    return Row(outcome, recorded, replayed, "; ".join(notes))


def compare(
    recorded: Iterable[Decision],
    replayed: Iterable[Decision],
    *,
    what_if: bool = False,
    unreplayable: Iterable[Decision] = (),
) -> Comparison:
    """Compare recorded and replayed detector trips (see the module notes)."""
    rows: list[Row] = [Row(Outcome.OUTSIDE, d, None) for d in unreplayable]
    by_id: dict[str, Decision] = {}
    for decision in recorded:
        by_id.setdefault(decision.command_id, decision)
    left_replayed: list[Decision] = []
    for decision in replayed:
        match = by_id.pop(decision.command_id, None)
        if match is None:
            left_replayed.append(decision)
        else:
            rows.append(_pair(match, decision, what_if))

    def group(decision: Decision) -> tuple[str, str, int]:
        return (decision.rule, decision.subject, decision.epoch)

    groups: dict[tuple[str, str, int], tuple[list[Decision], list[Decision]]] = defaultdict(
        lambda: ([], [])
    )
    for decision in by_id.values():
        groups[group(decision)][0].append(decision)
    for decision in left_replayed:
        groups[group(decision)][1].append(decision)
    gone, new = (Outcome.GONE, Outcome.NEW) if what_if else (Outcome.MISSING, Outcome.EXTRA)
    for rec_side, rep_side in groups.values():
        rec_side.sort(key=lambda d: d.event_ts)
        rep_side.sort(key=lambda d: d.event_ts)
        for rec, rep in zip(rec_side, rep_side, strict=False):
            rows.append(_pair(rec, rep, what_if))
        rows.extend(Row(gone, rec, None) for rec in rec_side[len(rep_side) :])
        rows.extend(Row(new, None, rep) for rep in rep_side[len(rec_side) :])
    rows.sort(key=lambda row: (row.when, row.decision.rule, row.decision.subject))
    return Comparison(tuple(rows), what_if)

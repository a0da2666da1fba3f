"""Comparing recorded and replayed trips: exact matches, every kind of difference, and
what-if movements."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from ess.audit.compare import Comparison, Outcome, compare
from ess.audit.replay import Decision
from schemas import ReasonCode, TriggerRef
from tests.audit import T0, s


def decision(
    rule: str = "daily_loss",
    subject: str = "acct-1",
    offset: int = 10,
    at: timedelta = timedelta(0),
    *,
    epoch: int = 0,
    reason: ReasonCode = ReasonCode.DAILY_LOSS,
    command_id: str | None = None,
) -> Decision:
    return Decision(
        rule=rule,
        reason=reason,
        trigger=TriggerRef(topic="ess.pnl", partition=1, offset=offset, event_ts=T0 + at),
        command_id=command_id or f"{rule}-{subject}-{offset}-{epoch}",
        kind="activated",
        epoch=epoch,
        seq=0,
        subject=subject,
    )


def outcomes(comparison: Comparison) -> list[Outcome]:
    return [row.outcome for row in comparison.rows]


def test_identical_decisions_match_whatever_their_kind_and_seq() -> None:
    recorded = [decision(offset=10), decision("api_key_changed", "gw", 3)]
    replayed = [replace(d, kind="trip_recorded", seq=7) for d in reversed(recorded)]

    comparison = compare(recorded, replayed)

    assert outcomes(comparison) == [Outcome.MATCH, Outcome.MATCH]
    assert comparison.ok
    assert comparison.differences == ()


def test_a_different_event_time_or_trigger_is_called_out() -> None:
    recorded = [decision(offset=10), decision("flash_crash", "acct-2", 20)]
    replayed = [
        # Same command id (same rule, key, trigger), other event time.
        replace(
            recorded[0], trigger=recorded[0].trigger.model_copy(update={"event_ts": T0 + s(5)})
        ),
        # Same rule and subject, another triggering record.
        decision("flash_crash", "acct-2", 22, s(2)),
    ]

    comparison = compare(recorded, replayed)

    assert outcomes(comparison) == [Outcome.DIFFERS, Outcome.DIFFERS]
    assert not comparison.ok
    notes = [row.note for row in comparison.rows]
    assert notes[0] == "event time +5s"
    assert notes[1] == "trigger ess.pnl[1]@20 -> ess.pnl[1]@22; event time +2s"


def test_unpaired_trips_are_missing_or_extra() -> None:
    recorded = [decision(offset=10), decision("daily_loss", "acct-9", 11, s(1))]
    replayed = [decision(offset=10), decision("trade_rate", "acct-9", 12, s(2))]

    comparison = compare(recorded, replayed)

    assert outcomes(comparison) == [Outcome.MATCH, Outcome.MISSING, Outcome.EXTRA]
    missing, extra = comparison.rows[1], comparison.rows[2]
    assert missing.recorded is not None
    assert missing.replayed is None
    assert extra.replayed is not None
    assert extra.recorded is None
    assert len(comparison.differences) == 2


def test_pairs_do_not_cross_epochs() -> None:
    # The same account tripping once per epoch: a trip in epoch 1 is not "the same" trip as
    # one in epoch 0 that moved.
    recorded = [decision(offset=10, epoch=0)]
    replayed = [decision(offset=30, at=s(60), epoch=1)]

    assert outcomes(compare(recorded, replayed)) == [Outcome.MISSING, Outcome.EXTRA]


def test_what_if_labels_how_decisions_moved_and_never_fails() -> None:
    recorded = [
        decision("daily_loss", "acct-1", 10, s(10)),
        decision("daily_loss", "acct-2", 10, s(10)),
        decision("daily_loss", "acct-3", 10, s(10)),
        decision("daily_loss", "acct-4", 10, s(10)),
        decision("daily_loss", "acct-5", 10, s(10)),
    ]
    replayed = [
        recorded[0],  # unchanged
        decision("daily_loss", "acct-2", 8, s(8)),  # fired on an earlier tick
        decision("daily_loss", "acct-3", 12, s(12)),  # later
        decision("daily_loss", "acct-6", 3, s(3)),  # new; acct-4 and acct-5 are gone
        decision("daily_loss", "acct-5", 10, s(10), reason=ReasonCode.FLASH_CRASH),
    ]

    comparison = compare(recorded, replayed, what_if=True)

    by_subject = {row.decision.subject: row.outcome for row in comparison.rows}
    assert by_subject == {
        "acct-1": Outcome.UNCHANGED,
        "acct-2": Outcome.EARLIER,
        "acct-3": Outcome.LATER,
        "acct-4": Outcome.GONE,
        "acct-5": Outcome.CHANGED,
        "acct-6": Outcome.NEW,
    }
    assert comparison.ok
    assert comparison.counts()[Outcome.EARLIER] == 1


def test_recorded_trips_outside_the_recording_are_shown_but_not_judged() -> None:
    outside = decision(offset=99)

    comparison = compare([], [], unreplayable=[outside])

    assert outcomes(comparison) == [Outcome.OUTSIDE]
    assert comparison.ok

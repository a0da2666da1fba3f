"""Which record becomes which alert: the pure decisions of ess.notify.alerts, record by record,
on entries built by the real decider and sealed like the processor's."""

from __future__ import annotations

import json
from datetime import timedelta

from ess.core import INITIAL_STATE, EssState, evolve
from ess.core.reader import LoggedEntry
from ess.core.signing import generate_private_key, sign_reset
from ess.notify.alerts import (
    AlertKind,
    FlattenEpisodes,
    Page,
    ProcessorWatch,
    Severity,
    activation_incident,
    alerts_for_action,
    alerts_for_dead_letter,
    alerts_for_entry,
)
from schemas import ActionReport, DeadLetter, ProcessorBeat, ReasonCode, StateEntry, TriggerRef
from tests.statelog_support import T0, LogBuilder

SCOPE = "ess.state"
ACTIONS = "ess.actions"


def _decide(log: LogBuilder) -> list[tuple[StateEntry, list[AlertKind], EssState]]:
    """Every entry of ``log`` with the alerts it makes and the state before it."""
    state = INITIAL_STATE
    out = []
    for offset, entry in enumerate(log.entries):
        alerts = alerts_for_entry(LoggedEntry(offset, entry), state, scope=SCOPE)
        out.append((entry, [alert.kind for alert in alerts], state))
        state = evolve(state, entry)
    return out


def test_a_trip_alerts_with_reason_rule_detail_and_who() -> None:
    log = LogBuilder(SCOPE)
    trigger = TriggerRef(topic="ess.pnl", partition=2, offset=41, event_ts=T0)
    entry = log.trip(
        "trip-1",
        reason=ReasonCode.DAILY_LOSS,
        detail="equity down 12%",
        source="detector:daily_loss",
        trigger=trigger,
    )

    [alert] = alerts_for_entry(LoggedEntry(7, entry), INITIAL_STATE, scope=SCOPE)

    assert alert.kind is AlertKind.TRIP
    assert alert.severity is Severity.CRITICAL
    assert alert.page is Page.TRIGGER
    assert alert.incident == activation_incident(SCOPE, 0, "trip-1")
    assert alert.origin == "ess.state@7"
    assert "daily_loss" in alert.title
    fields = dict(alert.fields)
    assert fields["reason"] == "daily_loss"
    assert fields["rule"] == "daily_loss"
    assert fields["detail"] == "equity down 12%"
    assert fields["who"] == "detector:daily_loss"
    assert fields["trigger"].startswith("ess.pnl[2]@41")
    assert fields["seq"] == "0"


def test_an_operator_trip_has_no_rule_and_names_the_operator() -> None:
    log = LogBuilder(SCOPE)
    entry = log.trip(reason=ReasonCode.MANUAL, source="operator:alice", detail="fat finger")

    [alert] = alerts_for_entry(LoggedEntry(0, entry), INITIAL_STATE, scope=SCOPE)

    assert "rule" not in dict(alert.fields)
    assert dict(alert.fields)["who"] == "operator:alice"


def test_the_reset_resolves_the_incident_its_trip_triggered() -> None:
    log = LogBuilder(SCOPE)
    trip = log.trip("trip-1")
    before = log.state
    reset = log.reset("alice")

    [triggered] = alerts_for_entry(LoggedEntry(0, trip), INITIAL_STATE, scope=SCOPE)
    [resolved] = alerts_for_entry(LoggedEntry(1, reset), before, scope=SCOPE)

    assert resolved.kind is AlertKind.RESET
    assert resolved.page is Page.RESOLVE
    assert resolved.incident == triggered.incident
    assert resolved.key != triggered.key
    assert dict(resolved.fields)["by"] == "alice"
    assert dict(resolved.fields)["cleared"].startswith("daily_loss (seq 0)")


def test_each_activation_is_its_own_incident() -> None:
    log = LogBuilder(SCOPE)
    log.trip("trip-1")
    log.reset("alice")
    log.trip("trip-2", ts=T0 + timedelta(seconds=1))

    trips = [a for e, kinds, s in _decide(log) for a in kinds if a is AlertKind.TRIP]
    incidents = {
        alerts_for_entry(LoggedEntry(i, e), INITIAL_STATE, scope=SCOPE)[0].incident
        for i, e in enumerate(log.entries)
        if e.kind == "activated"
    }

    assert len(trips) == 2
    assert len(incidents) == 2


def test_a_rejected_reset_alerts_with_why_and_says_ess_stays_active() -> None:
    log = LogBuilder(SCOPE)
    log.trip("trip-1")
    intruder = generate_private_key()  # not alice's key: the signature does not verify
    activation = log.state.activation
    assert activation is not None
    forged = sign_reset(
        intruder,
        command_id="reset-forged",
        operator="alice",
        ts=T0,
        nonce="n-1",
        activation_seq=activation.seq,
        activation_command_id=activation.command_id,
    )
    before = log.state
    [entry] = log.command(forged)

    [alert] = alerts_for_entry(LoggedEntry(1, entry), before, scope=SCOPE)

    assert alert.kind is AlertKind.RESET_REJECTED
    assert alert.severity is Severity.WARNING
    assert alert.page is Page.TRIGGER
    assert alert.title == "Reset REJECTED (bad_signature): ESS stays ACTIVE"
    assert dict(alert.fields)["why"] == "bad_signature"
    assert dict(alert.fields)["operator"] == "alice"


def test_further_trips_and_approvals_make_no_alert() -> None:
    log = LogBuilder(SCOPE, quorum=2)
    log.trip("trip-1")
    log.trip("trip-2")  # trip_recorded
    log.reset("alice", "bob")  # reset_approval, then reset

    decided = [(entry.kind, kinds) for entry, kinds, _ in _decide(log)]

    assert decided == [
        ("activated", [AlertKind.TRIP]),
        ("trip_recorded", []),
        ("reset_approval", []),
        ("reset", [AlertKind.RESET]),
    ]


def _keys(log: LogBuilder, scope: str) -> list[str]:
    state = INITIAL_STATE
    found = []
    for offset, entry in enumerate(log.entries):
        found += [a.key for a in alerts_for_entry(LoggedEntry(offset, entry), state, scope=scope)]
        state = evolve(state, entry)
    return found


def test_keys_depend_on_the_record_only_so_a_replay_decides_the_same_keys() -> None:
    log = LogBuilder(SCOPE)
    log.trip("trip-1")
    log.reset("alice")

    first, again = _keys(log, SCOPE), _keys(log, SCOPE)

    assert first == again
    assert len(set(first)) == 2
    assert not set(first) & set(_keys(log, "other.state"))


# --------------------------------------------------------------------------- ess.actions


def _report(
    outcome: str, *, venue: str = "binance", seq: int | None = 0, **detail: object
) -> ActionReport:
    return ActionReport(
        ts=T0,
        venue=venue,
        account="main",
        action="flatten",
        outcome=outcome,
        detail=json.dumps(detail),
        activation_seq=seq,
    )


def test_a_stall_alerts_once_until_the_venue_is_flat_and_flat_resolves_it() -> None:
    episodes = FlattenEpisodes()
    decided = []
    reports = [
        _report("started"),
        _report("stalled", elapsed_ms=10_000, rounds=4, last_error="close: rate limited"),
        _report("stalled", elapsed_ms=20_000, rounds=9, last_error="close: rate limited"),
        _report("verified_flat", elapsed_ms=23_000, rounds=10),
        _report("stalled", elapsed_ms=30_000, rounds=2),  # exposure found later, stalled again
    ]
    for offset, report in enumerate(reports):
        episodes, alerts = alerts_for_action(
            report, episodes, topic=ACTIONS, partition=0, offset=offset
        )
        decided.append(alerts)

    kinds = [[alert.kind for alert in alerts] for alerts in decided]
    assert kinds == [
        [],
        [AlertKind.FLATTEN_STALLED],
        [],
        [AlertKind.FLATTEN_FLAT],
        [AlertKind.FLATTEN_STALLED],
    ]
    stalled, flat, again = decided[1][0], decided[3][0], decided[4][0]
    assert stalled.page is Page.TRIGGER
    assert flat.page is Page.RESOLVE
    assert stalled.incident == flat.incident == again.incident
    assert stalled.key != again.key
    assert dict(stalled.fields)["why"] == "close: rate limited"
    assert dict(stalled.fields)["venue"] == "binance"
    assert dict(flat.fields)["elapsed_ms"] == "23000"


def test_stalls_of_two_venues_are_two_incidents_and_a_reset_ends_a_stall() -> None:
    episodes = FlattenEpisodes()
    episodes, [a] = alerts_for_action(
        _report("stalled", venue="a"), episodes, topic=ACTIONS, partition=0, offset=1
    )
    episodes, [b] = alerts_for_action(
        _report("stalled", venue="b"), episodes, topic=ACTIONS, partition=0, offset=2
    )
    episodes, stopped = alerts_for_action(
        _report("stopped", venue="a"), episodes, topic=ACTIONS, partition=0, offset=3
    )
    episodes, [a_again] = alerts_for_action(
        _report("stalled", venue="a", seq=5), episodes, topic=ACTIONS, partition=0, offset=4
    )

    assert a.incident != b.incident
    assert stopped == ()
    assert a_again.incident != a.incident  # another activation


def test_other_action_reports_make_no_alert() -> None:
    report = ActionReport(
        ts=T0, venue="v", account="main", action="cancel", outcome="failed", activation_seq=0
    )
    episodes = FlattenEpisodes()

    after, alerts = alerts_for_action(report, episodes, topic=ACTIONS, partition=0, offset=0)

    assert alerts == ()
    assert after == episodes


def test_a_stall_report_with_a_cut_detail_still_alerts() -> None:
    report = _report("stalled").model_copy(update={"detail": '{"last_error": "cut'})

    _, [alert] = alerts_for_action(report, FlattenEpisodes(), topic=ACTIONS, partition=0, offset=0)

    assert dict(alert.fields)["why"] == "not verified flat within the deadline"


# --------------------------------------------------------------------------- ess.deadletter


def test_a_dead_lettered_command_alerts_keyed_by_the_command_record() -> None:
    letter = DeadLetter(
        ts=T0, source_topic="ess.commands", partition=0, offset=17, raw="x" * 1000, error="bad"
    )

    [alert] = alerts_for_dead_letter(
        letter, commands_topic="ess.commands", topic="ess.deadletter", partition=0, offset=3
    )
    [copy] = alerts_for_dead_letter(
        letter, commands_topic="ess.commands", topic="ess.deadletter", partition=0, offset=4
    )

    assert alert.kind is AlertKind.COMMAND_DEAD_LETTERED
    assert alert.severity is Severity.ERROR
    assert alert.key == copy.key  # the same command dead-lettered twice is one event
    assert dict(alert.fields)["command"] == "ess.commands[0]@17"
    assert len(dict(alert.fields)["raw"]) < 400


def test_dead_letters_of_input_topics_are_not_alerts() -> None:
    letter = DeadLetter(ts=T0, source_topic="ess.fills", partition=1, offset=2, raw="{}", error="e")

    assert (
        alerts_for_dead_letter(
            letter, commands_topic="ess.commands", topic="ess.deadletter", partition=0, offset=0
        )
        == ()
    )


# --------------------------------------------------------------------------- ess.liveness


def _beat(number: int, *, run: str = "run-1", owner: bool = True) -> ProcessorBeat:
    return ProcessorBeat(
        run_id=run,
        beat_no=number,
        owner=owner,
        next_command_offset=0 if owner else None,
        state_next_offset=0,
        state_next_seq=0,
        ts=T0,
    )


def test_the_processor_is_gone_once_after_the_bound_and_back_on_its_next_beat() -> None:
    watch = ProcessorWatch(scope="ess.liveness", gone_after=10.0, started=100.0)
    watch.beat(_beat(0), arrived=101.0, wall=T0)

    assert watch.check(111.0, wall=T0) is None  # exactly the bound: not yet
    gone = watch.check(111.5, wall=T0)
    assert watch.check(130.0, wall=T0) is None  # said once
    back = watch.beat(_beat(1), arrived=131.0, wall=T0)

    assert gone is not None
    assert back is not None
    assert gone.kind is AlertKind.PROCESSOR_GONE
    assert gone.page is Page.TRIGGER
    assert back.kind is AlertKind.PROCESSOR_BACK
    assert back.page is Page.RESOLVE
    assert gone.incident == back.incident
    assert dict(back.fields)["silent_sec"] == "30.0"


def test_standby_replayed_and_far_off_beats_do_not_count() -> None:
    watch = ProcessorWatch(scope="ess.liveness", gone_after=10.0, started=0.0)
    watch.beat(_beat(5), arrived=1.0, wall=T0)
    watch.beat(_beat(6, owner=False, run="standby"), arrived=5.0, wall=T0)
    watch.beat(_beat(5), arrived=6.0, wall=T0)  # replayed
    watch.beat(_beat(7), arrived=7.0, wall=T0 + timedelta(minutes=5))  # 5 minutes off

    assert watch.check(11.5, wall=T0) is not None  # silent since 1.0


def test_the_gone_key_is_the_last_beat_so_a_restarted_notifier_sends_the_same_key() -> None:
    first = ProcessorWatch(scope="ess.liveness", gone_after=10.0, started=0.0)
    first.beat(_beat(3), arrived=1.0, wall=T0)
    restarted = ProcessorWatch(scope="ess.liveness", gone_after=10.0, started=50.0)
    restarted.seen(_beat(3))  # read back from ess.liveness on start: history

    gone = first.check(20.0, wall=T0)
    gone_again = restarted.check(70.0, wall=T0)

    assert gone is not None
    assert gone_again is not None
    assert gone.key == gone_again.key


def test_no_beat_ever_seen_is_gone_after_the_bound_from_start() -> None:
    watch = ProcessorWatch(scope="ess.liveness", gone_after=2.0, started=10.0)

    assert watch.check(11.0, wall=T0) is None
    alert = watch.check(12.5, wall=T0)

    assert alert is not None
    assert dict(alert.fields)["last_beat_at"] == "never seen"


def test_the_json_shape_receivers_rely_on() -> None:
    log = LogBuilder(SCOPE)
    [alert] = alerts_for_entry(LoggedEntry(0, log.trip("trip-1")), INITIAL_STATE, scope=SCOPE)

    shaped = alert.as_json()

    assert set(shaped) == {
        "kind",
        "severity",
        "key",
        "incident",
        "page",
        "title",
        "text",
        "ts",
        "origin",
        "fields",
    }
    assert shaped["kind"] == "trip"
    assert shaped["page"] == "trigger"
    assert shaped["text"].splitlines()[0] == alert.title
    assert shaped["fields"]["command_id"] == "trip-1"
    json.dumps(shaped)  # serialisable as is

"""Operator actions in a replay: manual trips, resets, approvals and rejected resets of the
recorded state log are shown as a timeline (terminal, HTML), never replayed and never counted
as differences."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ess.audit.compare import Outcome, compare
from ess.audit.replay import ReplayResult, replay
from ess.audit.report import html_report, print_summary
from ess.rules.config import DetectionConfig
from schemas import ReasonCode, TripCommand
from tests.audit import T0, TRUST, Builder, pnl, s, security, trip_entry

CONFIG = DetectionConfig()
#: Producers' and operators' texts are data: escaped in HTML, never markup.
ODD_DETAIL = "desk saw a <b>fat</b> finger & [bold]called[/] it"


def operator_session(directory: Path) -> Builder:
    """A live run with a manual trip by carol, a detector trip while ACTIVE, a reset bob
    signed for a stale activation (rejected) and alice's reset, every state entry decided by
    the real core as the command processor decided it."""
    b = Builder(directory)
    for i, equity in enumerate((1000, 990, 985)):
        b.add("pnl", "acct-1", pnl("acct-1", equity, T0 + s(i)), T0 + s(i))
    b.command(
        TripCommand(
            command_id="manual-carol-1",
            reason=ReasonCode.MANUAL,
            detail=ODD_DETAIL,
            source="operator:carol",
            ts=T0 + s(1),
        )
    )
    key = b.add("security", "gw", security("api_key_changed", "gw", T0 + s(5)), T0 + s(5))
    b.state(
        trip_entry(
            1,
            "api_key_changed",
            ReasonCode.API_KEY_CHANGED,
            "gw",
            key,
            T0 + s(5),
            kind="trip_recorded",
        )
    )
    b.command(b.signed_reset("bob", T0 + s(20), activation=(7, "an-old-activation")))
    b.command(b.signed_reset("alice", T0 + s(30), detail="root cause fixed"))
    return b


def replayed(directory: Path) -> ReplayResult:
    operator_session(directory).close()
    return replay(directory, CONFIG, trust=TRUST)


def test_the_replay_lists_every_operator_action_in_log_order(tmp_path: Path) -> None:
    result = replayed(tmp_path)

    timeline = [(a.seq, a.kind, a.who, a.what, a.outcome, a.epoch) for a in result.operator_actions]
    assert timeline == [
        (0, "activated", "operator:carol", "manual trip (manual)", "activated: ESS ACTIVE", 0),
        (2, "reset_rejected", "bob", "reset", "rejected: activation_mismatch", 0),
        (3, "reset", "alice", "reset", "applied: ESS INACTIVE (epoch 1)", 1),
    ]
    manual, rejected, reset = result.operator_actions
    assert manual.detail == ODD_DETAIL
    assert manual.reason is ReasonCode.MANUAL
    assert manual.at == T0 + s(1)
    assert rejected.why == "activation_mismatch"
    assert reset.detail == "root cause fixed"
    assert reset.offset == 3  # its place in the recorded ess.state


def test_operator_actions_are_not_compared_and_not_differences(tmp_path: Path) -> None:
    result = replayed(tmp_path)

    comparison = compare(result.recorded, result.replayed, unreplayable=result.unreplayable)

    # The one detector trip is compared (and agrees: recorded while carol's stop held);
    # carol's trip, bob's refused reset and alice's reset are not rows at all.
    assert [(row.outcome, row.decision.rule) for row in comparison.rows] == [
        (Outcome.MATCH, "api_key_changed")
    ]
    assert [d.kind for d in result.replayed] == ["trip_recorded"]
    assert comparison.ok
    assert not comparison.differences


def test_the_terminal_summary_shows_the_timeline_apart_from_the_trips(tmp_path: Path) -> None:
    result = replayed(tmp_path)
    comparison = compare(result.recorded, result.replayed)
    console = Console(record=True, width=240)

    print_summary(console, result, comparison)

    text = console.export_text()
    assert "operator actions (human decisions recorded in the state log: not replayed" in text
    assert "operator:carol" in text
    assert "rejected: activation_mismatch" in text
    assert "applied: ESS INACTIVE (epoch 1)" in text
    assert "root cause fixed" in text
    assert ODD_DETAIL in text  # rich markup in a detail is shown, not interpreted
    assert "operator actions: 3 (manual trips, resets, approvals, rejected resets" in text
    assert "MATCH: the replay decided exactly what the live run did" in text
    # The verdict's counts are the comparison's alone.
    assert "match: 1" in text


def test_the_html_report_has_the_timeline_escaped(tmp_path: Path) -> None:
    result = replayed(tmp_path)
    comparison = compare(result.recorded, result.replayed)

    text = html_report(result, comparison)

    section = text[text.index("<h2>Operator actions</h2>") :]
    section = section[: section.index("</table>")]
    assert "not replayed, not compared, never a difference" in section
    assert section.count("<tr><td>") == 3
    assert "desk saw a &lt;b&gt;fat&lt;/b&gt; finger &amp; [bold]called[/] it" in section
    assert ODD_DETAIL not in text
    assert '<td class="outcome moved">rejected: activation_mismatch</td>' in section
    assert '<td class="outcome ok">applied: ESS INACTIVE (epoch 1)</td>' in section
    assert "2026-11-23T09:00:01.000+00:00" in section
    assert "<b>MATCH</b>" in text
    assert "<tr><th>operator actions</th><td>3 (not replayed, not compared)</td></tr>" in text


def test_a_quorum_approval_and_a_forged_reset_are_actions_too(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    b.command(
        TripCommand(
            command_id="manual-1",
            reason=ReasonCode.MANUAL,
            detail="stop",
            source="operator:carol",
            ts=T0,
        )
    )
    # Bob's key, alice's name: the signature does not verify for alice.
    b.command(b.signed_reset("bob", T0 + s(5), as_operator="alice"), quorum=2)
    b.command(b.signed_reset("bob", T0 + s(10), detail="bob agrees"), quorum=2)
    b.command(b.signed_reset("alice", T0 + s(11), detail="alice agrees"), quorum=2)
    b.close()

    result = replay(tmp_path, CONFIG, trust=TRUST)

    assert [(a.kind, a.who, a.detail, a.outcome) for a in result.operator_actions[1:]] == [
        (
            "reset_rejected",
            "alice",
            "signature does not verify",
            "rejected: bad_signature (operator name not verified)",
        ),
        ("reset_approval", "bob", "bob agrees", "approval 1/2: quorum pending"),
        ("reset", "bob, alice", "alice agrees", "applied: ESS INACTIVE (epoch 1)"),
    ]
    assert [reset.entry.operators for reset in result.resets] == [("bob", "alice")]


def test_a_non_operator_trip_is_in_the_timeline_with_its_source(tmp_path: Path) -> None:
    b = Builder(tmp_path)
    b.command(
        TripCommand(
            command_id="undecodable-1",
            reason=ReasonCode.MANUAL,
            detail="undecodable command at offset 4",
            source="ess-command-processor",
            ts=T0,
        )
    )
    b.command(
        TripCommand(
            command_id="venue-1",
            reason=ReasonCode.API_KEY_INVALID,
            detail="binance refused the key",
            source="ess-executor:binance",
            ts=T0 + s(1),
        )
    )
    b.close()

    result = replay(tmp_path, CONFIG, trust=TRUST)

    assert [(a.who, a.what, a.outcome) for a in result.operator_actions] == [
        ("ess-command-processor", "manual trip (manual)", "activated: ESS ACTIVE"),
        ("ess-executor:binance", "trip (api_key_invalid)", "recorded: ESS already ACTIVE"),
    ]
    assert result.recorded == []
    assert result.external_trips == 2

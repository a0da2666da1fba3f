"""The crash campaign, shortened: a few scenarios while ESS processes are SIGKILLed and
restarted (detection as two workers of one group: a kill is a rebalance), the command
processor is also stopped and fenced, and produce answers are lost.
Every trip must land, the venues must go flat, nothing may reset ESS but a signed reset, no
gate may allow trading beyond its bound, and the end state must equal the folded log and its
audit replay."""

from __future__ import annotations

import pytest

from ess.chaos.crash import FAILURES, QUICK_MIN_KILLS, run_campaign

pytestmark = pytest.mark.integration


async def test_quick_crash_campaign_keeps_every_guarantee() -> None:
    figures = await run_campaign(quick=True, seed=7)
    summary = {k: v for k, v in figures.items() if k != "scenario_results"}
    assert figures["kills"] >= QUICK_MIN_KILLS, summary
    assert figures["scenarios"] >= 3, summary
    faults = figures["processor_faults"]
    assert faults.get("sigstop", 0) >= 1, summary
    assert faults.get("fenced", 0) >= 1, summary
    assert figures["exit_codes"].get("command:3", 0) >= 1, summary  # the fenced one left
    assert figures["lost_answers"] >= 1, summary
    assert figures["gate_open_s"] > 0, summary  # the gate did open: the bound was tested
    assert figures["rebalances"] >= 2, summary  # a detection worker left the group, and came back
    assert {name: figures[name] for name in FAILURES} == dict.fromkeys(FAILURES, 0), figures
    assert figures["final_state_matches_replay"] is True, summary

"""The crash campaign, shortened: a few scenarios while ESS processes are SIGKILLed and
restarted. Every trip must land, the venues must go flat, nothing may reset ESS but a
signed reset, and the end state must equal the folded log and its audit replay."""

from __future__ import annotations

import pytest

from ess.chaos.crash import FAILURES, QUICK_MIN_KILLS, run_campaign

pytestmark = pytest.mark.integration


async def test_quick_crash_campaign_keeps_every_guarantee() -> None:
    figures = await run_campaign(quick=True, seed=7)
    summary = {k: v for k, v in figures.items() if k != "scenario_results"}
    assert figures["kills"] >= QUICK_MIN_KILLS, summary
    assert figures["scenarios"] >= 3, summary
    assert {name: figures[name] for name in FAILURES} == dict.fromkeys(FAILURES, 0), figures
    assert figures["final_state_matches_replay"] is True, summary

"""The writer loss campaign, shortened to one run per fault kind: the command processor (a
separate process) is SIGSTOPped, SIGKILLed, or fenced by an authentic entry it did not write;
every trading gate must close within the bound ESS promises (processor timeout plus the
gate's staleness bound), and a fenced processor must exit with code 3."""

from __future__ import annotations

import pytest

from ess.chaos.writer_loss import FAILURES, FAULTS, TOLERANCE_S, run_campaign
from ess.roles.command.processor import EXIT_FENCED

pytestmark = pytest.mark.integration


async def test_quick_writer_loss_campaign_fails_closed() -> None:
    figures = await run_campaign(quick=True)

    assert figures["runs"] == len(FAULTS), figures
    assert {name: figures[name] for name in FAILURES} == dict.fromkeys(FAILURES, 0), figures
    assert figures["fenced_exit_codes"] == [EXIT_FENCED], figures
    assert figures["kept_logs"] == [], figures
    for fault in FAULTS:
        measured = figures["faults"][fault]
        assert measured["runs"] == 1, (fault, figures)
        # Not before the projector could have missed a beat, not after the promised bound.
        assert figures["processor_timeout_s"] <= measured["min_s"], (fault, figures)
        assert measured["max_s"] <= figures["gate_bound_s"] + TOLERANCE_S, (fault, figures)
        # The writer-loss path: the record went stale, it never turned ACTIVE.
        assert all(r.startswith("stale") for r in measured["gate_reasons"]), (fault, figures)
    assert figures["faults"]["sigkill"]["exit_codes"] == [-9], figures
    assert figures["faults"]["sigstop"]["exit_codes"] == [None], figures

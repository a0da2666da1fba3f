"""The broker loss campaign, shortened to one run: the broker is SIGKILLed; the trading gate
must close within the bound ESS promises (log timeout plus the gate's staleness bound), and
the executor, alive but blind, must stop re-arming the venue's dead-man's switch so that the
venue cancels the resting orders within the log timeout plus the countdown."""

from __future__ import annotations

import pytest

from ess.chaos.broker_loss import FAILURES, TOLERANCE_S, run_campaign

pytestmark = pytest.mark.integration


async def test_quick_broker_loss_campaign_fails_closed() -> None:
    figures = await run_campaign(quick=True)

    assert figures["runs"] == 1, figures
    assert {name: figures[name] for name in FAILURES} == dict.fromkeys(FAILURES, 0), figures
    gate = figures["gate_closed_after_s"]
    # Not before the projector could have noticed the loss, not after the promised bound.
    assert figures["log_timeout_s"] <= gate["max"], figures
    assert gate["max"] <= figures["gate_bound_s"] + TOLERANCE_S, figures
    assert any(reason.startswith("stale") for reason in figures["gate_reasons"]), figures
    cancelled = figures["orders_cancelled_after_s"]
    # The switch is only left to run out once the executor has lost the log.
    assert figures["log_timeout_s"] <= cancelled["max"], figures
    assert cancelled["max"] <= figures["orders_bound_s"] + TOLERANCE_S, figures

"""The venue fault campaign, shortened: a few runs flattening a realistic book on futures and
spot while every simulator fault kind fires at a 30 % rate. Every run must end flat within
its deadline and no close may ever flip a position."""

from __future__ import annotations

import pytest

from ess.chaos.venue import FAILURES, FAULT_RATE, _spread, run_campaign
from ess.sim import FaultKind

pytestmark = pytest.mark.integration


def test_the_spread_gives_each_kind_an_equal_share_of_the_rate() -> None:
    probabilities = _spread(0.3, 13)
    reached, shares = 1.0, []
    for probability in probabilities:
        shares.append(reached * probability)
        reached *= 1 - probability
    assert shares == pytest.approx([0.3 / 13] * 13)
    assert 1 - reached == pytest.approx(0.3)


async def test_quick_venue_campaign_ends_flat_and_never_flips() -> None:
    figures = await run_campaign(quick=True, seed=11)

    assert figures["runs"] == 3, figures
    assert {name: figures[name] for name in FAILURES} == dict.fromkeys(FAILURES, 0), figures
    assert figures["flat_within_deadline"] == figures["runs"], figures
    times = figures["time_to_flat_s"]
    assert 0 < times["p50"] <= times["p99"] <= times["max"] <= figures["deadline_s"], figures
    assert figures["fault_rate"] == FAULT_RATE
    # The kinds that stand in for the answer fire on every kind of endpoint: with three runs'
    # worth of requests each of them must have fired (the per-endpoint ones may not have).
    fired = figures["faults_fired"]
    common = {
        FaultKind.HTTP_429, FaultKind.HTTP_418, FaultKind.HTTP_500, FaultKind.HTTP_503,
        FaultKind.HANG, FaultKind.EXEC_THEN_HANG, FaultKind.EMPTY, FaultKind.BAD_JSON,
        FaultKind.INVALID_KEY, FaultKind.ERROR, FaultKind.RATE_LIMIT_CODE,
    }  # fmt: skip
    assert all(fired.get(kind.value, 0) > 0 for kind in common), fired

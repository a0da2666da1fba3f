"""The in-process API campaign, quick: every hostile evaluator, store-loss, restart and
replay variant once (the store, restart and replay ones on every backend). ESS must trip on
every hostile evaluator and keep checking, come back ACTIVE after any store loss or restart,
refuse every replayed reset, and keep every record within the schema's limits."""

from __future__ import annotations

import pytest

from ess.chaos import inprocess
from ess.chaos.inprocess import DEADLINE_S, FAILURES, VARIANTS, run_campaign

pytestmark = pytest.mark.integration

KINDS = {"raise", "hang", "garbage", "name", "store", "restart", "replay", "control"}


def test_the_quick_plan_plays_every_variant_and_every_backend() -> None:
    backends = ["memory", "sqlite", "redis"]
    plan = inprocess._plan(True, 0, backends)

    assert {planned.variant.name for planned in plan} == {variant.name for variant in VARIANTS}
    assert {variant.kind for variant in VARIANTS} == KINDS
    for variant in VARIANTS:
        if variant.every_backend:
            played = {p.backend for p in plan if p.variant.name == variant.name}
            assert played == set(backends), variant.name
    assert {planned.backend for planned in plan} == set(backends)


def test_the_full_plan_repeats_the_quick_one() -> None:
    quick = inprocess._plan(True, 0, ["memory", "sqlite"])
    full = inprocess._plan(False, 0, ["memory", "sqlite"])

    assert len(full) == inprocess.FULL_REPEATS * len(quick)
    assert full == inprocess._plan(False, 0, ["memory", "sqlite"])  # reproducible from seed


async def test_quick_inprocess_campaign_finds_every_failure_count_zero() -> None:
    figures = await run_campaign(quick=True, seed=3)

    assert {name: figures[name] for name in FAILURES} == dict.fromkeys(FAILURES, 0), figures
    assert set(figures["rounds_by_kind"]) == KINDS, figures
    assert all(count > 0 for count in figures["rounds_by_kind"].values()), figures
    assert {"memory", "sqlite"} <= set(figures["rounds_by_backend"]), figures
    backends = len(figures["rounds_by_backend"])
    # Every hostile evaluator round tripped, well within the deadline.
    times = figures["time_to_active_s"]
    assert 0 < times["p50"] <= times["max"] <= DEADLINE_S, figures
    # Replays were played, and every one was refused (none applied).
    assert figures["replays"] >= 7 * backends, figures
    assert sum(figures["resets_refused_by_why"].values()) == figures["replays"], figures
    assert set(figures["resets_refused_by_why"]) <= {"activation_mismatch", "ignored"}, figures
    # A missing record on a non-first start is policy_store_stale.
    assert figures["trips_by_reason"].get("policy_store_stale", 0) >= 5 * backends, figures
    # first_start=True after a loss is INACTIVE by contract (the caller vouches for it).
    assert figures["first_start_after_loss_inactive"] == backends, figures
    assert figures["inactive_restarts"] == 2 * backends, figures

"""system_critical, exchange_disconnected, policy_store_stale, heartbeat_lost, latency_spike."""

from __future__ import annotations

import pytest

from ess.rules.base import Coordinates, trip_command
from ess.rules.config import DetectionConfig
from ess.rules.system import (
    LatencySpikeRule,
    SystemCriticalRule,
    ess_policy_store_failing,
    exchange_disconnected,
    heartbeat_lost,
    policy_store_stale,
)
from schemas import ReasonCode
from tests.rules.support import Driver, at, beat, latency

DEFAULT = DetectionConfig()

# --------------------------------------------------------------------------- system_critical


def test_system_critical_fires_on_critical_only() -> None:
    drv = Driver(SystemCriticalRule(DEFAULT), topic="ess.health")
    assert drv.feed([beat(0), beat(1, status="DEGRADED")]) == []
    hit = drv.step(beat(2, status="CRITICAL", exchange="down"))
    assert hit is not None
    assert hit.reason is ReasonCode.SYSTEM_CRITICAL
    assert hit.key == "trader"
    assert "CRITICAL" in hit.detail
    assert "exchange=down" in hit.detail


def test_system_critical_ignores_ess_itself() -> None:
    drv = Driver(SystemCriticalRule(DEFAULT))
    assert drv.feed([beat(i, component="ess", status="CRITICAL") for i in range(5)]) == []
    assert drv.states == {"ess": drv.rule.initial()}


def test_system_critical_latch_and_re_arm() -> None:
    drv = Driver(SystemCriticalRule(DEFAULT))
    critical = beat(1, status="CRITICAL", event_id="c1")
    assert drv.step(critical) is not None
    assert drv.step(beat(2, status="CRITICAL")) is None
    assert drv.step(beat(2, status="CRITICAL", component="other")) is not None  # own key
    drv.reset()
    assert drv.step(critical) is None  # redelivered from before the reset
    assert drv.step(beat(3)) is None
    assert drv.step(beat(4, status="CRITICAL")) is not None


# --------------------------------------------------------------------------- check runs


def test_exchange_down_for_longer_than_the_limit() -> None:
    drv = Driver(exchange_disconnected(DEFAULT), topic="ess.health")
    assert drv.feed([beat(t, exchange="down") for t in (0, 1, 2, 3, 4, 5)]) == []  # 5 s: not longer
    hit = drv.step(beat(5.001, exchange="down"))
    assert hit is not None
    assert hit.reason is ReasonCode.EXCHANGE_DISCONNECTED
    assert "exchange=down" in hit.detail
    assert "limit 5s" in hit.detail


def test_exchange_up_clears_the_run() -> None:
    drv = Driver(exchange_disconnected(DEFAULT))
    records = [beat(t, exchange="down") for t in (0, 2, 4)] + [beat(4.5, exchange="up")]
    records += [beat(t, exchange="down") for t in (5, 7, 9, 10)]
    assert drv.feed(records) == []  # the run restarted at 5
    assert drv.step(beat(10.5, exchange="down")) is not None


def test_beats_without_the_check_say_nothing() -> None:
    drv = Driver(exchange_disconnected(DEFAULT))
    assert drv.feed([beat(0, exchange="down"), beat(3), beat(4, data_feed="ok")]) == []
    assert drv.step(beat(6, exchange="down")) is not None


def test_a_late_up_beat_cuts_the_run() -> None:
    drv = Driver(exchange_disconnected(DEFAULT))
    assert drv.feed([beat(t, exchange="down") for t in (0, 1, 2, 3, 5)]) == []
    assert drv.step(beat(2.5, exchange="up")) is None  # late: the run is now 3..5
    assert drv.step(beat(8, exchange="down")) is None  # 3..8 = 5 s
    assert drv.step(beat(8.1, exchange="down")) is not None


def test_out_of_order_and_duplicate_down_beats() -> None:
    drv = Driver(exchange_disconnected(DEFAULT))
    first = beat(0, exchange="down", event_id="d0")
    assert drv.feed([beat(3, exchange="down"), first, first, beat(2, exchange="down")]) == []
    hit = drv.step(beat(6, exchange="down"))
    assert hit is not None
    assert "(6s)" in hit.detail


def test_exchange_run_re_anchors_after_a_reset() -> None:
    drv = Driver(exchange_disconnected(DEFAULT))
    assert len(drv.feed([beat(t, exchange="down") for t in range(7)])) == 1
    drv.reset()
    assert drv.feed([beat(t, exchange="down") for t in range(7, 13)]) == []  # 7..12 = 5 s
    assert drv.step(beat(13, exchange="down")) is not None


def test_ignored_components_do_not_trip_check_runs() -> None:
    drv = Driver(exchange_disconnected(DEFAULT))
    assert drv.feed([beat(t, component="ess", exchange="down") for t in range(20)]) == []


def test_policy_store_stale_for_longer_than_the_limit() -> None:
    drv = Driver(policy_store_stale(DetectionConfig(policy_store_stale_sec=2)))
    records = [beat(0, policy_store="stale"), beat(1, policy_store="ok")]
    records += [beat(t, policy_store="stale") for t in (2, 3, 4)]
    assert drv.feed(records) == []
    hit = drv.step(beat(4.5, policy_store="stale"))
    assert hit is not None
    assert hit.reason is ReasonCode.POLICY_STORE_STALE
    assert "policy_store=stale" in hit.detail


def test_ess_policy_store_failing_reads_esss_own_beats() -> None:
    """ESS's projector cannot write the record: ``policy_store_stale``, from ESS's own beat
    (the one health rule that does not ignore the ``ess`` component)."""
    drv = Driver(ess_policy_store_failing(DetectionConfig(ess_policy_store_failing_sec=10)))
    assert (
        drv.feed([beat(t, component="ess", policy_store_writes="failing") for t in range(11)]) == []
    )
    hit = drv.step(beat(10.5, component="ess", policy_store_writes="failing"))
    assert hit is not None
    assert hit.reason is ReasonCode.POLICY_STORE_STALE
    assert hit.rule == "ess_policy_store_failing"


def test_ess_policy_store_failing_ignores_a_projector_that_only_does_not_vouch() -> None:
    drv = Driver(ess_policy_store_failing(DetectionConfig(ess_policy_store_failing_sec=1)))
    records = [
        beat(t, component="ess", policy_store="stale", policy_store_writes="ok") for t in range(30)
    ]
    assert drv.feed(records) == []


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_lost_after_the_timeout_with_the_last_beat_as_trigger() -> None:
    drv = Driver(heartbeat_lost(DEFAULT), topic="ess.health", partition=2)
    drv.feed([beat(0), beat(10), beat(5)])  # offsets 0, 1, 2; the newest beat is offset 1
    assert drv.tick("trader", at(25)) is None  # exactly 15 s: not longer
    hit = drv.tick("trader", at(25.001))
    assert hit is not None
    assert hit.reason is ReasonCode.HEARTBEAT_LOST
    assert (hit.trigger.topic, hit.trigger.partition, hit.trigger.offset) == ("ess.health", 2, 1)
    assert hit.trigger.event_ts == at(25)  # last beat + timeout, not the watermark
    assert drv.tick("trader", at(100)) is None  # latched


def test_a_beat_stamped_in_the_future_does_not_postpone_heartbeat_lost() -> None:
    """Issue 13 finding 5: a beat stamped 290 s ahead (inside the decoder's 300 s skew) but
    logged at t=0 counts from t=0: silence is still detected 15 s later, not 305 s."""
    drv = Driver(heartbeat_lost(DEFAULT), topic="ess.health")
    drv.step(beat(290), logged=at(0))
    assert drv.tick("trader", at(15)) is None
    hit = drv.tick("trader", at(15.001))
    assert hit is not None
    assert hit.reason is ReasonCode.HEARTBEAT_LOST
    assert hit.trigger.event_ts == at(15)


def test_a_beat_logged_after_its_ts_counts_from_its_ts() -> None:
    """The earlier of the two clocks: a beat that waited in a producer buffer is not younger
    than it says."""
    drv = Driver(heartbeat_lost(DEFAULT), topic="ess.health")
    drv.step(beat(0), logged=at(8))
    assert drv.tick("trader", at(15.001)) is not None


def test_heartbeat_decision_is_independent_of_tick_cadence() -> None:
    """Live (frequent ticks) and replay (one late tick) agree on trigger and event time."""
    live = Driver(heartbeat_lost(DEFAULT), topic="ess.health")
    replay = Driver(heartbeat_lost(DEFAULT), topic="ess.health")
    for drv in (live, replay):
        drv.feed([beat(0), beat(5)])
    live_hits = [live.tick("trader", at(t)) for t in range(6, 40)]
    replay_hit = replay.tick("trader", at(3600))
    found = [h for h in live_hits if h is not None]
    assert len(found) == 1
    assert replay_hit is not None
    assert trip_command(found[0]).command_id == trip_command(replay_hit).command_id
    assert found[0].trigger == replay_hit.trigger


def test_heartbeat_ignores_unseen_unrequired_and_ignored_components() -> None:
    config = DetectionConfig(required_components=frozenset({"risk"}))
    drv = Driver(heartbeat_lost(config))
    assert drv.tick("nobody", at(1000)) is None
    drv.feed([beat(0, component="ess")])
    assert drv.tick("ess", at(1000)) is None
    # A required component never seen: the clock starts at the first tick.
    assert drv.tick("risk", at(100)) is None
    assert drv.tick("risk", at(115)) is None
    hit = drv.tick("risk", at(115.5))
    assert hit is not None
    assert hit.trigger.topic == "ess.health"
    assert (hit.trigger.partition, hit.trigger.offset) == (0, 0)
    assert hit.trigger.event_ts == at(115)
    assert "never seen" in hit.detail


def test_heartbeat_re_arms_after_a_reset_with_a_new_command_id() -> None:
    drv = Driver(heartbeat_lost(DEFAULT), topic="ess.health")
    drv.step(beat(0))
    first = drv.tick("trader", at(20))
    assert first is not None
    drv.reset(started=at(60))
    # Still silent: the silence clock restarts at the reset (60 s), not the last beat.
    assert drv.tick("trader", at(70)) is None
    assert drv.tick("trader", at(75)) is None
    again = drv.tick("trader", at(75.5))
    assert again is not None
    assert again.trigger.event_ts == at(75)
    assert again.trigger.offset == first.trigger.offset  # the same last beat
    assert trip_command(again).command_id != trip_command(first).command_id
    assert again.discriminator == "epoch:1"


def test_heartbeat_after_reset_without_epoch_start_uses_first_watermark() -> None:
    drv = Driver(heartbeat_lost(DEFAULT))
    drv.step(beat(0))
    assert drv.tick("trader", at(20)) is not None
    drv.reset()
    assert drv.tick("trader", at(30)) is None  # anchors the clock at 30
    assert drv.tick("trader", at(45.5)) is not None


def test_heartbeat_resumed_beats_after_reset_keep_plain_ids() -> None:
    drv = Driver(heartbeat_lost(DEFAULT))
    drv.step(beat(0))
    assert drv.tick("trader", at(20)) is not None
    drv.reset(started=at(30))
    drv.step(beat(40))
    hit = drv.tick("trader", at(56))
    assert hit is not None
    assert hit.discriminator == ""  # a new last beat: its coordinates are new
    assert hit.trigger.event_ts == at(55)


# --------------------------------------------------------------------------- latency


def test_latency_spike_three_consecutive_samples_above() -> None:
    drv = Driver(LatencySpikeRule(DEFAULT), topic="ess.latency")
    assert drv.feed([latency(6000, 0), latency(7000, 1), latency(5000, 2)]) == []  # 5000: not above
    assert drv.feed([latency(5001, 3), latency(9000, 4)]) == []
    hit = drv.step(latency(5500, 5))
    assert hit is not None
    assert hit.reason is ReasonCode.LATENCY_SPIKE
    assert hit.key == "gateway|place_order"
    assert "3 consecutive" in hit.detail
    assert "5001, 9000, 5500" in hit.detail


def test_latency_keys_are_per_operation() -> None:
    drv = Driver(LatencySpikeRule(DEFAULT))
    records = [latency(9000, t, operation=op) for t in range(2) for op in ("place", "cancel")]
    assert drv.feed(records) == []
    assert drv.step(latency(9000, 3, operation="cancel")) is not None


def test_latency_consecutive_in_event_time_and_duplicates() -> None:
    drv = Driver(LatencySpikeRule(DEFAULT))
    slow = latency(9000, 2, event_id="s2")
    assert drv.feed([latency(9000, 1), slow, slow]) == []  # a duplicate is not a third sample
    # A late, older, fast sample: the newest three by time are now 0 (fast), 1, 2.
    assert drv.step(latency(100, 0)) is None
    assert drv.step(latency(9000, 3)) is not None  # newest three: 1, 2, 3


def test_latency_quantile_mode() -> None:
    config = DetectionConfig(latency_quantile=0.9, latency_min_samples=10, latency_window_sec=60)
    drv = Driver(LatencySpikeRule(config))
    # n = 10: the p90 (nearest rank 9) is above only when more than 1 sample is above.
    records = [latency(100, t) for t in range(8)] + [latency(8000, 8)]
    assert drv.feed(records) == []  # 9 samples: below the minimum anyway
    assert drv.step(latency(100, 9)) is None  # 10 samples, 1 above
    hit = drv.step(latency(8000, 10))  # 11 samples, 2 above: rank 10 -> 8000
    assert hit is not None
    assert "p90" in hit.detail
    assert "8000 ms" in hit.detail


def test_latency_quantile_window_slides() -> None:
    config = DetectionConfig(latency_quantile=0.5, latency_min_samples=2, latency_window_sec=10)
    drv = Driver(LatencySpikeRule(config))
    assert drv.feed([latency(9000, 0), latency(100, 1), latency(100, 20)]) == []
    assert drv.step(latency(9000, 21)) is None  # [11, 21]: 100, 9000: p50 = 100
    assert drv.step(latency(9000, 22)) is not None


def test_latency_latch_and_re_arm() -> None:
    drv = Driver(LatencySpikeRule(DEFAULT))
    assert len(drv.feed([latency(9000, t) for t in range(5)])) == 1
    drv.reset()
    assert drv.feed([latency(9000, t) for t in range(5)]) == []  # pre-reset times
    assert drv.feed([latency(9000, t) for t in (5, 6)]) == []  # samples cleared by the reset
    assert drv.step(latency(9000, 7)) is not None


@pytest.mark.parametrize("rule", [exchange_disconnected, policy_store_stale, heartbeat_lost])
def test_health_rules_are_keyed_by_component(rule: object) -> None:
    built = rule(DEFAULT)  # type: ignore[operator]
    assert built.key(beat(component="x")) == "x"
    assert built.topic == "health"


def test_detection_coordinates_come_from_the_runtime() -> None:
    rule = SystemCriticalRule(DEFAULT)
    _, hit = rule.step(
        rule.initial(), beat(1, status="CRITICAL"), Coordinates("p.health", 7, 42), Driver(rule).ctx
    )
    assert hit is not None
    assert (hit.trigger.topic, hit.trigger.partition, hit.trigger.offset) == ("p.health", 7, 42)


def test_heartbeat_late_beat_after_a_reset_does_not_reuse_the_first_trip() -> None:
    drv = Driver(heartbeat_lost(DEFAULT))
    drv.step(beat(10))
    first = drv.tick("trader", at(30))
    assert first is not None
    drv.reset(started=at(40))
    drv.step(beat(5))  # a late, older beat arrives after the reset
    assert drv.tick("trader", at(41)) is None  # silence counts from the reset
    again = drv.tick("trader", at(56))
    assert again is not None
    assert trip_command(again).command_id != trip_command(first).command_id


def test_over_long_detail_still_makes_a_valid_trip_command() -> None:
    checks = {f"check-{i:02d}-" + "x" * 200: "y" * 250 for i in range(64)}
    drv = Driver(SystemCriticalRule(DEFAULT))
    hit = drv.step(beat(0, status="CRITICAL", **checks))
    assert hit is not None
    assert len(hit.detail) == 4096
    assert hit.detail.endswith("\u2026")
    assert trip_command(hit).detail == hit.detail

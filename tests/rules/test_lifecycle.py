"""Announced silence (``HealthBeat.lifecycle``) in the ``heartbeat_lost`` fold, and what the
other health rules make of such beats.

A component that announced ``retired`` is no longer watched (a later ``running`` beat watches
it again); one in ``maintenance`` is lost only ``heartbeat_timeout_sec`` after its announced
end, capped at ``max_maintenance_sec`` after the beat; one that vanishes without a word trips
as before, and beats without the new fields fold exactly as before.
"""

from __future__ import annotations

import json
import random
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from ess.rules.base import Detection, trip_command
from ess.rules.config import DetectionConfig
from ess.rules.silence import SilenceRule, SilenceState
from ess.rules.system import SystemCriticalRule, exchange_disconnected, heartbeat_lost
from schemas import HealthBeat, ReasonCode, decode
from tests.rules.support import Driver, at, beat

DEFAULT = DetectionConfig()  # timeout 15 s, maintenance at most 4 h


def lost(config: DetectionConfig = DEFAULT) -> Driver:
    return Driver(heartbeat_lost(config), topic="ess.health")


# --------------------------------------------------------------------------- retired


def test_a_retired_component_is_never_lost() -> None:
    drv = lost()
    drv.feed([beat(0), beat(5, lifecycle="retired")])
    assert drv.tick("trader", at(21)) is None
    assert drv.tick("trader", at(86_400 * 30)) is None
    assert drv.state("trader").retired


def test_a_running_beat_after_retirement_registers_the_component_again() -> None:
    drv = lost()
    drv.feed([beat(0), beat(5, lifecycle="retired")])
    assert drv.tick("trader", at(1000)) is None
    drv.step(beat(2000))  # offset 2
    assert drv.tick("trader", at(2015)) is None
    hit = drv.tick("trader", at(2015.5))
    assert hit is not None
    assert hit.trigger.offset == 2
    assert hit.trigger.event_ts == at(2015)


def test_an_older_running_beat_delivered_late_does_not_undo_a_retirement() -> None:
    drv = lost()
    drv.feed([beat(10, lifecycle="retired"), beat(5), beat(10, event_id="same-time")])
    assert drv.tick("trader", at(1000)) is None


def test_a_vanished_component_still_trips_next_to_a_retired_one() -> None:
    drv = lost()
    drv.feed(
        [
            beat(0, component="gone"),
            beat(0, component="retiring"),
            beat(1, component="retiring", lifecycle="retired"),
        ]
    )
    assert drv.tick("retiring", at(100)) is None
    hit = drv.tick("gone", at(100))
    assert hit is not None
    assert hit.key == "gone"
    assert hit.trigger.event_ts == at(15)


def test_a_required_component_cannot_retire_itself() -> None:
    config = DetectionConfig(required_components=frozenset({"risk"}))
    drv = lost(config)
    drv.step(beat(0, component="risk", lifecycle="retired"))
    hit = drv.tick("risk", at(15.5))
    assert hit is not None
    assert hit.trigger.event_ts == at(15)
    assert "announced its retirement, but it is a required component" in hit.detail


# --------------------------------------------------------------------------- maintenance


def test_maintenance_is_not_lost_before_its_end_plus_the_timeout() -> None:
    drv = lost()
    drv.feed([beat(0), beat(10, lifecycle="maintenance", until=600)])  # offset 1
    assert drv.tick("trader", at(26)) is None  # would be lost without the announcement
    assert drv.tick("trader", at(615)) is None  # exactly the timeout after the end
    hit = drv.tick("trader", at(615.001))
    assert hit is not None
    assert hit.trigger.offset == 1  # the announcing beat
    assert hit.trigger.event_ts == at(615)
    assert "end of its announced maintenance" in hit.detail
    assert hit.discriminator == ""


def test_a_running_beat_ends_a_maintenance_early() -> None:
    drv = lost()
    drv.feed([beat(0, lifecycle="maintenance", until=3600), beat(100)])
    hit = drv.tick("trader", at(115.5))
    assert hit is not None
    assert hit.trigger.event_ts == at(115)


def test_a_maintenance_longer_than_the_maximum_is_capped() -> None:
    drv = lost(DetectionConfig(max_maintenance_sec=3600))
    drv.step(beat(0, lifecycle="maintenance", until=30 * 86_400))  # "back in a month"
    assert drv.tick("trader", at(3615)) is None
    hit = drv.tick("trader", at(3615.5))
    assert hit is not None
    assert hit.trigger.event_ts == at(3615)
    assert "at most 3600s after the announcement" in hit.detail


def test_the_default_maximum_maintenance_is_four_hours() -> None:
    assert DEFAULT.max_maintenance_sec == 4 * 3600
    drv = lost()
    drv.step(beat(0, lifecycle="maintenance", until=86_400))
    assert drv.tick("trader", at(4 * 3600 + 15)) is None
    assert drv.tick("trader", at(4 * 3600 + 16)) is not None


def test_the_cap_counts_from_when_the_beat_was_logged_if_earlier() -> None:
    """A beat stamped ahead of the broker (within the accepted skew) counts from when it was
    logged, for the cap too: the future stamp buys no extra maintenance."""
    drv = lost(DetectionConfig(max_maintenance_sec=600))
    drv.step(beat(290, lifecycle="maintenance", until=86_400), logged=at(0))
    hit = drv.tick("trader", at(616))
    assert hit is not None
    assert hit.trigger.event_ts == at(615)


def test_repeated_maintenance_beats_keep_a_live_component_in_maintenance() -> None:
    # Each announcement is a beat: the component is alive. The cap bounds one announcement.
    drv = lost(DetectionConfig(max_maintenance_sec=3600))
    for hour in range(5):
        drv.step(beat(hour * 3000, lifecycle="maintenance", until=hour * 3000 + 86_400))
        assert drv.tick("trader", at(hour * 3000 + 2999)) is None
    assert drv.tick("trader", at(12_000 + 3615.5)) is not None


def test_a_required_component_may_go_into_maintenance() -> None:
    drv = lost(DetectionConfig(required_components=frozenset({"risk"})))
    drv.step(beat(0, component="risk", lifecycle="maintenance", until=300))
    assert drv.tick("risk", at(315)) is None
    assert drv.tick("risk", at(315.5)) is not None


def test_maintenance_across_a_reset() -> None:
    # A reset during the maintenance: the end still counts (later than the reset).
    during = lost()
    during.step(beat(0, lifecycle="maintenance", until=600))
    during.reset(started=at(100))
    assert during.tick("trader", at(615)) is None
    hit = during.tick("trader", at(615.5))
    assert hit is not None
    assert hit.trigger.event_ts == at(615)
    assert hit.discriminator == ""
    # A trip after the maintenance, then a reset: re-armed from the reset with a new id.
    after = lost()
    after.step(beat(0, lifecycle="maintenance", until=600))
    first = after.tick("trader", at(616))
    assert first is not None
    after.reset(started=at(700))
    assert after.tick("trader", at(715)) is None
    again = after.tick("trader", at(715.5))
    assert again is not None
    assert again.discriminator == "epoch:1"
    assert trip_command(again).command_id != trip_command(first).command_id


# --------------------------------------------------------------------------- compatibility


OLD_BEAT = b'{"event_id":"e1","component":"trader","status":"HEALTHY","ts":"2026-11-23T10:00:00Z"}'


def test_a_beat_without_the_new_fields_folds_exactly_as_before() -> None:
    old = decode(HealthBeat, OLD_BEAT)
    assert (old.lifecycle.value, old.maintenance_until) == ("running", None)
    # The same rule without lifecycle support (what data_feed_stale is) as the reference.
    reference = SilenceRule(
        name="heartbeat_lost",
        topic="health",
        reason=ReasonCode.HEARTBEAT_LOST,
        what="health beat",
        key_field="component",
        timeout_sec=15.0,
        required=frozenset(),
        ignore=frozenset({"ess"}),
        never_seen_topic="ess.health",
    )
    new, ref = lost(), Driver(reference, topic="ess.health")
    for drv in (new, ref):
        drv.step(old)
    assert new.state("trader") == ref.state("trader")
    assert new.rule.dump(new.state("trader")) == {
        **ref.rule.dump(ref.state("trader")),
        "retired": False,
        "until": None,
    }
    hits = [drv.tick("trader", at(15.5)) for drv in (new, ref)]
    assert hits[0] is not None
    assert hits[0] == hits[1]


def test_a_state_stored_before_the_new_fields_loads() -> None:
    rule = heartbeat_lost(DEFAULT)
    stored = {
        "epoch": 0,
        "fired": False,
        "last": 1_700_000_000_000_000,
        "topic": "ess.health",
        "partition": 1,
        "offset": 9,
        "anchor": None,
    }
    state = rule.load(json.loads(json.dumps(stored)))
    assert state == SilenceState(0, False, 1_700_000_000_000_000, "ess.health", 1, 9, None)
    assert (state.retired, state.until) == (False, None)


# --------------------------------------------------------------------------- other rules


def test_a_critical_beat_trips_whatever_its_lifecycle() -> None:
    drv = Driver(SystemCriticalRule(DEFAULT), topic="ess.health")
    retiring = drv.step(beat(0, component="a", status="CRITICAL", lifecycle="retired"))
    pausing = drv.step(
        beat(0, component="b", status="CRITICAL", lifecycle="maintenance", until=600)
    )
    assert retiring is not None
    assert pausing is not None
    assert {retiring.reason, pausing.reason} == {ReasonCode.SYSTEM_CRITICAL}


def test_checks_of_a_maintenance_beat_are_read_as_usual() -> None:
    drv = Driver(exchange_disconnected(DEFAULT), topic="ess.health")
    drv.feed([beat(t, lifecycle="maintenance", until=600, exchange="down") for t in (0, 3)])
    assert drv.step(beat(6, lifecycle="maintenance", until=600, exchange="down")) is not None


# --------------------------------------------------------------------------- determinism

COMPONENTS = ("a", "b", "c")


@st.composite
def announcements(draw: st.DrawFn) -> list[HealthBeat]:
    """Beats of a few components at distinct times (per component) with any lifecycle."""
    out = []
    for component in COMPONENTS:
        times = draw(st.lists(st.integers(0, 20_000), min_size=1, max_size=6, unique=True))
        for t in times:
            lifecycle = draw(st.sampled_from(["running", "maintenance", "retired"]))
            until = t + draw(st.integers(1, 30_000)) if lifecycle == "maintenance" else None
            out.append(
                beat(
                    float(t),
                    component=component,
                    lifecycle=lifecycle,
                    until=None if until is None else float(until),
                    event_id=f"{component}-{t}",
                )
            )
    return out


def _decisions(drv: Driver) -> set[tuple[str, str, datetime]]:
    return {
        (trip_command(hit).command_id, hit.key, hit.trigger.event_ts)
        for hit in drv.detections
        if isinstance(hit, Detection)
    }


@settings(max_examples=150, deadline=None)
@given(
    records=announcements(),
    extra=st.lists(st.integers(0, 60_000), max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_same_records_same_decisions_whatever_the_tick_cadence(
    records: list[HealthBeat], extra: list[int], seed: int
) -> None:
    """Replay determinism. A live worker ticks on its own clock (here: before each record and
    at extra moments in between); a replay ticks only where records are (before each, at its
    log time), and records of one moment may come in another order. Both take the same
    decisions (command id, component, event time): silence only grows between records, so a
    gap a live tick finds is found at the next record's tick too, with the same trigger and
    event time (the start of the silence plus the timeout, never the tick's time)."""
    config = DetectionConfig(max_maintenance_sec=10_000)
    end = at(100_000)
    ordered = sorted(enumerate(records), key=lambda item: item[1].ts)
    live, replay = lost(config), lost(config)
    pending = sorted(at(x) for x in extra)
    for offset, record in ordered:
        while pending and pending[0] < record.ts:
            watermark = pending.pop(0)
            for component in COMPONENTS:
                live.tick(component, watermark)
        for component in COMPONENTS:
            live.tick(component, record.ts)
        live.step(record, offset)
    rng = random.Random(seed)
    by_moment: dict[datetime, list[tuple[int, HealthBeat]]] = {}
    for offset, record in ordered:
        by_moment.setdefault(record.ts, []).append((offset, record))
    for moment, group in by_moment.items():
        for component in COMPONENTS:
            replay.tick(component, moment)
        rng.shuffle(group)
        for offset, record in group:
            replay.step(record, offset)
    for drv in (live, replay):
        for component in COMPONENTS:
            drv.tick(component, end)
    assert _decisions(live) == _decisions(replay)
    # The decisions follow the announcements: by the end every component whose newest beat
    # did not retire it is lost (every maintenance is over), and a component that retired is
    # never lost for a silence after its retirement.
    decided = _decisions(replay)
    for component in COMPONENTS:
        newest = max((r for r in records if r.component == component), key=lambda r: r.ts)
        mine = [ts for _id, key, ts in decided if key == component]
        if newest.lifecycle.value == "retired":
            assert all(ts <= newest.ts for ts in mine)
        else:
            assert mine

"""The catalog API, the Detector driver and trip command ids."""

from __future__ import annotations

import json
from typing import Any

from ess.core.ids import derive_id
from ess.rules.base import Context, Coordinates, Detection, trip_command
from ess.rules.catalog import (
    RECORD_TYPE,
    TOPICS,
    Detector,
    accepts_invalid,
    build_rules,
    is_silence_rule,
    required_keys,
)
from ess.rules.config import ALL_RULES, DetectionConfig
from schemas import ReasonCode, TriggerRef, topic_registry
from tests.rules.support import (
    at,
    beat,
    fill,
    latency,
    order,
    order_error,
    pnl,
    security,
    tick,
)

CTX = Context()

SAMPLES: dict[str, Any] = {
    "fills": fill(symbol="ETH|X"),
    "pnl": pnl(1000),
    "orders": order(),
    "order_errors": order_error(),
    "health": beat(),
    "latency": latency(10),
    "market": tick(),
    "security": security("api_key_invalid"),
}


def test_catalog_covers_every_input_topic_and_rule() -> None:
    registry = topic_registry()
    inputs = {spec.logical: spec for spec in registry.topics if spec.role == "input"}
    assert set(TOPICS) == set(inputs) == set(RECORD_TYPE)
    for topic, model in RECORD_TYPE.items():
        assert inputs[topic].records == (model.__name__,)
    rules = build_rules()
    assert set(rules) == set(TOPICS)
    names = [rule.name for topic_rules in rules.values() for rule in topic_rules]
    assert sorted(names) == sorted(ALL_RULES)
    reasons = {rule.reason for topic_rules in rules.values() for rule in topic_rules}  # type: ignore[attr-defined]
    # Not detectors': operators' manual trips, and the command processor's re-established
    # stop after a lost state log.
    assert reasons == set(ReasonCode) - {ReasonCode.MANUAL, ReasonCode.STATE_LOG_LOST}
    for topic, topic_rules in rules.items():
        for rule in topic_rules:
            assert rule.topic == topic


def test_rule_keys_stay_within_the_kafka_key() -> None:
    """A rule's key is the record's Kafka key, or refines it: state is co-partitioned."""
    registry = topic_registry()
    for topic, topic_rules in build_rules().items():
        record = SAMPLES[topic]
        kafka_key = getattr(record, getattr(registry, topic).key)
        for rule in topic_rules:
            key = rule.key(record)
            assert key == kafka_key or key.startswith(kafka_key + "|"), (rule.name, key)


def test_silence_and_invalid_markers() -> None:
    config = DetectionConfig(required_components=frozenset({"risk"}))
    rules = {rule.name: rule for rs in build_rules(config).values() for rule in rs}
    assert {n for n, r in rules.items() if is_silence_rule(r)} == {
        "heartbeat_lost",
        "data_feed_stale",
    }
    assert {n for n, r in rules.items() if accepts_invalid(r)} == {"data_feed_corrupt"}
    assert required_keys(rules["heartbeat_lost"]) == {"risk"}
    assert required_keys(rules["daily_loss"]) == frozenset()


def test_non_silence_rules_tick_to_nothing() -> None:
    for topic_rules in build_rules().values():
        for rule in topic_rules:
            if not is_silence_rule(rule):
                state = rule.initial()
                assert rule.tick(state, "k", at(10_000), CTX) == (state, None)


def test_enabled_rules_filter() -> None:
    detector = Detector(DetectionConfig(enabled_rules=frozenset({"trade_rate"})))
    assert {t: [r.name for r in rs] for t, rs in detector.rules.items() if rs} == {
        "fills": ["trade_rate"]
    }
    assert detector.process("pnl", pnl(1), Coordinates("p", 0, 0), CTX) == ()


def test_detector_applies_every_rule_of_a_topic() -> None:
    detector = Detector()
    coords = Coordinates("ess.pnl", 3, 0)
    assert detector.process("pnl", pnl(1000, 0), coords, CTX) == ()
    found = detector.process("pnl", pnl(700, 1), Coordinates("ess.pnl", 3, 1), CTX)
    assert {d.reason for d in found} == {
        ReasonCode.DAILY_LOSS,
        ReasonCode.EQUITY_DRAWDOWN,
        ReasonCode.FLASH_CRASH,
    }
    assert {d.trigger.offset for d in found} == {1}
    assert set(detector.states) == set(ALL_RULES)
    assert set(detector.states["daily_loss"]) == {"acct"}


def test_detector_tick_and_invalid() -> None:
    config = DetectionConfig(required_components=frozenset({"risk"}), corrupt_min_ticks=1)
    detector = Detector(config)
    detector.process("health", beat(0), Coordinates("ess.health", 0, 5), CTX)
    assert detector.tick(at(1), CTX) == ()  # anchors "risk"
    found = detector.tick(at(20), CTX)
    assert [(d.rule, d.key) for d in found] == [
        ("heartbeat_lost", "risk"),
        ("heartbeat_lost", "trader"),
    ]
    assert detector.tick(at(20), CTX, topic="market") == ()
    bad = detector.invalid("market", "BTC/USDT", Coordinates("ess.market", 0, 1), at(2), CTX)
    assert [d.reason for d in bad] == [ReasonCode.DATA_FEED_CORRUPT]
    assert detector.invalid("pnl", "acct", Coordinates("ess.pnl", 0, 1), at(2), CTX) == ()


def test_detector_states_dump_and_load() -> None:
    detector = Detector()
    for offset, (topic, record) in enumerate(SAMPLES.items()):
        detector.process(topic, record, Coordinates(f"ess.{topic}", 0, offset), CTX)
    by_name = {rule.name: rule for rs in detector.rules.values() for rule in rs}
    for name, table in detector.states.items():
        rule = by_name[name]
        for state in table.values():
            text = json.dumps(rule.dump(state))
            assert rule.load(json.loads(text)) == state


def _detections(detector: Detector) -> list[Detection]:
    records = [pnl(1000, 0), pnl(850, 1), beat(2, status="CRITICAL")]
    topics = ["pnl", "pnl", "health"]
    found: list[Detection] = []
    for offset, (topic, record) in enumerate(zip(topics, records, strict=True)):
        found += detector.process(topic, record, Coordinates(f"ess.{topic}", 1, offset), CTX)
    return found


def test_trip_command_ids_are_deterministic_for_the_same_trigger() -> None:
    first = [trip_command(d) for d in _detections(Detector())]
    second = [trip_command(d) for d in _detections(Detector())]
    assert [c.command_id for c in first] == [c.command_id for c in second]
    assert len({c.command_id for c in first}) == len(first) == 3
    for command in first:
        assert command.source.startswith("detector:")
        assert command.trigger is not None
        assert command.ts == command.trigger.event_ts


def test_trip_command_id_formula_without_discriminator_is_unchanged() -> None:
    trigger = TriggerRef(topic="ess.pnl", partition=2, offset=9, event_ts=at(0))
    plain = Detection("daily_loss", ReasonCode.DAILY_LOSS, "a", "x", trigger)
    assert trip_command(plain).command_id == derive_id(
        "detector", "daily_loss", "a", "ess.pnl", 2, 9
    )
    again = Detection("daily_loss", ReasonCode.DAILY_LOSS, "a", "x", trigger, "epoch:1")
    assert trip_command(again).command_id != trip_command(plain).command_id
    assert (
        trip_command(again).command_id
        == trip_command(
            Detection("daily_loss", ReasonCode.DAILY_LOSS, "a", "other text", trigger, "epoch:1")
        ).command_id
    )

"""The rule catalog: which rules run on which logical topic, and a small pure driver.

API (stable; the stream runtime and the benchmark code against it)::

    RECORD_TYPE: dict[str, type[BaseModel]]      # logical topic -> record model
    TOPICS: tuple[str, ...]                      # the logical input topics, contract order
    build_rules(config: DetectionConfig | None = None) -> dict[str, list[Rule[Any, Any]]]
    is_silence_rule(rule) -> bool                # has a meaningful ``tick``
    required_keys(rule) -> frozenset[str]        # keys to tick even if never seen
    accepts_invalid(rule) -> bool                # has ``invalid(...)`` (see below)

    detector = Detector(config)                  # or Detector(rules=build_rules(config))
    detector.process(topic, record, coords, ctx=Context()) -> tuple[Detection, ...]
    detector.tick(watermark, ctx, topic=None) -> tuple[Detection, ...]
    detector.invalid(topic, key, coords, event_ts, ctx) -> tuple[Detection, ...]
    detector.states[rule.name][key]              # per-(rule, key) state, plain dicts

Every rule of a topic is keyed by a function of the record that only uses fields of the
topic's Kafka key (account, component, symbol, source), possibly refined (``account|symbol``
for ``position_size``, ``component|operation`` for ``latency_spike``): a rule's keys always
live in the partition of the record, so per-key state can sit in a table co-partitioned with
the topic. Rule names are unique across the catalog.

Records that fail schema validation: a rule that counts them (``data_feed_corrupt``: "a high
bad-record rate is itself the trigger") has a method
``invalid(state, key, coords, event_ts, ctx) -> (state, Detection | None)``; the runtime
calls it (or :meth:`Detector.invalid`) when the key can still be read from the raw record
(for example ``symbol`` from the JSON object), with the record's own ``ts`` if it parses and
the Kafka timestamp otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from ess.rules.account import DailyLossRule, DrawdownRule, FlashCrashRule
from ess.rules.base import Context, Coordinates, Detection, Rule
from ess.rules.behaviour import (
    OrderSizeRule,
    PositionSizeRule,
    execution_errors,
    order_rejects,
    stop_loss_cluster,
    trade_rate,
)
from ess.rules.config import DetectionConfig
from ess.rules.market import CorruptFeedRule, stale_feed
from ess.rules.security import security_rules
from ess.rules.system import (
    LatencySpikeRule,
    SystemCriticalRule,
    ess_policy_store_failing,
    exchange_disconnected,
    heartbeat_lost,
    policy_store_stale,
)
from schemas import (
    Fill,
    HealthBeat,
    LatencySample,
    MarketTick,
    OrderError,
    OrderSubmitted,
    PnlTick,
    SecurityEvent,
)

AnyRule = Rule[Any, Any]

#: Logical input topic -> the record model its values decode to.
RECORD_TYPE: dict[str, type[BaseModel]] = {
    "fills": Fill,
    "pnl": PnlTick,
    "orders": OrderSubmitted,
    "order_errors": OrderError,
    "health": HealthBeat,
    "latency": LatencySample,
    "market": MarketTick,
    "security": SecurityEvent,
}

#: The logical input topics, in contract order.
TOPICS: tuple[str, ...] = tuple(RECORD_TYPE)

_DEFAULT_CONFIG = DetectionConfig()
_NO_DETECTIONS: tuple[Detection, ...] = ()
_NO_KEYS: frozenset[str] = frozenset()
_EPOCH0 = Context()


def build_rules(config: DetectionConfig | None = None) -> dict[str, list[AnyRule]]:
    """Every enabled rule, grouped by logical topic (all of :data:`TOPICS` present, possibly
    with an empty list). Rules are built once per config: they precompute their thresholds."""
    cfg = _DEFAULT_CONFIG if config is None else config
    every: list[AnyRule] = [
        DailyLossRule(cfg),
        DrawdownRule(cfg),
        FlashCrashRule(cfg),
        trade_rate(cfg),
        stop_loss_cluster(cfg),
        PositionSizeRule(cfg),
        OrderSizeRule(cfg),
        order_rejects(cfg),
        execution_errors(cfg),
        SystemCriticalRule(cfg),
        exchange_disconnected(cfg),
        policy_store_stale(cfg),
        ess_policy_store_failing(cfg),
        heartbeat_lost(cfg),
        LatencySpikeRule(cfg),
        CorruptFeedRule(cfg),
        stale_feed(cfg),
        *security_rules(cfg),
    ]
    rules: dict[str, list[AnyRule]] = {topic: [] for topic in TOPICS}
    for rule in every:
        if rule.name in cfg.enabled_rules:
            rules[rule.topic].append(rule)
    return rules


def is_silence_rule(rule: AnyRule) -> bool:
    """Whether ``rule.tick`` can detect (``heartbeat_lost``, ``data_feed_stale``); the
    runtime need only tick these, for every key it holds state for plus
    :func:`required_keys`."""
    return bool(getattr(rule, "silence", False))


def required_keys(rule: AnyRule) -> frozenset[str]:
    """Keys a silence rule watches before their first record (required components and
    symbols); empty for every other rule."""
    keys: frozenset[str] = getattr(rule, "required", _NO_KEYS)
    return keys


def accepts_invalid(rule: AnyRule) -> bool:
    """Whether the rule counts records that failed validation (has ``invalid``)."""
    return callable(getattr(rule, "invalid", None))


class Detector:
    """All rules of all topics over in-memory per-(rule, key) state: the replay/audit path,
    tests and the baseline benchmark. Not thread-safe; one per consumer.

    ``states[rule_name][key]`` holds the rule's state for the key (absent = ``initial()``);
    callers may read, persist (``rule.dump``) and restore it (``rule.load``). The state dicts
    are mutated in place; the state objects themselves are immutable.
    """

    __slots__ = ("_invalid", "_plan", "_silence", "rules", "states")

    def __init__(
        self,
        config: DetectionConfig | None = None,
        *,
        rules: Mapping[str, Sequence[AnyRule]] | None = None,
    ) -> None:
        built = build_rules(config) if rules is None else {t: list(r) for t, r in rules.items()}
        self.rules: dict[str, list[AnyRule]] = built
        self.states: dict[str, dict[str, Any]] = {}
        plan: dict[str, tuple[tuple[AnyRule, dict[str, Any], Any], ...]] = {}
        for topic, topic_rules in built.items():
            entries = []
            for rule in topic_rules:
                if rule.name in self.states:
                    raise ValueError(f"duplicate rule name {rule.name!r}")
                table: dict[str, Any] = {}
                self.states[rule.name] = table
                entries.append((rule, table, rule.initial()))
            plan[topic] = tuple(entries)
        self._plan = plan
        self._silence = tuple(
            (rule, table)
            for entries in plan.values()
            for rule, table, _ in entries
            if is_silence_rule(rule)
        )
        self._invalid = {
            topic: tuple((rule, table) for rule, table, _ in entries if accepts_invalid(rule))
            for topic, entries in plan.items()
        }

    def process(
        self, topic: str, record: Any, coords: Coordinates, ctx: Context = _EPOCH0
    ) -> tuple[Detection, ...]:
        """Apply every rule of logical ``topic`` to one (validated) record."""
        found: list[Detection] | None = None
        for rule, table, initial in self._plan[topic]:
            key = rule.key(record)
            state = table.get(key, initial)
            new, hit = rule.step(state, record, coords, ctx)
            if new is not state:
                table[key] = new
            if hit is not None:
                if found is None:
                    found = [hit]
                else:
                    found.append(hit)
        return _NO_DETECTIONS if found is None else tuple(found)

    def tick(
        self, watermark: datetime, ctx: Context, topic: str | None = None
    ) -> tuple[Detection, ...]:
        """Advance the silence rules (of ``topic``, or all) to ``watermark`` for every key
        they hold state for and every required key."""
        found: list[Detection] = []
        for rule, table in self._silence:
            if topic is not None and rule.topic != topic:
                continue
            keys: Iterable[str] = table.keys() | required_keys(rule)
            for key in sorted(keys):  # sorted: detections come out in a reproducible order
                state = table.get(key)
                if state is None:
                    state = rule.initial()
                new, hit = rule.tick(state, key, watermark, ctx)
                if new is not state:
                    table[key] = new
                if hit is not None:
                    found.append(hit)
        return tuple(found)

    def invalid(
        self, topic: str, key: str, coords: Coordinates, event_ts: datetime, ctx: Context
    ) -> tuple[Detection, ...]:
        """Count a record of ``topic`` that failed validation, for the rules that do."""
        found: list[Detection] = []
        for rule, table in self._invalid.get(topic, ()):
            state = table.get(key)
            if state is None:
                state = rule.initial()
            new, hit = rule.invalid(state, key, coords, event_ts, ctx)  # type: ignore[attr-defined]
            if new is not state:
                table[key] = new
            if hit is not None:
                found.append(hit)
        return tuple(found)

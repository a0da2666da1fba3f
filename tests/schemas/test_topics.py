"""The topic registry: the single source of topic names and partitions."""

from __future__ import annotations

import pytest

from schemas import RECORD_TYPES, topic_registry
from schemas.topics import DEFAULT_INPUT_PARTITIONS, INFINITE, TopicRegistry, TopicRole

CONTRACT_TOPICS = (
    "fills",
    "pnl",
    "orders",
    "order-errors",
    "health",
    "latency",
    "market",
    "security",
    "commands",
    "state",
    "events",
    "actions",
    "deadletter",
    "liveness",
    "outcomes",
)


def test_default_registry_when_built_then_contract_topic_names_in_order() -> None:
    registry = topic_registry()

    assert registry.prefix == "ess"
    assert registry.names == [f"ess.{suffix}" for suffix in CONTRACT_TOPICS]


@pytest.mark.parametrize("input_partitions", [1, 4, 12])
def test_commands_and_state_when_built_then_exactly_one_partition(input_partitions: int) -> None:
    registry = topic_registry("ess", input_partitions=input_partitions)

    assert registry.commands.partitions == 1
    assert registry.state.partitions == 1


def test_state_topic_when_built_then_infinite_retention_never_compacted() -> None:
    registry = topic_registry()

    assert registry.state.retention_ms == INFINITE
    assert registry.state.cleanup_policy == "delete"
    assert registry.state.configs == {"retention.ms": "-1", "cleanup.policy": "delete"}
    assert registry.commands.retention_ms == INFINITE


def test_events_topic_when_built_then_one_partition() -> None:
    assert topic_registry(input_partitions=8).events.partitions == 1


def test_input_partitions_when_given_then_applied_to_many_partition_inputs() -> None:
    registry = topic_registry(input_partitions=7)

    many = [
        registry.fills,
        registry.pnl,
        registry.orders,
        registry.order_errors,
        registry.health,
        registry.latency,
        registry.market,
    ]
    assert {spec.partitions for spec in many} == {7}
    assert topic_registry().fills.partitions == DEFAULT_INPUT_PARTITIONS


def test_input_partitions_below_one_when_built_then_rejected() -> None:
    with pytest.raises(ValueError, match="partitions"):
        topic_registry(input_partitions=0)


@pytest.mark.parametrize("prefix", ["test-1a2b", "ess_staging", "x"])
def test_prefix_when_given_then_every_name_uses_it(prefix: str) -> None:
    registry = topic_registry(prefix)

    assert registry.prefix == prefix
    assert registry.names == [f"{prefix}.{suffix}" for suffix in CONTRACT_TOPICS]
    assert all(spec.name.startswith(f"{prefix}.") for spec in registry.topics)


@pytest.mark.parametrize("prefix", ["", " ", "ess prod", "ess\t", "\ness", "a/b", "x" * 201])
def test_bad_prefix_when_built_then_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        topic_registry(prefix)


def test_different_prefixes_when_built_then_no_shared_names() -> None:
    assert not set(topic_registry("a").names) & set(topic_registry("b").names)


def test_by_name_when_known_then_spec() -> None:
    registry = topic_registry("t1")

    spec = registry.by_name("t1.order-errors")

    assert spec is registry.order_errors
    assert spec.logical == "order_errors"
    assert spec.records == ("OrderError",)


@pytest.mark.parametrize("name", ["ess.order-errors", "t1.nope", "order-errors", ""])
def test_by_name_when_unknown_then_key_error(name: str) -> None:
    with pytest.raises(KeyError):
        topic_registry("t1").by_name(name)


def test_by_name_when_every_topic_then_round_trips() -> None:
    registry = topic_registry()

    assert all(registry.by_name(spec.name) is spec for spec in registry.topics)


def test_inputs_when_listed_then_exactly_the_input_topics() -> None:
    registry = topic_registry()

    inputs = registry.inputs()

    assert [spec.logical for spec in inputs] == [
        "fills",
        "pnl",
        "orders",
        "order_errors",
        "health",
        "latency",
        "market",
        "security",
    ]
    assert all(spec.role is TopicRole.INPUT for spec in inputs)


def test_roles_when_built_then_commands_state_outputs() -> None:
    registry = topic_registry()

    assert registry.commands.role is TopicRole.COMMAND
    assert registry.state.role is TopicRole.STATE
    assert {s.role for s in (registry.events, registry.actions, registry.deadletter)} == {
        TopicRole.OUTPUT
    }


def test_records_when_listed_then_all_are_record_types() -> None:
    registry = topic_registry()

    named = {record for spec in registry.topics for record in spec.records}

    assert named <= set(RECORD_TYPES)
    assert all(spec.records for spec in registry.topics)


def test_contract_records_when_listed_then_on_their_topics() -> None:
    registry = topic_registry()

    assert registry.fills.records == ("Fill",)
    assert set(registry.commands.records) == {"TripCommand", "ResetCommand"}
    assert set(registry.events.records) == {"EmergencyStopEvent", "EmergencyResetEvent"}
    assert set(registry.state.records) == {
        "ActivatedEntry",
        "TripRecordedEntry",
        "ResetApprovalEntry",
        "ResetEntry",
        "ResetRejectedEntry",
    }
    assert registry.deadletter.records == ("DeadLetter",)


def test_keys_when_listed_then_contract_keys() -> None:
    registry = topic_registry()

    assert registry.fills.key == "account_id"
    assert registry.health.key == "component"
    assert registry.market.key == "symbol"
    assert registry.commands.key == "constant"
    assert registry.state.key == "constant"


def test_registry_when_slot_holds_wrong_topic_then_rejected() -> None:
    good = topic_registry()
    specs = list(good.topics)
    specs[0], specs[1] = specs[1], specs[0]

    with pytest.raises(ValueError, match="slot"):
        TopicRegistry(good.prefix, *specs)


def test_registry_when_assigned_then_frozen() -> None:
    registry = topic_registry()

    with pytest.raises(AttributeError):
        registry.prefix = "other"  # type: ignore[misc]

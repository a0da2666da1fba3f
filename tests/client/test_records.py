"""Topic, key and event id of every input record, without a broker.

Parametrized over the topic registry: a new input topic fails here until the client has a
method, a sample and a key for it."""

from __future__ import annotations

import inspect
import uuid
from datetime import timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from ess.client import (
    AsyncEssPublisher,
    EssPublisher,
    InputTopics,
    RecordError,
    build_record,
    derive_event_id,
)
from ess.client.records import method_name
from ess.clock import ManualClock
from schemas import RECORD_TYPES, Fill, HealthBeat, TripCommand, decode, topic_registry
from tests.client.support import SAMPLES, TS

INPUTS = [(spec.logical, record) for spec in topic_registry().inputs() for record in spec.records]
IDS = [f"{logical}:{record}" for logical, record in INPUTS]
#: Parameters a per-topic method has besides the model's fields.
CLIENT_ONLY = {"wait"}
#: Model fields the client fills when the caller leaves them out.
FILLED = {"ts", "event_id"}


def _model(record: str) -> type[BaseModel]:
    return RECORD_TYPES[record]


def _build(record: str, **overrides: Any) -> Any:
    return build_record(_model(record), {**SAMPLES[record], **overrides}, ManualClock(TS))


@pytest.mark.parametrize(("logical", "record"), INPUTS, ids=IDS)
def test_every_input_record_has_a_sample(logical: str, record: str) -> None:
    assert record in SAMPLES, f"add a sample {record} (topic {logical}) to tests/client/support.py"


@pytest.mark.parametrize(("logical", "record"), INPUTS, ids=IDS)
@pytest.mark.parametrize("publisher", [AsyncEssPublisher, EssPublisher])
def test_every_input_record_has_a_method_with_the_models_fields(
    logical: str, record: str, publisher: type[Any]
) -> None:
    name = method_name(record)
    method = getattr(publisher, name, None)
    assert method is not None, f"{publisher.__name__} has no method {name} for topic {logical}"
    params = {p.name: p for p in inspect.signature(method).parameters.values() if p.name != "self"}
    fields = _model(record).model_fields
    assert set(params) - CLIENT_ONLY == set(fields)
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    assert required == {n for n, f in fields.items() if f.is_required()} - FILLED
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())


@pytest.mark.parametrize(("logical", "record"), INPUTS, ids=IDS)
def test_record_goes_to_its_topic_keyed_by_the_topics_key_field(logical: str, record: str) -> None:
    spec = getattr(topic_registry(prefix="desk-a"), logical)
    built = _build(record)

    out = InputTopics("desk-a").prepare(built)

    assert out.topic == spec.name
    assert spec.key in SAMPLES[record], f"the key field {spec.key} is not a field of {record}"
    assert out.key == str(SAMPLES[record][spec.key]).encode()
    # ESS decodes strictly: what the client sends must be exactly what ESS accepts.
    assert decode(_model(record), out.value) == built


@pytest.mark.parametrize(("logical", "record"), INPUTS, ids=IDS)
def test_derived_event_id_is_stable_and_follows_the_content(logical: str, record: str) -> None:
    first, again = _build(record), _build(record)
    later = _build(record, ts=TS + timedelta(microseconds=1))
    same_instant = _build(record, ts=TS.astimezone(timezone(timedelta(hours=2))))

    event_id = first.event_id
    assert uuid.UUID(event_id).version == 5
    assert event_id == again.event_id == derive_event_id(first)
    assert event_id == same_instant.event_id
    assert event_id != later.event_id
    assert _build(record, event_id="mine").event_id == "mine"


@pytest.mark.parametrize(("logical", "record"), INPUTS, ids=IDS)
def test_every_field_change_changes_the_event_id(logical: str, record: str) -> None:
    base = _build(record).event_id
    for name, value in SAMPLES[record].items():
        changed = _changed(value)
        assert _build(record, **{name: changed}).event_id != base, name


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return value + 1.0
    if isinstance(value, dict):
        return {**value, "extra": "x"}
    return _ALTERNATIVES.get(value, f"{value}-2")


#: Another valid value for the enum fields of the samples.
_ALTERNATIVES = {
    "buy": "sell",
    "sell": "buy",
    "reject": "timeout",
    "HEALTHY": "DEGRADED",
    "api_key_changed": "api_key_invalid",
}


def test_derived_event_id_scheme_is_pinned() -> None:
    """Ids already in topics depend on the scheme: changing it is a contract change."""
    fill = build_record(Fill, SAMPLES["Fill"], ManualClock(TS))
    assert fill.event_id == "1d487b41-43ec-5373-92ba-3157b978bb09"


def test_id_ignores_the_topic_prefix_and_optional_fields_left_at_default() -> None:
    beat = build_record(HealthBeat, {"component": "c", "status": "HEALTHY"}, ManualClock(TS))
    explicit = build_record(
        HealthBeat, {"component": "c", "status": "HEALTHY", "checks": {}}, ManualClock(TS)
    )
    assert beat.event_id == explicit.event_id
    assert InputTopics("a").prepare(beat).value == InputTopics("b").prepare(beat).value


def test_ts_defaults_to_the_clock() -> None:
    clock = ManualClock(TS)
    assert build_record(Fill, SAMPLES["Fill"], clock).ts == TS


def test_unknown_or_misspelt_field_is_refused_not_dropped() -> None:
    with pytest.raises(TypeError, match="'is_stoploss'"):
        build_record(Fill, {**SAMPLES["Fill"], "is_stoploss": True}, ManualClock(TS))


def test_invalid_value_names_the_field() -> None:
    with pytest.raises(RecordError, match="qty"):
        build_record(Fill, {**SAMPLES["Fill"], "qty": -1.0}, ManualClock(TS))


def test_naive_ts_is_refused() -> None:
    with pytest.raises(RecordError, match="ts"):
        build_record(Fill, {**SAMPLES["Fill"], "ts": TS.replace(tzinfo=None)}, ManualClock(TS))


def test_topic_overrides_by_logical_name() -> None:
    topics = InputTopics("ess", {"fills": "desk-a.fills"})
    assert topics.topic_for("Fill") == "desk-a.fills"
    assert topics.topic_for("PnlTick") == "ess.pnl"
    with pytest.raises(ValueError, match="unknown input topic"):
        InputTopics("ess", {"fils": "x"})


def test_only_input_records_are_published() -> None:
    trip = TripCommand(command_id="c", reason="manual", source="me", ts=TS)
    with pytest.raises(TypeError, match="not a record of an input topic"):
        InputTopics().prepare(trip)


def test_method_names_are_snake_case_of_the_model() -> None:
    assert method_name("PnlTick") == "pnl_tick"
    assert method_name("Fill") == "fill"
    assert method_name("OrderError") == "order_error"

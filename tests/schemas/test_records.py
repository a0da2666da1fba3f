"""Contract records: what each model accepts, what it refuses, and how refusals read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import (
    RECORD_TYPES,
    ActivatedEntry,
    Command,
    ComponentLifecycle,
    DeadLetter,
    EmergencyResetEvent,
    EmergencyStopEvent,
    Fill,
    HealthBeat,
    MarketTick,
    PolicyRecord,
    ReasonCode,
    RecordError,
    RejectReason,
    ResetApprovalEntry,
    ResetCommand,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TripCommand,
    TripRecordedEntry,
    decode,
    encode,
    validate,
)
from schemas.codec import MAX_RECORD_BYTES
from schemas.records import json_dict

from .examples import (
    EXAMPLES,
    FLOAT_FIELDS,
    INPUT_MODELS,
    TS,
    example,
    json_with_literal,
    without,
)


def problem_paths(err: RecordError) -> list[str]:
    return [path for path, _ in err.problems]


def assert_names_field(err: RecordError, field: str) -> None:
    """The error must let a human find the field: in the message and in ``problems``."""
    assert field in str(err), str(err)
    assert any(path == field or path.endswith(f".{field}") for path in problem_paths(err)), (
        err.problems
    )


# --------------------------------------------------------------------------- valid examples


def test_examples_cover_every_record_type() -> None:
    assert set(EXAMPLES) == set(RECORD_TYPES)


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_valid_example_when_decoded_then_accepted(name: str) -> None:
    model = RECORD_TYPES[name]

    record = decode(model, json.dumps(EXAMPLES[name]))

    assert isinstance(record, model)


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_valid_example_when_validated_from_dict_then_accepted(name: str) -> None:
    model = RECORD_TYPES[name]

    record = validate(model, EXAMPLES[name])

    assert isinstance(record, model)


def test_fill_fields_when_decoded_then_typed() -> None:
    fill = decode(Fill, json.dumps(EXAMPLES["Fill"]))

    assert fill.qty == 0.5
    assert fill.side == "buy"
    assert fill.ts == datetime(2026, 11, 22, 10, 15, 0, 123000, tzinfo=UTC)
    assert fill.ts.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- non-finite numbers

NON_FINITE_LITERALS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")


@pytest.mark.parametrize("literal", NON_FINITE_LITERALS)
@pytest.mark.parametrize(("name", "field"), FLOAT_FIELDS)
def test_non_finite_json_number_when_decoded_then_rejected_naming_field(
    name: str, field: str, literal: str
) -> None:
    raw = json_with_literal(name, field, literal)

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], raw)

    assert_names_field(excinfo.value, field)
    assert excinfo.value.model == name


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "inf", "1e999"])
@pytest.mark.parametrize(("name", "field"), FLOAT_FIELDS)
def test_non_finite_number_as_string_when_decoded_then_rejected(
    name: str, field: str, text: str
) -> None:
    raw = json.dumps(example(name, **{field: text}))

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], raw)

    assert_names_field(excinfo.value, field)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(("name", "field"), FLOAT_FIELDS)
def test_non_finite_python_float_when_validated_then_rejected(
    name: str, field: str, value: float
) -> None:
    with pytest.raises(RecordError) as excinfo:
        validate(RECORD_TYPES[name], example(name, **{field: value}))

    assert_names_field(excinfo.value, field)


# --------------------------------------------------------------------------- timestamps

TIMED_MODELS = sorted(name for name, data in EXAMPLES.items() if "ts" in data)


@pytest.mark.parametrize("name", TIMED_MODELS)
def test_naive_ts_when_decoded_then_rejected_naming_ts(name: str) -> None:
    raw = json.dumps(example(name, ts="2026-11-22T10:15:00"))

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], raw)

    assert_names_field(excinfo.value, "ts")


@pytest.mark.parametrize("name", ["EmergencyStopEvent", "EmergencyResetEvent", "PolicyRecord"])
def test_naive_timestamp_when_decoded_then_rejected_naming_timestamp(name: str) -> None:
    raw = json.dumps(example(name, timestamp="2026-11-22T10:15:00.5"))

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], raw)

    assert_names_field(excinfo.value, "timestamp")


def test_naive_trigger_event_ts_when_decoded_then_rejected_with_nested_path() -> None:
    trigger = {**EXAMPLES["TripCommand"]["trigger"], "event_ts": "2026-11-22T10:14:59"}
    raw = json.dumps(example("TripCommand", trigger=trigger))

    with pytest.raises(RecordError) as excinfo:
        decode(TripCommand, raw)

    assert "trigger.event_ts" in problem_paths(excinfo.value)
    assert "trigger.event_ts" in str(excinfo.value)


def test_naive_datetime_when_validated_then_rejected() -> None:
    with pytest.raises(RecordError) as excinfo:
        validate(Fill, example("Fill", ts=datetime(2026, 11, 22, 10, 15)))

    assert_names_field(excinfo.value, "ts")


def test_ts_with_offset_when_decoded_then_same_instant_kept() -> None:
    raw = json.dumps(example("Fill", ts="2026-11-22T12:15:00.123+02:00"))

    fill = decode(Fill, raw)

    assert fill.ts == datetime(2026, 11, 22, 10, 15, 0, 123000, tzinfo=UTC)
    assert fill.ts.utcoffset() == timedelta(hours=2)


def test_garbage_ts_when_decoded_then_rejected_naming_ts() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(Fill, json.dumps(example("Fill", ts="yesterday")))

    assert_names_field(excinfo.value, "ts")


# --------------------------------------------------------------------------- required fields


def required_fields(name: str) -> list[str]:
    return [f for f, info in RECORD_TYPES[name].model_fields.items() if info.is_required()]


MISSING_CASES = [(name, field) for name in INPUT_MODELS for field in required_fields(name)]


def test_required_fields_match_the_contract_minimum() -> None:
    assert set(required_fields("Fill")) == {
        "event_id",
        "account_id",
        "venue",
        "symbol",
        "side",
        "qty",
        "price",
        "realized_pnl",
        "is_stop_loss",
        "order_id",
        "ts",
    }
    assert set(required_fields("TripCommand")) == {"command_id", "reason", "source", "ts"}
    assert set(required_fields("ResetCommand")) == {
        "command_id",
        "kind",
        "operator",
        "nonce",
        "signature",
        "ts",
    }


@pytest.mark.parametrize(("name", "field"), MISSING_CASES)
def test_missing_required_field_when_decoded_then_rejected_naming_field(
    name: str, field: str
) -> None:
    raw = json.dumps(without(name, field))

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], raw)

    assert_names_field(excinfo.value, field)
    assert "Field required" in str(excinfo.value)


def test_several_problems_when_decoded_then_all_reported() -> None:
    data = without("Fill", "qty")
    data["price"] = -1
    data["side"] = "hold"

    with pytest.raises(RecordError) as excinfo:
        decode(Fill, json.dumps(data))

    assert set(problem_paths(excinfo.value)) == {"qty", "price", "side"}
    assert str(excinfo.value).startswith("invalid Fill: ")


# --------------------------------------------------------------------------- enums

WRONG_ENUM_CASES = [
    ("Fill", "side", "BUY"),
    ("Fill", "side", "hold"),
    ("OrderSubmitted", "side", "short"),
    ("OrderError", "kind", "fatal"),
    ("HealthBeat", "status", "healthy"),
    ("HealthBeat", "status", "OK"),
    ("SecurityEvent", "kind", "api_key_leaked"),
    ("TripCommand", "reason", "bored"),
    ("TripCommand", "reason", "DAILY_LOSS"),
    ("TripCommand", "kind", "halt"),
    ("ResetCommand", "kind", "trip"),
    ("ResetRejectedEntry", "why", "because"),
    ("PolicyRecord", "reason", "whim"),
    ("DeadLetter", "raw_encoding", "latin-1"),
]


@pytest.mark.parametrize(("name", "field", "value"), WRONG_ENUM_CASES)
def test_wrong_enum_value_when_decoded_then_rejected_naming_field(
    name: str, field: str, value: str
) -> None:
    raw = json.dumps(example(name, **{field: value}))

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], raw)

    assert_names_field(excinfo.value, field)
    assert repr(value) in str(excinfo.value)


def test_reason_codes_when_listed_then_exactly_the_contract_codes() -> None:
    contract_codes = {
        "daily_loss",
        "equity_drawdown",
        "flash_crash",
        "system_critical",
        "heartbeat_lost",
        "exchange_disconnected",
        "data_feed_corrupt",
        "data_feed_stale",
        "execution_errors",
        "latency_spike",
        "policy_store_stale",
        "trade_rate",
        "stop_loss_cluster",
        "order_rejects",
        "position_size_anomaly",
        "api_key_invalid",
        "api_key_changed",
        "unauthorized_access",
        "environment_modified",
        "manual",
    }
    # Extension: the command processor's re-established stop after a lost state log.
    extensions = {"state_log_lost"}

    assert {code.value for code in ReasonCode} == contract_codes | extensions


@pytest.mark.parametrize("code", list(ReasonCode))
def test_every_reason_code_when_used_in_trip_then_accepted(code: ReasonCode) -> None:
    trip = decode(TripCommand, json.dumps(example("TripCommand", reason=code.value)))

    assert trip.reason is code


def test_reject_reasons_when_listed_then_stable_values() -> None:
    assert {r.value for r in RejectReason} == {
        "not_active",
        "unknown_operator",
        "bad_signature",
        "expired",
        "from_the_future",
        "nonce_reused",
        "duplicate_approval",
        "activation_mismatch",
    }


# --------------------------------------------------------------------------- numeric ranges


@pytest.mark.parametrize("name", ["Fill", "OrderSubmitted"])
@pytest.mark.parametrize("field", ["qty", "price"])
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.0001])
def test_non_positive_qty_or_price_when_decoded_then_rejected(
    name: str, field: str, value: float
) -> None:
    raw = json.dumps(example(name, **{field: value}))

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], raw)

    assert_names_field(excinfo.value, field)
    assert "greater than 0" in str(excinfo.value)


@pytest.mark.parametrize("value", [-1, -0.001])
def test_negative_latency_when_decoded_then_rejected_naming_latency_ms(value: float) -> None:
    raw = json.dumps(example("LatencySample", latency_ms=value))

    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES["LatencySample"], raw)

    assert_names_field(excinfo.value, "latency_ms")


def test_zero_latency_when_decoded_then_accepted() -> None:
    sample = decode(
        RECORD_TYPES["LatencySample"], json.dumps(example("LatencySample", latency_ms=0))
    )

    assert sample.latency_ms == 0  # type: ignore[attr-defined]


def test_negative_notional_when_decoded_then_rejected() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES["OrderSubmitted"], json.dumps(example("OrderSubmitted", notional=-5)))

    assert_names_field(excinfo.value, "notional")


def test_broken_feed_prices_when_decoded_then_accepted_for_the_corrupt_data_rule() -> None:
    # Non-positive and crossed prices are valid records: data_feed_corrupt must see them.
    raw = json.dumps(example("MarketTick", bid=-1.0, ask=0.0, last=0.0))

    tick = decode(MarketTick, raw)

    assert (tick.bid, tick.ask, tick.last) == (-1.0, 0.0, 0.0)


def test_negative_realized_pnl_when_decoded_then_accepted() -> None:
    fill = decode(Fill, json.dumps(example("Fill", realized_pnl=-1e9)))

    assert fill.realized_pnl == -1e9


@pytest.mark.parametrize(("name", "field"), [("DeadLetter", "partition"), ("DeadLetter", "offset")])
def test_negative_offsets_when_decoded_then_rejected(name: str, field: str) -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], json.dumps(example(name, **{field: -1})))

    assert_names_field(excinfo.value, field)


@pytest.mark.parametrize("name", ["ActivatedEntry", "ResetEntry", "EmergencyStopEvent"])
def test_negative_seq_when_decoded_then_rejected(name: str) -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(RECORD_TYPES[name], json.dumps(example(name, seq=-1)))

    assert_names_field(excinfo.value, "seq")


@pytest.mark.parametrize("value", ["", "x" * 257])
def test_identifier_out_of_bounds_when_decoded_then_rejected(value: str) -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(Fill, json.dumps(example("Fill", event_id=value)))

    assert_names_field(excinfo.value, "event_id")


def test_identifier_at_max_length_when_decoded_then_accepted() -> None:
    fill = decode(Fill, json.dumps(example("Fill", event_id="x" * 256)))

    assert len(fill.event_id) == 256


def test_overlong_detail_when_decoded_then_rejected() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(TripCommand, json.dumps(example("TripCommand", detail="x" * 4097)))

    assert_names_field(excinfo.value, "detail")


# --------------------------------------------------------------------------- extra fields, frozen


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_unknown_extra_fields_when_decoded_then_accepted_and_ignored(name: str) -> None:
    model = RECORD_TYPES[name]
    data = example(name, x_added_later={"nested": [1, 2]}, another_new_field="v2")

    record = decode(model, json.dumps(data))

    assert record == decode(model, json.dumps(EXAMPLES[name]))
    dumped = record.model_dump()
    assert "x_added_later" not in dumped
    assert "another_new_field" not in dumped
    assert b"x_added_later" not in encode(record)


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_record_when_assigned_then_frozen(name: str) -> None:
    record = validate(RECORD_TYPES[name], EXAMPLES[name])
    field = next(iter(RECORD_TYPES[name].model_fields))
    before = getattr(record, field)

    with pytest.raises(ValidationError, match="frozen"):
        setattr(record, field, before)

    assert getattr(record, field) == before


def test_records_when_hashed_then_usable_as_dict_keys() -> None:
    a = validate(PolicyRecord, EXAMPLES["PolicyRecord"])
    b = validate(PolicyRecord, EXAMPLES["PolicyRecord"])

    assert {a: 1}[b] == 1


# --------------------------------------------------------------------------- codec edge cases


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\xfd", b'{"event_id": "fill-\xff"}', b"\xc3\x28"],
    ids=["garbage", "bad-byte-in-string", "truncated-sequence"],
)
def test_invalid_utf8_when_decoded_then_record_error(raw: bytes) -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(Fill, raw)

    assert excinfo.value.model == "Fill"
    assert excinfo.value.problems


@pytest.mark.parametrize(
    "raw",
    ["", "{", "not json", '{"qty": 1,}', "[1, 2]", "null", '"Fill"', "{'single': 'quotes'}"],
)
def test_invalid_json_or_not_an_object_when_decoded_then_record_error(raw: str) -> None:
    with pytest.raises(RecordError):
        decode(Fill, raw)


def test_invalid_json_when_decoded_then_message_says_json() -> None:
    with pytest.raises(RecordError, match="Invalid JSON"):
        decode(Fill, b'{"event_id": ')


def test_valid_json_with_trailing_garbage_when_decoded_then_record_error() -> None:
    with pytest.raises(RecordError):
        decode(Fill, json.dumps(EXAMPLES["Fill"]) + " trailing")


def test_oversized_record_when_decoded_then_refused_before_parsing() -> None:
    raw = json.dumps(example("Fill", padding="x" * MAX_RECORD_BYTES)).encode()

    with pytest.raises(RecordError) as excinfo:
        decode(Fill, raw)

    assert "limit" in str(excinfo.value)
    assert str(MAX_RECORD_BYTES) in str(excinfo.value)


def test_oversized_str_when_decoded_then_measured_in_utf8_bytes() -> None:
    # 2 bytes per character in UTF-8: under the limit in characters, over it in bytes.
    text = json.dumps(
        example("Fill", padding="é" * (MAX_RECORD_BYTES // 2 + 1)), ensure_ascii=False
    )
    assert len(text) < 2 * MAX_RECORD_BYTES

    with pytest.raises(RecordError, match="limit"):
        decode(Fill, text)


def test_record_exactly_at_size_limit_when_decoded_then_accepted() -> None:
    body = json.dumps(EXAMPLES["Fill"]).encode()
    raw = body + b" " * (MAX_RECORD_BYTES - len(body))
    assert len(raw) == MAX_RECORD_BYTES

    assert isinstance(decode(Fill, raw), Fill)


def test_str_with_lone_surrogate_when_decoded_then_record_error() -> None:
    with pytest.raises(RecordError):
        decode(Fill, '{"event_id": "\ud800"}')


def test_record_error_when_built_then_message_lists_path_and_message() -> None:
    err = RecordError("Fill", [("qty", "bad"), ("", "whole record bad")])

    assert str(err) == "invalid Fill: qty: bad; whole record bad"
    assert err.model == "Fill"
    assert err.problems == [("qty", "bad"), ("", "whole record bad")]
    assert isinstance(err, ValueError)


def test_long_bad_input_when_reported_then_truncated() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(Fill, json.dumps(example("Fill", side="s" * 500)))

    assert "..." in str(excinfo.value)
    assert len(str(excinfo.value)) < 400


# --------------------------------------------------------------------------- unions


def test_command_with_kind_trip_when_decoded_then_trip_command() -> None:
    command = decode(Command, json.dumps(EXAMPLES["TripCommand"]))

    assert isinstance(command, TripCommand)
    assert command.trigger is not None
    assert command.trigger.offset == 41


def test_command_with_kind_reset_when_decoded_then_reset_command() -> None:
    command = decode(Command, json.dumps(EXAMPLES["ResetCommand"]))

    assert isinstance(command, ResetCommand)
    assert command.operator == "alice"


def test_command_without_kind_when_decoded_then_rejected_naming_kind() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(Command, json.dumps(without("TripCommand", "kind")))

    assert "kind" in str(excinfo.value)
    assert "TripCommand | ResetCommand" in str(excinfo.value)


def test_command_with_unknown_kind_when_decoded_then_rejected() -> None:
    with pytest.raises(RecordError, match="halt"):
        decode(Command, json.dumps(example("TripCommand", kind="halt")))


def test_trip_command_with_bad_reason_when_decoded_as_union_then_path_names_arm_and_field() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(Command, json.dumps(example("TripCommand", reason="bored")))

    assert problem_paths(excinfo.value) == ["trip.reason"]


def test_reset_shaped_command_with_kind_trip_when_decoded_then_rejected() -> None:
    # A reset must never be read as a trip (or vice versa) just because fields overlap.
    with pytest.raises(RecordError) as excinfo:
        decode(Command, json.dumps(example("ResetCommand", kind="trip")))

    assert "trip.reason" in problem_paths(excinfo.value)


def test_command_when_validated_from_dict_then_discriminated() -> None:
    assert isinstance(validate(Command, EXAMPLES["ResetCommand"]), ResetCommand)
    assert isinstance(validate(Command, EXAMPLES["TripCommand"]), TripCommand)


def test_trip_command_without_kind_when_decoded_directly_then_defaults_to_trip() -> None:
    trip = decode(TripCommand, json.dumps(without("TripCommand", "kind")))

    assert trip.kind == "trip"


STATE_ENTRY_KINDS = [
    ("ActivatedEntry", ActivatedEntry),
    ("TripRecordedEntry", TripRecordedEntry),
    ("ResetApprovalEntry", ResetApprovalEntry),
    ("ResetEntry", ResetEntry),
    ("ResetRejectedEntry", ResetRejectedEntry),
]


@pytest.mark.parametrize(("name", "model"), STATE_ENTRY_KINDS)
def test_state_entry_when_decoded_then_discriminated_by_kind(
    name: str, model: type[BaseModel]
) -> None:
    entry = decode(StateEntry, json.dumps(EXAMPLES[name]))

    assert type(entry) is model


def test_state_entry_with_unknown_kind_when_decoded_then_rejected() -> None:
    with pytest.raises(RecordError, match="kind"):
        decode(StateEntry, json.dumps(example("ResetEntry", kind="exploded")))


def test_state_entry_missing_operators_when_decoded_then_path_names_field() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(StateEntry, json.dumps(without("ResetEntry", "operators")))

    assert problem_paths(excinfo.value) == ["reset.operators"]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_record_when_encoded_and_decoded_then_equal(name: str) -> None:
    model = RECORD_TYPES[name]
    record = validate(model, EXAMPLES[name])

    raw = encode(record)
    again = decode(model, raw)

    assert again == record
    assert encode(again) == raw


@pytest.mark.parametrize(("name", "model"), STATE_ENTRY_KINDS)
def test_state_entry_when_encoded_and_decoded_as_union_then_equal(
    name: str, model: type[BaseModel]
) -> None:
    record = validate(model, EXAMPLES[name])

    assert decode(StateEntry, encode(record)) == record


@pytest.mark.parametrize("name", ["TripCommand", "ResetCommand"])
def test_command_when_encoded_and_decoded_as_union_then_equal(name: str) -> None:
    record = validate(RECORD_TYPES[name], EXAMPLES[name])

    assert decode(Command, encode(record)) == record


def test_record_built_from_python_objects_when_round_tripped_then_equal() -> None:
    tz = timezone(timedelta(hours=-5, minutes=-30))
    fill = Fill(
        event_id="é-ü-1",
        account_id="acct",
        venue="v",
        symbol="ETH/USD",
        side="sell",
        qty=1e-9,
        price=1.7976931348623157e308,
        realized_pnl=-0.1,
        is_stop_loss=True,
        order_id="o",
        ts=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tz),
    )

    again = decode(Fill, encode(fill))

    assert again == fill
    assert again.ts.utcoffset() == tz.utcoffset(None)


def test_encode_when_called_then_compact_utf8_json() -> None:
    record = validate(RECORD_TYPES["SecurityEvent"], example("SecurityEvent", detail="clé"))

    raw = encode(record)

    assert isinstance(raw, bytes)
    assert b" " not in raw.replace(b"outside change window", b"")
    assert "clé".encode() in raw
    assert json.loads(raw)["detail"] == "clé"


# --------------------------------------------------------------------------- events, policy


def test_stop_event_when_encoded_then_type_and_ts_equal_timestamp() -> None:
    event = EmergencyStopEvent(
        reason=ReasonCode.SYSTEM_CRITICAL,
        detail="gateway CRITICAL",
        timestamp=datetime(2026, 11, 22, 12, 15, tzinfo=UTC),
        seq=4,
    )

    data = json.loads(encode(event))

    assert data["type"] == "emergency.stop"
    assert data["reason"] == "system_critical"
    assert data["seq"] == 4
    assert data["ts"] == data["timestamp"]
    assert datetime.fromisoformat(data["ts"]) == datetime(2026, 11, 22, 12, 15, tzinfo=UTC)
    assert event.ts == event.timestamp


def test_reset_event_when_encoded_then_type_and_ts_equal_timestamp() -> None:
    event = EmergencyResetEvent(
        reset_by="alice",
        operators=("alice", "bob"),
        timestamp=datetime(2026, 11, 22, 11, 0, tzinfo=UTC),
        seq=9,
    )

    data = json.loads(encode(event))

    assert data["type"] == "emergency.reset"
    assert data["reset_by"] == "alice"
    assert data["seq"] == 9
    assert data["ts"] == data["timestamp"]


def test_event_with_stale_ts_field_when_decoded_then_ts_follows_timestamp() -> None:
    raw = json.dumps(example("EmergencyStopEvent", ts="1999-01-01T00:00:00+00:00"))

    event = decode(EmergencyStopEvent, raw)

    assert event.ts == event.timestamp


def test_event_with_wrong_type_when_decoded_then_rejected_naming_type() -> None:
    with pytest.raises(RecordError) as excinfo:
        decode(
            EmergencyStopEvent, json.dumps(example("EmergencyStopEvent", type="emergency.reset"))
        )

    assert_names_field(excinfo.value, "type")


def test_contract_policy_record_example_when_decoded_then_accepted() -> None:
    raw = (
        '{"active": true, "reason": "system_critical", '
        '"timestamp": "2026-11-22T10:15:00.123+00:00", "auto_recover": false}'
    )

    record = decode(PolicyRecord, raw)

    assert record.active is True
    assert record.reason is ReasonCode.SYSTEM_CRITICAL
    assert record.auto_recover is False


@pytest.mark.parametrize("value", [True, 1, "true", "True", "yes", "1"])
def test_policy_record_with_auto_recover_true_when_decoded_then_rejected(value: Any) -> None:
    raw = json.dumps(example("PolicyRecord", auto_recover=value))

    with pytest.raises(RecordError) as excinfo:
        decode(PolicyRecord, raw)

    assert_names_field(excinfo.value, "auto_recover")


def test_policy_record_with_auto_recover_true_when_constructed_then_rejected() -> None:
    with pytest.raises(ValidationError, match="auto_recover"):
        PolicyRecord(
            active=True,
            reason=ReasonCode.MANUAL,
            timestamp=datetime(2026, 11, 22, tzinfo=UTC),
            auto_recover=True,  # type: ignore[arg-type]
        )


def test_policy_record_without_auto_recover_when_decoded_then_false_and_serialized() -> None:
    record = decode(PolicyRecord, json.dumps(without("PolicyRecord", "auto_recover")))

    assert record.auto_recover is False
    assert json.loads(encode(record))["auto_recover"] is False


def test_inactive_policy_record_when_decoded_then_reason_may_be_null() -> None:
    record = decode(PolicyRecord, json.dumps(example("PolicyRecord", active=False, reason=None)))

    assert record.reason is None


def test_examples_timestamp_constant_is_aware() -> None:
    assert datetime.fromisoformat(TS).tzinfo is not None


def test_json_dict_when_called_then_json_compatible_with_iso_timestamps() -> None:
    record = validate(ResetEntry, EXAMPLES["ResetEntry"])

    data = json_dict(record)

    assert data["ts"] == "2026-11-22T10:15:00.123000Z"
    assert data["operators"] == ["alice", "bob"]
    assert json.loads(json.dumps(data)) == data


# --------------------------------------------------------------------------- health lifecycle


def beat_json(**fields: Any) -> dict[str, Any]:
    return {**EXAMPLES["HealthBeat"], **fields}


def test_beat_without_lifecycle_when_decoded_then_running_and_no_maintenance() -> None:
    beat = decode(HealthBeat, json.dumps(EXAMPLES["HealthBeat"]))

    assert beat.lifecycle is ComponentLifecycle.RUNNING
    assert beat.maintenance_until is None


def test_lifecycle_values_when_listed_then_exactly_the_contract_strings() -> None:
    assert [v.value for v in ComponentLifecycle] == ["running", "maintenance", "retired"]


@pytest.mark.parametrize(
    "fields",
    [
        {"lifecycle": "retired"},
        {"lifecycle": "running"},
        {"lifecycle": "maintenance", "maintenance_until": "2026-11-22T14:15:00+02:00"},
    ],
)
def test_beat_with_lifecycle_when_round_tripped_then_equal(fields: dict[str, Any]) -> None:
    beat = decode(HealthBeat, json.dumps(beat_json(**fields)))

    raw = encode(beat)
    again = decode(HealthBeat, raw)

    assert again == beat
    assert encode(again) == raw
    assert json.loads(raw)["lifecycle"] == fields["lifecycle"]


def test_maintenance_until_when_decoded_then_same_instant_kept() -> None:
    beat = decode(
        HealthBeat,
        json.dumps(
            beat_json(lifecycle="maintenance", maintenance_until="2026-11-22T14:15:00+02:00")
        ),
    )

    assert beat.maintenance_until == datetime(2026, 11, 22, 12, 15, tzinfo=UTC)


def test_maintenance_without_until_when_decoded_then_rejected_naming_maintenance_until() -> None:
    with pytest.raises(RecordError, match="maintenance_until is required"):
        decode(HealthBeat, json.dumps(beat_json(lifecycle="maintenance")))


@pytest.mark.parametrize("lifecycle", ["running", "retired"])
def test_until_without_maintenance_when_decoded_then_rejected(lifecycle: str) -> None:
    raw = beat_json(lifecycle=lifecycle, maintenance_until="2026-11-22T12:15:00Z")

    with pytest.raises(RecordError, match="only allowed when lifecycle is maintenance"):
        decode(HealthBeat, json.dumps(raw))


def test_until_alone_when_decoded_then_rejected() -> None:
    raw = beat_json(maintenance_until="2026-11-22T12:15:00Z")  # lifecycle defaults to running

    with pytest.raises(RecordError, match="only allowed when lifecycle is maintenance"):
        decode(HealthBeat, json.dumps(raw))


@pytest.mark.parametrize("until", [TS, "2026-11-22T09:00:00Z"])
def test_until_not_after_ts_when_decoded_then_rejected(until: str) -> None:
    raw = beat_json(lifecycle="maintenance", maintenance_until=until)

    with pytest.raises(RecordError, match="must be after ts"):
        decode(HealthBeat, json.dumps(raw))


@pytest.mark.parametrize(
    "until", ["2026-11-22T12:15:00", 1_790_000_000, "2150-01-01T00:00:00Z", "soon"]
)
def test_bad_until_when_decoded_then_rejected_naming_maintenance_until(until: Any) -> None:
    raw = beat_json(lifecycle="maintenance", maintenance_until=until)

    with pytest.raises(RecordError) as info:
        decode(HealthBeat, json.dumps(raw))

    assert_names_field(info.value, "maintenance_until")


@pytest.mark.parametrize("lifecycle", ["RETIRED", "stopped", "", 1])
def test_unknown_lifecycle_when_decoded_then_rejected_naming_lifecycle(lifecycle: Any) -> None:
    with pytest.raises(RecordError) as info:
        decode(HealthBeat, json.dumps(beat_json(lifecycle=lifecycle)))

    assert_names_field(info.value, "lifecycle")


def test_dead_letter_without_reason_when_decoded_then_none_and_with_reason_kept() -> None:
    old = decode(DeadLetter, json.dumps(EXAMPLES["DeadLetter"]))
    new = decode(DeadLetter, json.dumps({**EXAMPLES["DeadLetter"], "reason": "key_mismatch"}))

    assert old.reason is None
    assert new.reason == "key_mismatch"
    assert decode(DeadLetter, encode(new)) == new

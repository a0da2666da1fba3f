"""Bytes <-> records, with errors that name the offending field.

Every adapter that reads a topic goes through :func:`decode`; a :class:`RecordError` is what
goes to the dead-letter topic, so its message must let a human fix the producer.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

T = TypeVar("T")

#: A single record larger than this is refused before parsing: no contract record comes close,
#: and parsing a hostile multi-megabyte document costs every rule downstream.
MAX_RECORD_BYTES = 256 * 1024


class RecordError(ValueError):
    """A record that cannot be accepted. ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, model: str, problems: list[tuple[str, str]]) -> None:
        self.model = model
        self.problems = problems
        rendered = "; ".join(
            f"{path}: {message}" if path else message for path, message in problems
        )
        super().__init__(f"invalid {model}: {rendered}")


def _describe(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] not in {"missing"} and "input" in error:
            shown = repr(error["input"])
            message = f"{message} (got {shown[:80]}{'...' if len(shown) > 80 else ''})"
        problems.append((path, message))
    return problems


def _model_name(target: Any) -> str:
    # Annotated unions (``Command``, ``StateEntry``) have no __name__: name them by their arms.
    if isinstance(target, type):
        return target.__name__
    arms = getattr(getattr(target, "__origin__", None), "__args__", ())
    return " | ".join(getattr(arm, "__name__", "?") for arm in arms) or "record"


@overload
def decode(target: type[T], raw: bytes | str) -> T: ...
@overload
def decode(target: Any, raw: bytes | str) -> Any: ...
def decode(target: Any, raw: bytes | str) -> Any:
    """Parse ``raw`` JSON into ``target`` (a model class or an annotated union).

    Raises :class:`RecordError` for oversized input, invalid UTF-8 or JSON, and every
    validation failure, with the field path in the message.
    """
    # The model name is only computed on failure: decode is on every record's hot path.
    try:
        data = raw.encode() if isinstance(raw, str) else raw
    except UnicodeEncodeError as exc:  # a str holding lone surrogates cannot be UTF-8
        raise RecordError(_model_name(target), [("", f"invalid UTF-8: {exc.reason}")]) from exc
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(
            _model_name(target), [("", f"record is {len(data)} bytes, limit {MAX_RECORD_BYTES}")]
        )
    try:
        # Strict: a wrong JSON type (``true`` or ``"1.5"`` for a number, an epoch number for a
        # timestamp) is refused, never coerced; producers must send the contract's types.
        if isinstance(target, type) and issubclass(target, BaseModel):
            return target.model_validate_json(data, strict=True)
        return _adapter(target).validate_json(data, strict=True)
    except ValidationError as exc:
        raise RecordError(_model_name(target), _describe(exc)) from exc


_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def _adapter(target: Any) -> TypeAdapter[Any]:
    key = id(target)
    adapter = _ADAPTERS.get(key)
    if adapter is None:
        adapter = _ADAPTERS[key] = TypeAdapter(target)
    return adapter


@overload
def validate(target: type[T], data: Any) -> T: ...
@overload
def validate(target: Any, data: Any) -> Any: ...
def validate(target: Any, data: Any) -> Any:
    """Validate an already-parsed Python object (dict) into ``target``; errors as in decode."""
    name = _model_name(target)
    try:
        if isinstance(target, type) and issubclass(target, BaseModel):
            return target.model_validate(data)
        return _adapter(target).validate_python(data)
    except ValidationError as exc:
        raise RecordError(name, _describe(exc)) from exc


def encode(record: BaseModel) -> bytes:
    """Serialize a record to compact UTF-8 JSON (timestamps ISO-8601 with offset)."""
    return orjson.dumps(record.model_dump(mode="json"))

"""What the client sends: which topic and key each input record goes to, and its event id.

Everything here is a pure function of the record and the topic names, so it can be tested
without a broker and gives the same answer on every machine:

* **Topic and key.** The topic registry (:func:`schemas.topic_registry`) says, for every input
  topic, which record model it carries and which field of that record is the Kafka key
  (``account_id`` for fills, ``component`` for health beats, ...). ESS's detectors keep their
  per-key state co-partitioned with the topic, so a record keyed by anything else would be
  counted against the wrong account or component; the client never lets the caller choose.
* **Event id.** A record the caller gives no ``event_id`` gets one derived from its content
  (:func:`derive_event_id`): a producer that re-sends the same record after a crash or a retry
  sends the same id, and ESS's rules, which drop an ``event_id`` they have already counted,
  count it once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, TypeVar

from pydantic import BaseModel

from ess.clock import Clock
from ess.core.ids import derive_id
from schemas import RECORD_TYPES, encode, topic_registry, validate
from schemas.codec import MAX_RECORD_BYTES

__all__ = [
    "EVENT_ID_SCHEME",
    "InputTopics",
    "OutgoingRecord",
    "build_record",
    "canonical_content",
    "derive_event_id",
    "method_fields",
    "method_name",
]

R = TypeVar("R", bound=BaseModel)

#: First part of every derived event id. Part of the id scheme: changing it changes every id.
EVENT_ID_SCHEME: Final = "ess.client.event"

#: Placeholder while the content is validated, before the real id is derived from it.
_PENDING_ID: Final = "pending"


def method_name(record_type: str) -> str:
    """The publisher method for a record model: its name in snake case (``PnlTick`` ->
    ``pnl_tick``). Mechanical, so a new input topic gets a predictable method name."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", record_type).lower()


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record ready for Kafka: topic name, key bytes and value bytes (the contract's JSON)."""

    topic: str
    key: bytes
    value: bytes


class InputTopics:
    """The input topics a trading service publishes to, by record model.

    ``topic_prefix`` renames every topic as ``ESS_TOPIC_PREFIX`` does on the ESS side (default
    ``ess``: ``ess.fills``, ``ess.pnl``, ...). ``topics`` overrides single topics by logical
    name (``{"fills": "desk-a.fills"}``) for deployments that name topics by hand; an unknown
    logical name is refused rather than ignored.
    """

    def __init__(self, topic_prefix: str = "ess", topics: Mapping[str, str] | None = None) -> None:
        registry = topic_registry(prefix=topic_prefix)
        inputs = registry.inputs()
        overrides = dict(topics or {})
        unknown = set(overrides) - {spec.logical for spec in inputs}
        if unknown:
            known = ", ".join(spec.logical for spec in inputs)
            raise ValueError(f"unknown input topic(s) {sorted(unknown)}; input topics: {known}")
        #: record model name -> (topic name, key field)
        self._routes: dict[str, tuple[str, str]] = {}
        for spec in inputs:
            name = overrides.get(spec.logical, spec.name)
            for record_type in spec.records:
                self._routes[record_type] = (name, spec.key)
        self.prefix = topic_prefix

    @property
    def record_types(self) -> tuple[str, ...]:
        """Names of the record models the input topics carry."""
        return tuple(self._routes)

    def topic_for(self, record_type: str) -> str:
        """The topic name records of ``record_type`` go to."""
        return self._route(record_type)[0]

    def key_field(self, record_type: str) -> str:
        """The field of ``record_type`` whose value is the Kafka key."""
        return self._route(record_type)[1]

    def _route(self, record_type: str) -> tuple[str, str]:
        try:
            return self._routes[record_type]
        except KeyError:
            raise TypeError(
                f"{record_type} is not a record of an input topic; a trading service publishes "
                f"{', '.join(self._routes)}"
            ) from None

    def prepare(self, record: BaseModel) -> OutgoingRecord:
        """Topic, key and JSON bytes for ``record`` (a validated input record model)."""
        record_type = type(record).__name__
        if RECORD_TYPES.get(record_type) is not type(record):
            raise TypeError(f"{record_type} is not a contract record model (schemas.records)")
        topic, key_field = self._route(record_type)
        value = encode(record)
        if len(value) > MAX_RECORD_BYTES:  # ESS would dead-letter it; refuse at the source
            raise ValueError(
                f"{record_type} is {len(value)} bytes encoded, over ESS's {MAX_RECORD_BYTES}"
            )
        return OutgoingRecord(topic, str(getattr(record, key_field)).encode(), value)


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON data with one rendering per meaning: instants in UTC with
    microseconds (the same instant written with another offset is the same event), enums by
    value, models and mappings as sorted objects."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump())
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def canonical_content(record: BaseModel) -> str:
    """The text an event id is derived from: every field of ``record`` except ``event_id``
    and except fields left at their default, as JSON with sorted keys and no whitespace.

    Fields at their default are left out so that a contract extension (a new optional field)
    does not change the id of a record that does not use it."""
    content = record.model_dump(exclude={"event_id"}, exclude_defaults=True)
    return json.dumps(
        _canonical(content),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def derive_event_id(record: BaseModel) -> str:
    """The event id of ``record`` derived from its content:
    ``derive_id("ess.client.event", <model name>, canonical_content(record))`` (a uuid5, see
    :func:`ess.core.ids.derive_id`).

    Same content, same id, on any machine and in any replay; any difference (another ``ts``,
    another quantity, another status) gives another id. Two *distinct* events with identical
    content (two fills of the same order at the same microsecond, same size and price) would
    share an id and ESS would count one: give such events an ``event_id`` of your own."""
    return derive_id(EVENT_ID_SCHEME, type(record).__name__, canonical_content(record))


def build_record(model: type[R], fields: Mapping[str, Any], clock: Clock) -> R:
    """A validated ``model`` record from ``fields``: ``ts`` defaults to ``clock.now()`` and
    ``event_id`` to :func:`derive_event_id`. ``None`` values mean "not given".

    A field name the model does not have is refused: contract models ignore unknown fields
    (for forward compatibility between producers and ESS), so a misspelt or too-new field
    would otherwise vanish silently. Invalid values raise :class:`schemas.RecordError`
    naming every offending field.
    """
    given = {name: value for name, value in fields.items() if value is not None}
    unknown = sorted(set(given) - set(model.model_fields))
    if unknown:
        raise TypeError(
            f"{model.__name__} has no field {', '.join(map(repr, unknown))} (is the installed "
            f"ess older than the contract this code expects?)"
        )
    given.setdefault("ts", clock.now())
    explicit_id = given.pop("event_id", None)
    record = validate(model, {**given, "event_id": explicit_id or _PENDING_ID})
    if explicit_id is not None:
        return record
    return record.model_copy(update={"event_id": derive_event_id(record)})


def method_fields(scope: Mapping[str, Any]) -> dict[str, Any]:
    """A publisher method's record fields (its ``locals()``): its arguments without ``self``
    and ``wait``."""
    return {name: value for name, value in scope.items() if name not in {"self", "wait"}}

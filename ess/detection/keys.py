"""The Kafka key check of input records: pure, shared by the detector and its tests.

Every input topic is keyed by one field of its records (``schemas.topic_registry``:
``account_id``, ``component``, ``symbol``, ``source``). Detection keeps per-key state in
tables co-partitioned with the topic, which is only right when all records of one key sit in
one partition. A producer that does not key its records (``key=None``: the client spreads
them over partitions) or keys them by something else (a venue, an event id) spreads one key
over several partitions: with more than one detection worker each holds a part of the key's
window and undercounts, and even one worker moves the key's changelog record between
partitions. The key the contract derives from a record is the UTF-8 encoding of its key
field, nothing else (no prefix, no case folding).

What the detector does with a mismatch is decided in :class:`ess.detection.TopicDetector`
(docs/contract.md, "Kafka keys of input records"): this module only says whether the key
matches and how to describe it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

__all__ = ["KEY_UNKNOWN", "KeyMismatch", "KeyUnknown", "contract_key", "key_matches", "show_key"]


class KeyUnknown(Enum):
    """Type of :data:`KEY_UNKNOWN`."""

    KEY_UNKNOWN = "key unknown"


#: The caller of the detector does not know the record's Kafka key (a fuzzer or a benchmark
#: feeding values; a recording read without keys): the check is skipped. ``None`` is not
#: this: ``None`` is a record produced without a key, which is a mismatch.
KEY_UNKNOWN: Final = KeyUnknown.KEY_UNKNOWN

#: Characters of a key shown in a dead letter or a log line.
_SHOWN: Final = 64


def contract_key(value: str) -> bytes:
    """The Kafka key the contract derives from a record's key field ``value``."""
    return value.encode()


def key_matches(expected: str, got: bytes | None) -> bool:
    """Whether ``got`` (the record's Kafka key, ``None`` when it has none) is the key the
    contract derives from the record's key field value ``expected``."""
    return got is not None and got == contract_key(expected)


def show_key(key: bytes | None) -> str:
    """A Kafka key for humans: ``no key``, ``'text'`` or the bytes' repr, cut to 64 characters
    (a key is producer input and may be long or binary)."""
    if key is None:
        return "no key"
    try:
        text = repr(key.decode())
    except UnicodeDecodeError:
        text = repr(key)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


@dataclass(frozen=True, slots=True)
class KeyMismatch:
    """One record whose Kafka key is not the one its key field derives.

    ``action`` is what the detector did: ``dead_lettered`` (refused: its key's state would
    be split) or ``accepted`` (a single-partition topic, where no split is possible: counted
    and logged, then processed)."""

    topic: str
    partition: int
    offset: int
    key_field: str
    expected: str
    got: bytes | None
    action: Literal["dead_lettered", "accepted"]

    @property
    def error(self) -> str:
        """The dead letter's error text: ``key_mismatch: ...`` with expected and got."""
        return (
            f"key_mismatch: expected Kafka key {show_key(contract_key(self.expected))} (the "
            f"record's {self.key_field}), got {show_key(self.got)}; records of one "
            f"{self.key_field} must share a key, or their state is split across partitions"
        )

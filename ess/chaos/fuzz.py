"""Input fuzzing campaign: malformed and adversarial records on every input topic.

What is measured
----------------
Hostile records (see :data:`CATEGORIES`) are generated for every input topic and interleaved
with *valid* record sequences that are known to trip a rule. Two levels:

* **pure** (fast, large): every topic's stream goes through the live worker's
  :class:`ess.detection.detector.TopicDetector` (built by :func:`ess.detection.build_detectors`, the
  very objects the Faust agent runs) in random batch sizes, with the silence timer ticked
  after every batch. The same valid records are also run alone; the interleaved run must
  detect exactly what the valid-only run detects, at the same valid record.
* **live**: a real detection worker (:func:`streams.runner.run_detector`) against an embedded
  broker (or ``KAFKA_BOOTSTRAP_SERVERS``): the hostile records are produced to every input
  topic first, then the valid sequences; ``ess.deadletter`` and ``ess.commands`` are read back.

Each hostile record carries ``refused``: whether the contract (``schemas``) says it must be
refused. That is decided by construction (the category), never by asking the code under test.
Categories the current schemas *accept* although they are hostile (far-future / far-past
timestamps, values pydantic's lax mode coerces such as ``"1.5"`` for a float) are still sent,
but counted apart in ``hostile_accepted``: a finding to report, not a crash.

Figures (per level under ``pure`` / ``live``, and summed at the top level)
------------------------------------------------------------------------
* ``records``: hostile records sent whose category must be refused; ``by_topic`` and
  ``by_category`` break them down.
* ``dead_lettered``: of those, how many got at least one dead letter with a non-empty error
  and the record's own coordinates (topic, partition, offset).
* ``missing_dead_letters`` (failure): ``records - dead_lettered``.
* ``worker_crashes`` (failure): pure: ``process``/``tick`` raising; live: the worker task
  ending before the campaign stopped it.
* ``valid_trips_expected`` / ``valid_trips_missed`` (failure): trips of the valid sequences
  (per the valid-only pure run) that the interleaved run did not produce at the same record.
* ``valid_dead_lettered`` (failure): valid records that were dead-lettered.
* ``hostile_accepted``: records of the schema-accepted categories that were not
  dead-lettered (``hostile_accepted_by_category``); ``hostile_sent_accepted_categories``
  how many were sent.
* ``rule_errors``: dead letters caused by a rule raising on a decoded record, plus rule or
  silence-tick failures logged by the detector (pure level; live: rule-failure letters).

Valid but adversarial values (``adversarial``, pure level only: the silence cases need the
silence timeout to pass, which a live worker cannot fake). Records the contract accepts,
each with the broker timestamp it is logged with, through the same detectors, per case
(:data:`ADVERSARIAL_CASES`); every case must still fire the rules named:

* ``future_beat``: a health beat stamped up to ``max_future_skew_sec`` after its broker
  timestamp, then silence: ``heartbeat_lost`` must fire once the timeout has passed since
  the *broker* timestamp (a watermark still short of ``ts + timeout``).
* ``future_market_tick``: the same for a market tick and ``data_feed_stale``.
* ``first_equity_zero`` / ``_negative`` / ``_negative_zero`` (``-0.0``): the day's first pnl
  tick has no equity, then a real loss: ``daily_loss`` (the day re-anchors on the first
  positive tick) and ``equity_drawdown`` must fire.
* ``future_stamp_<topic>``: one quiet valid record of the key stamped up to the skew in the
  future, then the topic's valid trip sequence stamped (and logged) now: what the sequence
  trips alone must still fire.

Figures (top level, and by case under ``adversarial``): ``adversarial_cases`` played,
``adversarial_trips_expected``, ``adversarial_trips_missed`` (failure) and
``adversarial_dead_lettered`` (failure: a valid record refused); ``missed_by_case``,
``missed_examples``.

Generation: a seeded :class:`random.Random` drives the mutators here, so a campaign is
reproducible from ``seed`` and costs microseconds per record (20,000 records in seconds).
``tests/chaos/test_fuzz.py`` drives the *same* mutators from Hypothesis
(``st.sampled_from`` over categories and topics, ``st.randoms``), so Hypothesis explores and
shrinks the choice of mutation while the campaign stays cheap and deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from loguru import logger

from ess.detection import RawRecord, TopicDetector, build_detectors
from ess.kafka.broker import kafka_target
from ess.kafka.clients import consumer, producer
from ess.rules.base import Context, Detection
from ess.rules.config import DetectionConfig
from schemas import DeadLetter, TopicRegistry, TripCommand, decode, topic_registry
from schemas.codec import MAX_RECORD_BYTES

__all__ = [
    "ADVERSARIAL_CASES",
    "CATEGORIES",
    "CONFIG",
    "FAILURES",
    "Hostile",
    "adversarial_cases",
    "hostile_record",
    "run_adversarial",
    "run_campaign",
    "run_pure",
    "valid_sequences",
]

FAILURES: Final[tuple[str, ...]] = (
    "missing_dead_letters",
    "worker_crashes",
    "valid_trips_missed",
    "valid_dead_lettered",
    "adversarial_trips_missed",
    "adversarial_dead_lettered",
)

#: Small thresholds so that a handful of valid records trips each topic's rules; silence
#: limits of an hour keep the silence rules quiet for the valid keys.
CONFIG: Final = DetectionConfig(
    account=DetectionConfig().account.model_copy(
        update={
            "trade_rate_max": 5,
            "stop_loss_max": 2,
            "order_rejects_max": 2,
            "execution_errors_max": 2,
        }
    ),
    heartbeat_timeout_sec=3600,
    data_feed_stale_sec=3600,
    corrupt_window_ticks=5,
    corrupt_min_ticks=4,
)

#: The Kafka key field of each logical input topic (the registry's ``TopicSpec.key``).
KEY_FIELD: Final[dict[str, str]] = {
    "fills": "account_id",
    "pnl": "account_id",
    "orders": "account_id",
    "order_errors": "account_id",
    "health": "component",
    "latency": "component",
    "market": "symbol",
    "security": "source",
}
TOPICS: Final[tuple[str, ...]] = tuple(KEY_FIELD)

_NUMBERS: Final = frozenset(
    {"qty", "price", "realized_pnl", "equity", "notional", "latency_ms", "bid", "ask", "last"}
)
_ENUMS: Final = frozenset({"side", "kind", "status"})
_BOOLS: Final = frozenset({"is_stop_loss"})
_TEXTS: Final = frozenset({"message", "detail"})
_OPTIONAL: Final = frozenset({"checks"})  # has a default: dropping it is valid


# --------------------------------------------------------------------------- valid records


class _EventIds:
    """A process-wide event id counter that tests can restart (a Hypothesis example must
    generate the same bytes when replayed)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._count = itertools.count()

    def next(self) -> int:
        return next(self._count)


EVENT_IDS: Final = _EventIds()


def _base(topic: str, key: str, ts: datetime, rng: random.Random) -> dict[str, Any]:
    """A valid record of ``topic`` for ``key`` at ``ts`` (JSON-ready dict)."""
    # A process-wide counter keeps ids distinct even when ``rng`` repeats itself (Hypothesis'
    # random may return the same bits every time): rules dedupe by event id.
    event_id = f"{EVENT_IDS.next()}-{rng.getrandbits(64):016x}"
    common = {"event_id": event_id, "ts": ts.isoformat()}
    account = {"account_id": key, "venue": "binance", "symbol": "BTCUSDT"}
    match topic:
        case "fills":
            return {
                **common,
                **account,
                "side": "buy",
                "qty": 1.0,
                "price": 100.0,
                "realized_pnl": -1.0,
                "is_stop_loss": False,
                "order_id": "o-1",
            }
        case "pnl":
            return {**common, "account_id": key, "equity": 1000.0}
        case "orders":
            return {
                **common,
                **account,
                "side": "buy",
                "qty": 1.0,
                "price": 100.0,
                "notional": 100.0,
            }
        case "order_errors":
            return {**common, **account, "kind": "reject", "code": "-2010", "message": "rejected"}
        case "health":
            return {**common, "component": key, "status": "HEALTHY", "checks": {"db": "ok"}}
        case "latency":
            return {**common, "component": key, "operation": "place_order", "latency_ms": 5.0}
        case "market":
            return {**common, "symbol": key, "bid": 99.0, "ask": 101.0, "last": 100.0}
        case "security":
            return {**common, "kind": "api_key_changed", "source": key, "detail": "seen"}
    raise ValueError(f"unknown input topic {topic}")


def valid_sequences(
    topic: str, t0: datetime, rng: random.Random, tag: str
) -> list[tuple[str, dict[str, Any]]]:
    """``(key, record)`` pairs of ``topic`` that trip at least one rule under :data:`CONFIG`
    (which one, and where, is learnt from the valid-only pure run). Keys carry ``tag`` so that
    rounds never share a key (rules latch per key)."""

    def rec(key: str, seconds: float, **changes: Any) -> tuple[str, dict[str, Any]]:
        return key, {**_base(topic, key, t0 + timedelta(seconds=seconds), rng), **changes}

    k = f"v-{topic}-{tag}"
    match topic:
        case "pnl":  # 6 % within 10 s: flash crash
            return [rec(k, 0, equity=1000.0), rec(k, 10, equity=940.0)]
        case "fills":  # 6 fills in 60 s: trade rate
            return [rec(k, i) for i in range(6)]
        case "orders":  # one order far above the notional limit
            return [rec(k, 0, price=2_000_000.0, notional=2_000_000.0)]
        case "order_errors":  # 3 rejects
            return [rec(k, i) for i in range(3)]
        case "health":
            return [rec(k, 0, status="CRITICAL")]
        case "latency":  # three samples above 5 s in a row
            return [rec(k, i, latency_ms=6000.0 + i) for i in range(3)]
        case "market":  # 2 of 4 ticks corrupt (negative bid, crossed book)
            return [rec(k, 0), rec(k, 1), rec(k, 2, bid=-1.0), rec(k, 3, bid=105.0, ask=101.0)]
        case "security":
            return [rec(k, 0)]
    raise ValueError(f"unknown input topic {topic}")


# --------------------------------------------------------------------------- hostile records


@dataclass(frozen=True, slots=True)
class Hostile:
    """One hostile record: where it goes, what kind it is, its bytes (``None``: a tombstone),
    and whether the contract says it must be refused."""

    topic: str
    key: str
    category: str
    value: bytes | None
    refused: bool


def _splice(record: dict[str, Any], name: str, token: bytes) -> bytes:
    """``record`` as JSON with field ``name``'s value replaced by the raw ``token`` (for what
    a JSON encoder refuses to write: NaN, huge literals, invalid UTF-8)."""
    marker = "\x00splice\x00"
    text = orjson.dumps({**record, name: marker})
    return text.replace(orjson.dumps(marker), token, 1)


def _pick(rng: random.Random, record: dict[str, Any], names: frozenset[str] | None) -> str:
    fields = sorted(n for n in record if names is None or n in names)
    return rng.choice(fields or sorted(record))


def _wrong_type(rng: random.Random, record: dict[str, Any]) -> bytes:
    name = _pick(rng, record, None)
    if name in _NUMBERS:
        # Not bool and not numeric strings: pydantic's lax mode coerces those (see "lax").
        choices: list[Any] = [None, [], {}, "abc", "", [1.0], {"v": 1}]
    elif name in _BOOLS:
        choices = [None, [], {}, "maybe", 2, 0.5, -1]
    elif name == "ts":
        choices = [None, [], {}, True, "not a date", "2026-13-45T25:61:00+00:00", ""]
    elif name == "checks":
        choices = [[], "x", 1, {"k": 1}, {"": "v"}, {"k": None}]
    elif name in _ENUMS:
        choices = [None, 1, [], "sideways", "BUY ", "Healthy"]
    else:  # identifiers and text
        choices = [None, 1, 2.5, True, [], {}, ["a"], {"a": "b"}]
    return orjson.dumps({**record, name: rng.choice(choices)})


def _missing(rng: random.Random, record: dict[str, Any]) -> bytes:
    names = [n for n in record if n not in _OPTIONAL]
    drop = set(rng.sample(names, rng.randint(1, len(names))))
    return orjson.dumps({n: v for n, v in record.items() if n not in drop})


def _number_field(rng: random.Random, record: dict[str, Any]) -> str:
    """A numeric field of ``record``; ``ts`` for topics without one (a number is wrong there
    too, and a string field would take ``"NaN"`` as valid text)."""
    numbers = sorted(n for n in record if n in _NUMBERS)
    return rng.choice(numbers) if numbers else "ts"


def _nan_inf(rng: random.Random, record: dict[str, Any]) -> bytes:
    name = _number_field(rng, record)
    if rng.random() < 0.5:
        return _splice(record, name, rng.choice([b"NaN", b"Infinity", b"-Infinity"]))
    return orjson.dumps({**record, name: rng.choice(["NaN", "nan", "Infinity", "-inf", "inf"])})


def _huge(rng: random.Random, record: dict[str, Any]) -> bytes:
    name = _number_field(rng, record)
    sign = rng.choice([b"", b"-"])
    token = rng.choice([b"1e309", b"1E400", b"9" * rng.randint(309, 2000), b"1" + b"0" * 400])
    return _splice(record, name, sign + token)


def _naive_ts(rng: random.Random, record: dict[str, Any]) -> bytes:
    spelled = rng.choice(
        ["2026-11-22T10:00:00", "2026-11-22 10:00:00", "2026-11-22", "2026-11-22T10:00:00.123456"]
    )
    return orjson.dumps({**record, "ts": spelled})


def _far_future(rng: random.Random, record: dict[str, Any]) -> bytes:
    year = rng.choice([2200, 5000, 9999])
    return orjson.dumps({**record, "ts": f"{year}-12-31T23:59:59+00:00"})


def _far_past(rng: random.Random, record: dict[str, Any]) -> bytes:
    year = rng.choice([1, 1000, 1900])
    return orjson.dumps({**record, "ts": f"{year:04d}-01-01T00:00:00+00:00"})


def _extreme_offset(rng: random.Random, record: dict[str, Any]) -> bytes:
    """Valid-looking aware timestamps at the edge of ``datetime`` (UTC conversion overflows)."""
    ts = rng.choice(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
    return orjson.dumps({**record, "ts": ts})


def _oversized_string(rng: random.Random, record: dict[str, Any]) -> bytes:
    texts = [n for n in record if n in _TEXTS]
    idents = [n for n in record if n not in _TEXTS | _NUMBERS | _BOOLS | _ENUMS | {"ts", "checks"}]
    if texts and rng.random() < 0.5:
        name, size = rng.choice(texts), rng.randint(4097, 20_000)
    else:
        name, size = rng.choice(idents), rng.randint(257, 5000)
    char = rng.choice(["x", "é", "\u20ac", "\U0001f4a5"])
    return orjson.dumps({**record, name: char * size})


def _oversized_record(rng: random.Random, record: dict[str, Any]) -> bytes:
    # An ignored extra field: without the byte limit, this record would be valid.
    size = MAX_RECORD_BYTES + rng.randint(1, 64 * 1024)
    return orjson.dumps({**record, "padding": "p" * size})


def _invalid_utf8(rng: random.Random, record: dict[str, Any]) -> bytes:
    name = _pick(rng, record, frozenset(n for n in record if isinstance(record[n], str)))
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\xe2\x82"])
    return _splice(record, name, b'"' + str(record[name]).encode() + bad + b'"')


def _escaped_surrogate(rng: random.Random, record: dict[str, Any]) -> bytes:
    """A lone surrogate spelled as a JSON escape: valid UTF-8 bytes, invalid text."""
    name = _pick(rng, record, frozenset(n for n in record if isinstance(record[n], str)))
    return _splice(record, name, rng.choice([b'"\\ud800"', b'"a\\udfffb"']))


def _non_object(rng: random.Random, record: dict[str, Any]) -> bytes:
    return rng.choice(
        [b"[]", b"null", b"true", b"123", b'"a string"', orjson.dumps([record]), b"1e999"]
    )


def _empty(rng: random.Random, _record: dict[str, Any]) -> bytes:
    return rng.choice([b"", b" ", b"\n", b"{}"])


def _deep(rng: random.Random, record: dict[str, Any]) -> bytes:
    depth = rng.randint(200, 20_000)
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    nested = opener * depth + b"1" + closer * depth
    if rng.random() < 0.5:
        return nested
    return _splice(record, _pick(rng, record, None), nested)


def _garbage(rng: random.Random, _record: dict[str, Any]) -> bytes:
    return rng.randbytes(rng.randint(1, 512))


def _truncated(rng: random.Random, record: dict[str, Any]) -> bytes:
    data = orjson.dumps(record)
    return data[: rng.randint(1, len(data) - 1)]


def _lax(rng: random.Random, record: dict[str, Any]) -> bytes:
    """Wrong JSON types that a lax parser would coerce (``"1.5"``, ``"yes"``, epoch numbers)."""
    choice = rng.randrange(3)
    numbers = sorted(n for n in record if n in _NUMBERS)
    if choice == 0 and numbers:
        name = rng.choice(numbers)
        return orjson.dumps({**record, name: str(record[name])})
    if choice == 1 and "is_stop_loss" in record:
        return orjson.dumps({**record, "is_stop_loss": rng.choice([1, "true", "yes", "on"])})
    return orjson.dumps({**record, "ts": rng.choice([1_790_000_000, 1_790_000_000_000.5])})


Mutator = Callable[[random.Random, dict[str, Any]], bytes]

#: Category -> (mutator, whether the contract says the result must be refused).
CATEGORIES: Final[dict[str, tuple[Mutator, bool]]] = {
    "wrong_type": (_wrong_type, True),
    "missing_field": (_missing, True),
    "nan_infinity": (_nan_inf, True),
    "huge_number": (_huge, True),
    "naive_timestamp": (_naive_ts, True),
    "oversized_string": (_oversized_string, True),
    "oversized_record": (_oversized_record, True),
    "invalid_utf8": (_invalid_utf8, True),
    "escaped_surrogate": (_escaped_surrogate, True),
    "non_object": (_non_object, True),
    "empty": (_empty, True),
    "deep_nesting": (_deep, True),
    "garbage_bytes": (_garbage, True),
    "truncated_json": (_truncated, True),
    # Refused since this campaign found them accepted: event times outside 2000-2099 (the
    # schemas) and wrong JSON types that lax parsing used to coerce (the codec decodes
    # strictly). Event times far after the Kafka timestamp are refused by the detectors
    # (``max_future_skew_sec``; tests/streams).
    "far_future_timestamp": (_far_future, True),
    "far_past_timestamp": (_far_past, True),
    "extreme_utc_offset": (_extreme_offset, True),
    "lax_coercion": (_lax, True),
}
#: A Kafka tombstone (no value at all) is refused like empty bytes.
TOMBSTONE: Final = "tombstone"
_CATEGORY_NAMES: Final[tuple[str, ...]] = (*CATEGORIES, TOMBSTONE)


def hostile_record(
    topic: str, category: str, rng: random.Random, *, key: str, now: datetime
) -> Hostile:
    """One hostile record of ``category`` for ``topic``, built from a valid record for
    ``key`` (so the key stays readable where the mutation leaves it intact)."""
    if category == TOMBSTONE:
        return Hostile(topic, key, category, None, True)
    mutate, refused = CATEGORIES[category]
    base = _base(topic, key, now - timedelta(seconds=rng.uniform(0, 120)), rng)
    return Hostile(topic, key, category, mutate(rng, base), refused)


def _hostiles(topic: str, count: int, rng: random.Random, now: datetime) -> Iterator[Hostile]:
    names = _CATEGORY_NAMES
    # Every category once per topic first (rotated per topic, so that a short run spread over
    # the topics still covers every category), then at random.
    start = TOPICS.index(topic) * count
    for i in range(count):
        category = names[(start + i) % len(names)] if i < len(names) else rng.choice(names)
        yield hostile_record(topic, category, rng, key=f"fuzz-{rng.randrange(16)}", now=now)


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Tally:
    """Figures of one level."""

    records: int = 0
    dead_lettered: int = 0
    worker_crashes: int = 0
    valid_records: int = 0
    valid_trips_expected: int = 0
    valid_trips_missed: int = 0
    valid_dead_lettered: int = 0
    hostile_sent_accepted_categories: int = 0
    hostile_accepted: int = 0
    rule_errors: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    missing_by_category: dict[str, int] = field(default_factory=dict)
    hostile_accepted_by_category: dict[str, int] = field(default_factory=dict)
    missing_examples: list[str] = field(default_factory=list)
    missed_trip_examples: list[str] = field(default_factory=list)
    crash_examples: list[str] = field(default_factory=list)

    def sent(self, hostile: Hostile) -> None:
        if hostile.refused:
            self.records += 1
            _bump(self.by_topic, hostile.topic)
            _bump(self.by_category, hostile.category)
        else:
            self.hostile_sent_accepted_categories += 1

    def judged(self, hostile: Hostile, letters: Sequence[DeadLetter]) -> None:
        good = [letter for letter in letters if letter.error.strip()]
        self.rule_errors += sum(letter.error.startswith("rule ") for letter in letters)
        if hostile.refused:
            if good:
                self.dead_lettered += 1
            else:
                _bump(self.missing_by_category, hostile.category)
                if len(self.missing_examples) < 5:
                    self.missing_examples.append(
                        f"{hostile.topic}/{hostile.category}: {_show(hostile.value)}"
                    )
        elif not good:
            self.hostile_accepted += 1
            _bump(self.hostile_accepted_by_category, hostile.category)

    def figures(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "by_topic": dict(sorted(self.by_topic.items())),
            "by_category": dict(sorted(self.by_category.items())),
            "dead_lettered": self.dead_lettered,
            "missing_dead_letters": self.records - self.dead_lettered,
            "missing_by_category": self.missing_by_category,
            "worker_crashes": self.worker_crashes,
            "valid_records": self.valid_records,
            "valid_trips_expected": self.valid_trips_expected,
            "valid_trips_missed": self.valid_trips_missed,
            "valid_dead_lettered": self.valid_dead_lettered,
            "hostile_sent_accepted_categories": self.hostile_sent_accepted_categories,
            "hostile_accepted": self.hostile_accepted,
            "hostile_accepted_by_category": dict(sorted(self.hostile_accepted_by_category.items())),
            "rule_errors": self.rule_errors,
            "missing_examples": self.missing_examples,
            "missed_trip_examples": self.missed_trip_examples,
            "crash_examples": self.crash_examples,
        }


def _bump(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


def _show(value: bytes | None) -> str:
    return "None" if value is None else repr(value[:120])


def _detectors() -> dict[str, TopicDetector]:
    """The live worker's detectors (``ess.*`` names) under :data:`CONFIG`."""
    detectors = build_detectors(CONFIG, topic_registry("ess"))
    return {detector.logical: detector for detector in detectors}


# --------------------------------------------------------------------------- pure level


@dataclass(frozen=True, slots=True)
class _Item:
    """One record of an interleaved stream: hostile (``hostile``) or the ``valid``-th valid."""

    value: bytes | None
    hostile: Hostile | None = None
    valid: int = -1


class _LogCounter:
    """Counts the detector's logged rule and silence-tick failures (they are caught inside)."""

    MESSAGES: Final = (
        "detection rule failed on a record",
        "detection rule failed on an invalid record",
        "silence tick failed",
        "unreadable rule state; starting afresh",
    )

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []
        self._id: int | None = None

    def __enter__(self) -> _LogCounter:
        def sink(message: Any) -> None:
            record = message.record
            if record["message"] in self.MESSAGES:
                self.count += 1
                if len(self.examples) < 3:
                    exc = record["exception"]
                    self.examples.append(f"{record['message']}: {exc.value if exc else ''!r}")

        self._id = logger.add(sink, level="ERROR", catch=True)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._id is not None:
            logger.remove(self._id)


def _run_stream(
    detector: TopicDetector,
    items: Sequence[_Item],
    rng: random.Random,
    now: datetime,
    tally: Tally,
) -> tuple[dict[int, list[tuple[str, str]]], dict[tuple[int, int], list[DeadLetter]]]:
    """Feed ``items`` in random batches (one partition; per-key order is what matters).

    Returns detections by valid index (``(rule, key)``) and dead letters by coordinates."""
    table: dict[str, Any] = {}
    found: dict[int, list[tuple[str, str]]] = {}
    letters: dict[tuple[int, int], list[DeadLetter]] = {}
    offset_valid = {offset: item.valid for offset, item in enumerate(items) if item.valid >= 0}
    start = 0
    while start < len(items):
        size = rng.choice((1, 1, 2, 7, 32, 200))
        batch = [
            RawRecord(0, offset, items[offset].value, timestamp_ms=int(now.timestamp() * 1000))
            for offset in range(start, min(start + size, len(items)))
        ]
        start += size
        try:
            out = detector.process(batch, table, Context(), now)
            for write in out.writes:
                table[write.key] = write.slot
            ticked = detector.tick(
                table, owns=lambda _p: True, partition_of=lambda _k: 0, watermark=now, ctx=Context()
            )
            for write in ticked.writes:
                table[write.key] = write.slot
        except Exception as exc:  # the detector promises never to raise; count it if it does
            tally.worker_crashes += 1
            if len(tally.crash_examples) < 5:
                tally.crash_examples.append(f"{detector.logical}: {exc!r}")
            continue
        for letter in out.dead_letters:
            letters.setdefault((letter.partition, letter.offset), []).append(letter)
        for hit in (*out.detections, *ticked.detections):
            valid = offset_valid.get(hit.trigger.offset, -1)
            if hit.trigger.topic == detector.topic and valid >= 0:
                found.setdefault(valid, []).append((hit.rule, hit.key))
    return found, letters


def _expected(
    detector: TopicDetector, values: Sequence[bytes], now: datetime
) -> dict[int, list[tuple[str, str]]]:
    """What the valid records alone trip, by valid index (one batch per record)."""
    table: dict[str, Any] = {}
    found: dict[int, list[tuple[str, str]]] = {}
    for index, value in enumerate(values):
        out = detector.process([RawRecord(0, index, value)], table, Context(), now)
        for write in out.writes:
            table[write.key] = write.slot
        hits: list[Detection] = list(out.detections)
        for hit in hits:
            found.setdefault(index, []).append((hit.rule, hit.key))
    return found


def run_pure(hostile_per_topic: int, *, seed: int = 0, rounds: int = 1) -> dict[str, Any]:
    """The pure level: ``hostile_per_topic`` hostile records per input topic interleaved with
    ``rounds`` valid trip sequences per topic, through the live detectors. Returns figures."""
    rng = random.Random(seed)  # noqa: S311 - reproducible fuzzing, not crypto
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(minutes=5)
    detectors = _detectors()
    tally = Tally()
    with _LogCounter() as logged:
        for topic in TOPICS:
            detector = detectors[topic]
            valid = [
                orjson.dumps(record)
                for r in range(rounds)
                for _key, record in valid_sequences(topic, t0, rng, f"{seed}-{r}")
            ]
            hostile = list(_hostiles(topic, hostile_per_topic, rng, now))
            items = _interleave(valid, hostile, rng)
            expected = _expected(detector, valid, now)
            found, letters = _run_stream(detector, items, rng, now, tally)
            tally.valid_records += len(valid)
            for index, hits in expected.items():
                tally.valid_trips_expected += len(hits)
                missed = [hit for hit in hits if hit not in found.get(index, [])]
                tally.valid_trips_missed += len(missed)
                if missed and len(tally.missed_trip_examples) < 5:
                    tally.missed_trip_examples.append(f"{topic}#{index}: {missed}")
            for offset, item in enumerate(items):
                got = letters.get((0, offset), [])
                if item.hostile is not None:
                    tally.sent(item.hostile)
                    tally.judged(item.hostile, got)
                elif got:
                    tally.valid_dead_lettered += 1
            if not expected:  # a valid sequence that trips nothing tests nothing
                tally.missed_trip_examples.append(f"{topic}: valid sequence tripped nothing")
                tally.valid_trips_missed += 1
    figures = tally.figures()
    figures["rule_errors"] += logged.count
    figures["rule_error_examples"] = logged.examples
    return figures


def _interleave(
    valid: Sequence[bytes], hostile: Sequence[Hostile], rng: random.Random
) -> list[_Item]:
    """Valid records in their order, hostile ones scattered between them."""
    items = [_Item(h.value, hostile=h) for h in hostile]
    slots = sorted(rng.randint(0, len(items)) for _ in valid)
    for shift, (slot, (index, value)) in enumerate(zip(slots, enumerate(valid), strict=True)):
        items.insert(slot + shift, _Item(value, valid=index))
    return items


# --------------------------------------------------------------------------- adversarial values


@dataclass(frozen=True, slots=True)
class Logged:
    """A valid record and the broker timestamp (Kafka CreateTime) it is logged with."""

    value: bytes
    logged: datetime


@dataclass(frozen=True, slots=True)
class Adversarial:
    """One adversarial case: records of one topic, the ``(rule, key)`` detections they must
    still produce, and a silence tick to run after them (``None``: none needed)."""

    case: str
    topic: str
    records: tuple[Logged, ...]
    expected: frozenset[tuple[str, str]]
    watermark: datetime | None = None


#: Topics of the ``future_stamp_<topic>`` cases: every topic whose valid sequence can be
#: preceded by a quiet record of its key (a security event is a trip by itself).
_FUTURE_STAMP_TOPICS: Final = (
    "fills",
    "pnl",
    "orders",
    "order_errors",
    "health",
    "latency",
    "market",
)
#: A record of the key that trips nothing by itself (changes to :func:`_base`'s record).
_QUIET: Final[dict[str, dict[str, Any]]] = {
    "fills": {},
    "pnl": {"equity": 1000.0},
    "orders": {},
    "order_errors": {},
    "health": {"status": "HEALTHY"},
    "latency": {"latency_ms": 5.0},
    "market": {},
}
#: Every case name (the first-equity cases by their equity).
_FIRST_EQUITY: Final = {"zero": 0.0, "negative": -250.0, "negative_zero": -0.0}
ADVERSARIAL_CASES: Final[tuple[str, ...]] = (
    "future_beat",
    "future_market_tick",
    *(f"first_equity_{name}" for name in _FIRST_EQUITY),
    *(f"future_stamp_{topic}" for topic in _FUTURE_STAMP_TOPICS),
)


def _logged(record: dict[str, Any], logged: datetime) -> Logged:
    return Logged(orjson.dumps(record), logged)


def adversarial_cases(
    t0: datetime, rng: random.Random, tag: str, *, exact: bool = False
) -> list[Adversarial]:
    """Every case of :data:`ADVERSARIAL_CASES` from ``t0`` (keys carry ``tag``). ``exact``:
    the edge values (a stamp one second inside the skew, a one-second margin); otherwise
    stamps anywhere in the second half of the skew and margins of up to five seconds."""
    skew = CONFIG.max_future_skew_sec
    ahead = timedelta(seconds=skew - 1 if exact else rng.uniform(skew / 2, skew - 0.5))
    margin = timedelta(seconds=1 if exact else rng.uniform(0.1, 5.0))
    cases: list[Adversarial] = []
    # Silence measured from the broker timestamp, not from a ts in the future.
    for case, topic, rule, timeout in (
        ("future_beat", "health", "heartbeat_lost", CONFIG.heartbeat_timeout_sec),
        ("future_market_tick", "market", "data_feed_stale", CONFIG.data_feed_stale_sec),
    ):
        key = f"a-{case}-{tag}"
        record = _base(topic, key, t0 + ahead, rng)
        cases.append(
            Adversarial(
                case,
                topic,
                (_logged(record, t0),),
                frozenset({(rule, key)}),
                watermark=t0 + timedelta(seconds=timeout) + margin,
            )
        )
    # No equity at the start of the day, then a real loss: 12 % below the day's first
    # positive tick (daily loss 10 %), 30 % below the peak (drawdown 25 %).
    base = 1000.0 if exact else rng.uniform(100.0, 1_000_000.0)
    for name, first in _FIRST_EQUITY.items():
        key = f"a-equity-{name}-{tag}"
        ticks = [(0, first), (60, base), (180, 0.95 * base), (300, 0.88 * base), (420, 0.7 * base)]
        records = []
        for seconds, equity in ticks:
            at = t0 + timedelta(seconds=seconds)
            records.append(_logged({**_base("pnl", key, at, rng), "equity": equity}, at))
        cases.append(
            Adversarial(
                f"first_equity_{name}",
                "pnl",
                tuple(records),
                frozenset({("daily_loss", key), ("equity_drawdown", key)}),
            )
        )
    # A quiet record stamped in the future, then the valid trip sequence of its key.
    detectors = _detectors()
    for topic in _FUTURE_STAMP_TOPICS:
        pairs = valid_sequences(topic, t0, rng, f"a-{tag}")
        key = pairs[0][0]
        values = [orjson.dumps(record) for _key, record in pairs]
        expected = {
            hit for hits in _expected(detectors[topic], values, t0).values() for hit in hits
        }
        quiet = {**_base(topic, key, t0 + ahead, rng), **_QUIET[topic]}
        records = [_logged(quiet, t0)]
        records += [
            Logged(value, datetime.fromisoformat(record["ts"]))
            for value, (_key, record) in zip(values, pairs, strict=True)
        ]
        cases.append(
            Adversarial(f"future_stamp_{topic}", topic, tuple(records), frozenset(expected))
        )
    return cases


def _play_case(
    detector: TopicDetector, case: Adversarial, rng: random.Random
) -> tuple[set[tuple[str, str]], int]:
    """Feed the case in random batches (each record with its broker timestamp), then run its
    silence tick. Returns the detections and how many records were dead-lettered."""
    table: dict[str, Any] = {}
    found: set[tuple[str, str]] = set()
    letters = 0
    records = case.records
    now = max(record.logged for record in records)  # stamps dead letters only
    start = 0
    while start < len(records):
        size = rng.randint(1, len(records))
        batch = [
            RawRecord(
                0, offset, records[offset].value, int(records[offset].logged.timestamp() * 1000)
            )
            for offset in range(start, min(start + size, len(records)))
        ]
        start += size
        out = detector.process(batch, table, Context(), now)
        for write in out.writes:
            table[write.key] = write.slot
        letters += len(out.dead_letters)
        found |= {(hit.rule, hit.key) for hit in out.detections}
    if case.watermark is not None:
        ticked = detector.tick(
            table,
            owns=lambda _p: True,
            partition_of=lambda _k: 0,
            watermark=case.watermark,
            ctx=Context(),
        )
        found |= {(hit.rule, hit.key) for hit in ticked.detections}
    return found, letters


def run_adversarial(rounds: int, *, seed: int = 0) -> dict[str, Any]:
    """Every adversarial case ``rounds`` times (the first round at the edge values, the
    others drawn from ``seed``) through the live detectors. Returns figures."""
    rng = random.Random(seed + 2)  # noqa: S311 - reproducible fuzzing, not crypto
    detectors = _detectors()
    expected = missed = letters = played = 0
    missed_by_case: dict[str, int] = {}
    examples: list[str] = []
    for number in range(rounds):
        # A day whose first seven minutes hold the equity cases: 10:00 UTC on some day.
        t0 = datetime(2026, 1, 1, 10, tzinfo=UTC) + timedelta(days=rng.randrange(365))
        for case in adversarial_cases(t0, rng, f"{seed}-{number}", exact=number == 0):
            played += 1
            found, dead = _play_case(detectors[case.topic], case, rng)
            letters += dead
            expected += len(case.expected)
            lost = sorted(case.expected - found)
            if lost:
                missed += len(lost)
                missed_by_case[case.case] = missed_by_case.get(case.case, 0) + len(lost)
                if len(examples) < 8:
                    examples.append(f"{case.case}: {lost}")
            if not case.expected:  # a case expecting nothing tests nothing
                missed += 1
                missed_by_case[case.case] = missed_by_case.get(case.case, 0) + 1
    return {
        "cases": played,
        "trips_expected": expected,
        "trips_missed": missed,
        "dead_lettered": letters,
        "missed_by_case": dict(sorted(missed_by_case.items())),
        "missed_examples": examples,
    }


# --------------------------------------------------------------------------- live level


@dataclass(frozen=True, slots=True)
class _Sent:
    topic: str
    partition: int
    offset: int


async def _collect(bootstrap: str, topic: str, sink: list[bytes], stop: asyncio.Event) -> None:
    reader: AIOKafkaConsumer = consumer(bootstrap, group_id=None, client_id="chaos-fuzz-reader")
    await reader.start()
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        while not stop.is_set():
            batch = await reader.getmany(tp, timeout_ms=100)
            sink.extend(record.value for record in batch.get(tp, []))
    finally:
        await reader.stop()


class _Live:
    """Sent records and what came back on ``ess.deadletter`` / ``ess.commands``."""

    def __init__(self, registry: TopicRegistry) -> None:
        self.registry = registry
        self.hostile: list[tuple[Hostile, _Sent]] = []
        #: (rule, rule key, triggering record) the valid sequences must trip.
        self.expected: list[tuple[str, str, _Sent]] = []
        self.valid: set[_Sent] = set()
        self.trips_raw: list[bytes] = []
        self.letters_raw: list[bytes] = []

    async def send_hostile(
        self, out: AIOKafkaProducer, per_topic: int, rng: random.Random, now: datetime
    ) -> None:
        for topic in TOPICS:
            name = getattr(self.registry, topic).name
            hostiles = list(_hostiles(topic, per_topic, rng, now))
            # Queue a topic's records at once (send() returns a delivery future), then await.
            futures = [await out.send(name, h.value, key=h.key.encode()) for h in hostiles]
            for hostile, future in zip(hostiles, futures, strict=True):
                meta = await future
                self.hostile.append((hostile, _Sent(name, meta.partition, meta.offset)))

    async def send_valid(
        self,
        out: AIOKafkaProducer,
        detectors: dict[str, TopicDetector],
        t0: datetime,
        rng: random.Random,
        tag: str,
    ) -> None:
        for topic in TOPICS:
            name = getattr(self.registry, topic).name
            pairs = valid_sequences(topic, t0, rng, tag)
            values = [orjson.dumps(record) for _key, record in pairs]
            hits = _expected(detectors[topic], values, t0)
            for index, (key, _record) in enumerate(pairs):
                meta = await out.send_and_wait(name, values[index], key=key.encode())
                sent = _Sent(name, meta.partition, meta.offset)
                self.valid.add(sent)
                self.expected += [(rule, rule_key, sent) for rule, rule_key in hits.get(index, [])]

    def letters(self) -> dict[_Sent, list[DeadLetter]]:
        by: dict[_Sent, list[DeadLetter]] = {}
        for raw in list(self.letters_raw):
            letter = decode(DeadLetter, raw)
            where = _Sent(letter.source_topic, letter.partition, letter.offset)
            by.setdefault(where, []).append(letter)
        return by

    def tripped(self) -> list[tuple[str, str, _Sent]]:
        """The expected trips seen on ``ess.commands`` (rule and triggering record match)."""
        got = set()
        for raw in list(self.trips_raw):
            trip = decode(TripCommand, raw)
            if trip.trigger is not None:
                trigger = trip.trigger
                where = _Sent(trigger.topic, trigger.partition, trigger.offset)
                got.add((trip.source.removeprefix("detector:"), where))
        return [item for item in self.expected if (item[0], item[2]) in got]

    def complete(self) -> bool:
        by = self.letters()
        lettered = sum(1 for h, sent in self.hostile if h.refused and sent in by)
        refused = sum(h.refused for h, _ in self.hostile)
        return lettered >= refused and len(self.tripped()) >= len(self.expected)

    def judge(self, tally: Tally) -> None:
        by = self.letters()
        for hostile, sent in self.hostile:
            tally.sent(hostile)
            tally.judged(hostile, by.get(sent, []))
        tally.valid_records = len(self.valid)
        tally.valid_dead_lettered = sum(1 for sent in self.valid if sent in by)
        tally.valid_trips_expected = len(self.expected)
        got = self.tripped()
        missed = [item for item in self.expected if item not in got]
        tally.valid_trips_missed = len(missed)
        tally.missed_trip_examples = [f"{r} {k} at {s}" for r, k, s in missed[:5]]
        if not self.expected:
            tally.valid_trips_missed += 1
            tally.missed_trip_examples.append("valid sequences tripped nothing")


async def _start_worker(
    settings: Any, stop: asyncio.Event, ready: asyncio.Event
) -> asyncio.Task[None]:
    from ess.core.reader import Trust  # noqa: PLC0415
    from ess.roles.detect import run_detector  # noqa: PLC0415 - Faust is heavy, import late

    # The campaign's state log stays empty: the epoch follower has nothing to verify.
    trust = Trust(scope=settings.registry.state.name)
    worker = asyncio.create_task(run_detector(settings, stop, trust=trust, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({worker, waiter}, timeout=60, return_when="FIRST_COMPLETED")
    waiter.cancel()
    if worker.done():
        worker.result()  # raises what went wrong at start
    if not ready.is_set():
        stop.set()
        raise TimeoutError("detection worker not ready within 60 s")
    return worker


async def run_live(hostile_total: int, *, seed: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
    """The live level: ``hostile_total`` hostile records spread over every input topic, then
    one valid trip sequence per topic, through a real detection worker. Returns figures."""
    from ess.roles.detect.settings import DetectorSettings  # noqa: PLC0415 - Faust is heavy

    rng = random.Random(seed + 1)  # noqa: S311 - reproducible fuzzing, not crypto
    run = uuid.uuid4().hex[:8]
    registry = topic_registry(prefix=f"chaos-fuzz-{run}")
    app_id = f"chaos-fuzz-{run}"
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(minutes=5)
    if (t0 + timedelta(minutes=6)).date() != t0.date():  # keep the daily-loss day whole
        t0 = t0.replace(hour=0, minute=0, second=1) + timedelta(days=1)
    tally = Tally()
    live = _Live(registry)
    async with kafka_target(registry) as bootstrap:
        settings = DetectorSettings(
            bootstrap=bootstrap,
            registry=registry,
            app_id=app_id,
            detection=CONFIG,
            tick_interval_sec=0.5,
            standby_replicas=0,
        )
        stop, collected = asyncio.Event(), asyncio.Event()
        readers = [
            asyncio.create_task(_collect(bootstrap, topic, sink, collected))
            for topic, sink in (
                (registry.commands.name, live.trips_raw),
                (registry.deadletter.name, live.letters_raw),
            )
        ]
        out = producer(bootstrap)
        worker: asyncio.Task[None] | None = None
        try:
            await out.start()
            worker = await _start_worker(settings, stop, asyncio.Event())
            await live.send_hostile(out, max(1, hostile_total // len(TOPICS)), rng, now)
            # Valid trip sequences after the garbage: detection must still work.
            await live.send_valid(out, _detectors(), t0, rng, run)
            running = worker
            for _ in range(int(timeout_s / 0.2)):  # bounded poll: letters and trips arrive
                if running.done() or live.complete():
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # let stragglers (a second letter, a late trip) land
            if worker.done():
                tally.worker_crashes += 1
                error = None if worker.cancelled() else worker.exception()
                tally.crash_examples.append(f"worker ended: {error!r}")
            live.judge(tally)
        finally:
            stop.set()
            collected.set()
            if worker is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker, timeout=30)
            await out.stop()
            await asyncio.gather(*readers, return_exceptions=True)
            # Faust keeps a data directory named after the app id in the working directory.
            shutil.rmtree(Path(f"{app_id}-data"), ignore_errors=True)
    return tally.figures()


# --------------------------------------------------------------------------- campaign


async def run_campaign(*, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Pure (quick ~200, full ~20,000 hostile records), adversarial (quick: every case once at
    the edge values; full: 25 rounds) and live (quick ~50, full ~2,000) fuzzing; see the
    module notes for the figures."""
    started = time.monotonic()
    pure_per_topic = 25 if quick else 2500
    pure = await asyncio.to_thread(
        run_pure, pure_per_topic, seed=seed, rounds=1 if quick else max(1, pure_per_topic // 250)
    )
    pure_s = time.monotonic() - started
    adversarial = await asyncio.to_thread(run_adversarial, 1 if quick else 25, seed=seed)
    live = await run_live(
        8 * len(_CATEGORY_NAMES) if quick else 2000, seed=seed, timeout_s=40 if quick else 120
    )
    summed = {
        name: pure[name] + live[name]
        for name in (
            "records",
            "dead_lettered",
            "missing_dead_letters",
            "worker_crashes",
            "valid_trips_expected",
            "valid_trips_missed",
            "valid_dead_lettered",
            "hostile_accepted",
            "rule_errors",
        )
    }
    by_topic = {
        topic: pure["by_topic"].get(topic, 0) + live["by_topic"].get(topic, 0) for topic in TOPICS
    }
    return {
        **summed,
        "adversarial_cases": adversarial["cases"],
        "adversarial_trips_expected": adversarial["trips_expected"],
        "adversarial_trips_missed": adversarial["trips_missed"],
        "adversarial_dead_lettered": adversarial["dead_lettered"],
        "by_topic": by_topic,
        "pure": pure,
        "adversarial": adversarial,
        "live": live,
        "pure_s": round(pure_s, 1),
        "duration_s": round(time.monotonic() - started, 1),
    }

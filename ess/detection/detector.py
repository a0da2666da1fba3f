"""The pure heart of the detection worker: one batch of raw records in, state writes,
detections and dead letters out.

The Faust agent (:mod:`streams.app`) is a thin shell around :meth:`TopicDetector.process`: it
takes a batch of events from its topic, hands over their raw bytes and coordinates together
with a read-only view of the topic's state table, and then performs what comes back (send the
trips, write the states, send the dead letters). Everything here is synchronous and free of
I/O, so it is unit-tested without a broker, and the benchmark's plain-aiokafka baseline runs
the very same code.

Table layout
------------
One table per input topic, co-partitioned with it. A table key is ``"<rule>|<key>"`` (rule
names never contain ``|``; the rule's own key may, and is kept verbatim after the first
``|``). In the changelog a value is ``{"p": partition, "s": rule.dump(state)}``, ``p`` being
the partition of the record that last wrote it: a timer (which runs outside stream
iteration) learns from it where the key lives and whether this worker owns it (see
:meth:`TopicDetector.tick`). In memory the table holds that form (after recovery) or a
:class:`Slot`, the live state object: the hot path never dumps or loads, and the shell
serializes a key only when it flushes the changelog (once per key per offset commit, see
:class:`streams.faust_compat.DetectTable`).

Kafka keys
----------
Every record's Kafka key must be the one the contract derives from its key field
(:mod:`ess.detection.keys`): otherwise one key's records sit in several partitions and its
state is split between the workers (and changelog partitions) that own them. On a topic with
more than one partition a mismatched record (no key counts) is refused: dead-lettered with
reason ``key_mismatch``, expected and got, and never folded, not even into the rules that
count invalid records. It is not re-routed: detection only reads input topics (see
docs/contract.md for why). On a single-partition topic nothing can split, so the record is
processed and only reported. Either way it is listed in :attr:`BatchOutcome.key_mismatches`
for the shell to count and log.

Batching
--------
Within a batch the state of every (rule, key) is read from the table at most once, folded
through every record of the batch in arrival order (offset order per partition), and handed
back at most once, only if it changed. Exactness does not depend on the batch size: ``step``
is applied to every record, in the same order, as one-at-a-time processing would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from loguru import logger
from pydantic import BaseModel

from ess.core.deadletter import build_dead_letter
from ess.detection.keys import KEY_UNKNOWN, KeyMismatch, KeyUnknown, key_matches
from ess.rules.base import Context, Coordinates, Detection, Rule
from ess.rules.catalog import (
    RECORD_TYPE,
    accepts_invalid,
    build_rules,
    is_silence_rule,
    required_keys,
)
from ess.rules.config import DetectionConfig
from schemas import DeadLetter, RecordError, TopicRegistry, decode
from schemas.records import EARLIEST_TS, LATEST_TS

__all__ = [
    "DEAD_LETTER_REASONS",
    "KEY_SEP",
    "BatchOutcome",
    "RawRecord",
    "Slot",
    "StateWrite",
    "TopicDetector",
    "bind_topics",
    "build_detectors",
    "split_table_key",
    "table_key",
]

AnyRule = Rule[Any, Any]

#: Separator between rule name and rule key in a table key.
KEY_SEP: Final = "|"

#: ``DeadLetter.reason`` of the dead letters the detector builds (also the metric labels):
#: not a contract record, the codec itself failed, an event time too far after the Kafka
#: timestamp, a rule raised on the record, the Kafka key is not the record's key.
DEAD_LETTER_REASONS: Final = (
    "invalid",
    "decode_failed",
    "future_ts",
    "rule_failed",
    "key_mismatch",
)


def table_key(rule_name: str, key: str) -> str:
    """The table key of ``rule_name``'s state for ``key``."""
    return f"{rule_name}{KEY_SEP}{key}"


def split_table_key(value: str) -> tuple[str, str]:
    """Inverse of :func:`table_key`: ``(rule_name, key)``."""
    rule_name, _, key = value.partition(KEY_SEP)
    return rule_name, key


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the agent received it: coordinates and raw bytes."""

    partition: int
    offset: int
    value: bytes | None
    #: The Kafka record timestamp in milliseconds (CreateTime), when known: the event time of
    #: a record so broken that its own ``ts`` cannot be read, the bound of how far in the
    #: future a ``ts`` may be, and the silence rules' clock when it is earlier than ``ts``.
    timestamp_ms: int | None = None
    #: The Kafka key (``None``: produced without one), checked against the record's key
    #: field; :data:`~ess.detection.keys.KEY_UNKNOWN` when the caller does not know it (the
    #: check is then skipped; the live shell always passes it).
    key: bytes | KeyUnknown | None = KEY_UNKNOWN


@dataclass(frozen=True, slots=True)
class Slot:
    """A live (decoded) rule state as kept in the table between changelog flushes."""

    partition: int
    rule: AnyRule
    state: Any

    def stored(self) -> dict[str, Any]:
        """The changelog form: ``{"p": partition, "s": rule.dump(state)}``."""
        return {"p": self.partition, "s": self.rule.dump(self.state)}


@dataclass(frozen=True, slots=True)
class StateWrite:
    """Set table ``key`` to ``slot`` (its changelog partition is ``slot.partition``)."""

    key: str
    slot: Slot

    @property
    def partition(self) -> int:
        return self.slot.partition

    @property
    def value(self) -> dict[str, Any]:
        """What the changelog will hold for the key."""
        return self.slot.stored()


@dataclass(slots=True)
class BatchOutcome:
    """What a batch (or a tick) asks the shell to do, in this order: deliver ``detections``
    as trip commands, then apply ``writes``, then send ``dead_letters``.

    Trips go first and are awaited before the state that latches them is written: if the
    worker dies in between, the records are redelivered and the trip is detected again with
    the same derived command id (the processor records it once). The other order could
    persist a latch for a trip that never left the worker.
    """

    writes: list[StateWrite] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Records of the batch that decoded and went through the rules.
    valid: int = 0
    #: Records whose Kafka key is not their key field's (dead-lettered or, on a
    #: single-partition topic, processed): the shell counts and logs them.
    key_mismatches: list[KeyMismatch] = field(default_factory=list)


def _plausible(moment: datetime) -> bool:
    """Within the contract's event-time range (rules do date arithmetic on it)."""
    try:
        return EARLIEST_TS <= moment < LATEST_TS
    except OverflowError:  # an offset that has no UTC equivalent at the edge of datetime
        return False


def _key_from_raw(raw: bytes | None, key_field: str) -> tuple[str | None, datetime | None]:
    """Best effort for an invalid record: its key field and its own ``ts``, if readable."""
    if not raw:
        return None, None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    key = data.get(key_field)
    ts: datetime | None = None
    raw_ts = data.get("ts")
    if isinstance(raw_ts, str):
        try:
            parsed = datetime.fromisoformat(raw_ts)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None and _plausible(parsed):
            ts = parsed  # else the caller falls back to the Kafka timestamp
    if isinstance(key, str) and 0 < len(key) <= 256:
        return key, ts
    return None, ts


class TopicDetector:
    """Every rule of one input topic, run over batches of raw records.

    ``topic`` is the physical topic name (it goes into trigger coordinates and dead letters),
    ``key_field`` the record field the topic is keyed by (``account_id``, ``symbol``, ...:
    the registry's ``TopicSpec.key``): every record's Kafka key is checked against it (see
    "Kafka keys" above), and it attributes an invalid record to a key for the rules that
    count invalid records. ``partitions`` is the topic's partition count: with exactly one,
    a mismatched key cannot split state and is only reported; unknown (``None``) is treated
    as several (refuse).
    """

    def __init__(
        self,
        *,
        logical: str,
        topic: str,
        record_type: type[BaseModel],
        rules: Sequence[AnyRule],
        key_field: str,
        max_future_skew: timedelta | None = None,
        partitions: int | None = None,
    ) -> None:
        self.logical = logical
        self.max_future_skew = max_future_skew
        self.partitions = partitions
        #: Whether a mismatched key is refused (it could split state) or only reported.
        self.refuses_mismatched_keys = partitions is None or partitions > 1
        self.topic = topic
        self.record_type = record_type
        self.rules: tuple[AnyRule, ...] = tuple(rules)
        self.key_field = key_field
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate rule names on {logical}: {names}")
        bad = [name for name in names if KEY_SEP in name]
        if bad:
            raise ValueError(f"rule names must not contain {KEY_SEP!r}: {bad}")
        # (rule, table-key prefix) pairs, precomputed: the hot loop only concatenates.
        self._plan = tuple((rule, rule.name + KEY_SEP) for rule in self.rules)
        self._silence = tuple(
            (rule, rule.name + KEY_SEP) for rule in self.rules if is_silence_rule(rule)
        )
        self._invalid = tuple(
            (rule, rule.name + KEY_SEP) for rule in self.rules if accepts_invalid(rule)
        )

    @property
    def ticks(self) -> bool:
        """Whether any rule of this topic detects silence (needs :meth:`tick`)."""
        return bool(self._silence)

    # ------------------------------------------------------------------ records

    def process(
        self,
        batch: Iterable[RawRecord],
        table: Mapping[str, Any],
        ctx: Context,
        now: datetime,
    ) -> BatchOutcome:
        """Fold a batch into the table's states; never raises for bad input or a rule bug.

        ``table`` maps table keys to stored values (a :class:`Slot` or its changelog form
        ``{"p": ..., "s": ...}``); it is only read. ``now`` stamps dead letters (wall clock:
        when ESS refused the record).
        """
        out = BatchOutcome()
        # table key -> [rule, state, partition, dirty]
        live: dict[str, list[Any]] = {}
        topic = self.topic
        record_type = self.record_type
        detections = out.detections
        for raw in batch:
            logged = None if raw.timestamp_ms is None else raw.timestamp_ms * 1000
            coords = Coordinates(topic, raw.partition, raw.offset, logged)
            try:
                record: Any = decode(record_type, raw.value or b"")
            except RecordError as exc:
                self._refuse(out, live, table, raw, coords, str(exc), ctx, now, "invalid")
                continue
            except Exception as exc:  # the codec promises RecordError; belt and braces
                self._refuse(
                    out,
                    live,
                    table,
                    raw,
                    coords,
                    f"decode failed: {exc!r}",
                    ctx,
                    now,
                    "decode_failed",
                )
                continue
            if raw.key is not KEY_UNKNOWN:
                expected = getattr(record, self.key_field)
                if not key_matches(expected, raw.key):
                    mismatch = self._mismatch(raw, expected)
                    out.key_mismatches.append(mismatch)
                    if self.refuses_mismatched_keys:
                        # Never folded (not even as invalid): its key's state lives elsewhere.
                        out.dead_letters.append(
                            self._dead_letter(raw, mismatch.error, now, "key_mismatch")
                        )
                        continue
            skew = self._future_skew(record, raw)
            if skew is not None:
                self._refuse(out, live, table, raw, coords, skew, ctx, now, "future_ts")
                continue
            record = _not_after_logged(record, raw)
            out.valid += 1
            for rule, prefix in self._plan:
                try:
                    tkey = prefix + rule.key(record)
                    slot = live.get(tkey)
                    if slot is None:
                        slot = live[tkey] = [rule, self._load(rule, table.get(tkey)), 0, False]
                    state = slot[1]
                    new, hit = rule.step(state, record, coords, ctx)
                except Exception as exc:
                    # A rule bug must not take the worker (or the other rules) down, and the
                    # record must stay findable: dead-letter it with the rule's name.
                    logger.bind(rule=rule.name, topic=topic, offset=raw.offset).exception(
                        "detection rule failed on a record"
                    )
                    out.dead_letters.append(
                        self._dead_letter(
                            raw, f"rule {rule.name} failed: {exc!r}", now, "rule_failed"
                        )
                    )
                    continue
                if new is not state:
                    slot[1] = new
                    slot[2] = raw.partition
                    slot[3] = True
                if hit is not None:
                    detections.append(hit)
        out.writes = self._writes(live)
        return out

    def _future_skew(self, record: Any, raw: RawRecord) -> str | None:
        """Why ``record`` is refused for an event time too far after its Kafka timestamp."""
        if self.max_future_skew is None or raw.timestamp_ms is None:
            return None
        written = datetime.fromtimestamp(raw.timestamp_ms / 1000, UTC)
        if record.ts - written <= self.max_future_skew:
            return None
        return (
            f"ts {record.ts.isoformat()} is more than {self.max_future_skew.total_seconds():g}s "
            f"after the record's Kafka timestamp {written.isoformat()}"
        )

    def _refuse(  # noqa: PLR0917 - private; one call site passes the loop's locals
        self,
        out: BatchOutcome,
        live: dict[str, list[Any]],
        table: Mapping[str, Any],
        raw: RawRecord,
        coords: Coordinates,
        error: str,
        ctx: Context,
        now: datetime,
        reason: str,
    ) -> None:
        if not self._invalid:
            out.dead_letters.append(self._dead_letter(raw, error, now, reason))
            return
        key, event_ts = _key_from_raw(raw.value, self.key_field)
        if key is not None and raw.key is not KEY_UNKNOWN and not key_matches(key, raw.key):
            # Counted as invalid for its key, it would land in a state on the wrong
            # partition: dead-letter it as what it is (invalid) and say the key is wrong too.
            mismatch = self._mismatch(raw, key)
            out.key_mismatches.append(mismatch)
            if self.refuses_mismatched_keys:
                error = f"{error}; also {mismatch.error}"
                key = None
        out.dead_letters.append(self._dead_letter(raw, error, now, reason))
        if key is None:
            return
        if event_ts is None:
            event_ts = (
                datetime.fromtimestamp(raw.timestamp_ms / 1000, UTC)
                if raw.timestamp_ms is not None
                else now
            )
        for rule, prefix in self._invalid:
            tkey = prefix + key
            try:
                slot = live.get(tkey)
                if slot is None:
                    slot = live[tkey] = [rule, self._load(rule, table.get(tkey)), 0, False]
                state = slot[1]
                new, hit = rule.invalid(state, key, coords, event_ts, ctx)  # type: ignore[attr-defined]
            except Exception:
                logger.bind(rule=rule.name, topic=self.topic, offset=raw.offset).exception(
                    "detection rule failed on an invalid record"
                )
                continue
            if new is not state:
                slot[1] = new
                slot[2] = raw.partition
                slot[3] = True
            if hit is not None:
                out.detections.append(hit)

    def _dead_letter(self, raw: RawRecord, error: str, now: datetime, reason: str) -> DeadLetter:
        letter = build_dead_letter(
            source_topic=self.topic,
            partition=raw.partition,
            offset=raw.offset,
            raw=raw.value,
            error=error,
            ts=now,
        )
        return letter.model_copy(update={"reason": reason})

    def _mismatch(self, raw: RawRecord, expected: str) -> KeyMismatch:
        got = raw.key
        return KeyMismatch(
            topic=self.topic,
            partition=raw.partition,
            offset=raw.offset,
            key_field=self.key_field,
            expected=expected,
            got=None if isinstance(got, KeyUnknown) else got,
            action="dead_lettered" if self.refuses_mismatched_keys else "accepted",
        )

    @staticmethod
    def _load(rule: AnyRule, stored: Any) -> Any:
        if stored is None:
            return rule.initial()
        if isinstance(stored, Slot):
            return stored.state
        try:
            return rule.load(stored["s"])
        except Exception:
            # A value written by an incompatible older version: start the key afresh rather
            # than stop detecting for it. Logged, because it forgets a window.
            logger.bind(rule=rule.name).exception("unreadable rule state; starting afresh")
            return rule.initial()

    @staticmethod
    def _writes(live: dict[str, list[Any]]) -> list[StateWrite]:
        writes: list[StateWrite] = []
        for tkey, (rule, state, partition, dirty) in live.items():
            if dirty:
                writes.append(StateWrite(tkey, Slot(partition, rule, state)))
        return writes

    # ------------------------------------------------------------------ silence

    def tick(
        self,
        table: Mapping[str, Any],
        *,
        owns: Callable[[int], bool],
        partition_of: Callable[[str], int],
        watermark: datetime,
        ctx: Context,
    ) -> BatchOutcome:
        """Advance the silence rules to ``watermark`` for every key they hold state for in
        ``table`` plus their required keys, *restricted to partitions this worker owns*.

        Which worker ticks a key: the one that owns the key's source partition, because that
        is where its state (and latch) lives and may be written. ``owns(partition)`` says
        whether this worker is that owner now; ``partition_of(key)`` places a required key
        that has no state yet (the partition a producer keying by it would use). Every worker
        runs the timer; each ticks only its own keys, so a key is ticked by exactly one
        worker per consumer group, and never by one that would write into a partition it
        does not own.
        """
        out = BatchOutcome()
        if not self._silence:
            return out
        live: dict[str, list[Any]] = {}
        stored_keys = list(table.keys())
        for rule, prefix in self._silence:
            keys = {tk[len(prefix) :] for tk in stored_keys if tk.startswith(prefix)}
            keys |= required_keys(rule)
            for key in sorted(keys):  # sorted: reproducible order of detections
                tkey = prefix + key
                stored = table.get(tkey)
                if stored is None:
                    partition = partition_of(key)
                elif isinstance(stored, Slot):
                    partition = stored.partition
                else:
                    partition = stored["p"]
                if not owns(partition):
                    continue
                try:
                    state = self._load(rule, stored)
                    new, hit = rule.tick(state, key, watermark, ctx)
                except Exception:
                    logger.bind(rule=rule.name, key=key).exception("silence tick failed")
                    continue
                if new is not state:
                    live[tkey] = [rule, new, partition, True]
                if hit is not None:
                    out.detections.append(hit)
        out.writes = self._writes(live)
        return out


def _not_after_logged(record: Any, raw: RawRecord) -> Any:
    """``record`` with its event time no later than when the broker logged it.

    Nothing happens after it is written down: a ``ts`` ahead of the Kafka timestamp (accepted
    up to ``max_future_skew``, for producers whose clocks run ahead) is taken as the Kafka
    timestamp. Otherwise one record stamped minutes ahead would move its key's newest event
    time forward, and every window rule (``trade_rate``, ``flash_crash``, ``order_rejects``,
    ``latency_spike``...) would drop the key's real records as late for that long. Replays
    see the same Kafka timestamps and decide the same."""
    if raw.timestamp_ms is None:
        return record
    logged = datetime.fromtimestamp(raw.timestamp_ms / 1000, UTC)
    if record.ts <= logged:
        return record
    return record.model_copy(update={"ts": logged})


def bind_topics(detection: DetectionConfig, registry: TopicRegistry) -> DetectionConfig:
    """``detection`` with the physical topic names of ``registry``: the silence rules point a
    never-seen required key's trigger at the topic it should have arrived on."""
    wanted = {"health_topic": registry.health.name, "market_topic": registry.market.name}
    if all(getattr(detection, name) == value for name, value in wanted.items()):
        return detection
    return detection.model_copy(update=wanted)


def build_detectors(detection: DetectionConfig, registry: TopicRegistry) -> list[TopicDetector]:
    """One :class:`TopicDetector` per input topic of ``registry``, with the catalog's rules for
    ``detection``. Topics without enabled rules still get one: their records are validated and
    bad ones dead-lettered."""
    detection = bind_topics(detection, registry)
    rules = build_rules(detection)
    detectors = []
    for logical, record_type in RECORD_TYPE.items():
        spec = getattr(registry, logical)
        detectors.append(
            TopicDetector(
                logical=logical,
                topic=spec.name,
                record_type=record_type,
                rules=rules.get(logical, []),
                key_field=spec.key,
                max_future_skew=timedelta(seconds=detection.max_future_skew_sec),
                partitions=spec.partitions,
            )
        )
    return detectors

"""Audit replay: a recording through the live detection and command-processing code, in
process, with no broker, no exchange and no PolicyStore.

What runs is the live code itself: one :class:`ess.detection.detector.TopicDetector` per input topic
(built by :func:`ess.detection.build_detectors`, so decoding, dead-lettering, the rules and
their per-key tables are exactly the worker's), :func:`ess.rules.base.trip_command` for the
command ids, and :func:`ess.core.decide` / :func:`ess.core.evolve` for the state machine.

Time and order
--------------
Everything is placed on one axis, the Kafka record timestamp ("log time": when a producer
sent the record, which is also when the live system saw it, give or take its latency):

* Each partition is replayed in offset order (a key's state only depends on its own
  partition's order); partitions are merged by log time. A timestamp that goes backwards
  within a partition is clamped to the partition's running maximum, so the merge never
  reorders a partition. Ties break by topic (contract order), partition, offset.
* Silence rules are ticked at every ``tick_interval`` boundary of log time at which their
  topic has records (the live worker ticks every ``tick_interval`` of its wall clock; a
  boundary with no record of the topic since the last tick would find nothing new), before
  the records at or after the boundary, and at the end of the recording. The watermark of a
  tick is the boundary: live, it is the detector's wall clock, and the log time is the
  recorded trace of that clock. An event-time watermark could not reproduce a live silence
  trip on data stamped in the past (a backfill, a lagging producer), and would put ticks on
  another axis than resets. The trip's event time does not depend on the tick anyway: it is
  the last record's time plus the timeout.
* Each ``reset`` entry of the recorded ``ess.state`` is applied at its log time: every topic
  is replayed up to it, the silence rules tick there, then the epoch moves on (with
  ``epoch_started`` = the entry's ``ts``, as :class:`ess.roles.detect.epoch.EpochFollower` does), so
  latches re-arm and baselines re-anchor where they did live.

Given the resets and the end of the recording, input topics are independent of each other
(rules are per topic and key). Each topic is therefore replayed on its own, in one batch
per stretch between ticks and resets (large batches are what makes the replay fast; the
rules see the same records in the same per-partition order), possibly in parallel worker
processes. The trips of all topics are then put in replay order (by their triggering
record, or by the tick that found them) and fed to the decider, together with the recorded
resets and the recorded trips of other sources (operators, evaluators: so that "activated"
versus "trip_recorded" lines up). Only detector trips are compared.

Operator actions
----------------
Manual trips, resets, reset approvals and rejected resets (and trips from other non-detector
sources: the command processor, the executor) are human or system decisions, not detection:
no replay can make them. They are read from the recorded ``ess.state`` as
:class:`OperatorAction` items, shown in the reports as a timeline, and never compared.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from loguru import logger

from ess.audit.recording import (
    Manifest,
    PartitionData,
    RecordingError,
    TopicEntry,
    load_manifest,
    read_topic,
)
from ess.core import INITIAL_STATE, EssState, ResetPolicy, decide, evolve
from ess.core.reader import ForeignRecord, LogBroken, Trust, fold_records
from ess.core.reader import RawRecord as StateRecord
from ess.detection import RawRecord, TopicDetector, build_detectors
from ess.rules.base import Context, Detection, trip_command
from ess.rules.catalog import TOPICS
from ess.rules.config import DetectionConfig
from ess.settings import DetectSettings
from schemas import (
    ActivatedEntry,
    ReasonCode,
    ResetApprovalEntry,
    ResetEntry,
    StateEntry,
    TriggerRef,
    TripCommand,
    TripRecordedEntry,
    topic_registry,
)

__all__ = [
    "DEFAULT_TICK_INTERVAL",
    "DeadLetterSample",
    "Decision",
    "OperatorAction",
    "ReplayResult",
    "Reset",
    "replay",
]

#: The live worker's default tick interval (``ESS_DETECT_TICK_INTERVAL_SEC``).
DEFAULT_TICK_INTERVAL: Final = DetectSettings().tick_interval_sec
DETECTOR_SOURCE: Final = "detector:"
#: Dead letters kept as examples in the result (all are counted).
_SAMPLE_DEAD_LETTERS: Final = 20
#: Below this many input records one process is faster than starting workers.
_PARALLEL_FROM: Final = 50_000
_MAX_WORKERS: Final = 4
#: Index of the state log among the topics in replay keys (after every input topic).
_STATE_INDEX: Final = len(TOPICS)

#: An item's place in the replay, compared as a tuple:
#: (log time ms, phase, sub, topic index, partition, offset, rule index, rule key).
#: Phase 0: a tick (sub 0) or a reset (sub 1) at a boundary, before the records of that
#: millisecond; 1: a record (or a recorded trip); 2: the final tick.
_Key = tuple[int, int, int, int, int, int, int, str]


@dataclass(frozen=True, slots=True)
class Decision:
    """A detector trip that made it into a state log: recorded live, or decided by a replay.

    ``subject`` is the Kafka key (account, component, symbol, source) of the triggering
    record, looked up in the recording for both sides alike; ``epoch`` counts the resets
    before the decision; ``kind`` is ``activated`` or ``trip_recorded``."""

    rule: str
    reason: ReasonCode
    trigger: TriggerRef
    command_id: str
    kind: str
    epoch: int
    seq: int
    detail: str = ""
    subject: str = ""

    @property
    def event_ts(self) -> datetime:
        return self.trigger.event_ts


@dataclass(frozen=True, slots=True)
class Reset:
    """A recorded reset: when it was decided (``at``), its log time (ms) and its entry."""

    at: datetime
    log_ms: int
    entry: ResetEntry


#: Rejections whose operator name is only a claim: the command did not authenticate.
_UNVERIFIED: Final = frozenset({"unknown_operator", "bad_signature"})


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """A recorded ``ess.state`` entry that a person (or ESS's own machinery) decided, not a
    detector: a manual trip, a reset, a reset approval, a rejected reset. Kept because an
    audit must see what humans did around the detector trips, and kept apart because a
    replay cannot reproduce a human decision: these are never compared.

    ``who`` is the trip's ``source`` (``operator:carol``, ``ess-command-processor``), the
    reset's operators, or the approving/rejected operator (for an ``unknown_operator`` or
    ``bad_signature`` rejection only the name the command claimed). ``what`` and
    ``outcome`` are short texts for people; ``kind`` (the entry kind), ``reason`` (trips)
    and ``why`` (rejections) are the machine-readable facts. ``epoch`` is ESS's epoch after
    the entry (a reset starts the next one); ``offset`` and ``log_ms`` place the entry in
    the recorded state log (its Kafka timestamp, ms); ``at`` is the entry's ``ts``."""

    kind: str
    seq: int
    offset: int
    at: datetime
    log_ms: int
    who: str
    what: str
    detail: str
    outcome: str
    command_id: str
    epoch: int
    reason: ReasonCode | None = None
    why: str | None = None


def _operator_action(offset: int, item: StateEntry, log_ms: int, epoch: int) -> OperatorAction:
    """The :class:`OperatorAction` of a state entry no detector decided."""
    reason: ReasonCode | None = None
    why: str | None = None
    if isinstance(item, ActivatedEntry | TripRecordedEntry):
        reason = item.reason
        who, detail = item.source, item.detail
        what = f"{'manual trip' if reason is ReasonCode.MANUAL else 'trip'} ({reason.value})"
        if isinstance(item, ActivatedEntry):
            outcome = "activated: ESS ACTIVE"
        else:
            outcome = "recorded: ESS already ACTIVE"
    elif isinstance(item, ResetEntry):
        who, what, detail = ", ".join(item.operators), "reset", item.detail
        outcome = f"applied: ESS INACTIVE (epoch {epoch})"
    elif isinstance(item, ResetApprovalEntry):
        who, what = item.operator, "reset approval"
        detail = item.command.detail if item.command is not None else ""
        outcome = f"approval {len(item.approvals)}/{item.quorum}: quorum pending"
    else:
        why = item.why.value
        who, what, detail = item.operator, "reset", item.detail
        claim = " (operator name not verified)" if why in _UNVERIFIED else ""
        outcome = f"rejected: {why}{claim}"
    return OperatorAction(
        kind=item.kind,
        seq=item.seq,
        offset=offset,
        at=item.ts,
        log_ms=log_ms,
        who=who,
        what=what,
        detail=detail,
        outcome=outcome,
        command_id=item.command_id,
        epoch=epoch,
        reason=reason,
        why=why,
    )


@dataclass(frozen=True, slots=True)
class DeadLetterSample:
    """A record the replay refused, as the live worker would have dead-lettered it."""

    topic: str
    partition: int
    offset: int
    error: str


@dataclass(slots=True)
class ReplayResult:
    """What a replay decided, and what the recording says the live run decided."""

    directory: Path
    manifest: Manifest
    config: DetectionConfig
    #: Detector trips in the recorded ``ess.state`` whose trigger lies in the recording.
    recorded: list[Decision]
    #: Detector trips the replay decided.
    replayed: list[Decision]
    #: Recorded detector trips the replay cannot judge: their triggering record is not in
    #: the recording (a topic not recorded, or outside the recorded offsets).
    unreplayable: list[Decision]
    resets: list[Reset]
    #: Recorded trips from other sources (operators, evaluators), fed to the decider.
    external_trips: int
    records: int
    valid: int
    dead_letters: int
    dead_letter_samples: list[DeadLetterSample]
    ticks: int
    seconds: float
    workers: int
    by_topic: dict[str, int] = field(default_factory=dict)
    #: Records of the recorded ``ess.state`` that did not verify (never applied).
    foreign: tuple[ForeignRecord, ...] = ()
    #: Manual trips, resets, approvals, rejected resets: shown, never replayed or compared.
    operator_actions: list[OperatorAction] = field(default_factory=list)
    #: Seconds between silence-rule ticks the replay used (it shapes silence trips).
    tick_interval: float = DEFAULT_TICK_INTERVAL

    @property
    def records_per_s(self) -> float:
        """Input records per second of the whole replay, reading the files included."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- one topic


@dataclass(frozen=True, slots=True)
class _Schedule:
    """What every topic's replay needs from the others: resets and the recording's end."""

    tick_ms: int
    end_ms: int
    #: (log time ms, epoch_started) of each recorded reset, in log order.
    resets: tuple[tuple[int, datetime], ...]


@dataclass(frozen=True, slots=True)
class _TopicJob:
    directory: Path
    entry: TopicEntry
    prefix: str
    config: DetectionConfig
    schedule: _Schedule
    #: Recorded triggers on this topic, (partition, offset): their subjects are wanted.
    wanted: tuple[tuple[int, int], ...]


@dataclass(slots=True)
class _TopicOutcome:
    topic: str
    found: list[tuple[_Key, Detection, int]]
    subjects: dict[tuple[int, int], str]
    records: int
    valid: int
    dead_letters: int
    samples: list[DeadLetterSample]
    ticks: int


@dataclass(slots=True)
class _Part:
    """One recorded partition, with its log times and the replay's cursor."""

    data: PartitionData
    #: Running maximum of the Kafka timestamps (ms): the merge key, never decreasing.
    times: list[int]
    cursor: int = 0


def _log_times(timestamps: list[int | None]) -> list[int]:
    """Running maximum of the timestamps; a missing one counts as the one before it."""
    times: list[int] = []
    latest = 0
    for stamp in timestamps:
        if stamp is not None and stamp > latest:
            latest = stamp
        times.append(latest)
    return times


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _detectors(prefix: str, config: DetectionConfig, partitions: int) -> dict[str, TopicDetector]:
    """The live worker's detectors by logical topic: the same :func:`build_detectors`, which
    also points the silence rules' never-seen triggers at this prefix's topics, over the
    recorded topic's partition count (the key check refuses mis-keyed records only where
    more than one partition could split a key's state)."""
    detectors = build_detectors(config, topic_registry(prefix, partitions))
    return {detector.logical: detector for detector in detectors}


class _TopicReplay:
    """One input topic through its live :class:`~ess.detection.detector.TopicDetector`."""

    def __init__(self, job: _TopicJob) -> None:
        self.job = job
        self.detector = _detectors(job.prefix, job.config, job.entry.partitions)[job.entry.logical]
        self.index = TOPICS.index(job.entry.logical)
        self.rule_index = {rule.name: i for i, rule in enumerate(self.detector.rules)}
        self.parts = {
            p: _Part(data, _log_times(data.timestamps))
            for p, data in read_topic(job.directory, job.entry).items()
        }
        self.table: dict[str, Any] = {}
        self.ctx = Context()
        self.found: list[tuple[_Key, Detection, int]] = []
        self.records = self.valid = self.dead_letters = self.ticks = 0
        self.samples: list[DeadLetterSample] = []

    def run(self) -> _TopicOutcome:
        schedule = self.job.schedule
        ticking = bool(self.detector.ticks)
        boundaries: set[int] = set()
        if ticking:
            step = schedule.tick_ms
            for part in self.parts.values():
                boundaries.update({t // step * step for t in part.times})
        resets: dict[int, list[datetime]] = {}
        for log_ms, started in schedule.resets:
            resets.setdefault(log_ms, []).append(started)
            boundaries.add(log_ms)
        for at_ms in sorted(boundaries):
            self.advance(at_ms)
            if ticking:
                self.tick(at_ms, phase=0)
            for started in resets.get(at_ms, ()):
                self.ctx = Context(self.ctx.epoch + 1, started)
        self.advance(None)
        if ticking:
            last = max((part.times[-1] for part in self.parts.values() if part.times), default=0)
            self.tick(max(schedule.end_ms, last), phase=2)
        return _TopicOutcome(
            topic=self.detector.topic,
            found=self.found,
            subjects=self.subjects(),
            records=self.records,
            valid=self.valid,
            dead_letters=self.dead_letters,
            samples=self.samples,
            ticks=self.ticks,
        )

    def advance(self, until_ms: int | None) -> None:
        """Replay the records with log time before ``until_ms`` (all if ``None``)."""
        batch: list[RawRecord] = []
        last_ms = 0
        for p, part in self.parts.items():
            start = part.cursor
            end = len(part.times) if until_ms is None else bisect_left(part.times, until_ms, start)
            if end <= start:
                continue
            data = part.data
            batch.extend(
                # The recorded key too: live detection refuses a mis-keyed record, so must replay.
                RawRecord(p, offset, value, stamp, key)
                for offset, value, stamp, key in zip(
                    data.offsets[start:end],
                    data.values[start:end],
                    data.timestamps[start:end],
                    data.keys[start:end],
                    strict=True,
                )
            )
            part.cursor = end
            last_ms = max(last_ms, part.times[end - 1])
        if not batch:
            return
        # ``now`` only stamps dead letters (when ESS refused a record): use the log time.
        out = self.detector.process(batch, self.table, self.ctx, _ms_to_dt(last_ms))
        self.records += len(batch)
        self.valid += out.valid
        self._write(out.writes)
        self.dead_letters += len(out.dead_letters)
        room = max(0, _SAMPLE_DEAD_LETTERS - len(self.samples))
        self.samples.extend(
            DeadLetterSample(d.source_topic, d.partition, d.offset, d.error)
            for d in out.dead_letters[:room]
        )
        for detection in out.detections:
            self.found.append((self.position(detection), detection, self.ctx.epoch))

    def position(self, detection: Detection) -> _Key:
        """Replay order key of a detection made on a record: its triggering record's."""
        trigger = detection.trigger
        part = self.parts.get(trigger.partition)
        log_ms = 0
        if part is not None and part.times:
            i = bisect_left(part.data.offsets, trigger.offset)
            log_ms = part.times[min(i, len(part.times) - 1)]
        rule = self.rule_index.get(detection.rule, -1)
        return (log_ms, 1, 0, self.index, trigger.partition, trigger.offset, rule, "")

    def tick(self, at_ms: int, *, phase: int) -> None:
        """Tick the silence rules at log time ``at_ms`` (every key: one process owns the
        whole topic, so every partition is "owned", unlike a live worker's share)."""
        self.ticks += 1
        out = self.detector.tick(
            self.table,
            owns=_owns_all,
            partition_of=_no_changelog,
            watermark=_ms_to_dt(at_ms),
            ctx=self.ctx,
        )
        self._write(out.writes)
        for detection in out.detections:
            rule = self.rule_index.get(detection.rule, -1)
            key = (at_ms, phase, 0, self.index, -1, -1, rule, detection.key)
            self.found.append((key, detection, self.ctx.epoch))

    def _write(self, writes: Iterable[Any]) -> None:
        table = self.table
        for write in writes:
            table[write.key] = write.slot

    def subjects(self) -> dict[tuple[int, int], str]:
        """Subjects of the recorded triggers on this topic and of the replay's own."""
        wanted = set(self.job.wanted)
        wanted.update((d.trigger.partition, d.trigger.offset) for _, d, _ in self.found)
        return {coords: self._subject(*coords) for coords in wanted}

    def _subject(self, partition: int, offset: int) -> str:
        """The Kafka key of the record at ``offset`` (else its key field), or ``""``."""
        part = self.parts.get(partition)
        if part is None:
            return ""
        offsets = part.data.offsets
        i = bisect_left(offsets, offset)
        if i == len(offsets) or offsets[i] != offset:
            return ""
        key = part.data.keys[i]
        if key:
            return key.decode("utf-8", "replace")
        try:
            value = orjson.loads(part.data.values[i] or b"")
        except orjson.JSONDecodeError:
            return ""
        found = value.get(self.detector.key_field) if isinstance(value, dict) else None
        return found if isinstance(found, str) else ""


def _owns_all(_partition: int) -> bool:
    return True


def _no_changelog(_key: str) -> int:
    # Only names the changelog partition of a never-seen required key's state; the replay
    # keeps its tables in memory, so any partition does.
    return 0


def _replay_topic(job: _TopicJob) -> _TopicOutcome:
    return _TopicReplay(job).run()


def _replay_topics(jobs: Sequence[_TopicJob]) -> list[_TopicOutcome]:
    return [_replay_topic(job) for job in jobs]


# --------------------------------------------------------------------------- recorded state


@dataclass(slots=True)
class _Recorded:
    decisions: list[Decision] = field(default_factory=list)
    resets: list[Reset] = field(default_factory=list)
    external: list[tuple[_Key, TripCommand]] = field(default_factory=list)
    last_ms: int = 0
    foreign: tuple[ForeignRecord, ...] = ()
    actions: list[OperatorAction] = field(default_factory=list)


def _read_state(directory: Path, entry: TopicEntry | None, trust: Trust) -> _Recorded:
    """Detector trips, resets and other trips of the recorded state log, verified and folded
    the way every reader does it (:mod:`ess.core.reader`: foreign records are reported and
    never applied, copies skipped; a log that cannot be folded is refused)."""
    out = _Recorded()
    if entry is None:
        return out
    data = read_topic(directory, entry)[0]
    log_times = dict(zip(data.offsets, _log_times(data.timestamps), strict=True))
    records = [
        StateRecord(offset, value) for offset, value in zip(data.offsets, data.values, strict=True)
    ]
    try:
        _, report = fold_records(records, replace(trust, scope=entry.name))
    except LogBroken as exc:
        raise RecordingError(f"recorded {entry.name} cannot be trusted: {exc}") from exc
    out.foreign = report.foreign
    epoch = 0
    for logged in report.applied:
        offset, item, log_ms = logged.offset, logged.entry, log_times[logged.offset]
        out.last_ms = max(out.last_ms, log_ms)
        if isinstance(item, ResetEntry):
            epoch += 1
            out.resets.append(Reset(item.ts, log_ms, item))
        is_detection = (
            isinstance(item, ActivatedEntry | TripRecordedEntry)
            and item.source.startswith(DETECTOR_SOURCE)
            and item.trigger is not None
        )
        if not is_detection:
            out.actions.append(_operator_action(offset, item, log_ms, epoch))
        if isinstance(item, ActivatedEntry | TripRecordedEntry):
            if item.source.startswith(DETECTOR_SOURCE) and item.trigger is not None:
                out.decisions.append(
                    Decision(
                        rule=item.source.removeprefix(DETECTOR_SOURCE),
                        reason=item.reason,
                        trigger=item.trigger,
                        command_id=item.command_id,
                        kind=item.kind,
                        epoch=epoch,
                        seq=item.seq,
                        detail=item.detail,
                    )
                )
            else:
                command = TripCommand(
                    command_id=item.command_id,
                    reason=item.reason,
                    detail=item.detail,
                    source=item.source,
                    trigger=item.trigger,
                    ts=item.ts,
                )
                out.external.append(((log_ms, 1, 0, _STATE_INDEX, 0, offset, -1, ""), command))
    return out


# --------------------------------------------------------------------------- deciding


def _decide_all(
    found: list[tuple[_Key, Detection, int]],
    resets: list[Reset],
    external: list[tuple[_Key, TripCommand]],
) -> list[Decision]:
    """Feed the replay's trips, the recorded resets and the recorded non-detector trips to
    the live decider in replay order; the detector trips it appends are the decisions.

    A recorded reset is applied as recorded (renumbered to the replay's next ``seq``): the
    replay has no reset commands to decide, and detection follows the recorded epochs."""
    items: list[tuple[_Key, int, Any]] = [(key, 0, (det, epoch)) for key, det, epoch in found]
    items.extend((key, 1, command) for key, command in external)
    items.extend(((r.log_ms, 0, 1, -1, -1, -1, -1, ""), 2, r) for r in resets)
    items.sort(key=lambda item: item[0])
    state: EssState = INITIAL_STATE
    policy = ResetPolicy()
    decisions: list[Decision] = []
    for key, kind, payload in items:
        now = _ms_to_dt(key[0])
        if kind == 2:
            state = evolve(state, payload.entry.model_copy(update={"seq": state.next_seq}))
            continue
        if kind == 1:
            for entry in decide(state, payload, now=now, policy=policy):
                state = evolve(state, entry)
            continue
        detection, epoch = payload
        command = trip_command(detection)
        for entry in decide(state, command, now=now, policy=policy):
            state = evolve(state, entry)
            decisions.append(
                Decision(
                    rule=detection.rule,
                    reason=command.reason,
                    trigger=detection.trigger,
                    command_id=command.command_id,
                    kind=entry.kind,
                    epoch=epoch,
                    seq=entry.seq,
                    detail=command.detail,
                )
            )
    return decisions


# --------------------------------------------------------------------------- the replay


def _workers(requested: int | None, records: int, topics: int) -> int:
    if requested is not None:
        return max(1, min(requested, topics))
    if records < _PARALLEL_FROM or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_WORKERS, topics))


def _balance(jobs: list[_TopicJob], workers: int) -> list[list[_TopicJob]]:
    """Topics into ``workers`` groups of about equal cost, greedily. Cost per record is
    about two rules' worth of decoding and bookkeeping plus one per rule (figures:
    BENCHMARKS.md)."""
    rules = _detectors(jobs[0].prefix, jobs[0].config, jobs[0].entry.partitions) if jobs else {}
    groups: list[tuple[int, list[_TopicJob]]] = [(0, []) for _ in range(workers)]

    def cost(job: _TopicJob) -> int:
        return job.entry.records * (2 + len(rules[job.entry.logical].rules))

    for job in sorted(jobs, key=cost, reverse=True):
        load, members = min(groups, key=lambda group: group[0])
        groups.remove((load, members))
        members.append(job)
        groups.append((load + cost(job), members))
    return [members for _, members in groups if members]


def _run(jobs: list[_TopicJob], workers: int) -> list[_TopicOutcome]:
    if workers <= 1:
        return _replay_topics(jobs)
    groups = _balance(jobs, workers)
    # fork: the workers inherit the imported modules (Faust, pydantic models) and start in
    # milliseconds; each reads and replays its own topics and sends back only its trips.
    with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("fork")) as pool:
        return [outcome for group in pool.map(_replay_topics, groups) for outcome in group]


def replay(
    directory: Path,
    config: DetectionConfig | None = None,
    *,
    trust: Trust,
    tick_interval: float = DEFAULT_TICK_INTERVAL,
    workers: int | None = None,
) -> ReplayResult:
    """Replay the recording in ``directory`` with ``config`` (the defaults if ``None``).

    Pure: reads files, touches no broker, exchange or PolicyStore. The recorded state log is
    verified with ``trust`` (its scope is the recording's state topic, whatever ``trust``
    says). ``workers`` processes replay topics in parallel (default: one per CPU, up to 4,
    for recordings of 50,000 records or more); the result does not depend on it. Raises
    :class:`RecordingError` for a bad recording.
    """
    if tick_interval <= 0:
        raise ValueError("tick_interval must be positive")
    config = config or DetectionConfig()
    started = time.perf_counter()
    manifest = load_manifest(directory)
    recorded = _read_state(directory, manifest.topic("state"), trust)
    inputs = [entry for entry in manifest.topics if entry.logical in TOPICS]
    unknown = [e.name for e in manifest.topics if e.logical not in TOPICS and e.role == "input"]
    if unknown:
        logger.bind(topics=unknown).warning("recorded input topics without detectors ignored")
    end_ms = max([recorded.last_ms] + [e.max_timestamp or 0 for e in inputs])
    schedule = _Schedule(
        tick_ms=max(1, round(tick_interval * 1000)),
        end_ms=end_ms,
        resets=tuple((reset.log_ms, reset.at) for reset in recorded.resets),
    )
    wanted: dict[str, list[tuple[int, int]]] = {}
    for decision in recorded.decisions:
        trigger = decision.trigger
        wanted.setdefault(trigger.topic, []).append((trigger.partition, trigger.offset))
    jobs = [
        _TopicJob(
            directory, entry, manifest.prefix, config, schedule, tuple(wanted.get(entry.name, ()))
        )
        for entry in inputs
    ]
    used = _workers(workers, sum(entry.records for entry in inputs), len(jobs))
    outcomes = _run(jobs, used)

    found = [item for outcome in outcomes for item in outcome.found]
    decisions = _decide_all(found, recorded.resets, recorded.external)
    subjects = {
        (outcome.topic, *coords): subject
        for outcome in outcomes
        for coords, subject in outcome.subjects.items()
    }

    def with_subject(decision: Decision) -> Decision:
        t = decision.trigger
        return replace(decision, subject=subjects.get((t.topic, t.partition, t.offset), ""))

    in_range = [d for d in recorded.decisions if _in_recording(manifest, d.trigger)]
    outside = [d for d in recorded.decisions if not _in_recording(manifest, d.trigger)]
    samples = [sample for outcome in outcomes for sample in outcome.samples]
    return ReplayResult(
        directory=directory,
        manifest=manifest,
        config=config,
        recorded=[with_subject(d) for d in in_range],
        replayed=[with_subject(d) for d in decisions],
        unreplayable=[with_subject(d) for d in outside],
        resets=recorded.resets,
        external_trips=len(recorded.external),
        records=sum(outcome.records for outcome in outcomes),
        valid=sum(outcome.valid for outcome in outcomes),
        dead_letters=sum(outcome.dead_letters for outcome in outcomes),
        dead_letter_samples=samples[:_SAMPLE_DEAD_LETTERS],
        ticks=sum(outcome.ticks for outcome in outcomes),
        seconds=time.perf_counter() - started,
        workers=used,
        by_topic={outcome.topic: outcome.records for outcome in outcomes},
        foreign=recorded.foreign,
        operator_actions=recorded.actions,
        tick_interval=tick_interval,
    )


def _in_recording(manifest: Manifest, trigger: TriggerRef) -> bool:
    entry = next((e for e in manifest.topics if e.name == trigger.topic), None)
    if entry is None or entry.logical not in TOPICS:
        return False
    start = entry.start_offsets.get(trigger.partition, 0)
    end = entry.end_offsets.get(trigger.partition, 0)
    return start <= trigger.offset < end

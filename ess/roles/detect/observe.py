"""What a detection worker reports about itself: ``/status``, ``/metrics`` and ``/healthz``.

The detection core (:meth:`ess.detection.detector.TopicDetector.process`) stays pure; everything
counted here is counted by the shell around it (:mod:`streams.app`), after the fact: a trip
once the broker acknowledged it, a record once its batch is done. Three parts:

* :class:`LagTracker`, pure bookkeeping over explicit times: per assigned input partition,
  the next offset to process (from the batches done, else the committed offset), the high
  watermark (from the consumer's fetch responses), and *when* each stretch of the backlog
  was first seen. From these: lag in records, the age of the oldest waiting record, and how
  long a partition with a backlog has made no progress.
* :func:`dead_letter_reason`: a small, fixed set of label values for the dead letters the
  detector builds (their error text is free-form and would explode a label).
* :class:`DetectObserver`: the status source of the worker's status server and the feeder of
  :class:`ess.roles.detect.metrics.DetectMetrics`. It reads Faust's consumer only through cheap,
  synchronous accessors (assignment, high watermark, committed offset), so a scrape never
  waits on the broker.

Wedged
------
``/healthz`` answers 503 when some assigned input partition has had records waiting and no
progress for longer than ``wedged_after`` (``ESS_DETECT_WEDGED_AFTER_SEC``, default 30 s):
an agent stuck in a batch, a trip that cannot be delivered, a consumer that stopped
delivering. An orchestrator then restarts the worker; its partitions are re-read from the
committed offsets, by it or by another member of the group. Time spent in a rebalance
(group join, table recovery) does not count, for up to ``REBALANCE_GRACE_FACTOR`` times the
bound (5 minutes by default): recovering a long changelog is progress, and restarting a
worker for it would only start the recovery again, but a rebalance that never ends (one
waiting forever for a stuck batch) is a wedge too. 30 s is far above a healthy worker's
worst batch (a full 2000-record batch takes well under a second) and well below what a
silent detector costs: the other detector group still sees every record meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from loguru import logger

from ess.detection.detector import DEAD_LETTER_REASONS, BatchOutcome, TopicDetector
from ess.detection.keys import KeyMismatch, contract_key, show_key
from ess.roles.detect.metrics import DetectGauges, DetectMetrics, PartitionLag
from ess.rules.base import Detection
from schemas import DeadLetter

__all__ = [
    "DEAD_LETTER_REASONS",
    "DEFAULT_WEDGED_AFTER_S",
    "REBALANCE_GRACE_FACTOR",
    "DetectObserver",
    "DetectStatus",
    "LagTracker",
    "dead_letter_reason",
    "sampling",
]

#: Default bound of "no progress with a backlog" before ``/healthz`` fails (module notes).
DEFAULT_WEDGED_AFTER_S: Final = 30.0
#: A rebalance stops the stall clock for at most this many times the wedged bound.
REBALANCE_GRACE_FACTOR: Final = 10
#: Backlog marks closer together than this are merged (the age is then at most this much
#: too high), so a busy partition costs a handful of marks per second, not one per fetch.
_MARK_RESOLUTION_S: Final = 0.1
#: At most this many marks per partition (five minutes at the resolution above); past it the
#: newest mark absorbs further growth, which overstates the age of the newest records only.
_MAX_MARKS: Final = 3000


def dead_letter_reason(letter: DeadLetter) -> str:
    """The ``reason`` label of a dead letter built by
    :class:`~ess.detection.detector.TopicDetector` (one of :data:`DEAD_LETTER_REASONS`, label
    values of ``ess_detect_dead_letters_total{reason}``): its ``reason`` field when set, else
    (a letter built before the field existed) from its error text: ``rule_failed`` (a rule
    raised on the record), ``future_ts`` (event time too far after the Kafka timestamp),
    ``decode_failed`` (the codec itself failed) or ``invalid`` (the record is not a valid
    contract record: the usual case)."""
    reason = letter.reason
    if reason is not None and reason in DEAD_LETTER_REASONS:
        return reason
    error = letter.error
    if error.startswith("rule ") and " failed: " in error:
        return "rule_failed"
    if error.startswith("ts ") and "after the record's Kafka timestamp" in error:
        return "future_ts"
    if error.startswith("decode failed: "):
        return "decode_failed"
    return "invalid"


@dataclass(slots=True)
class _Partition:
    """Bookkeeping of one assigned partition (see :class:`LagTracker`)."""

    #: When the partition last advanced (or was assigned, or last seen in a rebalance).
    progressed_at: float
    #: Next offset to process; ``None`` until a batch is done or a committed offset is known.
    next_offset: int | None = None
    highwater: int | None = None
    #: ``[highwater, first seen]`` marks of the backlog, both ascending: the records below
    #: ``highwater`` (and at or above the previous mark's) were on the broker at that time.
    marks: deque[list[float]] = field(default_factory=deque)

    def prune(self) -> None:
        done = self.next_offset or 0
        marks = self.marks
        while marks and marks[0][0] <= done:
            marks.popleft()


class LagTracker:
    """Lag per assigned partition, its age, and stalls. Pure: every time is passed in
    (monotonic seconds), so it is tested without a broker or a clock."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], _Partition] = {}

    def assign(self, partitions: Iterable[tuple[str, int]], now: float) -> None:
        """The partitions assigned now: new ones start tracked at ``now``, revoked ones are
        forgotten (their new owner reports them)."""
        wanted = set(partitions)
        for key in set(self._partitions) - wanted:
            del self._partitions[key]
        for key in wanted - set(self._partitions):
            self._partitions[key] = _Partition(progressed_at=now)

    def committed(self, topic: str, partition: int, offset: int | None) -> None:
        """The group's committed offset: where processing stands before this worker has
        done a batch of the partition (it never goes back)."""
        state = self._partitions.get((topic, partition))
        if state is None or offset is None:
            return
        if state.next_offset is None or offset > state.next_offset:
            state.next_offset = offset
            state.prune()

    def processed(self, topic: str, partition: int, next_offset: int, now: float) -> None:
        """Records up to ``next_offset`` (exclusive) are done: progress."""
        state = self._partitions.get((topic, partition))
        if state is None:
            return  # revoked meanwhile
        if state.next_offset is None or next_offset > state.next_offset:
            state.next_offset = next_offset
            state.progressed_at = now
            state.prune()

    def end(self, topic: str, partition: int, highwater: int | None, now: float) -> None:
        """The partition's high watermark as of ``now`` (``None``: not known yet)."""
        state = self._partitions.get((topic, partition))
        if state is None or highwater is None:
            return
        state.highwater = highwater
        marks = state.marks
        top = marks[-1][0] if marks else (state.next_offset or 0)
        if highwater <= top:
            return
        if marks and (now - marks[-1][1] < _MARK_RESOLUTION_S or len(marks) >= _MAX_MARKS):
            marks[-1][0] = highwater
        else:
            marks.append([highwater, now])

    def hold(self, now: float) -> None:
        """A rebalance is under way: it does not count as a stall."""
        for state in self._partitions.values():
            state.progressed_at = max(state.progressed_at, now)

    def view(self, now: float) -> tuple[PartitionLag, ...]:
        """Every tracked partition, sorted by topic and partition."""
        out = []
        for (topic, partition), state in sorted(self._partitions.items()):
            lag: int | None = None
            age = stalled = 0.0
            if state.highwater is not None:
                lag = max(state.highwater - (state.next_offset or 0), 0)
            if lag:
                state.prune()
                since = state.marks[0][1] if state.marks else state.progressed_at
                age = max(now - since, 0.0)
                stalled = max(now - max(since, state.progressed_at), 0.0)
            out.append(
                PartitionLag(
                    topic=topic,
                    partition=partition,
                    next_offset=state.next_offset,
                    highwater=state.highwater,
                    lag=lag,
                    lag_seconds=age,
                    stalled_seconds=stalled,
                )
            )
        return tuple(out)


def _lag_json(item: PartitionLag) -> dict[str, Any]:
    return {
        "topic": item.topic,
        "partition": item.partition,
        "next_offset": item.next_offset,
        "highwater": item.highwater,
        "lag": item.lag,
        "lag_seconds": round(item.lag_seconds, 3),
        "stalled_seconds": round(item.stalled_seconds, 3),
    }


@dataclass(frozen=True, slots=True)
class DetectStatus:
    """What ``GET /status`` of a detection worker serves; ``healthy`` drives ``/healthz``."""

    app_id: str
    ready: bool
    rebalancing: bool
    wedged_after: float
    partitions: tuple[PartitionLag, ...]
    records: Mapping[str, int]
    trips: Mapping[str, int]
    dead_letters: Mapping[str, int]
    batch_errors: int

    @property
    def wedged(self) -> tuple[PartitionLag, ...]:
        """Partitions with a backlog and no progress for longer than ``wedged_after``."""
        return tuple(
            item
            for item in self.partitions
            if item.lag and item.stalled_seconds > self.wedged_after
        )

    @property
    def healthy(self) -> bool:
        """Started (group joined, tables recovered, agents running) and not wedged."""
        return self.ready and not self.wedged

    @property
    def checks(self) -> Mapping[str, str]:
        wedged = self.wedged
        progress = (
            "wedged: "
            + ", ".join(
                f"{item.topic}[{item.partition}] {item.lag} records waiting, no progress for "
                f"{item.stalled_seconds:.0f}s"
                for item in wedged
            )
            if wedged
            else "ok"
        )
        return {
            "started": "yes" if self.ready else "starting",
            "progress": progress,
            "rebalancing": "yes" if self.rebalancing else "no",
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "role": "detect",
            "app_id": self.app_id,
            "ready": self.ready,
            "healthy": self.healthy,
            "rebalancing": self.rebalancing,
            "wedged_after_sec": self.wedged_after,
            "checks": dict(self.checks),
            "partitions": [_lag_json(item) for item in self.partitions],
            "lag_records": sum(item.lag or 0 for item in self.partitions),
            "records": dict(self.records),
            "trips": dict(self.trips),
            "dead_letters": dict(self.dead_letters),
            "batch_errors": self.batch_errors,
        }


def _bump(counts: dict[str, int], key: str, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


class DetectObserver:
    """The detection worker's status source (``/status``, ``/healthz``) and the feeder of its
    metrics. The shell calls :meth:`trips_sent`, :meth:`batch_done` and :meth:`tick_failed`;
    :meth:`sample` reads the consumer (no I/O) and is called periodically by :meth:`run` and
    on every status or metrics request.

    ``clock`` is monotonic seconds (latencies, ages); tests pass their own.
    """

    def __init__(
        self,
        app_id: str,
        *,
        wedged_after: float = DEFAULT_WEDGED_AFTER_S,
        metrics: DetectMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app_id = app_id
        self.wedged_after = wedged_after
        self.metrics = metrics if metrics is not None else DetectMetrics()
        self.metrics.view = self._gauges
        self.clock = clock
        self.tracker = LagTracker()
        #: Set once the worker joined its group, recovered its tables and started its agents.
        self.ready = False
        #: Where the status server serves this observer (set by the runner; ``None``: off).
        self.status_url: str | None = None
        self._app: Any = None
        self._topics: frozenset[str] = frozenset()
        self._rebalancing = False
        self._rebalance_since: float | None = None
        self._records: dict[str, int] = {}
        self._trips: dict[str, int] = {}
        self._dead_letters: dict[str, int] = {}
        self._batch_errors = 0

    @property
    def app(self) -> Any:
        """The Faust app followed (``None`` until :meth:`attach`)."""
        return self._app

    def attach(self, app: Any, topics: Iterable[str], rules: Iterable[str] = ()) -> None:
        """Follow ``app``'s consumer for the input ``topics`` (physical names); the counters
        of these topics and ``rules`` start at 0."""
        self._app = app
        self._topics = frozenset(topics)
        self.metrics.declare(self._topics, rules, DEAD_LETTER_REASONS)

    # ------------------------------------------------------------------ shell hooks

    def trips_sent(self, detections: Sequence[Detection], fetched_at: float | None) -> None:
        """The broker acknowledged the trips of ``detections``; ``fetched_at`` is when their
        batch was fetched (``None`` for a silence tick)."""
        seconds = None if fetched_at is None else max(self.clock() - fetched_at, 0.0)
        for detection in detections:
            self.metrics.trip_sent(detection.rule, detection.reason.value, seconds)
            _bump(self._trips, detection.rule)

    def batch_done(
        self,
        detector: TopicDetector,
        records: int,
        offsets: Mapping[Any, Sequence[int]],
        fetched_at: float,
        out: BatchOutcome | None,
    ) -> None:
        """A fetched batch is done and acked: ``offsets`` (per topic-partition, ascending)
        are processed. ``out`` is ``None`` when processing it failed (counted as an error)."""
        now = self.clock()
        topic = detector.topic
        self.metrics.batch_done(topic, records, now - fetched_at)
        _bump(self._records, topic, records)
        if out is None:
            self.metrics.batch_failed(topic)
            self._batch_errors += 1
        else:
            for rule in detector.rules:
                self.metrics.rule_evaluated(rule.name, out.valid)
            for letter in out.dead_letters:
                reason = dead_letter_reason(letter)
                self.metrics.dead_lettered(topic, reason)
                _bump(self._dead_letters, reason)
            if out.key_mismatches:
                _report_key_mismatches(self.metrics, topic, out.key_mismatches)
        for tp, done in offsets.items():
            if done:
                self.tracker.processed(tp.topic, tp.partition, done[-1] + 1, now)

    def tick_failed(self, topic: str) -> None:
        self.metrics.batch_failed(topic)
        self._batch_errors += 1

    # ------------------------------------------------------------------ sampling

    def sample(self) -> None:
        """Read assignment, committed offsets and high watermarks from the consumer (no I/O:
        what its last fetch responses said). Before the consumer exists, nothing is read."""
        app = self._app
        if app is None:
            return
        # Faust's `app.consumer` would build the consumer on first access: only look at one
        # the app made itself.
        consumer = getattr(app, "_consumer", None)
        if consumer is None:
            return
        now = self.clock()
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic in self._topics]
        except Exception:  # not started yet, or stopping
            return
        tracker = self.tracker
        tracker.assign(((tp.topic, tp.partition) for tp in assigned), now)
        self._rebalancing = bool(
            getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False)
        )
        if not self._rebalancing:
            self._rebalance_since = None
        elif self._rebalance_since is None:
            self._rebalance_since = now
        if (
            self._rebalance_since is not None
            and now - self._rebalance_since <= self.wedged_after * REBALANCE_GRACE_FACTOR
        ):
            tracker.hold(now)
        committed = getattr(consumer, "_committed_offset", {})
        for tp in assigned:
            tracker.committed(tp.topic, tp.partition, committed.get(tp))
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # revoked between the two calls: aiokafka asserts it
                highwater = None
            tracker.end(tp.topic, tp.partition, highwater, now)

    async def run(self, interval: float) -> None:
        """Sample every ``interval`` seconds until cancelled: between scrapes the tracker
        still sees when the backlog grew, which is what its age is measured from."""
        while True:
            try:
                self.sample()
            except Exception:
                logger.exception("sampling the detection consumer failed")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ views

    def status(self) -> DetectStatus:
        """A fresh snapshot for ``/status`` and ``/healthz``."""
        self.sample()
        return self._snapshot()

    def _snapshot(self) -> DetectStatus:
        return DetectStatus(
            app_id=self.app_id,
            ready=self.ready,
            rebalancing=self._rebalancing,
            wedged_after=self.wedged_after,
            partitions=self.tracker.view(self.clock()),
            records=dict(self._records),
            trips=dict(self._trips),
            dead_letters=dict(self._dead_letters),
            batch_errors=self._batch_errors,
        )

    def _gauges(self) -> DetectGauges:
        self.sample()
        snapshot = self._snapshot()
        return DetectGauges(
            ready=snapshot.ready, wedged=bool(snapshot.wedged), partitions=snapshot.partitions
        )


def _report_key_mismatches(
    metrics: DetectMetrics, topic: str, mismatches: Sequence[KeyMismatch]
) -> None:
    """Count a batch's key mismatches and log them: one line per action and batch (with the
    first record as the example), not one per record, since a misconfigured producer
    mismatches every record it sends. Each refused record has its own dead letter."""
    by_action: dict[str, list[KeyMismatch]] = {}
    for mismatch in mismatches:
        by_action.setdefault(mismatch.action, []).append(mismatch)
    for action, items in by_action.items():
        metrics.key_mismatched(topic, action, len(items))
        first = items[0]
        log = logger.bind(
            topic=topic,
            action=action,
            count=len(items),
            key_field=first.key_field,
            partition=first.partition,
            offset=first.offset,
            expected=first.expected,
            got=show_key(first.got),
        )
        text = (
            f"{len(items)} record(s) of {topic} with a Kafka key other than their "
            f"{first.key_field} (first: partition {first.partition} offset {first.offset}, "
            f"expected {show_key(contract_key(first.expected))}, got {show_key(first.got)})"
        )
        if action == "dead_lettered":
            log.error(f"{text}: dead-lettered (key_mismatch); fix the producer's key")
        else:
            log.warning(f"{text}: processed (single-partition topic); fix the producer's key")


@contextlib.asynccontextmanager
async def sampling(observer: DetectObserver, interval: float) -> AsyncIterator[DetectObserver]:
    """Run :meth:`DetectObserver.run` for the duration of the block."""
    task = asyncio.create_task(observer.run(interval), name="ess-detect-sampler")
    try:
        yield observer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""Prometheus metrics of the projector (``project``), the command processor (``command``) and
the detection worker (``detect``), each in a registry of the caller's.

Every metric lives in a :class:`~prometheus_client.CollectorRegistry` passed in (or a fresh
one), never in prometheus-client's global default: two projectors in one process (tests, or
every role in one worker) must not collide, and ``/metrics`` serves exactly this registry.

Two kinds of numbers, kept apart on purpose:

* **Counts of state-log entries** (``ess_activations_total``, ``ess_trips_total``,
  ``ess_resets_total``, ``ess_resets_rejected_total``) are *derived from the folded log*, not
  incremented as things happen. :class:`LogTally` is a pure fold over the applied entries and
  a custom collector renders it at scrape time. A projector always replays ``ess.state`` from
  offset 0 on start, so an incrementing counter would count every historical entry again on
  each restart inside one process (and a restarted process would start from 0, looking to
  Prometheus like a counter reset followed by a burst). Derived from the log, the value after
  a restart is the same as before it, and it only grows because the log only grows.
  Duplicated entries (same ``seq`` twice, skipped by :func:`ess.statelog.fold_log`) are not
  counted, because the tally only sees entries the fold applied.
* **Process events** (PolicyStore write errors, event publish errors, health beat errors,
  events published) are ordinary counters: they describe this process, not the log.

``ess_state_log_lag_records`` is lag in *records*: the high watermark of ``ess.state`` (from
the fetch responses, which are right on Tansu too) minus the next offset the projector would
apply. Records rather than seconds, because "seconds since the last applied entry" is large
and meaningless on a healthy idle log (ESS trips rarely), while records-behind is 0 when all
is well and grows while the projector stalls or, after a fault, refuses to apply.

The detection worker's inputs are busy topics instead, so its lag is exported per partition
both in records and as the *age* of the oldest record still waiting
(:class:`DetectMetrics`): "detection is late" is a question of seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ess.core import EssState
from schemas import (
    ActivatedEntry,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TripRecordedEntry,
)

__all__ = [
    "DETECT_LATENCY_BUCKETS",
    "DetectGauges",
    "DetectMetrics",
    "LogTally",
    "PartitionLag",
    "ProcessorMetrics",
    "ProjectorMetrics",
    "tally_entries",
]


def _bump(counts: Mapping[str, int], key: str) -> Mapping[str, int]:
    updated = dict(counts)
    updated[key] = updated.get(key, 0) + 1
    return MappingProxyType(updated)


def _empty() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LogTally:
    """Counts of applied state-log entries, by kind and label. A value: :meth:`add` returns a
    new tally.

    ``trips`` counts every trip, i.e. ``activated`` plus ``trip_recorded`` entries, by reason;
    ``activations`` only the trips that moved ESS to ACTIVE.
    """

    activations: Mapping[str, int] = field(default_factory=_empty)
    trips: Mapping[str, int] = field(default_factory=_empty)
    resets: int = 0
    rejected: Mapping[str, int] = field(default_factory=_empty)

    def add(self, entry: StateEntry) -> LogTally:
        """The tally with ``entry`` counted. Kinds that count nothing return ``self``."""
        match entry:
            case ActivatedEntry():
                return LogTally(
                    activations=_bump(self.activations, entry.reason.value),
                    trips=_bump(self.trips, entry.reason.value),
                    resets=self.resets,
                    rejected=self.rejected,
                )
            case TripRecordedEntry():
                return LogTally(
                    activations=self.activations,
                    trips=_bump(self.trips, entry.reason.value),
                    resets=self.resets,
                    rejected=self.rejected,
                )
            case ResetEntry():
                return LogTally(
                    activations=self.activations,
                    trips=self.trips,
                    resets=self.resets + 1,
                    rejected=self.rejected,
                )
            case ResetRejectedEntry():
                return LogTally(
                    activations=self.activations,
                    trips=self.trips,
                    resets=self.resets,
                    rejected=_bump(self.rejected, entry.why.value),
                )
        return self  # reset_approval (and future kinds) count nothing here


def tally_entries(entries: Iterable[StateEntry], start: LogTally | None = None) -> LogTally:
    """Fold ``entries`` into a tally (from zero by default)."""
    tally = start or LogTally()
    for entry in entries:
        tally = tally.add(entry)
    return tally


class _TallyCollector(Collector):
    """Renders the current :class:`LogTally` as counters at scrape time."""

    def __init__(self, owner: ProjectorMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry can refuse a duplicate registration up front.
        return self._families(LogTally())

    def collect(self) -> Iterable[Metric]:
        return self._families(self._owner.tally)

    @staticmethod
    def _families(tally: LogTally) -> Iterator[Metric]:
        activations = CounterMetricFamily(
            "ess_activations",
            "State-log entries that moved ESS to ACTIVE, by reason (derived from the log).",
            labels=["reason"],
        )
        for reason, count in sorted(tally.activations.items()):
            activations.add_metric([reason], count)
        yield activations
        trips = CounterMetricFamily(
            "ess_trips",
            "Trips in the state log (activated + trip_recorded), by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(tally.trips.items()):
            trips.add_metric([reason], count)
        yield trips
        yield CounterMetricFamily(
            "ess_resets", "Authorized resets in the state log.", value=tally.resets
        )
        rejected = CounterMetricFamily(
            "ess_resets_rejected",
            "Refused resets in the state log, by why (contract reject reason).",
            labels=["why"],
        )
        for why, count in sorted(tally.rejected.items()):
            rejected.add_metric([why], count)
        yield rejected


class ProjectorMetrics:
    """The projector's metrics, registered in ``registry`` (a fresh one when omitted).

    The projector calls the ``observe_*`` / ``*_failed`` methods; nothing here does I/O.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._tally = LogTally()
        reg = self.registry
        self.state_active = Gauge(
            "ess_state_active", "1 while ESS is ACTIVE (trading stopped), else 0.", registry=reg
        )
        self.state_epoch = Gauge(
            "ess_state_epoch", "Number of resets so far (the state's epoch).", registry=reg
        )
        self.state_last_seq = Gauge(
            "ess_state_last_seq",
            "seq of the last applied state-log entry; -1 for an empty log.",
            registry=reg,
        )
        self.state_last_seq.set(-1)
        self.trips_recorded = Gauge(
            "ess_state_trips_recorded",
            "Further trips recorded during the current activation.",
            registry=reg,
        )
        self.pending_approvals = Gauge(
            "ess_state_pending_approvals",
            "Reset approvals waiting for a quorum.",
            registry=reg,
        )
        self.log_lag = Gauge(
            "ess_state_log_lag_records",
            "ess.state records on the broker not yet applied (high watermark - next offset).",
            registry=reg,
        )
        self.log_trusted = Gauge(
            "ess_state_log_trusted",
            "0 while ess.state holds a record that did not verify and is not yet acknowledged, "
            "or cannot be folded (a gap): the projector does not vouch for INACTIVE.",
            registry=reg,
        )
        self.log_trusted.set(1)
        self.policy_store_last_write = Gauge(
            "ess_policy_store_last_write_timestamp_seconds",
            "Unix time of the last successful write of the emergency_stop record.",
            registry=reg,
        )
        self.policy_store_write_errors = Counter(
            "ess_policy_store_write_errors",
            "Failed or refused writes of the emergency_stop record (retried every refresh).",
            registry=reg,
        )
        self.events_published = Counter(
            "ess_events_published",
            "Events this process published to ess.events, by type.",
            labelnames=["type"],
            registry=reg,
        )
        self.event_publish_errors = Counter(
            "ess_event_publish_errors",
            "Failed attempts to publish to ess.events (retried).",
            registry=reg,
        )
        self.health_beat_errors = Counter(
            "ess_health_beat_errors",
            "ESS health beats that could not be published.",
            registry=reg,
        )
        self.foreign_state = Counter(
            "ess_state_log_foreign_records",
            "Records in ess.state that did not verify (written by someone else): never applied.",
            registry=reg,
        )
        self.foreign_beats = Counter(
            "ess_liveness_foreign_records",
            "Records on ess.liveness that did not verify as the command processor's beats.",
            registry=reg,
        )
        self.foreign_policy_records = Counter(
            "ess_policy_store_foreign_writes",
            "Times the stored emergency_stop record was not the one this projector wrote "
            "(another writer): overwritten from the log.",
            registry=reg,
        )
        self.writer_up = Gauge(
            "ess_command_processor_up",
            "1 while the command processor's signed beats are fresh and its backlog bounded "
            "(the projector vouches for an INACTIVE record only then).",
            registry=reg,
        )
        self.backlog_age = Gauge(
            "ess_command_backlog_seconds",
            "How long the oldest command not yet processed has waited on ess.commands.",
            registry=reg,
        )
        reg.register(_TallyCollector(self))

    @property
    def tally(self) -> LogTally:
        """The entry counts currently exported."""
        return self._tally

    def observe_log(self, state: EssState, tally: LogTally) -> None:
        """Export the folded state and the tally of the same fold (set, never incremented)."""
        self._tally = tally
        self.state_active.set(1 if state.active else 0)
        self.state_epoch.set(state.epoch)
        self.state_last_seq.set(-1 if state.last_seq is None else state.last_seq)
        self.trips_recorded.set(state.trips_recorded)
        self.pending_approvals.set(len(state.approvals))

    def observe_lag(self, records: int) -> None:
        self.log_lag.set(max(records, 0))

    def observe_trusted(self, trusted: bool) -> None:
        self.log_trusted.set(1 if trusted else 0)

    def policy_store_written(self, at: datetime) -> None:
        self.policy_store_last_write.set(at.timestamp())

    def policy_store_write_failed(self) -> None:
        self.policy_store_write_errors.inc()

    def event_published(self, event_type: str) -> None:
        self.events_published.labels(type=event_type).inc()

    def event_publish_failed(self) -> None:
        self.event_publish_errors.inc()

    def health_beat_failed(self) -> None:
        self.health_beat_errors.inc()

    def foreign_state_records(self, count: int) -> None:
        self.foreign_state.inc(count)

    def foreign_beat(self) -> None:
        self.foreign_beats.inc()

    def foreign_policy_record(self) -> None:
        self.foreign_policy_records.inc()

    def observe_writer(self, up: bool, backlog_age: float) -> None:
        self.writer_up.set(1 if up else 0)
        self.backlog_age.set(backlog_age)


class ProcessorMetrics:
    """The command processor's metrics, registered in ``registry`` (a fresh one when omitted).

    Process counters (this processor's work since it started): commands by kind and outcome,
    entries appended by kind, dead letters, foreign state-log records seen; and gauges of
    where it stands."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.commands = Counter(
            "ess_commands",
            "Commands taken from ess.commands, by command kind and outcome "
            "(applied, duplicate, rejected).",
            labelnames=["kind", "outcome"],
            registry=reg,
        )
        self.entries = Counter(
            "ess_command_processor_entries_appended",
            "Entries this processor appended to ess.state, by entry kind.",
            labelnames=["kind"],
            registry=reg,
        )
        self.dead_letters = Counter(
            "ess_command_processor_dead_letters",
            "Command records dead-lettered (undecodable or not applicable).",
            registry=reg,
        )
        self.foreign = Counter(
            "ess_state_log_foreign_records",
            "Records in ess.state that did not verify (written by someone else): never applied.",
            registry=reg,
        )
        self.owner = Gauge(
            "ess_command_processor_owner",
            "1 while this processor owns the command partition (0: standby or stopped).",
            registry=reg,
        )
        self.next_command = Gauge(
            "ess_command_processor_next_command_offset",
            "Offset in ess.commands of the next command this processor will process.",
            registry=reg,
        )
        self.last_seq = Gauge(
            "ess_command_processor_last_seq",
            "seq of the last entry in this processor's fold of ess.state; -1 for none.",
            registry=reg,
        )
        self.last_seq.set(-1)
        # Liveness as the processor itself sees it (the projector's view of the same beats is
        # ess_command_processor_up): a beat that cannot be published is invisible to the
        # projector, which then stops vouching for INACTIVE.
        self.beats = Counter(
            "ess_command_processor_beats",
            "Signed liveness beats this processor published to ess.liveness.",
            registry=reg,
        )
        self.beat_errors = Counter(
            "ess_command_processor_beat_errors",
            "Liveness beats that could not be published.",
            registry=reg,
        )
        self.last_beat = Gauge(
            "ess_command_processor_last_beat_timestamp_seconds",
            "Unix time of the last liveness beat the broker acknowledged.",
            registry=reg,
        )
        self.lag = Gauge(
            "ess_command_processor_lag_records",
            "Commands on ess.commands not processed yet (high watermark - next command "
            "offset), while this processor owns the partition.",
            registry=reg,
        )

    def command_outcome(self, kind: str, outcome: str) -> None:
        self.commands.labels(kind=kind, outcome=outcome).inc()

    def entry_appended(self, kind: str) -> None:
        self.entries.labels(kind=kind).inc()

    def dead_lettered(self) -> None:
        self.dead_letters.inc()

    def foreign_records(self, count: int) -> None:
        if count > 0:
            self.foreign.inc(count)

    def observe_owner(self, owner: bool) -> None:
        self.owner.set(1 if owner else 0)
        if not owner:
            self.lag.set(0)  # a standby's old figure would look like a stuck backlog

    def observe_position(self, next_command: int, last_seq: int | None) -> None:
        self.next_command.set(next_command)
        self.last_seq.set(-1 if last_seq is None else last_seq)

    def beat_published(self, at: datetime) -> None:
        self.beats.inc()
        self.last_beat.set(at.timestamp())

    def beat_failed(self) -> None:
        self.beat_errors.inc()

    def observe_lag(self, records: int) -> None:
        self.lag.set(max(records, 0))


#: Buckets of the detection latency histograms, in seconds: about 10 ms at idle on the embedded
#: broker (BENCHMARKS.md), up to seconds while a backlog drains.
DETECT_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Where a detection worker stands on one assigned input partition.

    ``lag`` is records on the broker not processed yet (``None`` while the partition's end is
    not known: no fetch answered yet), ``lag_seconds`` how long the oldest of them has been
    waiting (0 without lag), and ``stalled_seconds`` how long the partition has had a backlog
    without any progress (0 without lag; time in a rebalance does not count).
    """

    topic: str
    partition: int
    next_offset: int | None
    highwater: int | None
    lag: int | None
    lag_seconds: float
    stalled_seconds: float


@dataclass(frozen=True, slots=True)
class DetectGauges:
    """What the detection worker's gauges show, read at scrape time (never stale)."""

    ready: bool = False
    wedged: bool = False
    partitions: tuple[PartitionLag, ...] = ()


class _DetectCollector(Collector):
    """``ess_detect_{ready,wedged}`` and the per-partition lag, from :attr:`DetectMetrics.view`."""

    def __init__(self, owner: DetectMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return self._families(DetectGauges())

    def collect(self) -> Iterable[Metric]:
        return self._families(self._owner.view())

    @staticmethod
    def _families(gauges: DetectGauges) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ess_detect_ready",
            "1 once the worker joined its group, recovered its tables and runs its agents.",
            value=float(gauges.ready),
        )
        yield GaugeMetricFamily(
            "ess_detect_wedged",
            "1 while an assigned partition has had records waiting and no progress for longer "
            "than ESS_DETECT_WEDGED_AFTER_SEC (/healthz answers 503).",
            value=float(gauges.wedged),
        )
        records = GaugeMetricFamily(
            "ess_detect_consumer_lag_records",
            "Records of an assigned input partition not processed yet (high watermark - next "
            "offset to process).",
            labels=["topic", "partition"],
        )
        seconds = GaugeMetricFamily(
            "ess_detect_consumer_lag_seconds",
            "How long the oldest record not processed yet has waited, per assigned partition "
            "(0 without lag).",
            labels=["topic", "partition"],
        )
        for item in gauges.partitions:
            labels = [item.topic, str(item.partition)]
            if item.lag is not None:
                records.add_metric(labels, item.lag)
            seconds.add_metric(labels, item.lag_seconds)
        yield from (records, seconds)


class DetectMetrics:
    """The detection worker's metrics, registered in ``registry`` (a fresh one when omitted).

    Counters are process counters, incremented by the shell around the pure detector
    (:mod:`streams.observe`) once what they count has happened: a trip once the broker
    acknowledged it, a record once its batch was processed. Gauges are rendered at scrape time
    from :attr:`view`, which the worker sets. Labelled children are cached: these are called
    once per batch on the detection hot path.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.view: Callable[[], DetectGauges] = DetectGauges
        self.records = Counter(
            "ess_detect_records",
            "Records of an input topic processed by this worker (valid or not), by topic.",
            labelnames=["topic"],
            registry=reg,
        )
        self.rule_records = Counter(
            "ess_detect_rule_records",
            "Valid records each rule evaluated, by rule.",
            labelnames=["rule"],
            registry=reg,
        )
        self.trips = Counter(
            "ess_detect_trips",
            "Trip commands this worker sent (broker-acknowledged), by rule and reason.",
            labelnames=["rule", "reason"],
            registry=reg,
        )
        self.dead_letters = Counter(
            "ess_detect_dead_letters",
            "Records sent to ess.deadletter, by topic and reason (invalid, decode_failed, "
            "future_ts, rule_failed).",
            labelnames=["topic", "reason"],
            registry=reg,
        )
        self.batch_errors = Counter(
            "ess_detect_batch_errors",
            "Batches and silence ticks that failed (a bug: logged, and the batch acked).",
            labelnames=["topic"],
            registry=reg,
        )
        self.fetch_to_trip = Histogram(
            "ess_detect_fetch_to_trip_seconds",
            "From the consumer fetch that brought the triggering record to the broker's ack "
            "of the trip command.",
            buckets=DETECT_LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_seconds = Histogram(
            "ess_detect_batch_seconds",
            "From a consumer fetch to its batch being done (trips acknowledged, states "
            "written, dead letters sent), by topic.",
            labelnames=["topic"],
            buckets=DETECT_LATENCY_BUCKETS,
            registry=reg,
        )
        reg.register(_DetectCollector(self))
        self._counters: dict[tuple[int, tuple[str, ...]], Counter] = {}
        self._batch_seconds: dict[str, Histogram] = {}

    def declare(
        self, topics: Iterable[str], rules: Iterable[str], dead_letter_reasons: Iterable[str]
    ) -> None:
        """Create every series at 0 up front: Prometheus's ``increase()`` misses what a series
        counted before its first scrape, so a first burst of dead letters on a topic would
        otherwise never reach an alert."""
        reasons = tuple(dead_letter_reasons)
        for topic in topics:
            self._counter(self.records, topic)
            self._counter(self.batch_errors, topic)
            for reason in reasons:
                self._counter(self.dead_letters, topic, reason)
        for rule in rules:
            self._counter(self.rule_records, rule)

    def _counter(self, metric: Counter, *labels: str) -> Counter:
        key = (id(metric), labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metric.labels(*labels)
        return child

    def batch_done(self, topic: str, records: int, seconds: float) -> None:
        """A batch of ``records`` done ``seconds`` after its fetch."""
        self._counter(self.records, topic).inc(records)
        histogram = self._batch_seconds.get(topic)
        if histogram is None:
            histogram = self._batch_seconds[topic] = self.batch_seconds.labels(topic)
        histogram.observe(seconds)

    def rule_evaluated(self, rule: str, records: int) -> None:
        if records:
            self._counter(self.rule_records, rule).inc(records)

    def trip_sent(self, rule: str, reason: str, seconds: float | None) -> None:
        """A trip the broker acknowledged; ``seconds`` since its record's fetch (``None`` for
        a silence tick, which no fetch brought)."""
        self._counter(self.trips, rule, reason).inc()
        if seconds is not None:
            self.fetch_to_trip.observe(seconds)

    def dead_lettered(self, topic: str, reason: str) -> None:
        self._counter(self.dead_letters, topic, reason).inc()

    def batch_failed(self, topic: str) -> None:
        self._counter(self.batch_errors, topic).inc()

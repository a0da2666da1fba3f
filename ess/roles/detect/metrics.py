"""Prometheus metrics of the detection worker, in a registry of the caller's.

The detection worker's inputs are busy topics instead, so its lag is exported per partition
both in records and as the *age* of the oldest record still waiting
(:class:`DetectMetrics`): "detection is late" is a question of seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "DETECT_LATENCY_BUCKETS",
    "KEY_MISMATCH_ACTIONS",
    "DetectGauges",
    "DetectMetrics",
    "PartitionLag",
]

#: Label values of ``ess_input_key_mismatch_total{action}``
#: (:attr:`ess.detection.keys.KeyMismatch.action`).
KEY_MISMATCH_ACTIONS: Final = ("dead_lettered", "accepted")


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
    (:mod:`ess.roles.detect.observe`) once what they count has happened: a trip once the broker
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
            "future_ts, rule_failed, key_mismatch).",
            labelnames=["topic", "reason"],
            registry=reg,
        )
        self.key_mismatches = Counter(
            "ess_input_key_mismatch",
            "Input records whose Kafka key is not the one their key field derives (no key "
            "counts), by topic and action: dead_lettered (reason key_mismatch: the key's state "
            "would be split across partitions) or accepted (a single-partition topic). Any "
            "increase is a producer to fix.",
            labelnames=["topic", "action"],
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
            for action in KEY_MISMATCH_ACTIONS:
                self._counter(self.key_mismatches, topic, action)
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

    def key_mismatched(self, topic: str, action: str, count: int) -> None:
        """``count`` records of ``topic`` had a Kafka key other than their key field's."""
        if count:
            self._counter(self.key_mismatches, topic, action).inc(count)

    def batch_failed(self, topic: str) -> None:
        self._counter(self.batch_errors, topic).inc()

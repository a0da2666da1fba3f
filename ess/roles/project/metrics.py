"""Prometheus metrics of the projector, in a registry of the caller's.

Every metric lives in a :class:`~prometheus_client.CollectorRegistry` passed in (or a fresh
one), never in prometheus-client's global default: two projectors in one process (tests, or
every role in one worker) must not collide, and ``/metrics`` serves exactly this registry.
The same holds for every role's metrics.
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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ess.core import EssState
from schemas import (
    ActivatedEntry,
    ResetEntry,
    ResetRejectedEntry,
    StateEntry,
    TripRecordedEntry,
)

__all__ = ["LogTally", "ProjectorMetrics", "tally_entries"]


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

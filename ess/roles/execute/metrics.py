"""Prometheus metrics of the executor, in a registry of the caller's (see
:mod:`ess.roles.project.metrics` for why never the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ess.roles.execute.engine import (
    Phase,
    VenueProgress,
)
from schemas import (
    ActionReport,
)

__all__ = ["ExecutorMetrics"]


class ExecutorMetrics:
    """Prometheus metrics of the executor, in ``registry`` (a fresh one when omitted).

    Per-venue gauges are rendered at scrape time from ``progress`` (set by the executor), so
    they can never lag behind the venues' real phase."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.progress: Callable[[], Iterable[VenueProgress]] = tuple
        self.actions = Counter(
            "ess_executor_actions",
            "Executor steps reported to ess.actions, by venue, action and outcome.",
            labelnames=["venue", "action", "outcome"],
            registry=self.registry,
        )
        self.reports_dropped = Counter(
            "ess_executor_reports_dropped",
            "Action reports dropped because ess.actions was unreachable for too long.",
            registry=self.registry,
        )
        self.credentials_refused = Counter(
            "ess_executor_credentials_refused",
            "Times a venue refused the executor's credentials (reported as api_key_invalid).",
            labelnames=["venue"],
            registry=self.registry,
        )
        self.enforcement_restarts = Counter(
            "ess_executor_enforcement_restarts",
            "Times the watchdog found ESS ACTIVE without a running enforcement of the current "
            "activation and restarted it (a defect: should stay 0).",
            registry=self.registry,
        )
        self.registry.register(_ProgressCollector(self))

    def observe(self, report: ActionReport) -> None:
        self.actions.labels(report.venue, report.action, report.outcome).inc()


class _ProgressCollector(Collector):
    """``ess_executor_venue_{stalled,flat}`` and ``ess_executor_flatten_seconds`` per venue."""

    def __init__(self, owner: ExecutorMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return self._families(())

    def collect(self) -> Iterable[Metric]:
        return self._families(tuple(self._owner.progress()))

    @staticmethod
    def _families(progress: Sequence[VenueProgress]) -> Iterator[Metric]:
        stalled = GaugeMetricFamily(
            "ess_executor_venue_stalled",
            "1 while a venue is past the flatten deadline without a verified-flat read.",
            labels=["venue"],
        )
        flat = GaugeMetricFamily(
            "ess_executor_venue_flat",
            "1 while a venue is verified flat during an activation.",
            labels=["venue"],
        )
        seconds = GaugeMetricFamily(
            "ess_executor_flatten_seconds",
            "Seconds from the start of the current activation's flatten to verified flat.",
            labels=["venue"],
        )
        for item in progress:
            stalled.add_metric([item.venue], float(item.phase is Phase.STALLED))
            flat.add_metric([item.venue], float(item.phase is Phase.FLAT))
            if item.flatten_seconds is not None:
                seconds.add_metric([item.venue], item.flatten_seconds)
        yield from (stalled, flat, seconds)

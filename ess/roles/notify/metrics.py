"""Prometheus metrics of the notifier, in a registry of the caller's (see
:mod:`ess.roles.project.metrics` for why never the global one).

The counters count what *this process* did: the notifier never replays deliveries into them
(a restart redelivers only what was not settled, and those really are sent again).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from ess.notify.alerts import Alert

__all__ = ["NotifyMetrics"]


class NotifyMetrics:
    """The notifier's metrics; implements the observers of :mod:`ess.notify.delivery` and
    :mod:`ess.notify.telegram`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.alerts = Counter(
            "ess_notify_alerts",
            "Alerts decided from ESS's records (each is delivered to every receiver), by kind.",
            labelnames=["kind"],
            registry=reg,
        )
        self.deliveries = Counter(
            "ess_notify_deliveries",
            "Alerts a receiver accepted, by receiver and kind.",
            labelnames=["receiver", "kind"],
            registry=reg,
        )
        self.failures = Counter(
            "ess_notify_failures",
            "Alerts given up on a receiver (a permanent error, or every retry failed), by "
            "receiver, kind and reason (permanent or retries_exhausted).",
            labelnames=["receiver", "kind", "reason"],
            registry=reg,
        )
        self.retries = Counter(
            "ess_notify_retries",
            "Failed delivery tries that were retried, by receiver.",
            labelnames=["receiver"],
            registry=reg,
        )
        self.duplicates = Counter(
            "ess_notify_duplicates",
            "Alerts not sent again because this process already delivered their key.",
            labelnames=["receiver"],
            registry=reg,
        )
        self.up = Gauge(
            "ess_notify_receiver_up",
            "0 once a receiver gave up on an alert, 1 again after its next delivery.",
            labelnames=["receiver"],
            registry=reg,
        )
        self.processor_up = Gauge(
            "ess_notify_processor_up",
            "1 while the notifier sees the command processor's owner beats, 0 once it "
            "alerted that the processor is gone.",
            registry=reg,
        )
        self.processor_up.set(1)
        self.commit_errors = Counter(
            "ess_notify_commit_errors",
            "Failed commits of the notifier's progress (it redelivers after a restart).",
            registry=reg,
        )
        self.refused_records = Counter(
            "ess_notify_refused_records",
            "Records the notifier could not read (undecodable, or a liveness beat that does "
            "not verify), by topic.",
            labelnames=["topic"],
            registry=reg,
        )
        self.telegram_commands = Counter(
            "ess_notify_telegram_commands",
            "Telegram messages answered, by command and outcome (answered, sent, refused, failed).",
            labelnames=["command", "outcome"],
            registry=reg,
        )
        self.telegram_poll_errors = Counter(
            "ess_notify_telegram_poll_errors",
            "Failed Telegram getUpdates polls.",
            registry=reg,
        )

    # ------------------------------------------------------------------ DeliveryObserver

    def delivered(self, receiver: str, alert: Alert) -> None:
        self.deliveries.labels(receiver, alert.kind.value).inc()

    def duplicate(self, receiver: str, alert: Alert) -> None:
        self.duplicates.labels(receiver).inc()

    def retried(self, receiver: str, alert: Alert) -> None:
        self.retries.labels(receiver).inc()

    def failed(self, receiver: str, alert: Alert, *, permanent: bool) -> None:
        reason = "permanent" if permanent else "retries_exhausted"
        self.failures.labels(receiver, alert.kind.value, reason).inc()

    def receiver_up(self, receiver: str, up: bool) -> None:
        self.up.labels(receiver).set(1 if up else 0)

    # ------------------------------------------------------------------ CommandObserver

    def command(self, command: str, outcome: str) -> None:
        self.telegram_commands.labels(command, outcome).inc()

    def poll_failed(self) -> None:
        self.telegram_poll_errors.inc()

    # ------------------------------------------------------------------ notifier

    def alert(self, alert: Alert) -> None:
        self.alerts.labels(alert.kind.value).inc()

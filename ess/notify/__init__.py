"""Alerts that reach people: what ESS tells humans, and how it gets to them.

* :mod:`ess.notify.alerts`: which record becomes which :class:`~ess.notify.alerts.Alert`
  (pure functions over state-log entries, executor reports, dead letters and liveness beats),
  with a dedupe key per event and an incident key per trigger/resolve pair;
* :mod:`ess.notify.receivers`: the receivers behind one port (Slack-compatible webhook,
  Telegram Bot API, PagerDuty Events API v2, generic JSON webhook);
* :mod:`ess.notify.delivery`: at-least-once delivery to every receiver on its own, with
  bounded retries, backoff and jitter, in-process dedupe, and loud failures;
* :mod:`ess.notify.progress`: which records are settled, i.e. what may be committed;
* :mod:`ess.notify.telegram`: ``/status`` and ``/trip`` from allow-listed Telegram chats.

The role that runs all this against Kafka is :mod:`ess.roles.notify` (``ess worker --role
notify``); setup and semantics are in ``docs/notifications.md``.
"""

from ess.notify.alerts import (
    Alert,
    AlertKind,
    FlattenEpisodes,
    Page,
    ProcessorWatch,
    Severity,
    alerts_for_action,
    alerts_for_dead_letter,
    alerts_for_entry,
)
from ess.notify.delivery import DeliveryObserver, Dispatcher, RetryPolicy
from ess.notify.progress import Progress
from ess.notify.receivers import (
    DeliveryFailed,
    HttpReceiver,
    HttpRequest,
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    TelegramReceiver,
    WebhookReceiver,
)

__all__ = [
    "Alert",
    "AlertKind",
    "DeliveryFailed",
    "DeliveryObserver",
    "Dispatcher",
    "FlattenEpisodes",
    "HttpReceiver",
    "HttpRequest",
    "Page",
    "PagerDutyReceiver",
    "ProcessorWatch",
    "Progress",
    "Receiver",
    "RetryPolicy",
    "Severity",
    "SlackReceiver",
    "TelegramReceiver",
    "WebhookReceiver",
    "alerts_for_action",
    "alerts_for_dead_letter",
    "alerts_for_entry",
]

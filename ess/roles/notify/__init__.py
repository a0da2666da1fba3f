"""The ``notify`` role: alerts that reach people (Slack, Telegram, PagerDuty, any webhook),
and ``/status`` / ``/trip`` from allow-listed Telegram chats.

Opt-in: ``ess worker`` runs it only when named (``--role notify``; see
:data:`ess.roles.worker.OPT_IN_ROLES`), and it refuses to start without a receiver. What it
does: :mod:`ess.roles.notify.notifier`; setup: ``docs/notifications.md``.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from ess.core.reader import Trust
from ess.errors import EssError
from ess.notify.delivery import Dispatcher, RetryPolicy
from ess.notify.receivers import (
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    TelegramReceiver,
    WebhookReceiver,
)
from ess.observability.status import serve_status
from ess.roles.context import RoleContext
from ess.roles.notify.metrics import NotifyMetrics
from ess.roles.notify.notifier import Notifier, NotifyStatus, default_group_id
from ess.settings import EssSettings, NotifySettings

__all__ = [
    "Notifier",
    "NotifyConfigError",
    "NotifyMetrics",
    "NotifyStatus",
    "build_notifier",
    "build_receivers",
    "check_settings",
    "default_group_id",
    "run",
]


class NotifyConfigError(EssError, ValueError):
    """The notify role cannot start with these settings; the message names the variables."""


def check_settings(settings: NotifySettings) -> None:
    """Raise :class:`NotifyConfigError` naming every problem of ``settings``."""
    problems = settings.problems()
    if problems:
        raise NotifyConfigError("; ".join(problems))


def build_receivers(settings: NotifySettings, *, source: str = "ess") -> list[Receiver]:
    """The receivers ``settings`` configure, in a fixed order (slack, telegram, pagerduty,
    webhook). ``source`` names this deployment in PagerDuty."""
    timeout = settings.request_timeout_sec
    receivers: list[Receiver] = []
    if settings.slack_webhook_url is not None:
        receivers.append(SlackReceiver(settings.slack_webhook_url, timeout_sec=timeout))
    telegram = _telegram(settings)
    if telegram is not None and settings.telegram_chat_id.strip():
        receivers.append(telegram)
    if settings.pagerduty_routing_key is not None:
        receivers.append(
            PagerDutyReceiver(
                settings.pagerduty_routing_key,
                base_url=settings.pagerduty_base_url,
                source=source,
                timeout_sec=timeout,
            )
        )
    if settings.webhook_url is not None:
        receivers.append(
            WebhookReceiver(settings.webhook_url, token=settings.webhook_token, timeout_sec=timeout)
        )
    return receivers


def _telegram(settings: NotifySettings, *, name: str = "telegram") -> TelegramReceiver | None:
    if settings.telegram_bot_token is None:
        return None
    return TelegramReceiver(
        settings.telegram_bot_token,
        settings.telegram_chat_id or "0",
        base_url=settings.telegram_base_url,
        timeout_sec=settings.request_timeout_sec,
        name=name,
    )


def build_notifier(
    settings: EssSettings,
    *,
    bootstrap: str,
    trust: Trust | None = None,
    metrics: NotifyMetrics | None = None,
    group_id: str | None = None,
) -> Notifier:
    """A :class:`Notifier` as the role runs it, from ``settings`` (checked first)."""
    notify = settings.notify
    check_settings(notify)
    metrics = metrics if metrics is not None else NotifyMetrics()
    registry = settings.registry()
    dispatcher = Dispatcher(
        build_receivers(notify, source=f"ess/{registry.prefix}"),
        policy=RetryPolicy(
            attempts=notify.retry_attempts,
            initial_sec=notify.retry_initial_sec,
            max_sec=notify.retry_max_sec,
        ),
        observer=metrics,
    )
    return Notifier(
        bootstrap,
        registry,
        dispatcher,
        trust=trust if trust is not None else settings.state_trust(),
        metrics=metrics,
        processor_gone_after=notify.processor_gone_after_sec,
        group_id=group_id,
        security=settings.kafka_security(),
        # The bot polls with a receiver of its own: a long poll must not queue behind alerts.
        telegram=_telegram(notify, name="telegram-commands")
        if notify.telegram_commands()
        else None,
        telegram_allowed=notify.allowed_chat_ids(),
        telegram_poll_timeout_sec=notify.telegram_poll_timeout_sec,
    )


async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None:
    """The ``notify`` role until ``stop``: refuses to start (:class:`NotifyConfigError`)
    without a receiver; serves ``/status``, ``/metrics`` and ``/healthz`` on
    ``ESS_NOTIFY_STATUS_PORT`` (``-1``: none)."""
    check_settings(settings.notify)
    notifier = build_notifier(settings, bootstrap=context.bootstrap, trust=context.trust)
    logger.bind(receivers=list(notifier.dispatcher.receivers)).info("notify role starting")
    port = settings.notify.status_port
    server = None
    if port >= 0:
        server = await serve_status(
            notifier, notifier.metrics.registry, settings.observability.status_host, port
        )
    try:
        await notifier.run(stop)
    finally:
        if server is not None:
            await server.stop()

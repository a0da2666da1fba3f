"""Receivers: where alerts go. Thin adapters behind one port, :class:`Receiver`.

Each HTTP receiver is two parts: :meth:`HttpReceiver.request`, a pure function from an alert
to the exact request (URL, JSON body, headers) its service expects, and one shared
:meth:`HttpReceiver.send` that posts it and classifies the answer:

* 2xx: delivered;
* 408, 425, 429 and 5xx, a timeout or a connection error: *transient*, worth retrying
  (``Retry-After``, or Telegram's ``retry_after``, says how long to wait);
* anything else (400 bad payload, 401/403 bad token, 404/410 wrong or revoked URL): *permanent*,
  retrying cannot help.

:class:`DeliveryFailed` carries the verdict; the dispatcher (:mod:`ess.notify.delivery`)
retries, gives up and gets loud. Every base URL is configurable, which is how the tests point
the receivers at loopback servers.

Secrets (webhook URLs, the bot token, the routing key) are :class:`~pydantic.SecretStr` until
the moment a request is built, and never logged: error texts are scrubbed of them
(:meth:`HttpReceiver.scrub`) before they leave this module, because an HTTP client's error
message may quote the URL, and a Slack or Telegram URL *is* the credential.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from ess.errors import EssError
from ess.notify.alerts import Alert, Page

__all__ = [
    "DeliveryFailed",
    "HttpReceiver",
    "HttpRequest",
    "PagerDutyReceiver",
    "Receiver",
    "SlackReceiver",
    "TelegramReceiver",
    "WebhookReceiver",
    "scrubbed",
]

MASK: Final = "***"
#: Characters of an answer's body kept in an error (enough to read a service's complaint).
_BODY_EXCERPT: Final = 300
#: HTTP statuses worth retrying besides 5xx.
_TRANSIENT: Final = frozenset({408, 425, 429})
#: Telegram's message limit is 4,096 characters; PagerDuty's summary 1,024; Slack's header 150.
TELEGRAM_TEXT_MAX: Final = 4096
_PD_SUMMARY_MAX: Final = 1024
_SLACK_HEADER_MAX: Final = 150
#: Slack shows at most 10 fields in one section.
_SLACK_FIELDS_MAX: Final = 10


class DeliveryFailed(EssError, RuntimeError):
    """A receiver did not take the alert. ``transient``: retrying may help;
    ``retry_after``: what the service asked to wait (seconds), if it said. The message never
    holds a secret."""

    def __init__(self, why: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.transient = transient
        self.retry_after = retry_after


class Receiver(Protocol):
    """Where alerts go: one service, one destination.

    ``accepts`` says whether the alert is for this receiver at all (PagerDuty takes only the
    alerts that trigger or resolve an incident); ``deliver`` sends it once and raises
    :class:`DeliveryFailed` when it was not taken; ``close`` releases connections."""

    @property
    def name(self) -> str: ...

    def accepts(self, alert: Alert) -> bool: ...

    async def deliver(self, alert: Alert) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A POST as a receiver builds it: the tests compare it field by field."""

    url: str
    json: Any
    headers: Mapping[str, str] = field(default_factory=dict)


def scrubbed(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret (longest first, so a URL goes before its path) masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _url_secrets(url: str) -> list[str]:
    """A secret URL and the parts of it an error message might quote on their own."""
    parts = urlsplit(url)
    found = [url, parts.path, parts.query]
    if parts.path and parts.query:
        found.append(f"{parts.path}?{parts.query}")
    return [item for item in found if item and item != "/"]


def _retry_after(headers: Mapping[str, str], body: Any) -> float | None:
    """Seconds the service asked to wait: ``Retry-After`` (seconds), or Telegram's
    ``parameters.retry_after``."""
    raw = headers.get("Retry-After")
    if raw is not None:
        try:
            return max(0.0, float(raw))
        except ValueError:
            return None  # an HTTP date: fall back to the backoff
    if isinstance(body, dict):
        parameters = body.get("parameters")
        if isinstance(parameters, dict):
            value = parameters.get("retry_after")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return max(0.0, float(value))
    return None


class HttpReceiver(ABC):
    """The shared part of every HTTP receiver: one client session (opened on first use,
    bounded by ``timeout_sec`` per request), posting what :meth:`request` builds and
    classifying the answer (see the module docstring)."""

    def __init__(self, name: str, *, timeout_sec: float, secrets: Sequence[str]) -> None:
        if timeout_sec <= 0:
            raise ValueError("timeout_sec must be positive")
        self._name = name
        self._timeout = timeout_sec
        self._secrets = tuple(secrets)
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self._name

    def accepts(self, alert: Alert) -> bool:
        """Every alert, unless a receiver says otherwise."""
        return True

    @abstractmethod
    def request(self, alert: Alert) -> HttpRequest:
        """The exact request for ``alert`` (pure)."""

    def scrub(self, text: str) -> str:
        """``text`` without this receiver's secrets."""
        return scrubbed(text, self._secrets)

    async def deliver(self, alert: Alert) -> None:
        await self.send(self.request(alert))

    async def send(self, request: HttpRequest, *, timeout_sec: float | None = None) -> Any:
        """POST ``request``; returns the answer's JSON (``None`` if it is not JSON). Raises
        :class:`DeliveryFailed` (scrubbed) unless the service answered 2xx. ``timeout_sec``
        replaces the receiver's bound for this request (a long poll waits longer)."""
        session = self._open()
        # Only when given: aiohttp reads ``timeout=None`` as "no timeout at all".
        options: dict[str, Any] = {}
        if timeout_sec is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout_sec)
        try:
            async with session.post(
                request.url, json=request.json, headers=dict(request.headers), **options
            ) as response:
                text = await response.text(errors="replace")
                body = _json_or_none(text)
                if 200 <= response.status < 300:
                    return body
                transient = response.status in _TRANSIENT or response.status >= 500
                why = f"HTTP {response.status}: {text[:_BODY_EXCERPT]}"
                raise DeliveryFailed(
                    self.scrub(why),
                    transient=transient,
                    retry_after=_retry_after(response.headers, body) if transient else None,
                )
        except DeliveryFailed:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DeliveryFailed(self.scrub(why), transient=True) from None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
            # aiohttp closes the underlying transports on the next loop iterations.
            await asyncio.sleep(0)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def chat_text(alert: Alert, limit: int = TELEGRAM_TEXT_MAX) -> str:
    """The alert as chat text: severity tag, title, fields (cut to ``limit`` characters)."""
    text = f"[{alert.severity.value.upper()}] {alert.text()}\nkey: {alert.key}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _slack_escape(text: str) -> str:
    """Slack's three control characters in ``mrkdwn`` text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackReceiver(HttpReceiver):
    """A Slack incoming webhook, or anything that takes Slack's body (Mattermost, Rocket.Chat,
    Discord's ``/slack`` endpoint): ``{"text": ..., "blocks": [...]}``. ``text`` is the whole
    alert as plain text (what notifications and clients without blocks show)."""

    def __init__(self, url: SecretStr, *, timeout_sec: float = 10.0, name: str = "slack") -> None:
        self._url = url
        super().__init__(
            name, timeout_sec=timeout_sec, secrets=_url_secrets(url.get_secret_value())
        )

    def request(self, alert: Alert) -> HttpRequest:
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": alert.title[:_SLACK_HEADER_MAX]},
            }
        ]
        if alert.fields:
            blocks.append(
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"}
                        for name, value in alert.fields[:_SLACK_FIELDS_MAX]
                    ],
                }
            )
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _slack_escape(
                            f"{alert.severity.value} | {alert.origin} | key {alert.key}"
                        ),
                    }
                ],
            }
        )
        return HttpRequest(
            url=self._url.get_secret_value(),
            json={"text": chat_text(alert), "blocks": blocks},
        )


class TelegramReceiver(HttpReceiver):
    """The Telegram Bot API: ``POST {base}/bot<token>/sendMessage`` with ``chat_id`` and
    ``text`` (plain text: no parse mode, so nothing in an alert needs escaping). ``chat_id``
    is a number (a user, group or channel id) or ``@channelname``."""

    def __init__(
        self,
        token: SecretStr,
        chat_id: str,
        *,
        base_url: str = "https://api.telegram.org",
        timeout_sec: float = 10.0,
        name: str = "telegram",
    ) -> None:
        self._token = token
        self.chat_id = _chat_id(chat_id)
        self.base_url = base_url.rstrip("/")
        super().__init__(name, timeout_sec=timeout_sec, secrets=[token.get_secret_value()])

    def method_url(self, method: str) -> str:
        """The URL of a Bot API method (it holds the token: never log it)."""
        return f"{self.base_url}/bot{self._token.get_secret_value()}/{method}"

    def message(self, chat_id: int | str, text: str) -> HttpRequest:
        """A ``sendMessage`` request (alerts, and the command bot's replies)."""
        return HttpRequest(
            url=self.method_url("sendMessage"),
            json={
                "chat_id": chat_id,
                "text": text[:TELEGRAM_TEXT_MAX],
                "disable_web_page_preview": True,
            },
        )

    def request(self, alert: Alert) -> HttpRequest:
        return self.message(self.chat_id, chat_text(alert))


def _chat_id(value: str) -> int | str:
    """Telegram chat ids are integers (negative for groups), or ``@name`` for channels."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        return text


class PagerDutyReceiver(HttpReceiver):
    """PagerDuty Events API v2: ``POST {base}/v2/enqueue``.

    Only alerts that trigger or resolve an incident are sent (:attr:`Alert.page`). The
    ``dedup_key`` is the alert's *incident*, so a trip and its reset (a stall and the
    venue's verified-flat report, the processor going and coming back) are one PagerDuty
    incident, opened by the first and closed by the second; a trigger sent twice is merged
    by PagerDuty into the open incident."""

    def __init__(
        self,
        routing_key: SecretStr,
        *,
        base_url: str = "https://events.pagerduty.com",
        source: str = "ess",
        timeout_sec: float = 10.0,
        name: str = "pagerduty",
    ) -> None:
        self._routing_key = routing_key
        self.base_url = base_url.rstrip("/")
        self.source = source
        super().__init__(name, timeout_sec=timeout_sec, secrets=[routing_key.get_secret_value()])

    def accepts(self, alert: Alert) -> bool:
        return alert.page is not None

    def request(self, alert: Alert) -> HttpRequest:
        url = f"{self.base_url}/v2/enqueue"
        routing_key = self._routing_key.get_secret_value()
        if alert.page is Page.RESOLVE:
            body: dict[str, Any] = {
                "routing_key": routing_key,
                "event_action": "resolve",
                "dedup_key": alert.incident,
            }
            return HttpRequest(url=url, json=body)
        body = {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": alert.incident,
            "payload": {
                "summary": alert.title[:_PD_SUMMARY_MAX],
                "source": self.source,
                "severity": alert.severity.value,
                "timestamp": alert.ts.isoformat(),
                "component": "ess",
                "class": alert.kind.value,
                "custom_details": {**dict(alert.fields), "origin": alert.origin, "key": alert.key},
            },
        }
        return HttpRequest(url=url, json=body)


class WebhookReceiver(HttpReceiver):
    """Any HTTP endpoint: the alert as JSON (:meth:`Alert.as_json`) with an
    ``Idempotency-Key`` header (the alert's key: the same event always carries the same
    key, so an endpoint that honours it drops redeliveries), and ``Authorization: Bearer
    <token>`` when a token is configured."""

    def __init__(
        self,
        url: SecretStr,
        *,
        token: SecretStr | None = None,
        timeout_sec: float = 10.0,
        name: str = "webhook",
    ) -> None:
        self._url = url
        self._token = token
        secrets = _url_secrets(url.get_secret_value())
        if token is not None:
            secrets.append(token.get_secret_value())
        super().__init__(name, timeout_sec=timeout_sec, secrets=secrets)

    def request(self, alert: Alert) -> HttpRequest:
        headers = {"Idempotency-Key": alert.key}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        return HttpRequest(url=self._url.get_secret_value(), json=alert.as_json(), headers=headers)

"""Each receiver against a loopback server: the exact request (path, JSON, headers), and how
answers are classified (delivered, transient, permanent), secrets never in an error."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from ess.core import INITIAL_STATE
from ess.core.reader import LoggedEntry
from ess.notify.alerts import Alert, alerts_for_entry
from ess.notify.receivers import (
    DeliveryFailed,
    PagerDutyReceiver,
    SlackReceiver,
    TelegramReceiver,
    WebhookReceiver,
)
from schemas import ReasonCode
from tests.notify.support import Answer, loopback
from tests.statelog_support import T0, LogBuilder

pytestmark = pytest.mark.integration  # real HTTP on loopback

SCOPE = "ess.state"
TOKEN = "123456:AAE-s3cr3t-t0ken"


def trip_and_reset() -> tuple[Alert, Alert]:
    log = LogBuilder(SCOPE)
    trip = log.trip("trip-1", reason=ReasonCode.MANUAL, source="operator:alice", detail="a <b>")
    before = log.state
    reset = log.reset("alice")
    [tripped] = alerts_for_entry(LoggedEntry(0, trip), INITIAL_STATE, scope=SCOPE)
    [cleared] = alerts_for_entry(LoggedEntry(1, reset), before, scope=SCOPE)
    return tripped, cleared


async def test_slack_gets_text_and_blocks_at_the_webhook_path() -> None:
    alert, _ = trip_and_reset()
    async with loopback(Answer(200, "ok")) as server:
        receiver = SlackReceiver(SecretStr(server.url("/services/T0/B0/xoxsecret")))
        try:
            await receiver.deliver(alert)
        finally:
            await receiver.close()

    [seen] = server.requests
    assert seen.method == "POST"
    assert seen.path == "/services/T0/B0/xoxsecret"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.json["text"] == f"[CRITICAL] {alert.text()}\nkey: {alert.key}"
    header, section, context = seen.json["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": alert.title}}
    assert {"type": "mrkdwn", "text": "*reason*\nmanual"} in section["fields"]
    # Slack's control characters are escaped in mrkdwn, not in the plain-text fallback.
    assert {"type": "mrkdwn", "text": "*detail*\na &lt;b&gt;"} in section["fields"]
    assert context["elements"][0]["text"].startswith("critical | ess.state@0 | key ")


async def test_telegram_posts_send_message_with_chat_id_and_text() -> None:
    alert, _ = trip_and_reset()
    async with loopback(Answer(200, {"ok": True, "result": {}})) as server:
        receiver = TelegramReceiver(SecretStr(TOKEN), "-100200300", base_url=server.url())
        try:
            await receiver.deliver(alert)
        finally:
            await receiver.close()

    [seen] = server.requests
    assert seen.path == f"/bot{TOKEN}/sendMessage"
    assert seen.json == {
        "chat_id": -100200300,
        "text": f"[CRITICAL] {alert.text()}\nkey: {alert.key}",
        "disable_web_page_preview": True,
    }


async def test_pagerduty_triggers_on_the_trip_and_resolves_the_same_dedup_key() -> None:
    tripped, cleared = trip_and_reset()
    async with loopback(Answer(202, {"status": "success"})) as server:
        receiver = PagerDutyReceiver(
            SecretStr("R0UT1NGKEY"), base_url=server.url(), source="ess/test"
        )
        try:
            await receiver.deliver(tripped)
            await receiver.deliver(cleared)
        finally:
            await receiver.close()

    trigger, resolve = server.requests
    assert server.paths() == ["/v2/enqueue", "/v2/enqueue"]
    assert trigger.json == {
        "routing_key": "R0UT1NGKEY",
        "event_action": "trigger",
        "dedup_key": tripped.incident,
        "payload": {
            "summary": tripped.title,
            "source": "ess/test",
            "severity": "critical",
            "timestamp": tripped.ts.isoformat(),
            "component": "ess",
            "class": "trip",
            "custom_details": {
                **dict(tripped.fields),
                "origin": "ess.state@0",
                "key": tripped.key,
            },
        },
    }
    assert resolve.json == {
        "routing_key": "R0UT1NGKEY",
        "event_action": "resolve",
        "dedup_key": tripped.incident,
    }


def test_pagerduty_takes_only_alerts_that_page() -> None:
    tripped, _ = trip_and_reset()
    receiver = PagerDutyReceiver(SecretStr("k"))
    info = Alert(
        kind=tripped.kind,
        severity=tripped.severity,
        key="k",
        incident="i",
        page=None,
        title="t",
        ts=T0,
        origin="o",
    )

    assert receiver.accepts(tripped)
    assert not receiver.accepts(info)


async def test_the_webhook_gets_the_alert_as_json_with_an_idempotency_key() -> None:
    alert, _ = trip_and_reset()
    async with loopback(Answer(204, None)) as server:
        receiver = WebhookReceiver(
            SecretStr(server.url("/ess/alerts?sig=abc")), token=SecretStr("bearer-secret")
        )
        try:
            await receiver.deliver(alert)
        finally:
            await receiver.close()

    [seen] = server.requests
    assert seen.path == "/ess/alerts?sig=abc"
    assert seen.headers["Idempotency-Key"] == alert.key
    assert seen.headers["Authorization"] == "Bearer bearer-secret"
    assert seen.json == alert.as_json()


@pytest.mark.parametrize(
    ("answer", "transient", "retry_after"),
    [
        (Answer(500, {"error": "boom"}), True, None),
        (Answer(503, "down"), True, None),
        (Answer(429, "slow down", headers={"Retry-After": "7"}), True, 7.0),
        (Answer(429, {"ok": False, "parameters": {"retry_after": 3}}), True, 3.0),
        (Answer(400, "invalid_payload"), False, None),
        (Answer(403, "invalid_token"), False, None),
        (Answer(410, "channel_is_archived"), False, None),
    ],
)
async def test_answers_are_classified(
    answer: Answer, transient: bool, retry_after: float | None
) -> None:
    alert, _ = trip_and_reset()
    async with loopback(answer) as server:
        receiver = WebhookReceiver(SecretStr(server.url("/hook")))
        try:
            with pytest.raises(DeliveryFailed) as failed:
                await receiver.deliver(alert)
        finally:
            await receiver.close()

    assert failed.value.transient is transient
    assert failed.value.retry_after == retry_after
    assert str(failed.value).startswith(f"HTTP {answer.status}")


async def test_a_hung_service_is_a_transient_timeout() -> None:
    alert, _ = trip_and_reset()
    async with loopback(Answer(hang=True)) as server:
        receiver = WebhookReceiver(SecretStr(server.url("/hook")), timeout_sec=0.2)
        try:
            with pytest.raises(DeliveryFailed) as failed:
                await receiver.deliver(alert)
        finally:
            await receiver.close()

    assert failed.value.transient
    assert "Timeout" in str(failed.value)


async def test_a_refused_connection_is_transient() -> None:
    alert, _ = trip_and_reset()
    async with loopback() as server:
        url = server.url("/hook")
    receiver = WebhookReceiver(SecretStr(url))  # the server is gone: nothing listens
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await receiver.deliver(alert)
    finally:
        await receiver.close()

    assert failed.value.transient


async def test_errors_never_quote_a_secret_even_when_the_service_echoes_it() -> None:
    alert, _ = trip_and_reset()
    async with loopback() as server:
        path = "/services/T0/B0/xoxsecret"
        server.default = Answer(404, {"error": f"no_service for {server.url(path)} {path}"})
        slack = SlackReceiver(SecretStr(server.url(path)))
        server_tg = Answer(401, {"ok": False, "description": f"bad token bot{TOKEN}"})
        try:
            with pytest.raises(DeliveryFailed) as slack_failed:
                await slack.deliver(alert)
            server.default = server_tg
            telegram = TelegramReceiver(SecretStr(TOKEN), "1", base_url=server.url())
            with pytest.raises(DeliveryFailed) as telegram_failed:
                await telegram.deliver(alert)
            await telegram.close()
        finally:
            await slack.close()

    for text in (str(slack_failed.value), str(telegram_failed.value)):
        assert "xoxsecret" not in text
        assert "s3cr3t" not in text
        assert "***" in text
    assert not slack_failed.value.transient

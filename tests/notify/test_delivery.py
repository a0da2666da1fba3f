"""The dispatcher against loopback receivers: retries with backoff after 500s and timeouts,
bounded; dedupe by key; a failing receiver is loud and blocks nobody; settlement."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ess.core import INITIAL_STATE
from ess.core.reader import LoggedEntry
from ess.notify.alerts import Alert, alerts_for_entry
from ess.notify.delivery import Dispatcher, RetryPolicy
from ess.notify.receivers import (
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    TelegramReceiver,
    WebhookReceiver,
)
from ess.roles.notify.metrics import NotifyMetrics
from schemas import ReasonCode
from tests.helpers import eventually
from tests.notify.support import Answer, RecordingSleep, json_log, loopback
from tests.statelog_support import LogBuilder

pytestmark = pytest.mark.integration  # real HTTP on loopback

SCOPE = "ess.state"


def alerts() -> tuple[Alert, Alert]:
    log = LogBuilder(SCOPE)
    trip = log.trip("trip-1", reason=ReasonCode.FLASH_CRASH, detail="BTC -9%")
    before = log.state
    reset = log.reset("alice")
    [tripped] = alerts_for_entry(LoggedEntry(0, trip), INITIAL_STATE, scope=SCOPE)
    [cleared] = alerts_for_entry(LoggedEntry(1, reset), before, scope=SCOPE)
    return tripped, cleared


def sample(metrics: NotifyMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def dispatcher(
    receivers: list[Receiver],
    metrics: NotifyMetrics,
    *,
    attempts: int = 5,
    sleep: RecordingSleep | None = None,
    draw: float = 0.5,
) -> Dispatcher:
    return Dispatcher(
        receivers,
        policy=RetryPolicy(attempts=attempts, initial_sec=1.0, max_sec=60.0),
        observer=metrics,
        sleep=sleep or RecordingSleep(),
        draw=lambda: draw,
    )


def test_backoff_doubles_with_equal_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=10, initial_sec=1.0, max_sec=8.0)

    assert [policy.delay(n, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [policy.delay(n, 1.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay(1, 0.0, retry_after=5.0) == 5.0
    assert policy.delay(1, 0.0, retry_after=500.0) == 8.0  # bounded


@pytest.mark.parametrize(
    ("attempts", "initial", "maximum"), [(0, 1.0, 2.0), (3, 0.0, 2.0), (3, 3.0, 2.0)]
)
def test_nonsense_policies_are_refused(attempts: int, initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match=r"attempts|initial"):
        RetryPolicy(attempts=attempts, initial_sec=initial, max_sec=maximum)


async def test_retries_after_500s_with_backoff_then_delivers() -> None:
    tripped, _ = alerts()
    metrics, sleep = NotifyMetrics(CollectorRegistry()), RecordingSleep()
    settled: list[str] = []
    async with loopback() as server:
        server.then(Answer(500), Answer(502))
        hub = dispatcher(
            [WebhookReceiver(SecretStr(server.url("/hook")))], metrics, sleep=sleep, draw=0.5
        )
        async with hub.running():
            assert hub.submit(tripped, lambda: settled.append("webhook")) == 1
            await hub.drained()

    assert len(server.requests) == 3
    assert {seen.headers["Idempotency-Key"] for seen in server.requests} == {tripped.key}
    assert sleep.waits == [0.75, 1.5]  # 1 s and 2 s ceilings, half fixed, half drawn (0.5)
    assert settled == ["webhook"]
    assert sample(metrics, "ess_notify_retries_total", receiver="webhook") == 2
    assert sample(metrics, "ess_notify_deliveries_total", receiver="webhook", kind="trip") == 1
    assert sample(metrics, "ess_notify_receiver_up", receiver="webhook") == 1
    assert hub.health() == {"webhook": "ok"}


async def test_a_timeout_is_retried() -> None:
    tripped, _ = alerts()
    metrics, sleep = NotifyMetrics(CollectorRegistry()), RecordingSleep()
    async with loopback() as server:
        server.then(Answer(hang=True))
        receiver = SlackReceiver(SecretStr(server.url("/services/x")), timeout_sec=0.2)
        hub = dispatcher([receiver], metrics, sleep=sleep, draw=1.0)
        async with hub.running():
            hub.submit(tripped)
            await hub.drained()

    assert len(server.requests) == 2
    assert sleep.waits == [1.0]  # the first backoff, its jitter drawn at the top
    assert sample(metrics, "ess_notify_deliveries_total", receiver="slack", kind="trip") == 1


async def test_retry_after_is_honoured() -> None:
    tripped, _ = alerts()
    sleep = RecordingSleep()
    async with loopback() as server:
        server.then(Answer(429, {"ok": False}, headers={"Retry-After": "12"}))
        hub = dispatcher(
            [WebhookReceiver(SecretStr(server.url("/hook")))],
            NotifyMetrics(CollectorRegistry()),
            sleep=sleep,
            draw=0.0,
        )
        async with hub.running():
            hub.submit(tripped)
            await hub.drained()

    assert sleep.waits == [12.0]
    assert len(server.requests) == 2


async def test_the_same_event_twice_is_one_delivery_per_receiver() -> None:
    tripped, _ = alerts()
    metrics = NotifyMetrics(CollectorRegistry())
    settled: Counter[str] = Counter()
    async with loopback() as slack, loopback() as hook:
        hub = dispatcher(
            [
                SlackReceiver(SecretStr(slack.url("/services/x"))),
                WebhookReceiver(SecretStr(hook.url("/hook"))),
            ],
            metrics,
        )
        async with hub.running():
            for _ in range(2):
                assert hub.submit(tripped, lambda: settled.update(["done"])) == 2
            await hub.drained()

    assert len(slack.requests) == 1
    assert len(hook.requests) == 1
    assert settled["done"] == 4  # every submission settles on every receiver
    assert sample(metrics, "ess_notify_duplicates_total", receiver="slack") == 1
    assert sample(metrics, "ess_notify_duplicates_total", receiver="webhook") == 1


async def test_pagerduty_resolves_with_the_trips_dedup_key_and_only_gets_paging_alerts() -> None:
    tripped, cleared = alerts()
    async with loopback(Answer(202, {"status": "success"})) as pagerduty:
        hub = dispatcher(
            [PagerDutyReceiver(SecretStr("rk"), base_url=pagerduty.url())],
            NotifyMetrics(CollectorRegistry()),
        )
        async with hub.running():
            hub.submit(tripped)
            hub.submit(cleared)
            hub.submit(cleared)  # a redelivered reset: not resolved twice
            await hub.drained()

    actions = [(seen.json["event_action"], seen.json["dedup_key"]) for seen in pagerduty.requests]
    assert actions == [("trigger", tripped.incident), ("resolve", tripped.incident)]


async def test_a_permanently_failing_receiver_is_loud_and_blocks_nobody() -> None:
    tripped, cleared = alerts()
    metrics = NotifyMetrics(CollectorRegistry())
    settled: list[str] = []
    token = "999:TOKEN-never-in-logs"
    with json_log() as lines:
        async with loopback(Answer(500, {"ok": False})) as broken, loopback() as slack:
            hub = dispatcher(
                [
                    TelegramReceiver(SecretStr(token), "5", base_url=broken.url()),
                    SlackReceiver(SecretStr(slack.url("/services/T/B/slack-secret"))),
                ],
                metrics,
                attempts=3,
            )
            async with hub.running():
                hub.submit(tripped, lambda: settled.append("trip"))
                hub.submit(cleared, lambda: settled.append("reset"))
                await hub.drained()

    assert len(broken.requests) == 6  # 3 tries per alert, then given up
    assert [seen.json["text"].splitlines()[0] for seen in slack.requests] == [
        f"[CRITICAL] {tripped.title}",
        f"[INFO] {cleared.title}",
    ]
    assert sorted(settled) == ["reset", "reset", "trip", "trip"]  # given up counts as settled
    assert hub.health() == {"telegram": "failing", "slack": "ok"}
    assert (
        sample(
            metrics,
            "ess_notify_failures_total",
            receiver="telegram",
            kind="trip",
            reason="retries_exhausted",
        )
        == 1
    )
    assert sample(metrics, "ess_notify_receiver_up", receiver="telegram") == 0
    assert sample(metrics, "ess_notify_receiver_up", receiver="slack") == 1
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert [line["receiver"] for line in errors] == ["telegram", "telegram"]
    assert all(line["msg"] == "alert NOT delivered to telegram: giving up" for line in errors)
    assert {line["key"] for line in errors} == {tripped.key, cleared.key}
    text = "\n".join(str(line) for line in lines)
    assert token not in text
    assert "slack-secret" not in text


async def test_a_bad_request_is_given_up_at_once() -> None:
    tripped, _ = alerts()
    metrics = NotifyMetrics(CollectorRegistry())
    async with loopback(Answer(400, "invalid_payload")) as server:
        hub = dispatcher([WebhookReceiver(SecretStr(server.url("/hook")))], metrics, attempts=8)
        async with hub.running():
            hub.submit(tripped)
            await hub.drained()

    assert len(server.requests) == 1
    assert (
        sample(
            metrics,
            "ess_notify_failures_total",
            receiver="webhook",
            kind="trip",
            reason="permanent",
        )
        == 1
    )


async def test_a_receiver_that_delivers_again_is_healthy_again() -> None:
    tripped, cleared = alerts()
    metrics = NotifyMetrics(CollectorRegistry())
    async with loopback() as server:
        server.then(Answer(400))
        hub = dispatcher([WebhookReceiver(SecretStr(server.url("/hook")))], metrics)
        async with hub.running():
            hub.submit(tripped)
            await hub.drained()
            assert hub.health() == {"webhook": "failing"}
            hub.submit(cleared)
            await hub.drained()

    assert hub.health() == {"webhook": "ok"}
    assert sample(metrics, "ess_notify_receiver_up", receiver="webhook") == 1


async def test_a_hung_receiver_does_not_delay_another_and_stopping_leaves_it_unsettled() -> None:
    tripped, cleared = alerts()
    settled: list[str] = []
    async with loopback(Answer(hang=True)) as hung, loopback() as slack:
        hub = dispatcher(
            [
                WebhookReceiver(SecretStr(hung.url("/hook")), timeout_sec=60.0),
                SlackReceiver(SecretStr(slack.url("/services/x"))),
            ],
            NotifyMetrics(CollectorRegistry()),
        )
        hub.start()
        hub.submit(tripped, lambda: settled.append("trip"))
        hub.submit(cleared, lambda: settled.append("reset"))
        await eventually(lambda: len(slack.requests) == 2)
        assert len(hung.requests) == 1  # still waiting on the first alert
        await hub.aclose()

    assert settled == ["trip", "reset"]  # slack's only: the hung deliveries never settled


def test_receiver_names_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Dispatcher(
            [WebhookReceiver(SecretStr("http://a/")), WebhookReceiver(SecretStr("http://b/"))],
            policy=RetryPolicy(),
            observer=NotifyMetrics(CollectorRegistry()),
        )

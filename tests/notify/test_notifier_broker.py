"""The notify role against the embedded broker: a real state log (and a real command
processor) in, loopback receivers out; progress committed only after delivery; Telegram
commands reaching the command topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ess.clock import SystemClock
from ess.kafka.clients import consumer, producer, read_to_end
from ess.notify.delivery import Dispatcher, RetryPolicy
from ess.notify.receivers import Receiver, TelegramReceiver, WebhookReceiver
from ess.operator.commands import manual_trip, send_command
from ess.roles import notify as notify_role
from ess.roles.command.processor import CommandProcessor
from ess.roles.context import RoleContext
from ess.roles.notify import Notifier, NotifyMetrics, default_group_id
from ess.settings import EssSettings
from schemas import ActionReport, DeadLetter, TopicRegistry, TripCommand, decode, encode
from tests.helpers import eventually
from tests.notify.support import Answer, Loopback, fake_telegram, loopback
from tests.statelog_support import PROCESSOR, LogBuilder, beating, policy, trust

pytestmark = pytest.mark.integration

WAIT = 30.0


def make_notifier(
    bootstrap: str,
    registry: TopicRegistry,
    group: str,
    receivers: list[Receiver],
    **options: Any,
) -> Notifier:
    metrics = NotifyMetrics(CollectorRegistry())
    dispatcher = Dispatcher(
        receivers,
        policy=RetryPolicy(attempts=3, initial_sec=0.05, max_sec=0.2),
        observer=metrics,
    )
    options.setdefault("processor_gone_after", 60.0)
    return Notifier(
        bootstrap,
        registry,
        dispatcher,
        trust=trust(registry.state.name),
        metrics=metrics,
        group_id=group,
        retry_interval=0.2,
        commit_interval=0.1,
        **options,
    )


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[Notifier]:
    """Run the notifier until the block ends; the block starts once it is ready (its start
    positions committed, ess.state read to its end)."""
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    try:
        await eventually(lambda: notifier.ready.is_set() or task.done(), timeout=WAIT)
        if task.done():
            task.result()
        yield notifier
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def committed(bootstrap: str, group: str, topic: str) -> int | None:
    reader = consumer(bootstrap, group_id=group)
    await reader.start()
    try:
        offset: int | None = await reader.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await reader.stop()


async def _is(value: Any, expected: object) -> bool:
    return bool(await value == expected)


def kinds(server: Loopback) -> list[str]:
    return [seen.json["kind"] for seen in server.requests]


async def produce(bootstrap: str, topic: str, *values: bytes) -> None:
    out = producer(bootstrap, read_to_end_safe=True)
    await out.start()
    try:
        for value in values:
            await out.send_and_wait(topic, value, key=b"k")
    finally:
        await out.stop()


async def test_a_trip_on_the_command_topic_reaches_a_webhook(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    """The role as `ess worker --role notify` runs it (settings, entry point), a real command
    processor writing ess.state, a loopback webhook."""
    processor = CommandProcessor(
        kafka_bootstrap,
        registry,
        reset_policy=policy(),
        clock=SystemClock(),
        signing_key=PROCESSOR,
        trust=trust(registry.state.name),
        group_id=f"{unique_group}-processor",
        join_group=False,
        beat_interval=0.2,
    )
    processor_stop, role_stop = asyncio.Event(), asyncio.Event()
    processor_task = asyncio.create_task(processor.run(processor_stop))
    group = default_group_id(registry.prefix)
    try:
        await eventually(lambda: processor.owns_commands or processor_task.done(), timeout=WAIT)
        async with loopback(Answer(202, {"ok": True})) as hook:
            settings = EssSettings(
                _env_file=None,
                kafka={"topic_prefix": registry.prefix},
                notify={
                    "webhook_url": hook.url("/alerts"),
                    "status_port": -1,
                    "retry_initial_sec": 0.05,
                    "retry_max_sec": 0.2,
                },
            )
            context = RoleContext(bootstrap=kafka_bootstrap, trust=trust(registry.state.name))
            role = asyncio.create_task(notify_role.run(settings, role_stop, context))
            try:
                # Started: its first start committed where its alerts begin.
                await eventually(
                    lambda: _is(committed(kafka_bootstrap, group, registry.state.name), 0),
                    timeout=WAIT,
                )
                trip = manual_trip(SystemClock(), "end to end", "tester")
                await send_command(kafka_bootstrap, registry, trip)

                await eventually(lambda: kinds(hook) == ["trip"], timeout=WAIT)
                await eventually(
                    lambda: _is(committed(kafka_bootstrap, group, registry.state.name), 1),
                    timeout=WAIT,
                )
            finally:
                role_stop.set()
                await asyncio.wait_for(role, WAIT)

        [seen] = hook.requests
        assert seen.path == "/alerts"
        assert seen.headers["Idempotency-Key"] == seen.json["key"]
        assert seen.json["fields"]["reason"] == "manual"
        assert seen.json["fields"]["detail"] == "end to end"
        assert seen.json["fields"]["who"] == "operator:tester"
        assert seen.json["fields"]["command_id"] == trip.command_id
        assert seen.json["page"] == "trigger"
    finally:
        processor_stop.set()
        await asyncio.wait_for(processor_task, WAIT)


async def test_an_undelivered_alert_is_delivered_after_a_restart_and_a_delivered_one_is_not(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    log = LogBuilder(registry.state.name)
    state_topic = registry.state.name
    async with loopback(Answer(hang=True)) as hung:
        first = make_notifier(
            kafka_bootstrap,
            registry,
            unique_group,
            [WebhookReceiver(SecretStr(hung.url("/a")), timeout_sec=60.0)],
        )
        async with running(first):
            assert await committed(kafka_bootstrap, unique_group, state_topic) == 0
            log.trip("trip-1", detail="while the webhook hangs")
            await log.write(kafka_bootstrap, state_topic)
            await eventually(lambda: len(hung.requests) == 1, timeout=WAIT)
        # Stopped mid-delivery: nothing settled, nothing committed past the trip.
        assert await committed(kafka_bootstrap, unique_group, state_topic) == 0

    async with loopback(Answer(200, {})) as hook:
        second = make_notifier(
            kafka_bootstrap, registry, unique_group, [WebhookReceiver(SecretStr(hook.url("/b")))]
        )
        async with running(second):
            await eventually(lambda: kinds(hook) == ["trip"], timeout=WAIT)
            await eventually(
                lambda: _is(committed(kafka_bootstrap, unique_group, state_topic), 1),
                timeout=WAIT,
            )
    assert hook.requests[0].json["key"] == hung.requests[0].json["key"]  # same event, same key

    async with loopback(Answer(200, {})) as later:
        third = make_notifier(
            kafka_bootstrap, registry, unique_group, [WebhookReceiver(SecretStr(later.url("/c")))]
        )
        async with running(third):
            log.reset("alice")
            await log.write(kafka_bootstrap, state_topic, start=1)
            await eventually(lambda: kinds(later) == ["reset"], timeout=WAIT)
    assert later.requests[0].json["incident"] == hook.requests[0].json["incident"]


async def test_stalls_flat_venues_and_dead_lettered_commands_are_announced(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    now = datetime.now(UTC)

    def report(outcome: str, **detail: object) -> bytes:
        return encode(
            ActionReport(
                ts=now,
                venue="sim-futures",
                account="demo",
                action="flatten",
                outcome=outcome,
                detail=json.dumps(detail),
                activation_seq=0,
            )
        )

    letter = DeadLetter(
        ts=now,
        source_topic=registry.commands.name,
        partition=0,
        offset=3,
        raw="not a command",
        error="invalid",
    )
    async with loopback(Answer(200, {})) as hook:
        notifier = make_notifier(
            kafka_bootstrap, registry, unique_group, [WebhookReceiver(SecretStr(hook.url("/h")))]
        )
        async with running(notifier):
            await produce(
                kafka_bootstrap,
                registry.actions.name,
                report("started"),
                report("stalled", last_error="close: venue unavailable"),
                report("stalled", last_error="close: venue unavailable"),
                report("verified_flat", elapsed_ms=12000, rounds=7),
            )
            await produce(kafka_bootstrap, registry.deadletter.name, encode(letter))
            await eventually(lambda: len(hook.requests) == 3, timeout=WAIT)
            await eventually(
                lambda: _is(committed(kafka_bootstrap, unique_group, registry.actions.name), 4),
                timeout=WAIT,
            )

    assert sorted(kinds(hook)) == [
        "command_dead_lettered",
        "flatten_stalled",
        "flatten_verified_flat",
    ]
    stalled = next(s.json for s in hook.requests if s.json["kind"] == "flatten_stalled")
    assert stalled["fields"]["why"] == "close: venue unavailable"
    assert stalled["fields"]["venue"] == "sim-futures"


async def test_the_processor_going_and_coming_back_is_announced(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    async with loopback(Answer(200, {})) as hook:
        notifier = make_notifier(
            kafka_bootstrap,
            registry,
            unique_group,
            [WebhookReceiver(SecretStr(hook.url("/h")))],
            processor_gone_after=1.0,
        )
        async with running(notifier):
            async with beating(kafka_bootstrap, registry, interval=0.1):
                await eventually(lambda: notifier.status().checks["command_processor"] == "ok")
            await eventually(lambda: kinds(hook) == ["processor_gone"], timeout=WAIT)
            assert notifier.status().checks["command_processor"] == "gone"
            async with beating(kafka_bootstrap, registry, interval=0.1):
                await eventually(
                    lambda: kinds(hook) == ["processor_gone", "processor_back"], timeout=WAIT
                )

    gone, back = (seen.json for seen in hook.requests)
    assert gone["incident"] == back["incident"]
    assert gone["page"] == "trigger"
    assert back["page"] == "resolve"


async def test_telegram_status_and_trip_from_an_allowed_chat_only(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    token = "777:TELEGRAM-secret"
    log = LogBuilder(registry.state.name)
    log.trip("trip-0", detail="before the bot")
    await log.write(kafka_bootstrap, registry.state.name)
    async with fake_telegram(token) as telegram:
        alerts = TelegramReceiver(SecretStr(token), "-1001", base_url=telegram.base_url)
        commands = TelegramReceiver(
            SecretStr(token), "0", base_url=telegram.base_url, name="telegram-commands"
        )
        notifier = make_notifier(
            kafka_bootstrap,
            registry,
            unique_group,
            [alerts],
            telegram=commands,
            telegram_allowed=frozenset({77}),
            telegram_poll_timeout_sec=1,
            outcome_timeout=0.5,
        )
        async with running(notifier):
            telegram.send(77, "/status")
            await eventually(lambda: telegram.replies(77), timeout=WAIT)
            telegram.send(555, "/trip from a stranger")
            telegram.send(77, "/reset please")
            telegram.send(77, "/trip desk saw a fat finger", username="bob")
            await eventually(lambda: len(telegram.replies(77)) == 4, timeout=WAIT)
            await eventually(lambda: telegram.replies(555), timeout=WAIT)
            # Back on ess.state after the bot's trip? No processor runs here: the trip waits
            # on the command topic, which is what a dead processor would leave too.
            sent = await read_to_end(kafka_bootstrap, registry.commands.name)

    status, refused_reset, trip_sent, verdict = telegram.replies(77)
    assert status.startswith("ESS ACTIVE")
    assert "reason: daily_loss" in status
    assert "detail: before the bot" in status
    assert "signed CLI" in refused_reset
    assert "not allowed" in telegram.replies(555)[0]
    [record] = sent
    command = decode(TripCommand, record.value)
    assert command.reason.value == "manual"
    assert command.detail == "desk saw a fat finger"
    assert command.source == "operator:telegram:bob@77"
    assert trip_sent == (f"Trip sent (command {command.command_id}); waiting for ESS's verdict...")
    assert verdict.startswith(f"No verdict on command {command.command_id} within 0.5s")
    assert telegram.replies(-1001) == []  # the trip before the bot started is history


async def test_a_broken_state_log_alerts_up_to_the_break_then_reports_itself_unhealthy(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    log = LogBuilder(registry.state.name)
    log.trip("trip-1")
    log.reset("alice")
    log.trip("trip-2")
    async with loopback(Answer(200, {})) as hook:
        notifier = make_notifier(
            kafka_bootstrap, registry, unique_group, [WebhookReceiver(SecretStr(hook.url("/h")))]
        )
        async with running(notifier):
            # seq 0, then seq 2: the reset is missing, the log cannot be folded past it.
            await produce(kafka_bootstrap, registry.state.name, log.values[0], log.values[2])
            await eventually(lambda: notifier.status().checks["state_log"] == "corrupt")
            await eventually(lambda: kinds(hook) == ["trip"], timeout=WAIT)
            status = notifier.status()
            text = notifier.status_text()

    assert not status.healthy
    assert status.fault is not None
    assert "does not continue the chain" in status.fault
    assert status.positions["state"] == 1  # the broken record is read again after a restart
    assert text.startswith("ESS state unknown: the state log cannot be folded")


async def test_unreadable_records_are_counted_and_skipped(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    stalled = ActionReport(
        ts=datetime.now(UTC),
        venue="v",
        account="a",
        action="flatten",
        outcome="stalled",
        activation_seq=0,
    )
    async with loopback(Answer(200, {})) as hook:
        notifier = make_notifier(
            kafka_bootstrap, registry, unique_group, [WebhookReceiver(SecretStr(hook.url("/h")))]
        )
        async with running(notifier):
            await produce(kafka_bootstrap, registry.actions.name, b"{not json", encode(stalled))
            await produce(kafka_bootstrap, registry.liveness.name, b'{"kind": "processor_beat"}')
            await eventually(lambda: kinds(hook) == ["flatten_stalled"], timeout=WAIT)
            await eventually(
                lambda: _is(committed(kafka_bootstrap, unique_group, registry.actions.name), 2),
                timeout=WAIT,
            )
            refused = notifier.metrics.registry.get_sample_value
            await eventually(
                lambda: (
                    refused("ess_notify_refused_records_total", {"topic": registry.liveness.name})
                    == 1
                )
            )

    assert refused("ess_notify_refused_records_total", {"topic": registry.actions.name}) == 1

"""Telegram commands: the pure decision per message, and the bot long-polling a loopback Bot
API (the trip itself goes to a hand-written handler here; the broker test sends it for real)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ess.notify.receivers import TelegramReceiver
from ess.notify.telegram import (
    TelegramAction,
    TelegramBot,
    Verb,
    decide_update,
    parse_command,
    trip_command_id,
)
from ess.roles.notify.metrics import NotifyMetrics
from schemas import ReasonCode, TripCommand
from tests.helpers import eventually
from tests.notify.support import FakeTelegram, RecordingSleep, fake_telegram, json_log

ALLOWED = frozenset({-1001, 77})
TOKEN = "4242:BOT-s3cret"


def update(chat_id: int, text: str | None, *, message_id: int = 5, date: int = 1_790_000_000):
    message: dict[str, object] = {
        "message_id": message_id,
        "date": date,
        "chat": {"id": chat_id, "type": "group"},
        "from": {"id": 9, "username": "alice"},
    }
    if text is not None:
        message["text"] = text
    return {"update_id": 1, "message": message}


# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/status", ("/status", "")),
        ("/trip@EssBot  fat finger on BTC ", ("/trip", "fat finger on BTC")),
        ("/TRIP now", ("/trip", "now")),
        ("hello", ("", "hello")),
        ("", ("", "")),
    ],
)
def test_commands_are_parsed_as_telegram_writes_them(text: str, expected: tuple[str, str]) -> None:
    assert parse_command(text) == expected


def test_status_and_trip_from_an_allowed_chat() -> None:
    status = decide_update(update(-1001, "/status"), ALLOWED)
    trip = decide_update(update(77, "/trip desk saw a fat finger"), ALLOWED)

    assert status is not None
    assert status.verb is Verb.STATUS
    assert trip is not None
    assert trip.verb is Verb.TRIP
    assert trip.detail == "desk saw a fat finger"
    assert trip.who == "alice"
    assert trip.date == datetime.fromtimestamp(1_790_000_000, UTC)


@pytest.mark.parametrize("date", [0, -5, 10**12])
def test_a_message_date_outside_what_ess_accepts_is_no_date(date: int) -> None:
    action = decide_update(update(77, "/trip", date=date), ALLOWED)

    assert action is not None
    assert action.date is None  # the notifier stamps the trip with its own clock instead


def test_a_trip_without_detail_says_where_it_came_from() -> None:
    action = decide_update(update(77, "/trip"), ALLOWED)

    assert action is not None
    assert action.detail == "tripped from Telegram"


@pytest.mark.parametrize("text", ["/status", "/trip now", "/reset", "hi"])
def test_everything_from_an_unlisted_chat_is_refused(text: str) -> None:
    action = decide_update(update(555, text), ALLOWED)

    assert action is not None
    assert action.verb is Verb.REFUSE
    assert "chat 555 is not allowed" in action.reply


def test_a_reset_is_refused_with_the_signed_cli() -> None:
    action = decide_update(update(77, "/reset all clear"), ALLOWED)

    assert action is not None
    assert action.verb is Verb.REFUSE
    assert "never reset over Telegram" in action.reply
    assert "ess reset --operator" in action.reply


@pytest.mark.parametrize("text", ["/flatten", "stop it", None])
def test_anything_else_is_refused_with_the_help(text: str | None) -> None:
    action = decide_update(update(77, text), ALLOWED)

    assert action is not None
    assert action.verb is Verb.REFUSE
    assert "/trip <detail>" in action.reply


@pytest.mark.parametrize(
    "bad",
    [
        {"update_id": 1},
        {"update_id": 1, "edited_message": {"chat": {"id": 77}}},
        {"update_id": 1, "message": {"chat": {"id": "77"}, "text": "/trip"}},
        {"update_id": 1, "message": {"text": "/trip"}},
    ],
)
def test_updates_without_a_chat_to_answer_are_ignored(bad: dict[str, object]) -> None:
    assert decide_update(bad, ALLOWED) is None


def test_the_same_message_is_the_same_trip_command() -> None:
    first = decide_update(update(77, "/trip a", message_id=9), ALLOWED)
    again = decide_update(update(77, "/trip a", message_id=9), ALLOWED)
    other = decide_update(update(77, "/trip a", message_id=10), ALLOWED)
    assert first is not None
    assert again is not None
    assert other is not None

    assert trip_command_id(first) == trip_command_id(again)
    assert trip_command_id(first) != trip_command_id(other)


# --------------------------------------------------------------------------- the bot


class Handler:
    """What the notifier does for the bot, recorded."""

    def __init__(self) -> None:
        self.trips: list[TelegramAction] = []
        self.fail_send = False

    def status_text(self) -> str:
        return "ESS INACTIVE\nseq: 3"

    async def send_trip(self, action: TelegramAction) -> TripCommand:
        if self.fail_send:
            raise ConnectionError("broker gone")
        self.trips.append(action)
        return TripCommand(
            command_id=trip_command_id(action),
            reason=ReasonCode.MANUAL,
            detail=action.detail,
            source=f"operator:telegram:{action.who}@{action.chat_id}",
            ts=action.date or datetime.now(UTC),
        )

    async def trip_outcome(self, command: TripCommand) -> str:
        return f"ESS ACTIVE at seq 4 ({command.command_id})"


@contextlib.asynccontextmanager
async def bot_running(
    server: FakeTelegram, handler: Handler, metrics: NotifyMetrics, *, token: str = TOKEN
) -> AsyncIterator[TelegramBot]:
    receiver = TelegramReceiver(SecretStr(token), "0", base_url=server.base_url)
    bot = TelegramBot(
        receiver, ALLOWED, handler, observer=metrics, poll_timeout_sec=1, sleep=RecordingSleep()
    )
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    try:
        yield bot
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await receiver.close()


def count(metrics: NotifyMetrics, command: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "ess_notify_telegram_commands_total", {"command": command, "outcome": outcome}
    )
    return 0.0 if value is None else value


@pytest.mark.integration  # loopback HTTP
async def test_the_bot_answers_status_and_trips_from_an_allowed_chat() -> None:
    handler, metrics = Handler(), NotifyMetrics(CollectorRegistry())
    async with fake_telegram(TOKEN) as server, bot_running(server, handler, metrics):
        server.send(-1001, "/status")
        server.send(77, "/trip fat finger", username="bob")
        await eventually(lambda: len(server.replies(77)) == 2)

    assert server.replies(-1001) == ["ESS INACTIVE\nseq: 3"]
    [action] = handler.trips
    assert (action.chat_id, action.detail, action.who) == (77, "fat finger", "bob")
    command_id = trip_command_id(action)
    assert server.replies(77) == [
        f"Trip sent (command {command_id}); waiting for ESS's verdict...",
        f"ESS ACTIVE at seq 4 ({command_id})",
    ]
    assert count(metrics, "/status", "answered") == 1
    assert count(metrics, "/trip", "sent") == 1


@pytest.mark.integration  # loopback HTTP
async def test_the_bot_refuses_strangers_resets_and_other_text_and_logs_it() -> None:
    handler, metrics = Handler(), NotifyMetrics(CollectorRegistry())
    with json_log() as lines:
        async with fake_telegram(TOKEN) as server, bot_running(server, handler, metrics):
            server.send(555, "/trip let me in")
            server.send(77, "/reset")
            server.send(77, "/hack")
            await eventually(lambda: len(server.replies(77)) == 2 and server.replies(555))

    assert handler.trips == []
    assert "not allowed" in server.replies(555)[0]
    assert "signed CLI" in server.replies(77)[0]
    assert "not a command" in server.replies(77)[1]
    assert count(metrics, "/trip", "refused") == 1
    assert count(metrics, "/reset", "refused") == 1
    assert count(metrics, "other", "refused") == 1  # strangers' words are not metric labels
    refused = [line for line in lines if line["msg"] == "Telegram command refused"]
    assert sorted((line["chat_id"], line["command"]) for line in refused) == [
        (77, "/hack"),
        (77, "/reset"),
        (555, "/trip"),
    ]
    assert not any(TOKEN in str(line) for line in lines)


@pytest.mark.integration  # loopback HTTP
async def test_updates_are_confirmed_only_after_they_were_handled() -> None:
    handler, metrics = Handler(), NotifyMetrics(CollectorRegistry())
    async with fake_telegram(TOKEN) as server, bot_running(server, handler, metrics):
        first = server.send(77, "/status")
        await eventually(lambda: server.replies(77))
        await eventually(lambda: any(p.get("offset") == first + 1 for p in server.polls))
        second = server.send(77, "/status")
        await eventually(lambda: len(server.replies(77)) == 2)
        await eventually(lambda: any(p.get("offset") == second + 1 for p in server.polls))

    assert "offset" not in server.polls[0]  # nothing to confirm yet
    assert all(p["allowed_updates"] == ["message"] for p in server.polls)
    assert all(p["timeout"] == 1 for p in server.polls)


@pytest.mark.integration  # loopback HTTP
async def test_a_trip_that_cannot_be_sent_says_so() -> None:
    handler, metrics = Handler(), NotifyMetrics(CollectorRegistry())
    handler.fail_send = True
    async with fake_telegram(TOKEN) as server, bot_running(server, handler, metrics):
        server.send(77, "/trip now")
        await eventually(lambda: server.replies(77))

    assert server.replies(77) == [
        "Trip NOT sent: the command topic could not be reached. Use `ess trip` now."
    ]
    assert count(metrics, "/trip", "failed") == 1


@pytest.mark.integration  # loopback HTTP
async def test_a_bot_that_cannot_poll_backs_off_and_says_so() -> None:
    handler, metrics = Handler(), NotifyMetrics(CollectorRegistry())
    with json_log() as lines:
        async with (
            fake_telegram(TOKEN) as server,
            bot_running(server, handler, metrics, token="4242:WRONG-token") as bot,
        ):
            await eventually(lambda: bot.failing)
            await eventually(
                lambda: (
                    metrics.registry.get_sample_value("ess_notify_telegram_poll_errors_total") >= 2
                )
            )

    errors = [line for line in lines if line["level"] == "ERROR"]
    assert errors[0]["msg"] == "Telegram getUpdates failed; commands are not being read"
    assert not any("WRONG-token" in str(line) for line in lines)

"""Telegram commands: ``/status`` and ``/trip`` from allow-listed chats, nothing else.

With a bot token and an allow-list of chat ids, the notifier long-polls the Bot API's
``getUpdates`` and answers each message:

* ``/status``: ESS's state as ``ess status`` says it (read from the verified state log);
* ``/trip <detail>``: a ``manual`` trip sent to the command topic exactly as ``ess trip``
  sends it, then the command processor's verdict. Stopping is always safe, so an allow-listed
  chat may do it;
* ``/reset``: refused, always: a reset needs operators' Ed25519 signatures, which a chat
  message cannot carry (reply: use the signed CLI);
* anything else, and anything at all from a chat not on the allow-list: refused with a reply
  and logged.

Which message does what is :func:`decide_update`, a pure function of the update and the
allow-list; :class:`TelegramBot` is the poller around it. A message's update is confirmed to
Telegram (the next ``getUpdates`` offset) only after it was handled, and a trip's command id
and time derive from the message itself (:func:`trip_command_id`), so a message delivered
twice (a crash in between) is the same command, which the processor applies once (also
across a reset: its time is before the reset, a late redelivery).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from loguru import logger

from ess.core import derive_id
from ess.notify.delivery import RetryPolicy
from ess.notify.receivers import DeliveryFailed, HttpRequest, TelegramReceiver
from schemas import TripCommand

#: The jitter's random source (not for secrets; ``secrets`` keeps linters content).
_RANDOM: Final = secrets.SystemRandom()

__all__ = [
    "CommandHandler",
    "TelegramAction",
    "TelegramBot",
    "Verb",
    "decide_update",
    "parse_command",
    "trip_command_id",
]

#: Telegram's own bound on a long poll is 50 s; the HTTP request may take this much longer.
_POLL_SLACK_SEC: Final = 10.0
#: Characters of a /trip detail kept (the command's detail is text of at most 4,096).
_DETAIL_MAX: Final = 1000
#: Message dates (Unix seconds) taken as a trip's time: inside the span ESS accepts for ``ts``.
_EARLIEST: Final = 946_684_800  # 2000-01-01
_LATEST: Final = 4_102_444_800  # 2100-01-01
#: Commands counted under their own name in metrics (anything else is "other").
_KNOWN_COMMANDS: Final = frozenset({"/status", "/trip", "/reset"})
_HELP: Final = (
    "Commands: /status (ESS's state), /trip <detail> (stop trading now). "
    "Resets are never accepted here: use the signed CLI (ess reset --operator ... --key ...)."
)


class Verb(StrEnum):
    """What the bot does with a message."""

    STATUS = "status"
    TRIP = "trip"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class TelegramAction:
    """The decision for one message: what to do, for whom, and the refusal's reply."""

    verb: Verb
    chat_id: int
    message_id: int
    #: When Telegram received the message (``None`` when the update has no usable date).
    date: datetime | None
    who: str
    command: str
    detail: str = ""
    reply: str = ""


def parse_command(text: str) -> tuple[str, str]:
    """``("/trip", "fat finger")`` from ``"/trip@EssBot fat finger"``; ``("", text)`` for a
    message that is not a command."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return "", stripped
    head, _, rest = stripped.partition(" ")
    command = head.split("@", 1)[0].lower()
    return command, rest.strip()


def _who(message: Mapping[str, Any]) -> str:
    sender = message.get("from")
    if not isinstance(sender, Mapping):
        return "unknown"
    for name in ("username", "first_name"):
        value = sender.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()[:64]
    user_id = sender.get("id")
    return str(user_id) if isinstance(user_id, int) else "unknown"


def decide_update(update: Mapping[str, Any], allowed: frozenset[int]) -> TelegramAction | None:
    """What to do with one ``getUpdates`` update; ``None`` when there is nothing to answer
    (not a message, or no chat to answer in)."""
    message = update.get("message")
    if not isinstance(message, Mapping):
        return None
    chat = message.get("chat")
    chat_id = chat.get("id") if isinstance(chat, Mapping) else None
    if not isinstance(chat_id, int) or isinstance(chat_id, bool):
        return None
    message_id = message.get("message_id")
    raw_date = message.get("date")
    date = (
        datetime.fromtimestamp(raw_date, UTC)
        if isinstance(raw_date, int)
        and not isinstance(raw_date, bool)
        and _EARLIEST <= raw_date < _LATEST
        else None
    )
    text = message.get("text")
    command, rest = parse_command(text if isinstance(text, str) else "")
    base = TelegramAction(
        Verb.REFUSE,
        chat_id=chat_id,
        message_id=message_id if isinstance(message_id, int) else 0,
        date=date,
        who=_who(message),
        command=command,
    )
    if chat_id not in allowed:
        return replace(base, reply=f"Refused: chat {chat_id} is not allowed to command ESS.")
    if command == "/status":
        return replace(base, verb=Verb.STATUS)
    if command == "/trip":
        return replace(base, verb=Verb.TRIP, detail=rest[:_DETAIL_MAX] or "tripped from Telegram")
    if command == "/reset":
        return replace(
            base,
            reply=(
                "Refused: ESS is never reset over Telegram. A reset needs operators' signatures: "
                "use the signed CLI (ess reset --operator NAME --key KEYFILE --detail ...)."
            ),
        )
    what = command or "that message"
    return replace(base, reply=f"Refused: {what} is not a command. {_HELP}")


def trip_command_id(action: TelegramAction) -> str:
    """The trip's command id, from the chat and message: the same message is the same trip."""
    when = action.date.isoformat() if action.date is not None else ""
    return derive_id("telegram-trip", action.chat_id, action.message_id, when)


class CommandHandler(Protocol):
    """What the bot asks of the notifier (which knows the state log and the command topic)."""

    def status_text(self) -> str:
        """ESS's state, as ``ess status`` says it."""
        ...

    async def send_trip(self, action: TelegramAction) -> TripCommand:
        """Send the manual trip for ``action`` to the command topic; returns it once the
        broker acknowledged it (raises when it could not be sent)."""
        ...

    async def trip_outcome(self, command: TripCommand) -> str:
        """Wait for the command processor's verdict on ``command``; the reply to send."""
        ...


class CommandObserver(Protocol):
    """Counts the bot's answers (``ess_notify_telegram_commands_total``)."""

    def command(self, command: str, outcome: str) -> None: ...

    def poll_failed(self) -> None: ...


class TelegramBot:
    """Long-polls ``getUpdates`` and answers every message (see the module docstring).

    ``poll_timeout_sec`` is Telegram's long-poll wait (0: short polling, tests); failures to
    poll are retried with ``policy``'s backoff forever (the bot is an extra, never a reason
    for the notifier to stop), logged at ERROR on the first failure of a streak and then every
    tenth, and shown by :attr:`failing`.
    """

    def __init__(
        self,
        receiver: TelegramReceiver,
        allowed: frozenset[int],
        handler: CommandHandler,
        *,
        observer: CommandObserver,
        poll_timeout_sec: float = 30.0,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        draw: Callable[[], float] = _RANDOM.random,
    ) -> None:
        if not allowed:
            raise ValueError("Telegram commands need an allow-list of chat ids")
        self.receiver = receiver
        self.allowed = allowed
        self.handler = handler
        self.observer = observer
        self.poll_timeout_sec = max(0.0, poll_timeout_sec)
        self.policy = policy or RetryPolicy(attempts=1, initial_sec=1.0, max_sec=60.0)
        self._sleep = sleep
        self._draw = draw
        self._offset: int | None = None
        self._failures = 0
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def failing(self) -> bool:
        """The last poll failed."""
        return self._failures > 0

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and answer until ``stop`` (a poll or backoff in progress is cancelled: its
        updates were not confirmed, so Telegram hands them out again); outcome waits still
        running are cancelled too."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                cycle = asyncio.ensure_future(self._cycle())
                await asyncio.wait({cycle, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not cycle.done():
                    cycle.cancel()
                    await asyncio.gather(cycle, return_exceptions=True)
                    break
                cycle.result()  # a defect in the bot surfaces to the role
        finally:
            stopping.cancel()
            for task in list(self._pending):
                task.cancel()
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _cycle(self) -> None:
        wait = await self.poll_once()
        if wait > 0:
            await self._sleep(wait)

    async def poll_once(self) -> float:
        """One ``getUpdates`` and the answers to what it brought. Returns how long to back
        off before the next poll (0 after a poll that worked)."""
        body: dict[str, Any] = {"timeout": int(self.poll_timeout_sec)}
        body["allowed_updates"] = ["message"]
        if self._offset is not None:
            body["offset"] = self._offset
        request = HttpRequest(url=self.receiver.method_url("getUpdates"), json=body)
        try:
            answer = await self.receiver.send(
                request, timeout_sec=self.poll_timeout_sec + _POLL_SLACK_SEC
            )
            updates = _updates(answer)
        except DeliveryFailed as exc:
            return self._poll_failed(str(exc))
        if self._failures:
            logger.bind(failures=self._failures).info("Telegram getUpdates works again")
            self._failures = 0
        for update in updates:
            update_id = update.get("update_id")
            if not isinstance(update_id, int):
                continue
            try:
                await self.handle(update)
            except Exception:
                # Confirmed anyway: an update that always fails must not be handed out (and
                # fail) forever, holding back every message behind it.
                self.observer.command("other", "failed")
                logger.bind(update_id=update_id).opt(exception=True).error(
                    "Telegram update could not be handled"
                )
            self._offset = max(self._offset or 0, update_id + 1)
        return 0.0

    def _poll_failed(self, why: str) -> float:
        self._failures += 1
        self.observer.poll_failed()
        log = logger.bind(failures=self._failures, error=why)
        if self._failures % 10 == 1:
            log.error("Telegram getUpdates failed; commands are not being read")
        else:
            log.debug("Telegram getUpdates failed again")
        return self.policy.delay(min(self._failures, 30), self._draw())

    async def handle(self, update: Mapping[str, Any]) -> None:
        """Answer one update (the reply is best effort: a failed reply is logged)."""
        action = decide_update(update, self.allowed)
        if action is None:
            return
        log = logger.bind(
            chat_id=action.chat_id, who=action.who, command=action.command or "(text)"
        )
        if action.verb is Verb.REFUSE:
            # A bounded label: whatever a stranger types must not grow the metric's series.
            label = action.command if action.command in _KNOWN_COMMANDS else "other"
            self.observer.command(label, "refused")
            log.warning("Telegram command refused")
            await self.reply(action.chat_id, action.reply)
            return
        if action.verb is Verb.STATUS:
            self.observer.command("/status", "answered")
            log.info("Telegram /status answered")
            await self.reply(action.chat_id, self.handler.status_text())
            return
        try:
            command = await self.handler.send_trip(action)
        except Exception as exc:
            self.observer.command("/trip", "failed")
            log.bind(error=f"{type(exc).__name__}: {exc}").error(
                "Telegram /trip could not be sent to the command topic"
            )
            await self.reply(
                action.chat_id,
                "Trip NOT sent: the command topic could not be reached. Use `ess trip` now.",
            )
            return
        self.observer.command("/trip", "sent")
        log.bind(command_id=command.command_id, detail=command.detail).critical(
            "Telegram /trip sent to the command topic"
        )
        await self.reply(
            action.chat_id,
            f"Trip sent (command {command.command_id}); waiting for ESS's verdict...",
        )
        task = asyncio.create_task(self._verdict(action.chat_id, command))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _verdict(self, chat_id: int, command: TripCommand) -> None:
        try:
            text = await self.handler.trip_outcome(command)
        except Exception as exc:
            text = f"No verdict for command {command.command_id} yet ({type(exc).__name__})."
        await self.reply(chat_id, text)

    async def reply(self, chat_id: int, text: str) -> None:
        """Send ``text`` to ``chat_id`` once; a failure is logged, not raised."""
        try:
            await self.receiver.send(self.receiver.message(chat_id, text))
        except DeliveryFailed as exc:
            logger.bind(chat_id=chat_id, error=str(exc)).warning("Telegram reply not sent")


def _updates(answer: Any) -> list[Mapping[str, Any]]:
    """The updates of a ``getUpdates`` answer; an answer of another shape is a failure."""
    if not isinstance(answer, Mapping) or answer.get("ok") is not True:
        raise DeliveryFailed("getUpdates answered without ok", transient=True)
    result = answer.get("result")
    if not isinstance(result, list):
        raise DeliveryFailed("getUpdates answered without a result list", transient=True)
    return [item for item in result if isinstance(item, Mapping)]

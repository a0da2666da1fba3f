"""Loopback HTTP servers standing in for Slack, Telegram, PagerDuty and a webhook, and the
small fakes the notifier's tests share (a sleep that records, a captured JSON log)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from loguru import logger

from ess.notify.alerts import Alert
from ess.observability.logging import configure_logging


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any


@dataclass(frozen=True)
class Answer:
    """What the server answers to one request; ``hang`` never answers (until the server
    stops), which the client sees as a timeout."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class Loopback:
    """An aiohttp server on 127.0.0.1 that records every request and answers from a script
    (``then``), or with ``default`` once the script is used up."""

    def __init__(self, default: Answer | None = None) -> None:
        self.requests: list[Seen] = []
        self.default = default or Answer()
        self._script: deque[Answer] = deque()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def then(self, *answers: Answer) -> Loopback:
        self._script.extend(answers)
        return self

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        return [seen.path for seen in self.requests]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Seen(
                request.method,
                request.path_qs,
                dict(request.headers),
                json.loads(body) if body else None,
            )
        )
        answer = self._script.popleft() if self._script else self.default
        if answer.hang:
            await self._released.wait()
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def loopback(default: Answer | None = None) -> AsyncIterator[Loopback]:
    server = Loopback(default)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class FakeTelegram:
    """The two Bot API methods the notifier uses: ``sendMessage`` (recorded) and
    ``getUpdates`` (long-polls the updates queued with :meth:`send`, honouring ``offset``)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.sent: list[dict[str, Any]] = []
        self.polls: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._next_id = 100
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, chat_id: int, text: str, *, username: str = "alice", date: int = 0) -> int:
        """Queue a message from a user in ``chat_id``; returns its update id."""
        self._next_id += 1
        self._updates.append(
            {
                "update_id": self._next_id,
                "message": {
                    "message_id": self._next_id * 10,
                    "date": date or 1_790_000_000 + self._next_id,
                    "chat": {"id": chat_id, "type": "group"},
                    "from": {"id": 42, "username": username},
                    "text": text,
                },
            }
        )
        self._arrived.set()
        return self._next_id

    def replies(self, chat_id: int) -> list[str]:
        return [m["text"] for m in self.sent if m["chat_id"] == chat_id]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token, _, method = request.match_info["tail"].partition("/")
        if token != f"bot{self.token}":
            return web.json_response({"ok": False, "description": "Unauthorized"}, status=401)
        body = await request.json()
        if method == "sendMessage":
            self.sent.append(body)
            return web.json_response({"ok": True, "result": {"message_id": len(self.sent)}})
        if method == "getUpdates":
            self.polls.append(body)
            offset = body.get("offset", 0)
            pending = [u for u in self._updates if u["update_id"] >= offset]
            if not pending and body.get("timeout", 0) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), body["timeout"])
                pending = [u for u in self._updates if u["update_id"] >= offset]
            return web.json_response({"ok": True, "result": pending})
        return web.json_response({"ok": False, "description": "Not Found"}, status=404)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._arrived.set()
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def fake_telegram(token: str) -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(token)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class RecordingSleep:
    """Stands in for ``asyncio.sleep``: records what it was asked to wait, waits nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@contextlib.contextmanager
def json_log(level: str = "DEBUG") -> Iterator[list[dict[str, Any]]]:
    """The log lines written while the block runs, as the production JSON sink (with its
    redaction) writes them."""
    sink = io.StringIO()
    lines: list[dict[str, Any]] = []
    configure_logging(level, json=True, sink=sink)
    logger.enable("ess")  # importing ess silences its logs (a library's convention)
    try:
        yield lines
    finally:
        logger.disable("ess")
        lines.extend(json.loads(line) for line in sink.getvalue().splitlines())
        configure_logging("WARNING", json=False)


def keys(alerts: list[Alert] | tuple[Alert, ...]) -> list[str]:
    return [alert.key for alert in alerts]

"""ESS's status over HTTP: ``GET /status`` (JSON), ``GET /metrics`` (Prometheus text) and
``GET /healthz`` (liveness/readiness of the projector).

Two different "health" notions meet here; keeping them apart is the point of this module:

* ``health`` (``HEALTHY``/``DEGRADED``/``CRITICAL``) is ESS's signal *to the trading system*,
  the same status as ESS's health beat: it is ``CRITICAL`` while ESS is ACTIVE, because
  trading is stopped.
* ``healthy`` (and ``/healthz``) says whether the projector is doing its job: following a
  trustworthy log and keeping the PolicyStore record fresh. An ACTIVE ESS with a working
  projector is ``healthy``; an orchestrator that restarted the projector because ESS is
  ACTIVE would only blind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = [
    "ProjectorStatus",
    "StatusServer",
    "StatusSnapshot",
    "StatusSource",
    "serve_status",
    "status_app",
]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class ProjectorStatus:
    """A snapshot of what the projector knows, as served by ``GET /status``.

    ``since`` is when the current status began (the activation, or the last reset; ``None``
    for a log that never changed state). ``seq`` is the last applied entry's, ``log_offset``
    the next ``ess.state`` offset to apply and ``lag`` how many records on the broker are not
    applied yet. ``last_refresh`` is the ``refreshed_at`` of the last successful PolicyStore
    write. ``fault`` explains why the projector stopped trusting the log (``None`` if it
    trusts it).
    """

    status: str
    reason: str | None
    detail: str
    since: datetime | None
    seq: int | None
    epoch: int
    trips_recorded: int
    pending_approvals: int
    last_refresh: datetime | None
    log_offset: int
    lag: int
    caught_up: bool
    healthy: bool
    health: str
    checks: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    events_published_seq: int | None = None
    events_pending: int = 0
    beats_sent: int = 0

    def as_json(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps ISO-8601)."""
        return {
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "since": _iso(self.since),
            "seq": self.seq,
            "epoch": self.epoch,
            "trips_recorded": self.trips_recorded,
            "pending_approvals": self.pending_approvals,
            "last_refresh": _iso(self.last_refresh),
            "log_offset": self.log_offset,
            "lag": self.lag,
            "caught_up": self.caught_up,
            "healthy": self.healthy,
            "health": self.health,
            "checks": dict(self.checks),
            "fault": self.fault,
            "events_published_seq": self.events_published_seq,
            "events_pending": self.events_pending,
            "beats_sent": self.beats_sent,
        }


class StatusSnapshot(Protocol):
    """What a status page serves: a JSON view, and whether the process is doing its job."""

    @property
    def healthy(self) -> bool: ...

    @property
    def checks(self) -> Mapping[str, str]: ...

    def as_json(self) -> dict[str, Any]: ...


class StatusSource(Protocol):
    """Anything that can produce a status snapshot (the projector and the executor do)."""

    def status(self) -> StatusSnapshot: ...


def status_app(source: StatusSource, registry: CollectorRegistry) -> web.Application:
    """The aiohttp application. Handlers only read snapshots: they never block on I/O, so a
    hung PolicyStore or broker cannot make the status page hang too."""

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(source.status().as_json())

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def get_healthz(_: web.Request) -> web.Response:
        snapshot = source.status()
        body = {"healthy": snapshot.healthy, "checks": dict(snapshot.checks)}
        return web.json_response(body, status=200 if snapshot.healthy else 503)

    app = web.Application()
    app.router.add_get("/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_healthz)
    return app


@dataclass(slots=True)
class StatusServer:
    """A running status server. ``port`` is the bound port (the real one when asked for 0)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Stop serving and release the port. Safe to call twice."""
        await self.runner.cleanup()


async def serve_status(
    source: StatusSource,
    registry: CollectorRegistry,
    host: str = "127.0.0.1",
    port: int = 0,
) -> StatusServer:
    """Start serving :func:`status_app` on ``host:port`` and return the running server.

    ``port=0`` binds a free port (tests); read it from the returned ``StatusServer.port``.
    Loopback by default: the status page is unauthenticated and says whether trading is
    stopped, so exposing it wider is a deployment decision, not a default.
    """
    runner = web.AppRunner(status_app(source, registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    logger.bind(host=host, port=bound).info("status server listening")
    return StatusServer(runner=runner, host=host, port=bound)

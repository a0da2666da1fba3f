"""A component's heartbeat with a lifecycle: running, planned maintenance, retired.

ESS's ``heartbeat_lost`` rule stops trading when a component it has heard from falls silent
for longer than its timeout (15 s by default, three missed 5 s beats): silence is how a hung or
crashed bot looks. A bot that goes quiet *on purpose* says so first, with the ``lifecycle``
field of its last beat:

* ``running`` (the default): the component is up; beats every ``interval`` seconds;
* ``maintenance`` with ``maintenance_until``: it will be silent until then (a planned restart,
  a deployment); ESS does not count it lost before that time, and expects beats again after;
* ``retired``: the last beat before it stops for good; ESS stops expecting it.

A component that stops beating without saying either is still lost, which is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Self

from loguru import logger

from ess.client.errors import PublishError
from schemas import ComponentLifecycle, HealthBeat, HealthStatus, RecordError

if TYPE_CHECKING:
    from ess.client.publisher import AsyncEssPublisher

__all__ = ["Heartbeat"]


class Heartbeat:
    """Beats for ``component`` every ``interval`` seconds while started (asyncio).

    :meth:`start` sends the first beat at once and waits for the broker to confirm it (so a
    bot that cannot reach ESS learns it at start, not 15 s later from a tripped ESS), then
    beats in a background task. A beat that fails is counted (:attr:`failures`,
    :attr:`last_error`) and logged, and beating goes on. :meth:`maintenance` and
    :meth:`retire` stop the beats and send the announcement; :meth:`stop` stops without one
    (ESS will count the component lost once its timeout passes). ``async with`` starts and
    stops.
    """

    def __init__(
        self,
        publisher: AsyncEssPublisher,
        component: str,
        *,
        interval: float = 5.0,
        status: HealthStatus | str = HealthStatus.HEALTHY,
        checks: Mapping[str, str] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.publisher = publisher
        self.component = component
        self.interval = float(interval)
        self.status = HealthStatus(status)
        self.checks: dict[str, str] = dict(checks or {})
        #: The lifecycle this component last announced (``None``: no beat sent yet).
        self.lifecycle: ComponentLifecycle | None = None
        #: Beats confirmed and beats that failed, and the last failure.
        self.beats = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._log = logger.bind(component=component)

    @property
    def running(self) -> bool:
        """Whether the background beats are going."""
        return self._task is not None and not self._task.done()

    def set_status(
        self, status: HealthStatus | str, checks: Mapping[str, str] | None = None
    ) -> None:
        """What the next beats report. ``CRITICAL`` makes ESS stop trading (``system_critical``);
        ``checks`` replaces the previous checks when given."""
        self.status = HealthStatus(status)
        if checks is not None:
            self.checks = dict(checks)

    async def beat(self) -> HealthBeat:
        """Send one ``running`` beat now and wait for the broker to confirm it."""
        return await self._send()

    async def start(self) -> None:
        """Send a first beat (raises :class:`PublishError` if it is not confirmed), then beat
        every ``interval`` seconds in the background. Idempotent; after :meth:`maintenance`
        or :meth:`retire` it starts beating again (the component is back)."""
        if self.running:
            return
        await self.beat()
        self._task = asyncio.create_task(
            self._beat_forever(), name=f"ess-heartbeat-{self.component}"
        )
        self._log.bind(interval=self.interval).info("heartbeat started")

    async def stop(self) -> None:
        """Stop beating without an announcement (as if the component had vanished)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def maintenance(self, until: datetime) -> HealthBeat:
        """Stop beating and announce planned maintenance until ``until`` (aware, in the
        future): ESS does not count the component lost before then. Start again when back."""
        if until.tzinfo is None:
            raise ValueError("maintenance until must be timezone-aware")
        now = self.publisher.clock.now()
        if until <= now:
            raise ValueError(f"maintenance until {until.isoformat()} is not after now ({now})")
        await self.stop()
        return await self._send(ComponentLifecycle.MAINTENANCE, until)

    async def retire(self) -> HealthBeat:
        """Stop beating and send the last beat, ``retired``: ESS stops expecting this
        component. Call it when the bot stops for good."""
        await self.stop()
        return await self._send(ComponentLifecycle.RETIRED)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _send(
        self,
        lifecycle: ComponentLifecycle = ComponentLifecycle.RUNNING,
        until: datetime | None = None,
    ) -> HealthBeat:
        try:
            record = await self.publisher.health_beat(
                component=self.component,
                status=self.status,
                checks=self.checks,
                lifecycle=lifecycle,
                maintenance_until=until,
                wait=True,
            )
        except (PublishError, RecordError) as exc:
            self.failures += 1
            self.last_error = exc
            raise
        self.beats += 1
        self.lifecycle = lifecycle
        return record

    async def _beat_forever(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                await self._send()
            except (PublishError, RecordError) as exc:
                self._log.bind(error=str(exc), failures=self.failures).warning(
                    "heartbeat not delivered"
                )
            except Exception as exc:  # a bug must not end the beats silently
                self.failures += 1
                self.last_error = exc
                self._log.exception("heartbeat crashed; beating on")
            # After a stall (a slow broker), beat again one interval from now, not in a burst.
            due = max(due, loop.time() - self.interval)

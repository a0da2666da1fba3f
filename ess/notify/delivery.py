"""Delivery: every alert to every receiver, at least once, each receiver on its own.

* **One lane per receiver.** Each receiver has its own queue and worker, delivering in the
  order alerts were submitted (a trip before its reset), so a slow or dead receiver delays
  only itself: Slack being down never holds back PagerDuty.
* **Retries** with exponential backoff and jitter (:class:`RetryPolicy`), at most
  ``attempts`` tries per alert and receiver, honouring a service's ``Retry-After``. Only
  transient failures are retried (:class:`~ess.notify.receivers.DeliveryFailed`); a permanent
  one (a revoked webhook, a bad token) is given up at once.
* **Loud when given up**: an ERROR log line (receiver, alert kind and key, the scrubbed
  error), the ``failed`` count of the observer (``ess_notify_failures_total``) and the
  receiver's health flag down (``ess_notify_receiver_up`` 0, ``failing`` in ``/status``)
  until it delivers again.
* **Dedupe**: a bounded in-process set of ``(receiver, key)`` already delivered; the same
  event submitted again (a follower that re-read a record, a source read twice) is not sent
  twice by this process. Across restarts the receivers deduplicate by key.
* **Settlement**: each submission calls ``on_settled`` once per receiver when that receiver
  is done with it (delivered, a duplicate, or given up). The notifier commits a record's
  position only when all its deliveries settled (:mod:`ess.notify.progress`): a stop or a
  crash before that makes the next run deliver it again rather than lose it.

Time is injected (``sleep``, ``draw`` for the jitter), so tests run the backoff without
waiting and see exactly what it waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from loguru import logger

from ess.notify.alerts import Alert
from ess.notify.receivers import DeliveryFailed, Receiver

#: The jitter's random source (not for secrets; ``secrets`` keeps linters content).
_RANDOM: Final = secrets.SystemRandom()

__all__ = ["DeliveryObserver", "Dispatcher", "RetryPolicy"]

#: ``(receiver, key)`` pairs remembered as delivered: a day of alerts many times over.
DEFAULT_REMEMBERED: Final = 10_000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one alert is tried on one receiver.

    ``attempts`` counts every try, the first included. After the n-th failure the wait is
    ``min(max_sec, initial_sec * 2**(n-1))``, half of it fixed and half drawn at random
    ("equal jitter": retries of many alerts spread out, yet never come back at once), and at
    least what the service asked for with ``Retry-After`` (capped at ``max_sec``: bounded).
    """

    attempts: int = 8
    initial_sec: float = 1.0
    max_sec: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_sec <= 0 or self.max_sec < self.initial_sec:
            raise ValueError("need 0 < initial_sec <= max_sec")

    def delay(self, failures: int, draw: float, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed try (``draw`` in [0, 1))."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        ceiling = min(self.max_sec, self.initial_sec * 2.0 ** (failures - 1))
        wait = ceiling / 2 + ceiling / 2 * min(max(draw, 0.0), 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_sec))
        return wait


class DeliveryObserver(Protocol):
    """What delivery reports (Prometheus metrics in the role: :mod:`ess.roles.notify.metrics`)."""

    def delivered(self, receiver: str, alert: Alert) -> None: ...

    def duplicate(self, receiver: str, alert: Alert) -> None: ...

    def retried(self, receiver: str, alert: Alert) -> None: ...

    def failed(self, receiver: str, alert: Alert, *, permanent: bool) -> None: ...

    def receiver_up(self, receiver: str, up: bool) -> None: ...


class _Remembered:
    """A bounded set: the oldest entries are forgotten first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __contains__(self, item: tuple[str, str]) -> bool:
        return item in self._items

    def add(self, item: tuple[str, str]) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


@dataclass(slots=True)
class _Job:
    alert: Alert
    on_settled: Callable[[], None] | None


@dataclass(slots=True)
class _Lane:
    receiver: Receiver
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    failing: bool = False
    last_error: str | None = None
    delivered: int = 0
    given_up: int = 0


class Dispatcher:
    """Delivers submitted alerts to every receiver (see the module docstring).

    ``receivers`` must have distinct names. ``sleep`` waits between tries (default
    :func:`asyncio.sleep`), ``draw`` gives the jitter's random number in [0, 1) (default: the
    system's random source). :meth:`start` starts one worker per receiver; :meth:`aclose`
    stops them (deliveries in progress are abandoned, unsettled) and closes the receivers.
    """

    def __init__(
        self,
        receivers: Sequence[Receiver],
        *,
        policy: RetryPolicy,
        observer: DeliveryObserver,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        draw: Callable[[], float] = _RANDOM.random,
        remembered: int = DEFAULT_REMEMBERED,
    ) -> None:
        names = [receiver.name for receiver in receivers]
        if len(names) != len(set(names)):
            raise ValueError(f"receiver names must be distinct: {names}")
        self.policy = policy
        self._observer = observer
        self._sleep = sleep
        self._draw = draw
        self._lanes = {receiver.name: _Lane(receiver) for receiver in receivers}
        self._delivered = _Remembered(remembered)
        self._workers: list[asyncio.Task[None]] = []
        for name in self._lanes:
            observer.receiver_up(name, True)

    @property
    def receivers(self) -> tuple[str, ...]:
        return tuple(self._lanes)

    def submit(self, alert: Alert, on_settled: Callable[[], None] | None = None) -> int:
        """Queue ``alert`` for every receiver that accepts it; returns how many deliveries
        that is. ``on_settled`` is called once per delivery when it is settled, never from
        within this call (so the caller can count first)."""
        count = 0
        for lane in self._lanes.values():
            if lane.receiver.accepts(alert):
                lane.queue.put_nowait(_Job(alert, on_settled))
                count += 1
        return count

    def health(self) -> dict[str, str]:
        """Each receiver's flag: ``ok``, or ``failing`` since an alert was given up."""
        return {name: "failing" if lane.failing else "ok" for name, lane in self._lanes.items()}

    def details(self) -> dict[str, dict[str, object]]:
        """Per receiver: flag, queued alerts, delivered and given-up counts, last error."""
        return {
            name: {
                "health": "failing" if lane.failing else "ok",
                "queued": lane.queue.qsize(),
                "delivered": lane.delivered,
                "given_up": lane.given_up,
                "last_error": lane.last_error,
            }
            for name, lane in self._lanes.items()
        }

    def start(self) -> None:
        """Start one worker per receiver (in the running loop)."""
        if self._workers:
            return
        self._workers = [
            asyncio.create_task(self._work(lane), name=f"ess-notify-{name}")
            for name, lane in self._lanes.items()
        ]

    async def drained(self) -> None:
        """Return once every queue is empty and nothing is being delivered."""
        await asyncio.gather(*(lane.queue.join() for lane in self._lanes.values()))

    async def aclose(self) -> None:
        """Stop the workers (a delivery in progress stays unsettled) and close receivers."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for lane in self._lanes.values():
            try:
                await lane.receiver.close()
            except Exception as exc:  # closing is best effort; the process is going away
                logger.bind(receiver=lane.receiver.name, error=type(exc).__name__).warning(
                    "receiver did not close cleanly"
                )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Dispatcher]:
        """``start`` on entry, ``aclose`` on exit."""
        self.start()
        try:
            yield self
        finally:
            await self.aclose()

    async def _work(self, lane: _Lane) -> None:
        while True:
            job = await lane.queue.get()
            try:
                await self._deliver(lane, job.alert)
                if job.on_settled is not None:
                    try:
                        job.on_settled()
                    except Exception:
                        logger.bind(receiver=lane.receiver.name).opt(exception=True).error(
                            "settling a delivery failed"
                        )
            finally:
                lane.queue.task_done()

    async def _deliver(self, lane: _Lane, alert: Alert) -> None:
        """Try ``alert`` on the lane's receiver until delivered, permanent, or out of tries."""
        name = lane.receiver.name
        log = logger.bind(receiver=name, kind=alert.kind.value, key=alert.key)
        if (name, alert.key) in self._delivered:
            self._observer.duplicate(name, alert)
            log.debug("alert already delivered by this process; not sent again")
            return
        failures = 0
        while True:
            try:
                await lane.receiver.deliver(alert)
            except Exception as caught:
                # Anything but DeliveryFailed is a defect of the receiver: not retried, and
                # only its type is shown (its text might quote a secret URL).
                exc = (
                    caught
                    if isinstance(caught, DeliveryFailed)
                    else DeliveryFailed(f"unexpected {type(caught).__name__}", transient=False)
                )
                failures += 1
                lane.last_error = str(exc)
                if not exc.transient or failures >= self.policy.attempts:
                    self._give_up(lane, alert, exc, failures)
                    return
                wait = self.policy.delay(failures, self._draw(), exc.retry_after)
                self._observer.retried(name, alert)
                log.bind(attempt=failures, error=str(exc), retry_in_sec=round(wait, 3)).warning(
                    "alert delivery failed; retrying"
                )
                await self._sleep(wait)
                continue
            self._delivered.add((name, alert.key))
            lane.delivered += 1
            self._observer.delivered(name, alert)
            if lane.failing:
                lane.failing = False
                self._observer.receiver_up(name, True)
                log.info("receiver delivers again")
            log.bind(attempts=failures + 1, severity=alert.severity.value).info("alert delivered")
            return

    def _give_up(self, lane: _Lane, alert: Alert, exc: DeliveryFailed, tries: int) -> None:
        name = lane.receiver.name
        lane.given_up += 1
        lane.failing = True
        self._observer.failed(name, alert, permanent=not exc.transient)
        self._observer.receiver_up(name, False)
        logger.bind(
            receiver=name,
            kind=alert.kind.value,
            key=alert.key,
            title=alert.title,
            attempts=tries,
            permanent=not exc.transient,
            error=str(exc),
        ).error(f"alert NOT delivered to {name}: giving up")

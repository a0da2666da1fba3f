"""The blocking publisher, for bots that do not run asyncio.

:class:`EssPublisher` owns one background thread running an asyncio loop, and an
:class:`~ess.client.AsyncEssPublisher` inside it; every method hands its work to that loop
and blocks until it is done (bounded: the async side's timeouts plus a margin). Records are
validated in the calling thread, so a bad field raises where it was written. It is safe to
call from several threads. Heartbeats and gates made from it run on the same loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Final, Self, TypeVar

from loguru import logger
from pydantic import BaseModel

from ess.api.protocols import PolicyStore
from ess.client.errors import PublishError
from ess.client.gating import connect_gate
from ess.client.heartbeat import Heartbeat
from ess.client.publisher import DEFAULT_LINGER_MS, DEFAULT_MAX_BATCH_BYTES, AsyncEssPublisher
from ess.client.records import OutgoingRecord, build_record, method_fields
from ess.clock import Clock
from ess.gate import TradingGate
from ess.kafka.clients import KafkaSecurity
from schemas import (
    ComponentLifecycle,
    Fill,
    HealthBeat,
    HealthStatus,
    LatencySample,
    MarketTick,
    OrderError,
    OrderErrorKind,
    OrderSubmitted,
    PnlTick,
    SecurityEvent,
    SecurityEventKind,
    Side,
)

__all__ = ["EssPublisher", "SyncHeartbeat"]

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

#: Added to the async side's own bound before a blocking call gives up on the loop thread.
_MARGIN_S: Final = 5.0
#: Bound on starting a gate feed (its first read is bounded by the feed's read timeout).
_GATE_START_S: Final = 10.0


class EssPublisher:
    """Blocking twin of :class:`~ess.client.AsyncEssPublisher`; same arguments, same
    methods (without ``await``), used as ``with EssPublisher(...) as ess:``."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_prefix: str = "ess",
        topics: Mapping[str, str] | None = None,
        security: KafkaSecurity | None = None,
        client_id: str = "ess-client",
        linger_ms: int = DEFAULT_LINGER_MS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        connect_timeout: float = 10.0,
        send_timeout: float = 30.0,
        clock: Clock | None = None,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        #: The asyncio publisher doing the work, on this object's loop thread.
        self.inner = AsyncEssPublisher(
            bootstrap_servers,
            topic_prefix=topic_prefix,
            topics=topics,
            security=security,
            client_id=client_id,
            linger_ms=linger_ms,
            max_batch_bytes=max_batch_bytes,
            connect_timeout=connect_timeout,
            send_timeout=send_timeout,
            clock=clock,
            producer_options=producer_options,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: What :meth:`close` stops before the publisher (gate feeds; the publisher stops its
        #: own heartbeats).
        self._closers: list[Callable[[], Coroutine[Any, Any, Any]]] = []

    @property
    def clock(self) -> Clock:
        """Where ``ts`` comes from when a record gives none."""
        return self.inner.clock

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the loop thread and connect; raises :class:`BrokerUnreachable` within
        ``connect_timeout``. Idempotent."""
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="ess-publisher", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        try:
            self._call(self.inner.start(), self.inner.connect_timeout)
        except BaseException:
            self._end_loop()
            raise

    def close(self) -> None:
        """Stop gate feeds and heartbeats (without announcement), deliver what is pending,
        disconnect and end the loop thread. Raises :class:`PublishError` if records were not
        delivered."""
        if self._loop is None:
            return
        try:
            closers, self._closers = self._closers, []
            for closer in reversed(closers):
                try:
                    self._call(closer(), _GATE_START_S)
                except Exception as exc:  # the publisher must still be stopped
                    logger.bind(error=repr(exc)).warning("ESS publisher: a helper did not stop")
            self._call(self.inner.stop(), 2 * self.inner.send_timeout + _MARGIN_S)
        finally:
            self._end_loop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _end_loop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_MARGIN_S)
        if thread.is_alive():  # pragma: no cover - a task blocking the loop thread
            logger.error("ESS publisher loop thread did not end; left behind")
            return
        loop.close()

    def _call(self, work: Coroutine[Any, Any, T], bound: float) -> T:
        """Run ``work`` on the loop thread and wait at most ``bound`` + a margin."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            work.close()
            raise PublishError("the ESS publisher is not started (use `with` or start())")
        if threading.current_thread() is thread:
            work.close()
            raise RuntimeError("blocking EssPublisher call from its own loop thread (deadlock)")
        future = asyncio.run_coroutine_threadsafe(work, loop)
        try:
            return future.result(bound + _MARGIN_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishError(f"ESS publisher call did not finish within {bound:g} s") from None

    # ------------------------------------------------------------------ sending

    def prepare(self, record: BaseModel) -> OutgoingRecord:
        """Topic, key and value bytes for ``record``, without sending."""
        return self.inner.prepare(record)

    def build(self, model: type[R], **fields: Any) -> R:
        """A validated ``model`` record with ``ts``/``event_id`` filled (see the async twin)."""
        return build_record(model, fields, self.inner.clock)

    def publish(self, record: R, *, wait: bool = False) -> R:
        """Send a ready input record; see :meth:`AsyncEssPublisher.publish`."""
        return self._call(self.inner.publish(record, wait=wait), self.inner.send_timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every record sent so far; see :meth:`AsyncEssPublisher.flush`."""
        self._call(self.inner.flush(timeout), timeout or 2 * self.inner.send_timeout)

    def _send(self, model: type[R], fields: Mapping[str, Any], wait: bool) -> R:
        return self.publish(build_record(model, fields, self.inner.clock), wait=wait)

    # ------------------------------------------------------------------ one method per topic

    def fill(
        self,
        *,
        account_id: str,
        venue: str,
        symbol: str,
        side: Side | str,
        qty: float,
        price: float,
        realized_pnl: float,
        is_stop_loss: bool,
        order_id: str,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> Fill:
        """See :meth:`AsyncEssPublisher.fill`."""
        return self._send(Fill, method_fields(locals()), wait)

    def pnl_tick(
        self,
        *,
        account_id: str,
        equity: float,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> PnlTick:
        """See :meth:`AsyncEssPublisher.pnl_tick`."""
        return self._send(PnlTick, method_fields(locals()), wait)

    def order_submitted(
        self,
        *,
        account_id: str,
        venue: str,
        symbol: str,
        side: Side | str,
        qty: float,
        price: float,
        notional: float,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> OrderSubmitted:
        """See :meth:`AsyncEssPublisher.order_submitted`."""
        return self._send(OrderSubmitted, method_fields(locals()), wait)

    def order_error(
        self,
        *,
        account_id: str,
        venue: str,
        symbol: str,
        kind: OrderErrorKind | str,
        code: str,
        message: str,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> OrderError:
        """See :meth:`AsyncEssPublisher.order_error`."""
        return self._send(OrderError, method_fields(locals()), wait)

    def health_beat(
        self,
        *,
        component: str,
        status: HealthStatus | str,
        checks: Mapping[str, str] | None = None,
        lifecycle: ComponentLifecycle | str | None = None,
        maintenance_until: datetime | None = None,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> HealthBeat:
        """See :meth:`AsyncEssPublisher.health_beat`."""
        return self._send(HealthBeat, method_fields(locals()), wait)

    def latency_sample(
        self,
        *,
        component: str,
        operation: str,
        latency_ms: float,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> LatencySample:
        """See :meth:`AsyncEssPublisher.latency_sample`."""
        return self._send(LatencySample, method_fields(locals()), wait)

    def market_tick(
        self,
        *,
        symbol: str,
        bid: float,
        ask: float,
        last: float,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> MarketTick:
        """See :meth:`AsyncEssPublisher.market_tick`."""
        return self._send(MarketTick, method_fields(locals()), wait)

    def security_event(
        self,
        *,
        kind: SecurityEventKind | str,
        source: str,
        detail: str,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> SecurityEvent:
        """See :meth:`AsyncEssPublisher.security_event`."""
        return self._send(SecurityEvent, method_fields(locals()), wait)

    # ------------------------------------------------------------------ helpers

    def heartbeat(
        self,
        component: str,
        *,
        interval: float = 5.0,
        status: HealthStatus | str = HealthStatus.HEALTHY,
        checks: Mapping[str, str] | None = None,
    ) -> SyncHeartbeat:
        """A blocking :class:`SyncHeartbeat` for ``component``, beating on this publisher's
        loop thread (not started). :meth:`close` stops it without an announcement."""
        return SyncHeartbeat(
            self, self.inner.heartbeat(component, interval=interval, status=status, checks=checks)
        )

    def watch_gate(
        self,
        policy_store: str | PolicyStore,
        *,
        gate: TradingGate | None = None,
        poll_interval: float = 0.5,
    ) -> TradingGate:
        """A :class:`TradingGate` kept current from ``policy_store`` on this publisher's loop
        thread until :meth:`close` (see :func:`ess.client.connect_gate`). ``allowed()`` may
        be called from any thread."""
        context = connect_gate(policy_store, gate=gate, poll_interval=poll_interval)
        view = self._call(context.__aenter__(), _GATE_START_S)
        self._closers.append(lambda: context.__aexit__(None, None, None))
        return view


class SyncHeartbeat:
    """Blocking twin of :class:`~ess.client.Heartbeat`, made by :meth:`EssPublisher.heartbeat`;
    the beats run on the publisher's loop thread."""

    def __init__(self, publisher: EssPublisher, heartbeat: Heartbeat) -> None:
        self.publisher = publisher
        #: The asyncio heartbeat doing the work (counters: ``beats``, ``failures``, ...).
        self.inner = heartbeat

    @property
    def running(self) -> bool:
        """Whether the background beats are going."""
        return self.inner.running

    @property
    def lifecycle(self) -> ComponentLifecycle | None:
        """The lifecycle last announced (``None``: no beat sent yet)."""
        return self.inner.lifecycle

    def _bound(self) -> float:
        return self.publisher.inner.send_timeout

    def set_status(
        self, status: HealthStatus | str, checks: Mapping[str, str] | None = None
    ) -> None:
        """What the next beats report; see :meth:`Heartbeat.set_status`."""
        self.inner.set_status(status, checks)

    def beat(self) -> HealthBeat:
        """One ``running`` beat now, confirmed."""
        return self.publisher._call(self.inner.beat(), self._bound())

    def start(self) -> None:
        """First beat (confirmed), then every ``interval`` seconds; see :meth:`Heartbeat.start`."""
        self.publisher._call(self.inner.start(), self._bound())

    def stop(self) -> None:
        """Stop beating without an announcement."""
        self.publisher._call(self.inner.stop(), self._bound())

    def maintenance(self, until: datetime) -> HealthBeat:
        """Stop beating and announce maintenance until ``until``."""
        return self.publisher._call(self.inner.maintenance(until), self._bound())

    def retire(self) -> HealthBeat:
        """Stop beating and send the last beat, ``retired``."""
        return self.publisher._call(self.inner.retire(), self._bound())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

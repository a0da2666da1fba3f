"""The asyncio publisher: one method per ESS input topic, batched, durable, bounded.

A trading service reports what happens (fills, PnL, heartbeats, order errors, ...) to ESS's
input topics; ESS's detectors do the rest. :class:`AsyncEssPublisher` does the parts a bot
should not have to know:

* each method validates its record with the contract model (:mod:`schemas.records`), fills
  ``ts`` from the clock and ``event_id`` from the content when not given
  (:func:`ess.client.records.derive_event_id`), and sends it to the right topic **keyed by the
  topic's key field** (``account_id``, ``component``, ``symbol``, ``source``);
* the producer is ESS's own (:func:`ess.kafka.clients.producer`): ``acks="all"``, failed
  requests retried while the batch is younger than ``send_timeout``, no idempotent producer
  (the embedded broker has none; ESS deduplicates by ``event_id``), records batched for
  ``linger_ms``;
* nothing hangs: connecting is bounded by ``connect_timeout`` (:class:`BrokerUnreachable`),
  every send by ``send_timeout`` (:class:`PublishError`);
* nothing fails silently: a record sent without waiting that is not delivered makes the next
  :meth:`AsyncEssPublisher.flush` (and :meth:`AsyncEssPublisher.stop`) raise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from aiokafka.errors import KafkaError
from loguru import logger
from pydantic import BaseModel

from ess.client.errors import BrokerUnreachable, PublishError
from ess.client.heartbeat import Heartbeat
from ess.client.records import InputTopics, OutgoingRecord, build_record, method_fields
from ess.clock import Clock, SystemClock
from ess.kafka.clients import KafkaSecurity, producer
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

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

__all__ = ["AsyncEssPublisher"]

R = TypeVar("R", bound=BaseModel)

#: Batching: wait up to this long for more records before sending a batch. Higher than ESS's
#: internal 2 ms because a bot's reports are not latency-critical to the bot, and a few
#: milliseconds of batching spare both the bot's CPU and the broker.
DEFAULT_LINGER_MS: Final = 5
DEFAULT_MAX_BATCH_BYTES: Final = 64 * 1024
#: How long stopping may take beyond the final flush.
_STOP_TIMEOUT_S: Final = 10.0


class AsyncEssPublisher:
    """Publishes a trading service's records to ESS's input topics (asyncio).

    ``bootstrap_servers``: the Kafka cluster ESS reads (``host:port[,host:port]``).
    ``topic_prefix`` / ``topics``: topic names as ESS's ``ESS_TOPIC_PREFIX`` sets them (default
    ``ess``), with optional per-topic overrides by logical name (see
    :class:`~ess.client.records.InputTopics`). ``security``: TLS/SASL, the same
    :class:`~ess.kafka.clients.KafkaSecurity` value ESS uses. ``connect_timeout``: bound on
    :meth:`start`. ``send_timeout``: bound on delivering one record, retries included.
    ``clock``: where ``ts`` comes from when a record gives none (injectable for tests).
    ``producer_options``: extra :class:`aiokafka.AIOKafkaProducer` keywords (they win).

    Use it as ``async with AsyncEssPublisher(...) as ess:``, or call :meth:`start` and
    :meth:`stop`. Methods return the record as sent (with its ``ts`` and ``event_id``).
    """

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
        if not bootstrap_servers.strip():
            raise ValueError("bootstrap_servers is empty: name the Kafka cluster ESS reads")
        if connect_timeout <= 0 or send_timeout <= 0:
            raise ValueError("connect_timeout and send_timeout must be positive")
        self.bootstrap_servers = bootstrap_servers
        self.topics = InputTopics(topic_prefix, topics)
        self.security = security
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.max_batch_bytes = max_batch_bytes
        self.connect_timeout = float(connect_timeout)
        self.send_timeout = float(send_timeout)
        self.clock: Clock = clock or SystemClock()
        self._producer_options = dict(producer_options or {})
        self._producer: AIOKafkaProducer | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._unreported: list[str] = []
        self._heartbeats: list[Heartbeat] = []
        #: Records confirmed by the broker, and records that were not delivered, so far.
        self.delivered = 0
        self.failed = 0
        self._log = logger.bind(client=client_id)

    # ------------------------------------------------------------------ lifecycle

    @property
    def started(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` has not been called."""
        return self._producer is not None

    async def start(self) -> None:
        """Connect to the cluster. Raises :class:`BrokerUnreachable` when no bootstrap server
        answers within ``connect_timeout``. Idempotent."""
        if self._producer is not None:
            return
        # The aiokafka producer must be built inside the running loop it will use.
        sender = producer(
            self.bootstrap_servers,
            security=self.security,
            client_id=self.client_id,
            linger_ms=self.linger_ms,
            max_batch_size=self.max_batch_bytes,
            # aiokafka retries a failed batch until it is this old: the durability window.
            request_timeout_ms=int(self.send_timeout * 1000),
            **self._producer_options,
        )
        try:
            async with asyncio.timeout(self.connect_timeout):
                await sender.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await sender.stop()
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise BrokerUnreachable(
                f"cannot reach Kafka at {self.bootstrap_servers} within "
                f"{self.connect_timeout:g} s ({why})"
            ) from exc
        self._producer = sender
        self._log.bind(bootstrap=self.bootstrap_servers, prefix=self.topics.prefix).info(
            "ESS publisher connected"
        )

    async def stop(self) -> None:
        """Stop the heartbeats made by :meth:`heartbeat` (without an announcement: retire
        them first if the component stops for good), deliver what is pending (bounded), then
        disconnect. Raises :class:`PublishError` if any record was not delivered, after
        disconnecting."""
        sender, error = self._producer, None
        if sender is None:
            return
        for heartbeat in self._heartbeats:  # a beat after this would fail: stop them first
            await heartbeat.stop()
        try:
            await self.flush()
        except PublishError as exc:
            error = exc
        finally:
            self._producer = None
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await sender.stop()
            except Exception as exc:  # closing a broken connection must not hide the cause
                self._log.bind(error=repr(exc)).warning("ESS publisher did not stop cleanly")
        if error is not None:
            raise error

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ sending

    def prepare(self, record: BaseModel) -> OutgoingRecord:
        """Topic, key and value bytes for ``record``, without sending (pure)."""
        return self.topics.prepare(record)

    def build(self, model: type[R], **fields: Any) -> R:
        """A validated ``model`` record, with ``ts`` and ``event_id`` filled as the per-topic
        methods fill them. Raises :class:`schemas.RecordError` for invalid values."""
        return build_record(model, fields, self.clock)

    async def publish(self, record: R, *, wait: bool = False) -> R:
        """Send a ready record (any input record model) to its topic, keyed by its key field.

        ``wait=False`` (default) returns once the record is queued in a batch; a delivery
        failure is raised by the next :meth:`flush`. ``wait=True`` returns once the broker has
        confirmed it, or raises :class:`PublishError` within ``send_timeout``."""
        outgoing = self.prepare(record)
        sender = self._producer
        if sender is None:
            raise PublishError("the ESS publisher is not started (use `async with` or start())")
        what = f"{type(record).__name__} to {outgoing.topic}"
        try:
            async with asyncio.timeout(self.send_timeout):
                delivery = await sender.send(outgoing.topic, outgoing.value, key=outgoing.key)
                if wait:
                    # Shielded: a timeout here must not cancel aiokafka's own future.
                    await asyncio.shield(delivery)
        except TimeoutError as exc:
            self.failed += 1
            raise PublishError(f"{what} not confirmed within {self.send_timeout:g} s") from exc
        except KafkaError as exc:
            self.failed += 1
            raise PublishError(f"{what} not delivered: {type(exc).__name__}: {exc}") from exc
        if wait:
            self.delivered += 1
        else:
            self._pending.add(delivery)
            delivery.add_done_callback(lambda done: self._delivered(done, what))
        return record

    def _delivered(self, delivery: asyncio.Future[Any], what: str) -> None:
        self._pending.discard(delivery)
        error = None if delivery.cancelled() else delivery.exception()
        if delivery.cancelled() or error is not None:
            self.failed += 1
            why = "cancelled" if error is None else f"{type(error).__name__}: {error}"
            self._unreported.append(f"{what}: {why}")
            self._log.bind(error=why).warning("ESS publisher: a record was not delivered")
        else:
            self.delivered += 1

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until every record sent so far is confirmed or failed, at most ``timeout``
        seconds (default twice ``send_timeout``). The deadline is what bounds the wait:
        aiokafka fails a batch only when a request for it fails after ``send_timeout``, and
        holds it as long as its broker cannot be reached at all. Raises :class:`PublishError`
        naming how many records were not delivered since the last flush, or are still
        unconfirmed at the deadline (their outcome is then reported by a later flush)."""
        bound = timeout or 2 * self.send_timeout
        pending = set(self._pending)
        if pending:
            _, late = await asyncio.wait(pending, timeout=bound)
            if late:
                raise PublishError(f"{len(late)} record(s) not confirmed within {bound:g} s")
        failures, self._unreported = self._unreported, []
        if failures:
            raise PublishError(
                f"{len(failures)} record(s) were not delivered; first: {failures[0]}"
            )

    # ------------------------------------------------------------------ one method per topic

    async def fill(
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
        """A fill (``ess.fills``, key ``account_id``): feeds the loss, trade-rate,
        stop-loss-cluster and position rules."""
        return await self.publish(
            build_record(Fill, method_fields(locals()), self.clock), wait=wait
        )

    async def pnl_tick(
        self,
        *,
        account_id: str,
        equity: float,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> PnlTick:
        """The account's equity now (``ess.pnl``, key ``account_id``): feeds the daily-loss,
        drawdown and flash-crash rules."""
        return await self.publish(
            build_record(PnlTick, method_fields(locals()), self.clock), wait=wait
        )

    async def order_submitted(
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
        """An order sent to a venue (``ess.orders``, key ``account_id``)."""
        record = build_record(OrderSubmitted, method_fields(locals()), self.clock)
        return await self.publish(record, wait=wait)

    async def order_error(
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
        """A rejected, failed or timed-out order (``ess.order-errors``, key ``account_id``)."""
        record = build_record(OrderError, method_fields(locals()), self.clock)
        return await self.publish(record, wait=wait)

    async def health_beat(
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
        """One health beat (``ess.health``, key ``component``). ``lifecycle`` is ``running``
        (default), ``maintenance`` (with ``maintenance_until``) or ``retired``; for a
        component that beats on its own, use :meth:`heartbeat` instead."""
        record = build_record(HealthBeat, method_fields(locals()), self.clock)
        return await self.publish(record, wait=wait)

    async def latency_sample(
        self,
        *,
        component: str,
        operation: str,
        latency_ms: float,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> LatencySample:
        """How long an operation took (``ess.latency``, key ``component``)."""
        record = build_record(LatencySample, method_fields(locals()), self.clock)
        return await self.publish(record, wait=wait)

    async def market_tick(
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
        """A top-of-book tick (``ess.market``, key ``symbol``): feeds the flash-crash, corrupt
        and stale feed rules. Prices are not checked here: a broken feed's tick is data too."""
        record = build_record(MarketTick, method_fields(locals()), self.clock)
        return await self.publish(record, wait=wait)

    async def security_event(
        self,
        *,
        kind: SecurityEventKind | str,
        source: str,
        detail: str,
        ts: datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
    ) -> SecurityEvent:
        """A security event (``ess.security``, key ``source``): every one trips ESS."""
        record = build_record(SecurityEvent, method_fields(locals()), self.clock)
        return await self.publish(record, wait=wait)

    # ------------------------------------------------------------------ helpers

    def heartbeat(
        self,
        component: str,
        *,
        interval: float = 5.0,
        status: HealthStatus | str = HealthStatus.HEALTHY,
        checks: Mapping[str, str] | None = None,
    ) -> Heartbeat:
        """A :class:`~ess.client.heartbeat.Heartbeat` for ``component`` on this publisher
        (not started: ``async with publisher.heartbeat("bot-1") as beat:``); :meth:`stop`
        stops it."""
        heartbeat = Heartbeat(self, component, interval=interval, status=status, checks=checks)
        self._heartbeats.append(heartbeat)
        return heartbeat

"""The trading gate fed from a real Redis: opening, closing on activation, on outage and on
staleness, and reopening only on a fresh inactive record.

Outages are made with a TCP proxy in front of the shared Redis: stopping the proxy cuts this
test's connections (and refuses new ones) without touching the server other tests use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.gate import GateState, PolicyStoreGateFeed, RedisGateFeed, TradingGate
from ess.policystore import RedisPolicyStore
from schemas import PolicyRecord, ReasonCode
from tests.fixtures.redis import closed_port, redis_test_url, scratch_namespace
from tests.helpers import eventually

pytestmark = pytest.mark.integration

#: Slack on top of a poll interval for "closes within one poll interval": one Redis round
#: trip, the event loop's scheduling and ``eventually``'s own 20 ms polling.
SLACK = 0.5


def policy(*, active: bool = False, seq: int = 1, age: float = 0.0) -> dict[str, Any]:
    """An ``emergency_stop`` value refreshed ``age`` seconds ago."""
    refreshed = datetime.now(UTC) - timedelta(seconds=age)
    return PolicyRecord(
        active=active,
        reason=ReasonCode.FLASH_CRASH if active else None,
        timestamp=refreshed,
        seq=seq,
        detail="BTC/USDT -9% in 40 s" if active else "",
        refreshed_at=refreshed,
    ).model_dump(mode="json")


class TcpProxy:
    """Forwards a loopback port to Redis; :meth:`cut` drops every connection and stops
    listening, :meth:`restore` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def url(self, redis_url: str) -> str:
        return urlunsplit(urlsplit(redis_url)._replace(netloc=f"127.0.0.1:{self.port}"))

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        await asyncio.gather(
            self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@pytest.fixture
def redis_url() -> str:
    return redis_test_url()


@pytest.fixture
async def namespace(redis_url: str) -> AsyncIterator[str]:
    async with scratch_namespace(redis_url) as namespace:
        yield namespace


@pytest.fixture
async def writer(redis_url: str, namespace: str) -> AsyncIterator[RedisPolicyStore]:
    """The ESS side: writes the record (straight to Redis, never through the proxy)."""
    async with RedisPolicyStore(redis_url, namespace=namespace) as store:
        yield store


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(redis_url)
    tcp = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await tcp.restore()
    yield tcp
    await tcp.cut()


async def test_gate_when_fresh_inactive_record_in_redis_then_opens(
    redis_url: str, namespace: str, writer: RedisPolicyStore
) -> None:
    await writer.set(EMERGENCY_STOP_KEY, policy())
    gate = TradingGate()

    async with (
        RedisPolicyStore(redis_url, namespace=namespace) as store,
        RedisGateFeed(store, gate, poll_interval=0.2),
    ):
        assert gate.allowed() is True
        assert gate.status().state is GateState.OPEN


async def test_gate_when_no_record_in_redis_then_closed(redis_url: str, namespace: str) -> None:
    gate = TradingGate()

    async with (
        RedisPolicyStore(redis_url, namespace=namespace) as store,
        PolicyStoreGateFeed(store, gate, poll_interval=0.2),
    ):
        assert gate.allowed() is False
        assert gate.why() == "no record"


async def test_gate_when_active_record_written_then_polling_closes_within_one_interval(
    redis_url: str, namespace: str, writer: RedisPolicyStore
) -> None:
    poll = 0.2
    await writer.set(EMERGENCY_STOP_KEY, policy(seq=1))
    gate = TradingGate()
    async with (
        RedisPolicyStore(redis_url, namespace=namespace) as store,
        PolicyStoreGateFeed(store, gate, poll_interval=poll),
    ):
        assert gate.allowed() is True

        await writer.set(EMERGENCY_STOP_KEY, policy(active=True, seq=2))
        await eventually(lambda: not gate.allowed(), timeout=poll + SLACK)

    assert gate.why() == "ACTIVE: flash_crash (BTC/USDT -9% in 40 s)"


async def test_gate_when_active_record_written_then_pubsub_closes_it_long_before_a_poll(
    redis_url: str, namespace: str, writer: RedisPolicyStore
) -> None:
    await writer.set(EMERGENCY_STOP_KEY, policy(seq=1))
    gate = TradingGate()
    async with (
        RedisPolicyStore(redis_url, namespace=namespace) as store,
        RedisGateFeed(store, gate, poll_interval=3600) as feed,
    ):
        await eventually(lambda: feed.subscribed, timeout=5)
        await eventually(lambda: feed.reads >= 2)  # the catch-up read after subscribing
        assert gate.allowed() is True
        started = time.monotonic()

        await writer.set(EMERGENCY_STOP_KEY, policy(active=True, seq=2))
        await eventually(lambda: not gate.allowed(), timeout=SLACK)

    assert time.monotonic() - started < SLACK
    assert gate.why().startswith("ACTIVE: flash_crash")


async def test_gate_when_redis_becomes_unreachable_then_closes_and_reopens_on_fresh_record(
    redis_url: str, namespace: str, writer: RedisPolicyStore, proxy: TcpProxy
) -> None:
    poll = 0.2
    await writer.set(EMERGENCY_STOP_KEY, policy(seq=1))
    gate = TradingGate()
    async with (
        RedisPolicyStore(proxy.url(redis_url), namespace=namespace, timeout=0.5) as store,
        RedisGateFeed(store, gate, poll_interval=poll, resubscribe_delay=0.1) as feed,
    ):
        await eventually(lambda: feed.subscribed, timeout=5)
        assert gate.allowed() is True

        await proxy.cut()
        await eventually(lambda: not gate.allowed(), timeout=poll + 1.0)
        closed_reason = gate.why()
        await proxy.restore()
        await writer.set(EMERGENCY_STOP_KEY, policy(seq=1))
        await eventually(gate.allowed, timeout=5)
        await eventually(lambda: feed.subscribed, timeout=5)

    assert closed_reason.startswith("policy store unreadable: PolicyStoreUnavailable")
    assert feed.failures >= 1


async def test_gate_when_redis_port_closed_from_the_start_then_closed_with_clear_reason() -> None:
    gate = TradingGate()

    async with (
        RedisPolicyStore(f"redis://127.0.0.1:{closed_port()}/0") as store,
        RedisGateFeed(store, gate, poll_interval=0.2) as feed,
    ):
        assert gate.allowed() is False
        assert gate.status().state is GateState.FAILED
        assert "Connect call failed" in gate.why()
        assert feed.subscribed is False


async def test_gate_when_record_not_refreshed_within_bound_then_closes_then_reopens_on_refresh(
    redis_url: str, namespace: str, writer: RedisPolicyStore
) -> None:
    await writer.set(EMERGENCY_STOP_KEY, policy(seq=1))
    gate = TradingGate(max_record_age=0.8, max_clock_skew=0.1)
    async with (
        RedisPolicyStore(redis_url, namespace=namespace) as store,
        PolicyStoreGateFeed(store, gate, poll_interval=0.1),
    ):
        assert gate.allowed() is True

        await eventually(lambda: not gate.allowed(), timeout=0.7 + SLACK)
        stale_reason = gate.why()
        await writer.set(EMERGENCY_STOP_KEY, policy(seq=1))
        await eventually(gate.allowed, timeout=0.1 + SLACK)

    assert stale_reason.startswith("stale: last refresh")


async def test_gate_when_active_then_stale_inactive_record_then_stays_closed_until_fresh_one(
    redis_url: str, namespace: str, writer: RedisPolicyStore
) -> None:
    await writer.set(EMERGENCY_STOP_KEY, policy(active=True, seq=1))
    gate = TradingGate(max_record_age=5.0)
    async with (
        RedisPolicyStore(redis_url, namespace=namespace) as store,
        PolicyStoreGateFeed(store, gate, poll_interval=0.05) as feed,
    ):
        assert gate.allowed() is False

        await writer.set(EMERGENCY_STOP_KEY, policy(seq=2, age=3600))
        reads = feed.reads
        await eventually(lambda: feed.reads >= reads + 3)  # it has seen the stale record
        still_closed, why_closed = not gate.allowed(), gate.why()
        await writer.set(EMERGENCY_STOP_KEY, policy(seq=2))
        await eventually(gate.allowed, timeout=0.05 + SLACK)

    assert still_closed
    assert why_closed.startswith("stale: last refresh 3600.")


async def test_gate_feed_when_stopped_then_tasks_end_cleanly(
    redis_url: str, namespace: str, writer: RedisPolicyStore
) -> None:
    await writer.set(EMERGENCY_STOP_KEY, policy())
    store = RedisPolicyStore(redis_url, namespace=namespace)
    feed = RedisGateFeed(store, TradingGate(), poll_interval=0.1)
    await feed.start()
    await eventually(lambda: feed.subscribed, timeout=5)

    await feed.stop()

    assert feed.running is False
    assert feed.subscribed is False
    await store.close()

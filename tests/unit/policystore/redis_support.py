"""Redis for tests: which server, a scratch namespace per test, and endpoints that fail.

Redis is required (CI runs one): an unreachable server fails the test with a message saying
how to fix it, never skips. ``ESS_TEST_REDIS_URL`` overrides the default server.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ess.policystore import redact_url

REDIS_URL_ENV = "ESS_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_test_url() -> str:
    """The Redis the tests use: ``$ESS_TEST_REDIS_URL`` or the local default."""
    return os.environ.get(REDIS_URL_ENV, "").strip() or DEFAULT_TEST_REDIS_URL


@asynccontextmanager
async def scratch_namespace(url: str) -> AsyncIterator[str]:
    """A namespace no other test uses; every key under it is deleted afterwards."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(
            f"Redis is required for these tests but {redact_url(url)} is unreachable ({exc}). "
            f"Start redis-server or point {REDIS_URL_ENV} at one.",
            pytrace=False,
        )
    namespace = f"ess-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield namespace
    finally:
        keys = [key async for key in client.scan_iter(match=f"{namespace}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts TCP connections (kernel backlog) but never answers:
    the shape of a hung server, which only a timeout can detect."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])

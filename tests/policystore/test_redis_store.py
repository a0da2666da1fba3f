"""The Redis PolicyStore against a real server: the shared contract, plus key layout,
namespaces, write notifications and outages.

Needs Redis (``ESS_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``); each test works in
its own namespace and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.policystore import (
    CorruptPolicyValue,
    PolicyStoreError,
    PolicyStoreUnavailable,
    RedisPolicyStore,
    policy_store_from_url,
)
from tests.fixtures.redis import (
    closed_port,
    redis_test_url,
    scratch_namespace,
    silent_server,
)
from tests.policystore.contract import (
    PROMPT,
    PolicyStoreContract,
    UnreachableBackendContract,
    policy_json,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url() -> str:
    return redis_test_url()


@pytest.fixture
async def namespace(redis_url: str) -> AsyncIterator[str]:
    async with scratch_namespace(redis_url) as namespace:
        yield namespace


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at (and tamper with) what the store wrote."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


class TestRedisPolicyStoreContract(PolicyStoreContract, UnreachableBackendContract):
    @pytest.fixture
    async def store(self, redis_url: str, namespace: str) -> AsyncIterator[RedisPolicyStore]:
        async with RedisPolicyStore(redis_url, namespace=namespace) as store:
            yield store

    @pytest.fixture
    async def unreachable_store(self) -> AsyncIterator[RedisPolicyStore]:
        async with RedisPolicyStore(f"redis://127.0.0.1:{closed_port()}/0") as store:
            yield store


def test_redis_key_when_default_namespace_then_exactly_the_contract_key() -> None:
    store = RedisPolicyStore()

    assert store.redis_key(EMERGENCY_STOP_KEY) == "emergency_stop"
    assert store.channel == "ess:policy"


async def test_redis_store_when_set_then_value_is_json_text_under_namespaced_key(
    redis_url: str, namespace: str, raw: aioredis.Redis
) -> None:
    async with RedisPolicyStore(redis_url, namespace=namespace) as store:
        await store.set(EMERGENCY_STOP_KEY, policy_json())

    text = await raw.get(f"{namespace}emergency_stop")
    assert isinstance(text, str)
    assert text.startswith('{"active":true,"reason":"flash_crash"')


async def test_redis_store_when_namespaces_differ_then_same_key_is_isolated(
    redis_url: str, namespace: str
) -> None:
    blue = RedisPolicyStore(redis_url, namespace=f"{namespace}blue:")
    green = RedisPolicyStore(redis_url, namespace=f"{namespace}green:")

    await blue.set(EMERGENCY_STOP_KEY, policy_json(seq=1))
    await green.set(EMERGENCY_STOP_KEY, policy_json(seq=2))

    assert await blue.get(EMERGENCY_STOP_KEY) == policy_json(seq=1)
    assert await green.get(EMERGENCY_STOP_KEY) == policy_json(seq=2)
    await blue.close()
    await green.close()


async def test_redis_store_when_set_then_subscribers_are_notified_with_the_key(
    redis_url: str, namespace: str
) -> None:
    async with (
        RedisPolicyStore(redis_url, namespace=namespace) as store,
        store.notifications() as notifications,
    ):
        await store.set(EMERGENCY_STOP_KEY, policy_json())

        key = await asyncio.wait_for(anext(notifications), timeout=5)

    assert key == EMERGENCY_STOP_KEY


async def test_redis_store_when_other_namespace_writes_then_no_notification(
    redis_url: str, namespace: str
) -> None:
    mine = RedisPolicyStore(redis_url, namespace=f"{namespace}mine:")
    other = RedisPolicyStore(redis_url, namespace=f"{namespace}other:")
    async with mine.notifications() as notifications:
        await other.set(EMERGENCY_STOP_KEY, policy_json())
        await mine.set("marker", {"n": 1})  # the first message we should get

        key = await asyncio.wait_for(anext(notifications), timeout=5)

    assert key == "marker"
    await mine.close()
    await other.close()


async def test_redis_store_when_value_is_not_json_then_raises_corrupt(
    redis_url: str, namespace: str, raw: aioredis.Redis
) -> None:
    await raw.set(f"{namespace}emergency_stop", "ACTIVE")

    async with RedisPolicyStore(redis_url, namespace=namespace) as store:
        with pytest.raises(CorruptPolicyValue, match="not valid JSON"):
            await store.get(EMERGENCY_STOP_KEY)


async def test_redis_store_when_key_has_wrong_type_then_raises_store_error(
    redis_url: str, namespace: str, raw: aioredis.Redis
) -> None:
    await raw.rpush(f"{namespace}emergency_stop", "x")

    async with RedisPolicyStore(redis_url, namespace=namespace) as store:
        with pytest.raises(PolicyStoreError, match="WRONGTYPE") as caught:
            await store.get(EMERGENCY_STOP_KEY)

    assert not isinstance(caught.value, PolicyStoreUnavailable)


async def test_redis_store_when_server_hangs_then_raises_unavailable_within_timeout() -> None:
    with silent_server() as port:
        async with RedisPolicyStore(f"redis://127.0.0.1:{port}/0", timeout=0.3) as store:
            started = time.monotonic()

            with pytest.raises(PolicyStoreUnavailable, match=r"within 0\.3 s"):
                await store.get(EMERGENCY_STOP_KEY)

            elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 1.5


async def test_redis_store_when_unreachable_then_subscribe_raises_unavailable() -> None:
    async with RedisPolicyStore(f"redis://127.0.0.1:{closed_port()}/0") as store:
        started = time.monotonic()

        with pytest.raises(PolicyStoreUnavailable, match="cannot subscribe"):
            async with store.notifications():
                pass

    assert time.monotonic() - started < PROMPT


async def test_redis_store_when_unreachable_then_ping_raises_unavailable() -> None:
    async with RedisPolicyStore(f"redis://127.0.0.1:{closed_port()}/0") as store:
        with pytest.raises(PolicyStoreUnavailable, match="ping failed"):
            await store.ping()


async def test_redis_store_from_url_when_namespace_given_then_writes_under_it(
    redis_url: str, namespace: str, raw: aioredis.Redis
) -> None:
    separator = "&" if "?" in redis_url else "?"
    store = policy_store_from_url(f"{redis_url}{separator}namespace={namespace}")

    await store.set(EMERGENCY_STOP_KEY, policy_json())

    assert await raw.exists(f"{namespace}emergency_stop") == 1
    await store.close()

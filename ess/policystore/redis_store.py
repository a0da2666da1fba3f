"""A PolicyStore in Redis: every host shares it, and writes are announced on a channel.

Layout: the value of key ``k`` is JSON text under Redis key ``namespace + k`` (with the
default empty namespace, exactly ``emergency_stop`` as the contract says). Every :meth:`set`
also publishes ``k`` on the channel ``namespace + "ess:policy"``, in the same MULTI/EXEC as the
write, so a subscriber that re-reads on a notification always sees the new value. The
notification is only a hint to read *now*; readers must keep polling, because pub/sub is
at-most-once (a subscriber that is reconnecting misses messages).

Failure behaviour: an unreachable, slow or misbehaving server raises
:class:`~ess.policystore.base.PolicyStoreUnavailable` within ``timeout`` seconds. redis-py's own
default (10 retries with backoff up to 1 s, 5 s socket timeouts) could hold a gate's read for
many seconds; here one quick retry is allowed (it re-dials a pooled connection that died when
the server restarted) and the whole operation is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ess.policystore.base import (
    PolicyStoreError,
    PolicyStoreUnavailable,
    check_key,
    decode_value,
    encode_value,
    redact_url,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Channel (after the namespace) on which every write is announced; the payload is the key.
CHANNEL = "ess:policy"


class RedisPolicyStore:
    """Keys to JSON objects in Redis, with a notification on every write.

    ``timeout`` bounds every operation (connect, command, retry included). ``namespace`` is
    prepended verbatim to keys and to the channel: use it to run several ESS instances (or
    tests) on one Redis; production gates and writers leave it empty.
    """

    def __init__(
        self, url: str = DEFAULT_REDIS_URL, *, namespace: str = "", timeout: float = 1.0
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.url = url
        self.namespace = namespace
        self.timeout = timeout
        self.channel = f"{namespace}{CHANNEL}"
        self._where = f"redis policy store {redact_url(url)}"
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        )

    def redis_key(self, key: str) -> str:
        """The Redis key that holds ``key``."""
        return f"{self.namespace}{check_key(key)}"

    # ------------------------------------------------------------------ PolicyStore

    async def get(self, key: str) -> Mapping[str, Any] | None:
        redis_key = self.redis_key(key)
        raw = await self._call(f"get {redis_key!r}", self._client.get(redis_key))
        if raw is None:
            return None
        return decode_value(key, raw, self._where)

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        redis_key = self.redis_key(key)
        text = encode_value(key, value)
        pipe = self._client.pipeline(transaction=True)
        pipe.set(redis_key, text)
        pipe.publish(self.channel, key)
        await self._call(f"set {redis_key!r}", pipe.execute())

    # ------------------------------------------------------------------ notifications

    def notifications(self) -> PolicyNotifications:
        """Subscribe to write notifications: ``async with store.notifications() as n:`` then
        ``async for key in n``. Entering returns once Redis has confirmed the subscription,
        so any write after that is announced."""
        return PolicyNotifications(self._client.pubsub(), self.channel, self.timeout, self._where)

    async def ping(self) -> None:
        """Raise :class:`PolicyStoreUnavailable` unless the server answers."""
        await self._call("ping", self._client.ping())

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    async def __aenter__(self) -> RedisPolicyStore:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"RedisPolicyStore({redact_url(self.url)!r}, namespace={self.namespace!r})"

    # ------------------------------------------------------------------ internals

    async def _call(self, what: str, operation: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await operation
        except TimeoutError as exc:  # asyncio's deadline (the builtin TimeoutError)
            raise PolicyStoreUnavailable(
                f"{self._where}: {what} got no answer within {self.timeout:g} s"
            ) from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise PolicyStoreUnavailable(f"{self._where}: {what} failed: {exc}") from exc
        except RedisError as exc:
            raise PolicyStoreError(f"{self._where}: {what} failed: {exc}") from exc


class PolicyNotifications:
    """An open subscription to a :class:`RedisPolicyStore`'s write notifications.

    Iterating yields the (un-namespaced) key of every write, as it happens. A lost connection
    raises :class:`PolicyStoreUnavailable` from the iterator; the subscriber decides whether
    and when to subscribe again.
    """

    #: How long one wait for a message lasts before looping (keeps the wait cancellable and
    #: lets redis-py run its connection health checks).
    WAIT = 1.0

    def __init__(self, pubsub: PubSub, channel: str, timeout: float, where: str) -> None:
        self._pubsub = pubsub
        self.channel = channel
        self._timeout = timeout
        self._where = where

    async def __aenter__(self) -> PolicyNotifications:
        try:
            async with asyncio.timeout(self._timeout):
                await self._pubsub.subscribe(self.channel)
                # Wait for the server's confirmation: only then is every later write announced.
                while True:
                    message = await self._pubsub.get_message(timeout=self._timeout)
                    if message is not None and message.get("type") == "subscribe":
                        break
        except BaseException as exc:
            await self._close()
            if isinstance(exc, TimeoutError | RedisError):
                why = str(exc) or f"no confirmation within {self._timeout:g} s"
                raise PolicyStoreUnavailable(
                    f"{self._where}: cannot subscribe to {self.channel!r}: {why}"
                ) from exc
            raise
        logger.bind(channel=self.channel).debug("subscribed to policy store notifications")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._close()

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self.WAIT
                )
            except RedisError as exc:
                raise PolicyStoreUnavailable(
                    f"{self._where}: subscription to {self.channel!r} lost: {exc}"
                ) from exc
            if message is not None and message.get("type") == "message":
                data = message.get("data", b"")
                return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    async def _close(self) -> None:
        try:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        except RedisError as exc:  # the connection is already gone: nothing left to release
            logger.bind(channel=self.channel, error=str(exc)).debug("pubsub close failed")

"""The fault-injecting Kafka proxy: transparent when idle, and each fault does what it says.

The lost-answer test is the reproduction the proxy exists for: the broker applies a Produce
request, its answer never reaches the client, aiokafka retries over a new connection, and the
non-idempotent producer that ESS's state log uses writes the record twice.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from ess.chaos.proxy import PRODUCE, KafkaFaultProxy, proxied_embedded_broker
from ess.kafka.broker import EmbeddedBroker, ensure_topics
from ess.kafka.clients import consumer, producer, read_to_end
from schemas import TopicRegistry, topic_registry
from tests.helpers import eventually

pytestmark = pytest.mark.integration

#: aiokafka 0.14's ProduceRequest stops at v7; the broker offers more.
AIOKAFKA_PRODUCE_VERSIONS = frozenset(range(8))


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[EmbeddedBroker, KafkaFaultProxy, TopicRegistry]]:
    """A broker reachable only through a fresh proxy, with one prefix's topics created."""
    async with proxied_embedded_broker() as (broker, proxy):
        registry = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
        await ensure_topics(proxy.bootstrap, registry)
        yield broker, proxy, registry


async def test_frames_pass_through_unchanged(
    proxied: tuple[EmbeddedBroker, KafkaFaultProxy, TopicRegistry],
) -> None:
    _broker, proxy, registry = proxied
    topic = registry.commands.name
    sent = [(f"k{i}".encode(), f"value-{i}-\x00\xff".encode("latin-1")) for i in range(5)]

    writer = producer(proxy.bootstrap)
    await writer.start()
    try:
        for key, value in sent:
            await writer.send_and_wait(topic, value, key=key)
    finally:
        await writer.stop()

    # No group: a group join on Tansu costs ~3 s and proves nothing about the proxy.
    reader = consumer(proxy.bootstrap, group_id=None)
    await reader.start()
    received: list[tuple[bytes | None, bytes | None]] = []
    try:
        partition = TopicPartition(topic, 0)
        reader.assign([partition])
        await reader.seek_to_beginning(partition)

        async def all_received() -> bool:
            for records in (await reader.getmany(timeout_ms=100)).values():
                received.extend((r.key, r.value) for r in records)
            return len(received) >= len(sent)

        await eventually(all_received, message="records through the proxy")
    finally:
        await reader.stop()

    assert received == sent
    stats = proxy.stats
    assert stats.dropped_answers == 0
    assert stats.unparsed_frames == 0
    assert stats.requests[PRODUCE] >= len(sent)
    assert stats.responses[PRODUCE] == stats.requests[PRODUCE]
    assert stats.api_versions[PRODUCE] <= AIOKAFKA_PRODUCE_VERSIONS
    # The broker advertises the proxy, so clients never reach it another way.
    assert stats.connections_accepted >= 2


async def test_a_lost_produce_answer_makes_the_record_land_twice(
    proxied: tuple[EmbeddedBroker, KafkaFaultProxy, TopicRegistry],
) -> None:
    _broker, proxy, registry = proxied
    topic = registry.state.name
    writer = producer(proxy.bootstrap, read_to_end_safe=True)
    await writer.start()
    try:
        proxy.drop_produce_responses(topic, 1)
        metadata = await writer.send_and_wait(topic, b"entry-1", key=b"state")
    finally:
        await writer.stop()

    records = await read_to_end(proxy.bootstrap, topic)

    # The broker applied the first attempt; aiokafka saw a connection error (retriable),
    # re-sent the batch on a new connection and reported the offset of the second copy.
    assert [(r.offset, r.key, r.value) for r in records] == [
        (0, b"state", b"entry-1"),
        (1, b"state", b"entry-1"),
    ]
    assert metadata.offset == 1
    assert proxy.dropped_answers == 1
    assert proxy.pending_drops() == {}
    assert proxy.stats.connections_cut == 1


async def test_pause_holds_traffic_until_resume(
    proxied: tuple[EmbeddedBroker, KafkaFaultProxy, TopicRegistry],
) -> None:
    _broker, proxy, registry = proxied
    topic = registry.state.name
    writer = producer(proxy.bootstrap, read_to_end_safe=True)
    await writer.start()
    try:
        await writer.send_and_wait(topic, b"before", key=b"state")  # connected, metadata known
        produced = proxy.stats.requests[PRODUCE]

        proxy.pause()
        send = asyncio.create_task(writer.send_and_wait(topic, b"during", key=b"state"))
        # The request reached the proxy and is held there: the broker cannot have it.
        await eventually(lambda: proxy.stats.frames_held >= 1, message="request held")
        assert not send.done()
        assert proxy.stats.requests.get(PRODUCE, 0) == produced

        proxy.resume()
        metadata = await asyncio.wait_for(send, timeout=10)
        assert metadata.offset == 1
        assert proxy.stats.frames_held == 0

        # A cut connection is re-established by the client on its next request.
        assert proxy.reset_connections() >= 1
        metadata = await writer.send_and_wait(topic, b"after", key=b"state")
        assert metadata.offset == 2
    finally:
        await writer.stop()

    records = await read_to_end(proxy.bootstrap, topic)
    assert [r.value for r in records] == [b"before", b"during", b"after"]
    assert proxy.dropped_answers == 0


async def test_frames_it_cannot_parse_are_forwarded_untouched() -> None:
    """A malformed Produce body, a frame too short for a header, and a size no Kafka frame
    has (after which the stream is copied raw) all reach the other side byte for byte."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    truncated_produce = struct.pack(">hhih", 0, 7, 1, 1) + b"x" + b"\x00\x01\xff"
    stream = (
        struct.pack(">i", len(truncated_produce))
        + truncated_produce
        + struct.pack(">i", 2)
        + b"\x00\x00"
        + struct.pack(">i", -5)
        + b"raw bytes after a nonsense size"
    )
    try:
        async with KafkaFaultProxy("127.0.0.1", upstream_port) as proxy:
            proxy.drop_produce_responses("any", 1)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(stream)
            await writer.drain()
            echoed = await asyncio.wait_for(reader.readexactly(len(stream)), timeout=5)
            writer.close()
            await writer.wait_closed()
            assert echoed == stream
            assert proxy.stats.unparsed_frames == 2  # the short frame and the raw stream
            assert proxy.stats.requests == {PRODUCE: 1}
            assert proxy.dropped_answers == 0
            assert proxy.pending_drops() == {"any": 1}
    finally:
        upstream.close()
        await upstream.wait_closed()

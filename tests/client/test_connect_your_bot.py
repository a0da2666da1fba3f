"""The README's "Connect your bot" lines (``ess/examples/connect_your_bot.py``) against the
embedded broker and a real Redis: the records arrive on the right topics with the right keys,
and the gate answers what the PolicyStore record says."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.client import ComponentLifecycle, EssPublisher, GateState
from ess.examples.connect_your_bot import main, run_bot
from ess.policystore import RedisPolicyStore
from schemas import Fill, HealthBeat, PnlTick, PolicyRecord, ReasonCode, TopicRegistry, decode
from tests.client.support import read_topic
from tests.fixtures.redis import redis_test_url, scratch_namespace
from tests.helpers import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    async with scratch_namespace(redis_test_url()) as name:
        yield name


async def _write_policy(namespace: str, *, active: bool) -> None:
    now = datetime.now(UTC)
    record = PolicyRecord(
        active=active,
        reason=ReasonCode.FLASH_CRASH if active else None,
        timestamp=now,
        seq=3 if active else 4,
        refreshed_at=now,
    )
    async with RedisPolicyStore(redis_test_url(), namespace=namespace) as store:
        await store.set(EMERGENCY_STOP_KEY, record.model_dump(mode="json"))


def _store_url(namespace: str) -> str:
    return f"{redis_test_url()}?namespace={namespace}"


async def _topic(bootstrap: str, registry: TopicRegistry, logical: str, model: Any) -> list[Any]:
    return [(r.key, decode(model, r.value)) for r in await read_topic(bootstrap, registry, logical)]


async def test_inactive_record_opens_the_gate_and_the_fill_is_reported(
    kafka_bootstrap: str, registry: TopicRegistry, namespace: str
) -> None:
    await _write_policy(namespace, active=False)

    status = await run_bot(kafka_bootstrap, _store_url(namespace), registry.prefix)

    assert status.allowed
    assert status.state is GateState.OPEN
    fills = await _topic(kafka_bootstrap, registry, "fills", Fill)
    assert [(key, fill.order_id, fill.qty) for key, fill in fills] == [(b"acct-1", "o-1", 0.01)]
    pnl = await _topic(kafka_bootstrap, registry, "pnl", PnlTick)
    assert [(key, tick.equity) for key, tick in pnl] == [(b"acct-1", 10_250.0)]
    beats = await _topic(kafka_bootstrap, registry, "health", HealthBeat)
    assert {key for key, _ in beats} == {b"bot-1"}
    assert beats[0][1].lifecycle is ComponentLifecycle.RUNNING
    assert beats[-1][1].lifecycle is ComponentLifecycle.RETIRED


async def test_active_record_closes_the_gate_and_no_fill_is_sent(
    kafka_bootstrap: str, registry: TopicRegistry, namespace: str
) -> None:
    await _write_policy(namespace, active=True)

    status = await run_bot(kafka_bootstrap, _store_url(namespace), registry.prefix)

    assert not status.allowed
    assert status.state is GateState.ACTIVE
    assert "flash_crash" in status.reason
    assert await _topic(kafka_bootstrap, registry, "fills", Fill) == []
    pnl = await _topic(kafka_bootstrap, registry, "pnl", PnlTick)
    assert [key for key, _ in pnl] == [b"acct-1"]
    beats = await _topic(kafka_bootstrap, registry, "health", HealthBeat)
    assert beats[-1][1].lifecycle is ComponentLifecycle.RETIRED


async def test_no_record_keeps_the_gate_closed(
    kafka_bootstrap: str, registry: TopicRegistry, namespace: str
) -> None:
    status = await run_bot(kafka_bootstrap, _store_url(namespace), registry.prefix)

    assert not status.allowed
    assert status.state is GateState.NO_RECORD
    assert await _topic(kafka_bootstrap, registry, "fills", Fill) == []


def test_the_example_runs_as_a_program(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert main() == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().err

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("ESS_TOPIC_PREFIX", f"bot{uuid.uuid4().hex[:10]}")
    monkeypatch.delenv("ESS_REDIS_URL", raising=False)
    monkeypatch.setenv("ESS_POLICY_STORE_URL", "memory://")  # no record: the gate stays closed
    assert main() == 0
    assert "gate closed (no record)" in capsys.readouterr().out


async def test_blocking_publisher_watches_the_gate_until_closed(
    kafka_bootstrap: str, registry: TopicRegistry, namespace: str
) -> None:
    """The blocking twin: the gate is fed on the publisher's own thread and follows the
    store; close() stops the feed and the heartbeat. (Blocking calls go through a thread
    here only because the test itself runs in asyncio.)"""
    await _write_policy(namespace, active=False)
    ess = EssPublisher(kafka_bootstrap, topic_prefix=registry.prefix)
    await asyncio.to_thread(ess.start)
    try:
        gate = await asyncio.to_thread(ess.watch_gate, _store_url(namespace), poll_interval=0.05)
        assert gate.allowed(), gate.why()
        beat = ess.heartbeat("bot-5")
        await asyncio.to_thread(beat.start)
        assert beat.running
        await _write_policy(namespace, active=True)
        await eventually(lambda: gate.status().state is GateState.ACTIVE)
        assert not gate.allowed()
    finally:
        await asyncio.to_thread(ess.close)
    assert not beat.running  # close() stopped it (without an announcement)
    beats = await _topic(kafka_bootstrap, registry, "health", HealthBeat)
    assert [(key, b.lifecycle) for key, b in beats] == [(b"bot-5", ComponentLifecycle.RUNNING)]


def test_the_documented_lines_are_the_example() -> None:
    """docs/connect-your-bot.md shows run_bot as it is in the example (which this file runs)."""
    doc = (ROOT / "docs" / "connect-your-bot.md").read_text()
    block = doc.split("## Ten lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    documented = [line for line in block.splitlines() if line.strip()]
    source = inspect.getsource(run_bot).splitlines()
    code = [line for line in source if line.strip() and '"""' not in line]
    assert documented[0] == "from ess.client import AsyncEssPublisher, GateStatus, connect_gate"
    assert documented[1:] == code

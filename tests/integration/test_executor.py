"""The executor role against a real broker and the simulator: it follows ``ess.state``,
flattens both venues on activation, reports to ``ess.actions``, stops on reset, resumes after
a restart, and keeps the venue's dead-man's switch armed so the venue cancels when it dies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from ess.executor.binance import BinanceVenue
from ess.executor.config import ExecutorSettings, VenueConfig, VenueCredentials
from ess.executor.service import Countdown, Executor
from ess.kafka import read_to_end
from ess.sim import ExchangeSimulator, Venue
from ess.statelog import KafkaStateLog
from ess.status import serve_status
from schemas import ActionReport, ActivatedEntry, ReasonCode, ResetEntry, TopicRegistry, decode
from tests.helpers import eventually

pytestmark = pytest.mark.integration

KEY = "exec-int-key-Jd83hQ"
SECRET = "exec-int-secret-Pz02vK"
SETTINGS = ExecutorSettings(
    flatten_deadline_s=5.0,
    enforce_interval_s=0.05,
    backoff_initial_s=0.01,
    backoff_max_s=0.2,
    status_port=-1,
)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def activated(seq: int = 0) -> ActivatedEntry:
    return ActivatedEntry(
        seq=seq,
        command_id=f"trip-{seq}",
        ts=T0 + timedelta(seconds=seq),
        reason=ReasonCode.FLASH_CRASH,
        detail="BTC -9% in 20s",
        source="detector:flash_crash",
    )


def reset(seq: int) -> ResetEntry:
    return ResetEntry(
        seq=seq,
        command_id=f"reset-{seq}",
        ts=T0 + timedelta(seconds=seq),
        operators=("alice",),
        nonce=f"n-{seq}",
    )


@pytest.fixture
def account(sim: ExchangeSimulator) -> str:
    name = sim.add_account(KEY, SECRET, name="main", spot={"USDT": "1000", "BTC": "0.2"})
    sim.seed_position(name, "BTCUSDT", "0.5", "60000")
    sim.seed_position(name, "ETHUSDT", "-2", "3000")
    sim.seed_order(name, "BTCUSDT", "BUY", "0.01", "50000")
    sim.seed_order(name, "BTCUSDT", "SELL", "0.5", order_type="STOP_MARKET", trigger_price="55000")
    sim.seed_order(name, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)
    return name


def venues(sim: ExchangeSimulator, **futures: Any) -> list[BinanceVenue]:
    credentials = VenueCredentials(api_key=SecretStr(KEY), secret=SecretStr(SECRET))
    return [
        BinanceVenue(
            VenueConfig(
                name="futures", exchange="binanceusdm", base_url=sim.url, timeout_ms=300, **futures
            ),
            credentials,
        ),
        BinanceVenue(
            VenueConfig(name="spot", exchange="binance", base_url=sim.url, timeout_ms=300),
            credentials,
        ),
    ]


@dataclass
class Running:
    """An executor running in a task, and how to stop it."""

    executor: Executor
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def halt(self) -> None:
        self.stop.set()
        await self.task


Start = Callable[..., Running]


@pytest.fixture
async def start_executor(kafka_bootstrap: str, registry: TopicRegistry) -> AsyncIterator[Start]:
    running: list[Running] = []

    def start(
        venue_list: Sequence[BinanceVenue], countdowns: dict[str, Countdown] | None = None
    ) -> Running:
        executor = Executor(kafka_bootstrap, registry, venue_list, SETTINGS, countdowns=countdowns)
        stop = asyncio.Event()
        handle = Running(executor, stop, asyncio.create_task(executor.run(stop)))
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.stop.set()
        with contextlib.suppress(Exception):
            await handle.task


async def action_reports(bootstrap: str, registry: TopicRegistry) -> list[ActionReport]:
    records = await read_to_end(bootstrap, registry.actions.name)
    return [decode(ActionReport, record.value or b"") for record in records]


async def reported_by_both(
    bootstrap: str, registry: TopicRegistry, outcome: str
) -> list[ActionReport]:
    """``ess.actions`` once both venues reported ``flatten/<outcome>``."""
    reports = await action_reports(bootstrap, registry)
    venues = {r.venue for r in reports if (r.action, r.outcome) == ("flatten", outcome)}
    assert venues == {"futures", "spot"}
    return reports


async def append(bootstrap: str, registry: TopicRegistry, *entries: Any) -> None:
    async with KafkaStateLog(bootstrap, registry.state.name) as log:
        for entry in entries:
            await log.append(entry)


async def test_activation_flattens_both_venues_and_reset_ends_enforcement(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    sim: ExchangeSimulator,
    account: str,
    start_executor: Start,
) -> None:
    executor = start_executor(venues(sim)).executor
    await eventually(lambda: executor.status().caught_up)
    assert executor.status().status == "INACTIVE"
    assert sim.requests("POST", "/fapi/v1/order") == []  # INACTIVE: hands off

    await append(kafka_bootstrap, registry, activated(0))

    reports = await eventually(
        lambda: reported_by_both(kafka_bootstrap, registry, "verified_flat"), timeout=20
    )
    assert sim.positions(account) == {}
    assert sim.open_orders(account) == []
    assert sum(sim.spot_balance(account, "BTC")) == 0
    assert all(r.activation_seq == 0 for r in reports if r.action == "flatten")
    status = executor.status()
    assert status.healthy
    assert status.activation_seq == 0
    assert {p.phase.value for p in status.venues} == {"FLAT"}

    server = await serve_status(executor, executor.metrics.registry, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/status") as answer:
                body = await answer.json()
            async with http.get(server.url + "/metrics") as answer:
                metrics = await answer.text()
    finally:
        await server.stop()
    assert body["status"] == "ACTIVE"
    assert {v["venue"]: v["phase"] for v in body["venues"]} == {"futures": "FLAT", "spot": "FLAT"}
    assert 'ess_executor_venue_flat{venue="futures"} 1.0' in metrics

    await append(kafka_bootstrap, registry, reset(1))

    await eventually(lambda: reported_by_both(kafka_bootstrap, registry, "stopped"), timeout=20)
    assert executor.status().status == "INACTIVE"


async def test_a_restarted_executor_resumes_the_flatten_from_the_log(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    sim: ExchangeSimulator,
    account: str,
    start_executor: Start,
) -> None:
    await append(kafka_bootstrap, registry, activated(0))
    # The first executor's closes execute but are never confirmed: it dies mid-flatten.
    sim.add_fault("POST", "/fapi/v1/order", "exec_then_hang", times=None)
    first = start_executor(venues(sim)[:1])
    await eventually(lambda: len(sim.requests("POST", "/fapi/v1/order")) >= 1, timeout=20)
    await first.halt()

    sim.clear_faults()
    second = start_executor(venues(sim)[:1]).executor
    await eventually(
        lambda: [p.phase.value for p in second.status().venues] == ["FLAT"], timeout=20
    )
    assert sim.positions(account) == {}
    assert sim.open_orders(account, venue=Venue.FUTURES) == []


async def test_the_venue_cancels_orders_once_the_executor_is_gone(
    sim: ExchangeSimulator, account: str, start_executor: Start
) -> None:
    countdown = Countdown(("BTCUSDT",), 1_000)
    running = start_executor(venues(sim)[:1], {"futures": countdown})
    # Re-armed every third of the countdown: four arms span more than one countdown, and the
    # order is still there, because the switch never ran out while the executor lived.
    await eventually(
        lambda: len(sim.requests("POST", "/fapi/v1/countdownCancelAll")) >= 4, timeout=10
    )
    assert sim.open_orders(account, venue=Venue.FUTURES, symbol="BTCUSDT")

    await running.halt()

    await eventually(
        lambda: (
            sim.open_orders(account, venue=Venue.FUTURES, symbol="BTCUSDT", conditional=False) == []
        ),
        timeout=10,
    )
    assert any(event.kind == "countdown_cancel" for event in sim.events)

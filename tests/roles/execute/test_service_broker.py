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

from ess.core.reader import seal_entry
from ess.kafka.clients import producer, read_to_end
from ess.observability.status import serve_status
from ess.roles.execute.service import Countdown, Executor, run_executor
from ess.settings import ExecuteSettings
from ess.sim import ExchangeSimulator, Venue
from ess.statelog import STATE_KEY
from ess.venues import generic
from ess.venues.binance import BinanceVenue
from ess.venues.config import VenueConfig, VenueConfigError, VenueCredentials
from schemas import (
    ActionReport,
    ReasonCode,
    ResetEntry,
    SecurityEvent,
    SecurityEventKind,
    TopicRegistry,
    decode,
    encode,
)
from tests.helpers import eventually
from tests.statelog_support import PROCESSOR, LogBuilder, trust

pytestmark = pytest.mark.integration

KEY = "exec-int-key-Jd83hQ"
SECRET = "exec-int-secret-Pz02vK"
SETTINGS = ExecuteSettings(
    flatten_deadline_sec=5.0,
    enforce_interval_sec=0.05,
    backoff_initial_sec=0.01,
    backoff_max_sec=0.2,
    status_port=-1,
)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def flash_crash(log: LogBuilder) -> None:
    """The next trip of ``log``: ``activated`` when it is INACTIVE."""
    log.trip(
        reason=ReasonCode.FLASH_CRASH,
        detail="BTC -9% in 20s",
        source="detector:flash_crash",
        ts=T0 + timedelta(seconds=len(log.values)),
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
        executor = Executor(
            kafka_bootstrap,
            registry,
            venue_list,
            SETTINGS,
            trust=trust(registry.state.name),
            countdowns=countdowns,
        )
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


async def produce(bootstrap: str, topic: str, *values: bytes) -> None:
    """Write ``values`` to ``topic`` in ONE producer batch: a consumer fetches them together."""
    out = producer(bootstrap, linger_ms=200)
    await out.start()
    try:
        sent = [await out.send(topic, value, key=STATE_KEY) for value in values]
        await out.flush()
        offsets = [(await delivery).offset for delivery in sent]
    finally:
        await out.stop()
    assert offsets == list(range(offsets[0], offsets[0] + len(values)))


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

    log = LogBuilder(registry.state.name)
    flash_crash(log)
    await log.write(kafka_bootstrap, registry.state.name)

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

    log.reset()
    await log.write(kafka_bootstrap, registry.state.name, start=1)

    await eventually(lambda: reported_by_both(kafka_bootstrap, registry, "stopped"), timeout=20)
    assert executor.status().status == "INACTIVE"


async def test_a_restarted_executor_resumes_the_flatten_from_the_log(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    sim: ExchangeSimulator,
    account: str,
    start_executor: Start,
) -> None:
    log = LogBuilder(registry.state.name)
    flash_crash(log)
    await log.write(kafka_bootstrap, registry.state.name)
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


async def test_a_reset_and_the_next_activation_in_one_fetch_leave_the_new_one_enforced(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    sim: ExchangeSimulator,
    account: str,
    start_executor: Start,
) -> None:
    """Issue 13, finding 2: the reset's enforcement stop must not stop the activation that
    follows it in the same fetch (it used to: the stop ran after the new enforcement began
    and took it instead)."""
    topic = registry.state.name
    executor = start_executor(venues(sim)).executor
    log = LogBuilder(topic)
    flash_crash(log)  # seq 0
    await log.write(kafka_bootstrap, topic)
    await eventually(
        lambda: reported_by_both(kafka_bootstrap, registry, "verified_flat"), timeout=20
    )
    fed: list[list[int]] = []
    feed = executor._reader.feed

    def recording_feed(records: Any) -> Any:
        fed.append([record.offset for record in records])
        return feed(records)

    executor._reader.feed = recording_feed  # type: ignore[method-assign]

    log.reset()  # seq 1
    flash_crash(log)  # seq 2
    await produce(kafka_bootstrap, topic, *log.values[1:])

    await eventually(lambda: executor.status().activation_seq == 2, timeout=20)
    assert [1, 2] in fed, f"not delivered in one fetch: {fed}"

    async def enforced_anew() -> bool:
        reports = await action_reports(kafka_bootstrap, registry)
        done = {
            r.venue
            for r in reports
            if (r.action, r.outcome, r.activation_seq) == ("flatten", "verified_flat", 2)
        }
        assert done == {"futures", "spot"}
        return True

    await eventually(enforced_anew, timeout=20)
    # Still enforcing: what trading opens now is closed again.
    sim.seed_position(account, "BTCUSDT", "0.3", "60000")
    await eventually(lambda: sim.positions(account) == {}, timeout=20)
    status = executor.status()
    assert (status.status, status.activation_seq, status.healthy) == ("ACTIVE", 2, True)
    stopped = [
        r
        for r in await action_reports(kafka_bootstrap, registry)
        if (r.action, r.outcome) == ("flatten", "stopped")
    ]
    assert {r.activation_seq for r in stopped} <= {0}, "only the old enforcement stopped"


async def test_a_foreign_reset_in_the_log_does_not_end_enforcement(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    sim: ExchangeSimulator,
    account: str,
    start_executor: Start,
) -> None:
    topic = registry.state.name
    executor = start_executor(venues(sim)[:1]).executor
    log = LogBuilder(topic)
    flash_crash(log)
    await log.write(kafka_bootstrap, topic)
    await eventually(lambda: sim.positions(account) == {}, timeout=20)

    # Anyone with write access to ess.state: a well-formed reset entry, unsigned.
    forged = ResetEntry(
        seq=1, command_id="r-forged", ts=T0, operators=("alice",), nonce="n", detail="forged"
    )
    await produce(kafka_bootstrap, topic, encode(forged))

    await eventually(lambda: executor.status().checks["log"].startswith("untrusted"), timeout=20)
    status = executor.status()
    assert (status.status, status.activation_seq) == ("ACTIVE", 0)
    sim.seed_position(account, "ETHUSDT", "-1", "3000")
    await eventually(lambda: sim.positions(account) == {}, timeout=20)
    reports = await action_reports(kafka_bootstrap, registry)
    assert not [r for r in reports if (r.action, r.outcome) == ("flatten", "stopped")]


async def test_a_processor_signed_reset_without_operator_authorization_ends_nothing(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    sim: ExchangeSimulator,
    account: str,
    start_executor: Start,
) -> None:
    """The processor's key alone cannot reset: a sealed reset that carries no operator's
    signed command breaks the log for the executor, which keeps enforcing."""
    topic = registry.state.name
    executor = start_executor(venues(sim)[:1]).executor
    log = LogBuilder(topic)
    flash_crash(log)
    await log.write(kafka_bootstrap, topic)
    await eventually(lambda: sim.positions(account) == {}, timeout=20)

    unauthorized = ResetEntry(seq=1, command_id="r-1", ts=T0, operators=("alice",), nonce="n")
    _, value = seal_entry(unauthorized, PROCESSOR, scope=topic, prev=log.head)
    await produce(kafka_bootstrap, topic, value)

    await eventually(lambda: not executor.status().healthy, timeout=20)
    status = executor.status()
    assert status.checks["log"].startswith("broken: ")
    assert (status.status, status.activation_seq) == ("ACTIVE", 0)
    sim.seed_position(account, "ETHUSDT", "-1", "3000")
    await eventually(lambda: sim.positions(account) == {}, timeout=20)


async def test_a_venue_refusing_the_credentials_is_reported_as_api_key_invalid(
    kafka_bootstrap: str, registry: TopicRegistry, sim: ExchangeSimulator, account: str
) -> None:
    """Issue 13, item 6: while INACTIVE the executor probes each venue with its credentials;
    a refusal (here: a wrong secret, -1022/-2015 from the simulator) becomes an
    ``api_key_invalid`` security event on ``ess.security``, which detection trips ESS on:
    found now, not in an emergency."""
    wrong = VenueCredentials(api_key=SecretStr(KEY), secret=SecretStr("not-the-secret"))
    venue = BinanceVenue(
        VenueConfig(name="futures", exchange="binanceusdm", base_url=sim.url, timeout_ms=300),
        wrong,
    )
    settings = SETTINGS.model_copy(update={"credential_probe_interval_sec": 0.2})
    executor = Executor(
        kafka_bootstrap, registry, [venue], settings, trust=trust(registry.state.name)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    try:

        async def reported() -> list[SecurityEvent]:
            records = await read_to_end(kafka_bootstrap, registry.security.name)
            events = [decode(SecurityEvent, record.value or b"") for record in records]
            assert events, "no security event yet"
            return events

        events = await eventually(reported, timeout=20)
        # One per probe interval (0.2 s here): a slow read may find more than one.
        assert {event.kind for event in events} == {SecurityEventKind.API_KEY_INVALID}
        assert {event.source for event in events} == {"ess-executor:futures"}
        assert not any("not-the-secret" in event.detail for event in events)
        assert executor.state.status.value == "INACTIVE"  # the trip is detection's job
    finally:
        stop.set()
        await task


async def test_hedge_mode_starts_where_ess_names_the_sides_and_is_refused_elsewhere(
    kafka_bootstrap: str,
    registry: TopicRegistry,
    sim: ExchangeSimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15: ESS closes each side of a hedge-mode (two-sided) account on its own position
    side wherever it knows how the exchange names one (Binance, Bybit, OKX), so such an
    account starts. On any other exchange every close would miss its side and leave the
    position open in an emergency: the executor refuses to start and says how to fix it.
    (The simulator serves only exchanges ESS knows; emptying the table stands for one it
    does not.)"""
    account = sim.add_account("hedge-key", "hedge-secret", name="hedged")
    sim.set_hedge_mode(account)
    sim.seed_position(account, "BTCUSDT", "0.5", sim.mark_price("BTCUSDT"), position_side="LONG")
    credentials = VenueCredentials(api_key=SecretStr("hedge-key"), secret=SecretStr("hedge-secret"))
    configs = [
        (VenueConfig(name="futures", exchange="binanceusdm", base_url=sim.url), credentials),
        (
            VenueConfig(name="bybit", exchange="bybit", market="futures", base_url=sim.url),
            credentials,
        ),
    ]
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_executor(
            registry, kafka_bootstrap, configs, SETTINGS, stop, trust=trust(registry.state.name)
        )
    )
    # started: both venues were read at start (the Bybit positions read included)
    await eventually(lambda: sim.requests("GET", "/v5/position/list", account) != [], timeout=20)
    assert not task.done()
    stop.set()
    await task

    monkeypatch.setattr(generic, "_HEDGE_CLOSES", {})
    with pytest.raises(VenueConfigError, match="hedge") as refused:
        await run_executor(
            registry,
            kafka_bootstrap,
            configs[1:],
            SETTINGS,
            asyncio.Event(),
            trust=trust(registry.state.name),
        )
    assert "one-way mode" in str(refused.value)
    assert "venue bybit" in str(refused.value)

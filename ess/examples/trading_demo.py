"""The whole of ESS in one run: a trading bot, a flash crash, ESS stopping it, venues flat.

``python -m ess.examples.trading_demo`` (part of ``make demo``) starts, in this process:

* the embedded Kafka-compatible broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``) with every ESS
  topic under a fresh prefix;
* the exchange simulator (Binance USD-M futures and spot, 5 ms simulated round trip);
* every ESS role: detection (Faust), the command processor, the executor (over ccxt to the
  simulator, with the futures countdown dead-man's switch) and the projector (PolicyStore
  record in memory, events, health), plus a trading gate reading that record;

then plays a scripted session: a bot buys BTC futures, keeps resting orders and a stop-loss,
holds spot BTC, and publishes its fills, PnL, heartbeats and market ticks to ESS. The market
then falls 3 % in a second. ESS trips on ``flash_crash``, the gate closes, the executor
cancels and flattens both venues, the state log is printed, an operator's signed reset
re-opens trading, the run is recorded and replayed offline (same decisions, HTML report), and
a summary shows the time from the crash record to the account being flat. Exit code 0 when
every step happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from loguru import logger
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from ess.clock import SystemClock
from ess.core.attestation import SigningKey
from ess.core.reader import Trust
from ess.core.signing import generate_private_key, write_key_pair
from ess.gate import PolicyStoreGateFeed, TradingGate
from ess.kafka.broker import kafka_target
from ess.kafka.clients import producer, read_to_end
from ess.observability.logging import configure_logging
from ess.operator.commands import entry_row, read_state, send_command, signed_reset, wait_for_entry
from ess.policystore import InMemoryPolicyStore
from ess.roles.context import RoleContext
from ess.roles.worker import ROLES
from ess.settings import EssSettings
from ess.sim import ExchangeSimulator, Venue
from ess.sim.demo import DEMO_API_KEY, DEMO_SECRET
from ess.statelog import StateLogReader, follow_state
from ess.venues.ccxt_client import make_exchange
from ess.venues.config import VenueConfig, VenueCredentials
from schemas import (
    ActionReport,
    ActivatedEntry,
    Fill,
    HealthBeat,
    MarketTick,
    PnlTick,
    ResetEntry,
    TopicRegistry,
    decode,
    encode,
    topic_registry,
)

ACCOUNT = "bot-1"
SYMBOL, CCXT_SYMBOL = "BTCUSDT", "BTC/USDT:USDT"
START_PRICE = Decimal(60_000)
#: Session steps before the crash, and the pause between them (seconds).
STEPS, STEP_S = 12, 0.15
#: The crash: the mark price falls this much in one step (with 0.5 BTC on a 10k wallet, a
#: 3 % fall costs 9 % of equity: over the 5 % flash-crash limit, under the 10 % daily loss).
CRASH = Decimal("0.03")


@dataclass
class DemoResult:
    """What the summary prints; ``ok`` only when every step happened."""

    reason: str = ""
    trigger: str = ""
    crash_to_active_ms: float | None = None
    crash_to_gate_closed_ms: float | None = None
    crash_to_flat_ms: float | None = None
    venues_flat: bool = False
    gate_reopened: bool = False
    reset_by: str = ""
    actions: dict[str, int] = field(default_factory=dict)
    replay_matches: bool = False
    report: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.reason and self.venues_flat and self.gate_reopened and self.reset_by) and (
            self.crash_to_flat_ms is not None
        )


class Session:
    """The bot: trades on the simulator through ccxt and reports everything to ESS."""

    def __init__(
        self, sim: ExchangeSimulator, sender: AIOKafkaProducer, topics: TopicRegistry
    ) -> None:
        self.sim = sim
        self.sender = sender
        self.topics = topics
        self.exchange = make_exchange("binanceusdm", sim.url, DEMO_API_KEY, DEMO_SECRET)
        self.price = START_PRICE

    async def close(self) -> None:
        await self.exchange.close()

    async def publish(self, topic: str, key: str, record: Any) -> None:
        await self.sender.send_and_wait(topic, encode(record), key=key.encode())

    def equity(self) -> float:
        wallet = self.sim.futures_wallet(ACCOUNT)
        unrealized = sum(
            (position.qty * (self.sim.mark_price(symbol) - position.entry_price))
            for symbol, position in self.sim.positions(ACCOUNT).items()
        )
        return float(wallet + unrealized)

    async def trade(self, side: str, qty: str) -> Fill:
        order = await self.exchange.create_order(CCXT_SYMBOL, "market", side, float(qty))
        return Fill(
            event_id=str(uuid.uuid4()),
            account_id=ACCOUNT,
            venue="binance-futures",
            symbol=SYMBOL,
            side=side,
            qty=float(qty),
            price=float(order.get("average") or self.price),
            realized_pnl=0.0,
            is_stop_loss=False,
            order_id=str(order["id"]),
            ts=datetime.now(UTC),
        )

    async def tick(self, price: Decimal) -> float:
        """Move the market to ``price`` and report tick, heartbeat and PnL; returns equity."""
        self.price = price
        self.sim.set_mark_price(SYMBOL, price)
        now = datetime.now(UTC)
        spread = float(price) * 0.0001
        await self.publish(
            self.topics.market.name,
            SYMBOL,
            MarketTick(
                event_id=str(uuid.uuid4()),
                symbol=SYMBOL,
                bid=float(price) - spread,
                ask=float(price) + spread,
                last=float(price),
                ts=now,
            ),
        )
        await self.publish(
            self.topics.health.name,
            "bot",
            HealthBeat(event_id=str(uuid.uuid4()), component="bot", status="HEALTHY", ts=now),
        )
        equity = self.equity()
        await self.publish(
            self.topics.pnl.name,
            ACCOUNT,
            PnlTick(event_id=str(uuid.uuid4()), account_id=ACCOUNT, equity=equity, ts=now),
        )
        return equity


def _flat(sim: ExchangeSimulator) -> bool:
    return (
        not sim.positions(ACCOUNT)
        and not sim.open_orders(ACCOUNT)
        and sum(sim.spot_balance(ACCOUNT, "BTC")) == 0
    )


async def _when(check: Callable[[], bool]) -> float:
    """``perf_counter()`` at the first poll (every millisecond) where ``check`` holds."""
    while not check():  # noqa: ASYNC110 - polls state owned by others (sim, gate)
        await asyncio.sleep(0.001)
    return time.perf_counter()


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
    """:func:`_when`, bounded: a step that never happens fails the demo and names itself."""
    try:
        await asyncio.wait_for(_when(check), timeout)
    except TimeoutError:
        raise TimeoutError(f"demo: {what} did not happen within {timeout:.0f}s") from None


async def run_demo(console: Console) -> DemoResult:  # noqa: PLR0915 - a script, read top-down
    """Play the scripted session; see the module docstring."""
    result = DemoResult()
    registry = topic_registry(prefix=f"demo-{uuid.uuid4().hex[:8]}")
    keys = Path(tempfile.mkdtemp(prefix="ess-demo-keys-"))
    alice = write_key_pair(generate_private_key(), keys, "alice")
    async with (
        kafka_target(registry) as bootstrap,
        ExchangeSimulator(latency_ms=5.0) as sim,
    ):
        console.print(f"[bold]broker[/] {bootstrap}   [bold]exchange simulator[/] {sim.url}")
        sim.add_account(
            DEMO_API_KEY, DEMO_SECRET, name=ACCOUNT, spot={"USDT": "5000", "BTC": "0.2"}
        )
        settings = EssSettings(
            kafka={"bootstrap_servers": bootstrap, "topic_prefix": registry.prefix},
            keys={"operator_keys_dir": keys, "processor_keys_dir": keys / "processors"},
            command={"status_port": -1},
            project={"refresh_interval_sec": 0.2, "status_port": -1},
            detect={"group": f"{registry.prefix}-detect", "status_port": -1},
            execute={"enforce_interval_sec": 1.0, "status_port": -1},
        )
        processor_key = SigningKey(generate_private_key())
        trust = settings.state_trust(also_trust=processor_key)
        store = InMemoryPolicyStore()
        credentials = VenueCredentials(
            api_key=SecretStr(DEMO_API_KEY), secret=SecretStr(DEMO_SECRET)
        )
        venues = (
            (
                VenueConfig(
                    name="binance-futures",
                    exchange="binanceusdm",
                    account=ACCOUNT,
                    base_url=sim.url,
                    countdown_symbols=(SYMBOL,),
                ),
                credentials,
            ),
            (
                VenueConfig(
                    name="binance-spot", exchange="binance", account=ACCOUNT, base_url=sim.url
                ),
                credentials,
            ),
        )
        stop, detector_ready = asyncio.Event(), asyncio.Event()
        # Every role through its one entry point, as `ess worker` runs them; the projector
        # writes into the store the bot's gate reads.
        context = RoleContext(
            bootstrap=bootstrap,
            trust=trust,
            signing_key=processor_key,
            venues=venues,
            policy_store=store,
            detector_ready=detector_ready,
        )
        roles = {name: run(settings, stop, context) for name, run in ROLES.items()}
        tasks = [asyncio.create_task(job, name=f"demo-{role}") for role, job in roles.items()]
        gate = TradingGate(max_record_age=3.0, name="bot-gate")
        feed = PolicyStoreGateFeed(store, gate, poll_interval=0.02)
        sender = producer(bootstrap)
        await sender.start()
        session = Session(sim, sender, registry)
        try:
            with console.status("starting ESS roles (detect, command, execute, project)..."):
                await asyncio.wait_for(detector_ready.wait(), 90)
                await feed.start()
                await _until(gate.allowed, 30, "the trading gate opening")
            console.print("[green]ESS is up[/]: detection joined, gate open, countdown armed")

            console.rule("[bold]trading session")
            fill = await session.trade("buy", "0.5")
            await session.publish(registry.fills.name, ACCOUNT, fill)
            sim.seed_order(ACCOUNT, SYMBOL, "BUY", "0.1", "55000")
            sim.seed_order(
                ACCOUNT,
                SYMBOL,
                "SELL",
                "0.5",
                order_type="STOP_MARKET",
                trigger_price="50000",
                reduce_only=True,
            )
            sim.seed_order(ACCOUNT, SYMBOL, "SELL", "0.05", "75000", venue=Venue.SPOT)
            console.print(
                f"bot bought 0.5 BTC @ {fill.price:,.0f}; resting buy, stop-loss, spot sell placed"
            )
            price = START_PRICE
            for step in range(STEPS):
                price = (price * (1 + Decimal((-1) ** step) * Decimal("0.0004"))).quantize(
                    Decimal("0.1")
                )
                equity = await session.tick(price)
                if step % 4 == 3:
                    side = "sell" if step % 8 == 3 else "buy"
                    fill = await session.trade(side, "0.01")
                    await session.publish(registry.fills.name, ACCOUNT, fill)
                console.print(
                    f"  t+{step * STEP_S:4.2f}s  BTC {price:>10,.1f}  equity {equity:>10,.2f}  "
                    f"gate {'open' if gate.allowed() else 'CLOSED'}"
                )
                await asyncio.sleep(STEP_S)

            console.rule("[bold red]flash crash")
            state_at = (await read_state(bootstrap, registry, trust)).folded
            # Watchers start before the crash so that what they time is ESS, not themselves.
            gate_closed = asyncio.create_task(_when(lambda: not gate.allowed()))
            venues_flat = asyncio.create_task(_when(lambda: _flat(sim)))
            crash_price = (price * (1 - CRASH)).quantize(Decimal("0.1"))
            crashed, crashed_at = time.perf_counter(), datetime.now(UTC)
            equity = await session.tick(crash_price)
            console.print(f"BTC {price:,.1f} -> {crash_price:,.1f}; equity {equity:,.2f}")

            async def activation() -> ActivatedEntry:
                reader = StateLogReader(trust, name="demo", start=state_at)
                async for records in follow_state(bootstrap, registry, state_at.next_offset):
                    for logged in reader.feed(records).applied:
                        if isinstance(logged.entry, ActivatedEntry):
                            return logged.entry
                raise AssertionError("unreachable")

            entry = await asyncio.wait_for(activation(), 30)
            # The entry's ts is the processor's clock when it decided (same host clock).
            result.crash_to_active_ms = (entry.ts - crashed_at).total_seconds() * 1000
            result.reason = entry.reason.value
            if entry.trigger is not None:
                result.trigger = (
                    f"{entry.trigger.topic}[{entry.trigger.partition}]@{entry.trigger.offset}"
                )
            console.print(
                f"[bold red]ESS ACTIVE[/] {result.crash_to_active_ms:.0f} ms after the crash "
                f"record: {result.reason}\n  {entry.detail}"
            )
            result.crash_to_gate_closed_ms = (
                await asyncio.wait_for(gate_closed, 10) - crashed
            ) * 1000
            console.print(f"trading gate CLOSED after {result.crash_to_gate_closed_ms:.0f} ms")
            result.crash_to_flat_ms = (await asyncio.wait_for(venues_flat, 30) - crashed) * 1000
            result.venues_flat = True
            console.print(
                f"[green]venues flat[/] after {result.crash_to_flat_ms:.0f} ms: no position, "
                "no order (regular or conditional), spot BTC sold"
            )

            console.rule("[bold]state log")
            view = await read_state(bootstrap, registry, trust)
            _print_log(console, [entry_row(e) for e in view.entries])

            console.rule("[bold]signed reset")
            assert view.folded.state.activation is not None
            reset = signed_reset(
                SystemClock(),
                "alice",
                alice.private,
                "demo: crash reviewed",
                activation=view.folded.state.activation,
            )
            await send_command(bootstrap, registry, reset)
            outcome = await wait_for_entry(
                bootstrap, registry, reset.command_id, trust=trust, timeout=30
            )
            if isinstance(outcome, ResetEntry):
                result.reset_by = ", ".join(outcome.operators)
            await _until(gate.allowed, 10, "the gate re-opening")
            result.gate_reopened = True
            console.print(f"reset by {result.reset_by}: ESS INACTIVE, trading gate open again")
            result.actions = await _action_counts(bootstrap, registry)

            console.rule("[bold]audit: record and replay this run")
            await _audit(console, bootstrap, registry, result, trust)
        finally:
            await session.close()
            await feed.stop()
            await sender.stop()
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 30)
    return result


async def _audit(
    console: Console, bootstrap: str, registry: TopicRegistry, result: DemoResult, trust: Trust
) -> None:
    """``ess record`` then ``ess replay`` of this very run: the same decisions, offline."""
    from ess.audit.compare import compare  # noqa: PLC0415 - only the demo's end needs these
    from ess.audit.recording import record  # noqa: PLC0415
    from ess.audit.replay import replay  # noqa: PLC0415
    from ess.audit.report import write_html_report  # noqa: PLC0415

    directory = Path(tempfile.mkdtemp(prefix="ess-demo-recording-"))
    manifest = await record(bootstrap, registry, directory)
    replayed = replay(directory, trust=trust, workers=1)
    comparison = compare(replayed.recorded, replayed.replayed, unreplayable=replayed.unreplayable)
    report = write_html_report(directory / "replay-report.html", replayed, comparison)
    result.replay_matches = comparison.ok
    result.report = str(report)
    verdict = "[green]MATCH[/]" if comparison.ok else "[red]DIFFERENT[/]"
    console.print(
        f"recorded {sum(t.records for t in manifest.topics)} records to {directory}; "
        f"replay decided {len(replayed.replayed)} trip(s): {verdict}; report {report}"
    )


async def _action_counts(bootstrap: str, registry: TopicRegistry) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in await read_to_end(bootstrap, registry.actions.name):
        report = decode(ActionReport, record.value or b"")
        key = f"{report.action}/{report.outcome}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _print_log(console: Console, rows: list[dict[str, str]]) -> None:
    if not rows:
        return
    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


def _print_summary(console: Console, result: DemoResult) -> None:
    table = Table(title="ESS demo summary", show_header=False)
    rows = [
        ("trip", f"{result.reason} (trigger {result.trigger or '-'})"),
        ("crash record -> ESS ACTIVE", _ms(result.crash_to_active_ms)),
        ("crash record -> trading gate closed", _ms(result.crash_to_gate_closed_ms)),
        ("crash record -> account flat", _ms(result.crash_to_flat_ms)),
        ("venues flat (futures + spot)", "yes" if result.venues_flat else "NO"),
        ("reset", f"signed by {result.reset_by}" if result.reset_by else "NO"),
        ("gate re-opened after reset", "yes" if result.gate_reopened else "NO"),
        ("audit replay of this run", f"MATCH ({result.report})" if result.replay_matches else "NO"),
        ("executor reports", ", ".join(f"{k} {v}" for k, v in sorted(result.actions.items()))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def main() -> int:
    console = Console()
    log_path = Path(tempfile.gettempdir()) / "ess-demo.log"
    with log_path.open("w") as log_file:
        logger.enable("ess")  # a program, not a library: ESS's logs on
        configure_logging("INFO", json=True, sink=log_file)
        console.print(f"ESS logs (JSON) go to {log_path}")
        return _run(console)


def _run(console: Console) -> int:
    try:
        result = asyncio.run(run_demo(console))
    except Exception as exc:  # the demo's verdict: say what failed, exit non-zero
        console.print(f"[red]demo failed:[/] {type(exc).__name__}: {exc}")
        return 1
    _print_summary(console, result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The original brief's example, end to end, on fakes.

A trading account with open positions and orders; a health evaluator that fails after
``--fail-after`` seconds; ESS activates, cancels, closes, writes the policy record and
publishes the stop event; the evaluator recovers and ESS stays ACTIVE; then a manual reset.

Run: ``python -m ess.examples.seed_demo`` (exit code 0 when every expectation held).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from loguru import logger
from rich.console import Console
from rich.table import Table

from ess import (
    EMERGENCY_STOP_KEY,
    EmergencyStopController,
    EmergencyStopSystem,
    FakeEventBus,
    FakeExchangeClient,
    FakeHealthEvaluator,
    FakePolicyStore,
)
from ess.observability.logging import configure_logging


async def run_demo(
    fail_after: float = 3.0, interval: float = 1.0, console: Console | None = None
) -> bool:
    """Play the scenario; returns True when every expectation held."""
    out = console or Console()
    exchange = FakeExchangeClient(
        positions={"BTC/USDT": 0.5, "ETH/USDT": -2.0}, open_orders=["o-1", "o-2", "o-3"]
    )
    store = FakePolicyStore()
    bus = FakeEventBus()
    health = FakeHealthEvaluator()
    controller = EmergencyStopController(store, exchange, bus, retry_delay_sec=0.05)
    system = EmergencyStopSystem(
        [health], controller, store, check_interval_sec=interval, first_start=True
    )

    out.rule("[bold]ESS seed demo")
    out.print(f"positions {exchange.positions}, open orders {exchange.open_orders}")
    runner = asyncio.create_task(system.run_forever())

    await asyncio.sleep(fail_after)
    out.print(f"[yellow]t+{fail_after:g}s: health check starts failing")
    health.fail = True
    while not controller.state.active:  # noqa: ASYNC110 - a demo polls what a user would see
        await asyncio.sleep(interval / 10)
    state = controller.state
    active_record = dict(store.data[EMERGENCY_STOP_KEY])
    out.print(f"[bold red]ESS ACTIVE[/]: reason={state.reason} at {state.timestamp}")
    out.print(f"policy record: {active_record}")

    out.print("[green]health recovers; ESS must stay ACTIVE (no automatic reactivation)")
    health.fail = False
    await asyncio.sleep(interval * 2.5)
    stayed_active = controller.state.active

    reset_state = await controller.reset(detail="demo: incident reviewed")
    system.stop()
    await runner

    table = Table(title="outcome")
    table.add_column("check")
    table.add_column("result")
    checks = {
        "positions closed": exchange.positions_closed,
        "orders cancelled": exchange.orders_cancelled,
        "policy record written (active, no auto-recover)": active_record["active"] is True
        and active_record["auto_recover"] is False,
        "stop event published": [e.type for e in bus.events][:1] == ["emergency.stop"],
        "stayed ACTIVE after recovery": stayed_active,
        "manual reset re-enabled trading": not reset_state.active,
        "reset event published": [e.type for e in bus.events]
        == ["emergency.stop", "emergency.reset"],
        "policy record now inactive": store.data[EMERGENCY_STOP_KEY]["active"] is False,
    }
    for name, ok in checks.items():
        table.add_row(name, "[green]yes" if ok else "[red]NO")
    out.print(table)
    out.print(f"state log: {[entry.kind for entry in controller.log]}")
    out.print(f"policy record after reset: {store.data[EMERGENCY_STOP_KEY]}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point of the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fail-after", type=float, default=3.0, help="seconds until failure")
    parser.add_argument("--interval", type=float, default=1.0, help="check interval seconds")
    args = parser.parse_args(argv)
    logger.enable("ess")  # a program, not a library: ESS's logs on
    configure_logging("WARNING", json=False)
    ok = asyncio.run(run_demo(args.fail_after, args.interval))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

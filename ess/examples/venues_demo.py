"""Every venue in one stop: a venues file, ``ess worker``, ``ess trip``, every book flat.

``python -m ess.examples.venues_demo`` (part of ``make demo``) does what a desk does, with
nothing but the shipped commands:

* starts the embedded broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``) with ESS's topics under a
  fresh prefix, and the exchange simulator serving Binance (USD-M, COIN-M, spot), Bybit v5
  (linear and spot) and OKX v5 (swaps and spot) on one loopback port;
* seeds one account per exchange with positions (long and short), resting and conditional
  orders and spot balances;
* writes a venues file naming every one of those books (``binanceusdm``, ``binancecoinm``,
  ``binance``, ``bybit`` futures and spot, ``okx`` futures and spot), with the credentials in
  environment variables as in production, and generates the processor's and an operator's keys
  with ``ess keygen``;
* runs ``ess worker --role command --role execute --role project`` as a child process, waits
  for the executor's ``/status`` to show every venue opened, then runs ``ess trip``;
* waits until the simulator's own books show every account flat (no position, no order in
  either book, no spot balance but the quote), prints a table per venue, and resets ESS with
  ``ess reset`` signed by the operator.

Exit code 0 when every venue ended flat and the reset was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from loguru import logger
from rich.console import Console
from rich.table import Table

from ess.kafka.broker import kafka_target
from ess.observability.logging import configure_logging
from ess.sim import ExchangeSimulator, Venue
from ess.sim.demo import seed_demo_book
from schemas import topic_registry

__all__ = ["VENUES", "DemoVenue", "run_demo"]

#: How long each step may take before the demo fails and names it.
START_WITHIN_S: Final = 120.0
FLAT_WITHIN_S: Final = 60.0
COMMAND_WITHIN_S: Final = 60.0
QUOTE: Final = "USDT"


@dataclass(frozen=True)
class DemoVenue:
    """One ``[[venues]]`` entry of the demo's venues file, on one simulator account."""

    name: str
    exchange: str
    market: str
    account: str
    #: The simulator's book this venue flattens.
    book: Venue
    countdown: bool = False


#: The demo's venues: one simulator account per exchange (an account is what a desk holds
#: at an exchange; two venues of one exchange are its two books).
VENUES: Final = (
    DemoVenue("binance-usdm", "binanceusdm", "futures", "binance", Venue.FUTURES, True),
    DemoVenue("binance-spot", "binance", "spot", "binance", Venue.SPOT),
    DemoVenue("bybit-linear", "bybit", "futures", "bybit", Venue.FUTURES),
    DemoVenue("bybit-spot", "bybit", "spot", "bybit", Venue.SPOT),
    DemoVenue("okx-swap", "okx", "futures", "okx", Venue.FUTURES, True),
    DemoVenue("okx-spot", "okx", "spot", "okx", Venue.SPOT),
)
#: Binance COIN-M (inverse) joins the demo when the simulator lists its book.
COINM: Final = DemoVenue("binance-coinm", "binancecoinm", "futures", "binance", Venue.FUTURES)


def _credentials(account: str) -> tuple[str, str, str]:
    """The simulator account's key, secret and passphrase (demo values, loopback only)."""
    return f"demo-{account}-key", f"demo-{account}-secret", f"demo-{account}-pass"


def _env_stem(venue: DemoVenue) -> str:
    return "ESS_VENUE_" + venue.name.upper().replace("-", "_")


def venues_toml(venues: tuple[DemoVenue, ...], base_url: str) -> str:
    """The venues file, as a desk would write it (credentials only by variable name)."""
    blocks = []
    for venue in venues:
        lines = [
            "[[venues]]",
            f'name = "{venue.name}"',
            f'exchange = "{venue.exchange}"',
            f'market = "{venue.market}"',
            f'account = "{venue.account}"',
            f'base_url = "{base_url}"',
        ]
        if venue.countdown:
            # Binance's countdown is per symbol; ccxt's cancelAllOrdersAfter is account-wide
            # (the symbol only names it).
            symbol = "BTCUSDT" if venue.exchange == "binanceusdm" else "BTC/USDT:USDT"
            lines.append(f'countdown_symbols = ["{symbol}"]')
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def venue_env(venues: tuple[DemoVenue, ...]) -> dict[str, str]:
    """Every venue's credential variables."""
    env: dict[str, str] = {}
    for venue in venues:
        key, secret, passphrase = _credentials(venue.account)
        stem = _env_stem(venue)
        env[f"{stem}_API_KEY"] = key
        env[f"{stem}_SECRET"] = secret
        env[f"{stem}_PASSPHRASE"] = passphrase
    return env


def seed_accounts(sim: ExchangeSimulator, venues: tuple[DemoVenue, ...]) -> list[str]:
    """One account per exchange with the demo book (positions, regular and conditional
    orders, spot balances with a resting sell); COIN-M positions where the book exists."""
    accounts = sorted({venue.account for venue in venues})
    for account in accounts:
        key, secret, passphrase = _credentials(account)
        sim.add_account(
            key,
            secret,
            name=account,
            spot={"BTC": "0.2", "ETH": "1.5", QUOTE: "1000"},
            passphrase=passphrase,
        )
        seed_demo_book(sim, account)
    if any(venue.exchange == "binancecoinm" for venue in venues):
        sim.seed_position("binance", "BTCUSD_PERP", 10, "60000")
        sim.seed_position("binance", "ETHUSD_PERP", -20, "3000")
    return accounts


def exposure(sim: ExchangeSimulator, account: str) -> tuple[int, int, Decimal]:
    """``(positions, open orders, spot base units)`` of ``account`` in the simulator's books."""
    state = sim.account(account)
    spot = Decimal(0)
    for asset in state.spot_free:
        if asset != QUOTE:
            free, locked = sim.spot_balance(account, asset)
            spot += free + locked
    return len(sim.positions(account)), len(sim.open_orders(account)), spot


def flat(sim: ExchangeSimulator, accounts: list[str]) -> bool:
    return all(exposure(sim, account) == (0, 0, Decimal(0)) for account in accounts)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as answer:
            document: dict[str, Any] = json.loads(answer.read())
            return document
    except (OSError, ValueError):
        return None


async def _until(check: Any, timeout: float, what: str) -> Any:  # noqa: ASYNC109
    """Poll ``check`` (every 50 ms) until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise TimeoutError(f"venues demo: {what} did not happen within {timeout:.0f}s")


async def _ess(env: Mapping[str, str], *args: str) -> str:
    """Run ``ess <args>`` (the installed CLI) and return its output; fail on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ess",
        *args,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), COMMAND_WITHIN_S)
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"ess {' '.join(args)} exited {process.returncode}:\n{text}")
    return text


def demo_venues(sim: ExchangeSimulator) -> tuple[DemoVenue, ...]:
    """:data:`VENUES`, plus COIN-M when the simulator lists inverse markets."""
    coinm = getattr(Venue, "COINM", None)
    return (*VENUES, COINM) if coinm is not None and sim.markets(coinm) else VENUES


async def run_demo(console: Console, workdir: Path) -> bool:
    """Play the demo (see the module docstring); ``True`` when every step happened."""
    registry = topic_registry(prefix=f"venues-demo-{uuid.uuid4().hex[:8]}")
    async with kafka_target(registry) as bootstrap, ExchangeSimulator(latency_ms=5.0) as sim:
        venues = demo_venues(sim)
        accounts = seed_accounts(sim, venues)
        venues_file = workdir / "venues.toml"
        venues_file.write_text(venues_toml(venues, sim.url))
        status_port = _free_port()
        env = {
            **os.environ,
            **venue_env(venues),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ESS_TOPIC_PREFIX": registry.prefix,
            "ESS_VENUES_FILE": str(venues_file),
            "ESS_PROCESSOR_KEY_FILE": str(workdir / "keys" / "processor.key"),
            "ESS_PROCESSOR_KEYS_DIR": str(workdir / "keys" / "processors"),
            "ESS_OPERATOR_KEYS_DIR": str(workdir / "operators"),
            "ESS_POLICY_STORE_URL": f"sqlite:///{workdir / 'policy.sqlite3'}",
            "ESS_RESET_QUORUM": "1",
            "ESS_EXECUTOR_STATUS_PORT": str(status_port),
            "ESS_COMMAND_STATUS_PORT": "-1",
            "ESS_STATUS_PORT": "-1",
            "ESS_LOG_LEVEL": "WARNING",
            "COLUMNS": "200",
        }
        await _ess(env, "keygen", "--processor", "--dir", str(workdir / "keys"))
        await _ess(env, "keygen", "--name", "alice", "--dir", str(workdir / "operators"))
        console.print(f"[bold]broker[/] {bootstrap}   [bold]exchange simulator[/] {sim.url}")
        console.print(f"[bold]venues file[/] {venues_file} ({len(venues)} venues)")
        before = {account: exposure(sim, account) for account in accounts}
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ess",
            "worker",
            "--role",
            "command",
            "--role",
            "execute",
            "--role",
            "project",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "worker.log", "wb"),  # noqa: SIM115, ASYNC230 - child's log
        )
        try:
            armed_accounts = {venue.account for venue in venues if venue.countdown}

            def ready() -> bool:
                status = _status(status_port) or {}
                return bool(status.get("caught_up")) and all(
                    sim.countdowns(account) for account in armed_accounts
                )

            with console.status("starting ess worker (command, execute, project)..."):
                await _until(ready, START_WITHIN_S, "the executor arming every dead-man's switch")
            console.print(
                "[green]ESS is up[/]: the executor follows the state log and keeps the "
                f"dead-man's switches of {len(armed_accounts)} exchanges armed"
            )
            started = time.perf_counter()
            console.print((await _ess(env, "trip", "--detail", "venues demo")).strip())
            await _until(lambda: flat(sim, accounts), FLAT_WITHIN_S, "every account flat")
            flat_s = time.perf_counter() - started

            def verified() -> bool:
                status = _status(status_port) or {}
                phases = [venue.get("phase") for venue in status.get("venues", ())]
                return len(phases) == len(venues) and all(p == "FLAT" for p in phases)

            await _until(verified, FLAT_WITHIN_S, "the executor verifying every venue flat")
            table = Table(
                title=f"every book flat {flat_s:.2f} s after `ess trip` started "
                "(including the command's own start)"
            )
            for column in ("account", "positions", "open orders", "spot base units"):
                table.add_column(column)
            for account in accounts:
                positions, orders, spot = before[account]
                after = exposure(sim, account)
                table.add_row(
                    account,
                    f"{positions} -> {after[0]}",
                    f"{orders} -> {after[1]}",
                    f"{spot} -> {after[2]}",
                )
            console.print(table)
            status = _status(status_port) or {}
            for venue in status.get("venues", ()):
                console.print(f"  {venue.get('venue')}: {venue.get('phase')}")
            reset = await _ess(
                env,
                "reset",
                "--operator",
                "alice",
                "--key",
                str(workdir / "operators" / "alice.key"),
                "--detail",
                "venues demo over",
            )
            console.print(reset.strip())
            return "ESS RESET" in reset
        finally:
            worker.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wait(), 30)
            if worker.returncode is None:
                worker.kill()
                await worker.wait()


def main() -> int:
    logger.enable("ess")  # a program, not a library: ESS's logs on
    configure_logging("WARNING")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="ess-venues-demo-") as workdir:
        try:
            ok = asyncio.run(run_demo(console, Path(workdir)))
        except (TimeoutError, RuntimeError) as exc:
            console.print(f"[red]venues demo failed[/]: {exc}")
            log = Path(workdir) / "worker.log"
            if log.exists():
                console.print(log.read_text()[-4000:])
            return 1
    console.print("[green]venues demo: OK[/]" if ok else "[red]venues demo: reset not recorded[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

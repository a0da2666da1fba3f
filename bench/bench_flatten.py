"""How fast does the executor flatten two venues, against a plain sequential ccxt loop?

Run: ``python -m bench.bench_flatten`` from the repository root (about 20 seconds). Writes
``bench/results/flatten.json`` and prints it.

Set-up, per repetition: a fresh exchange simulator (rate budgets start empty) in its own
process (a venue's work is not done on our cores), with 25 generated futures and 25 generated
spot markets and a simulated network round trip of ``LATENCY_MS`` per request (loopback alone
answers in about a millisecond, which would hide what concurrency buys against a venue tens of
milliseconds away). Two accounts are seeded identically (same RNG seed): 25 futures positions
and 25 spot balances (50 positions), each symbol with 4 resting orders (200 orders), over 2
venues (Binance USD-M futures and Binance spot, both through the unmodified ccxt clients over
real HTTP).

* ``flatten_s``: the executor (:class:`ess.roles.execute.engine.VenueFlattener` per venue, run by
  :func:`~ess.roles.execute.engine.enforce_all` over :class:`ess.venues.binance.BinanceVenue`)
  from the start of the activation to both venues reporting ``verified_flat`` (a complete,
  fresh read showing nothing). Clients are opened (markets loaded) beforehand, as in a running
  executor.
* ``sequential_s``: on the second account, a plain loop over ccxt clients built the same way:
  for each venue in turn, list open orders, cancel them symbol by symbol, list positions (or
  balances), close them one by one (reduce-only on futures), and read once more to check.
* ``speedup`` = ``sequential_s / flatten_s``; ``depth_round_trips`` = ``flatten_s /
  round_trip_ms``, where ``round_trip_ms`` is the median of single signed requests measured in
  the same run: a flatten of depth 4 is read, cancel, close, verify. It includes the client's
  own CPU time for the ~110 signed requests (ccxt and aiohttp, about 0.5 ms each here), which
  a real venue's distance would hide less as it shrinks. ``request_waves`` counts the
  sequential waves the venue saw (runs of reads, cancels and orders in arrival order): the
  depth in round trips without the CPU time.

Figures are medians over ``REPEATS`` repetitions; each repetition's figures are kept too.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import SecretStr

from ess.clock import SystemClock
from ess.core import Activation
from ess.roles.execute.engine import VenueFlattener, enforce_all
from ess.settings import ExecuteSettings
from ess.sim import ExchangeSimulator, Venue, default_markets
from ess.sim.demo import seed_many
from ess.venues.binance import BinanceVenue
from ess.venues.ccxt_client import make_exchange
from ess.venues.config import VenueConfig, VenueCredentials
from schemas import ActionReport, ReasonCode

RESULTS = Path(__file__).resolve().parent / "results" / "flatten.json"

SYMBOLS_PER_VENUE = 25
ORDERS_PER_SYMBOL = 4
LATENCY_MS = 20.0
REPEATS = 3
SEED = 7
TARGET_SPEEDUP = 10.0
TARGET_DEPTH = 4.0
SETTINGS = ExecuteSettings(flatten_deadline_sec=30.0, status_port=-1)


def _seed(sim: ExchangeSimulator, key: str) -> str:
    account = sim.add_account(key, key + "-secret", name=key, spot={"USDT": "100000"})
    seed_many(
        sim,
        account,
        futures=SYMBOLS_PER_VENUE,
        spot=SYMBOLS_PER_VENUE,
        orders_per_symbol=ORDERS_PER_SYMBOL,
        seed=SEED,
    )
    return account


def _exposure(sim: ExchangeSimulator, account: str) -> tuple[int, int]:
    """(positions incl. spot base balances, open orders) of ``account``."""
    balances = sum(
        1
        for market in sim.markets(Venue.SPOT)
        if market.symbol.startswith("SIM") and sum(sim.spot_balance(account, market.base)) > 0
    )
    return len(sim.positions(account)) + balances, len(sim.open_orders(account))


async def _executor_flatten(url: str, key: str) -> float:
    credentials = VenueCredentials(api_key=SecretStr(key), secret=SecretStr(key + "-secret"))
    venues = [
        BinanceVenue(VenueConfig(name=exchange, exchange=exchange, base_url=url), credentials)
        for exchange in ("binanceusdm", "binance")
    ]
    flat: set[str] = set()
    done = asyncio.Event()

    def report(item: ActionReport) -> None:
        if (item.action, item.outcome) == ("flatten", "verified_flat"):
            flat.add(item.venue)
            if len(flat) == len(venues):
                done.set()

    try:
        for venue in venues:
            await venue.open()
        flatteners = [
            VenueFlattener(venue, SETTINGS, clock=SystemClock(), report=report) for venue in venues
        ]
        activation = Activation(
            seq=0,
            command_id="bench",
            reason=ReasonCode.MANUAL,
            detail="benchmark",
            source="bench",
            trigger=None,
            ts=datetime.now(UTC),
        )
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(enforce_all(flatteners, activation, stop))
        await asyncio.wait_for(done.wait(), 60)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        return elapsed
    finally:
        for venue in venues:
            await venue.aclose()


async def _sequential_flatten(url: str, key: str) -> float:
    clients = {
        kind: make_exchange(kind, url, key, key + "-secret", timeout_ms=10_000)
        for kind in ("binanceusdm", "binance")
    }
    try:
        for client in clients.values():
            client.options["fetchOpenOrders"] = {"warnWithoutSymbol": False}
            await client.load_markets()
        started = time.perf_counter()
        futures = clients["binanceusdm"]
        for symbol in sorted({order["symbol"] for order in await futures.fetch_open_orders()}):
            await futures.cancel_all_orders(symbol)
        for position in await futures.fetch_positions():
            size = Decimal(str(position["contracts"] or 0))
            if size:
                side = "sell" if position["side"] == "long" else "buy"
                await futures.create_order(
                    position["symbol"], "market", side, float(size), None, {"reduceOnly": True}
                )
        await futures.fetch_positions()
        spot = clients["binance"]
        for symbol in sorted({order["symbol"] for order in await spot.fetch_open_orders()}):
            await spot.cancel_all_orders(symbol)
        balance = await spot.fetch_balance()
        for asset, amount in balance["free"].items():
            symbol = f"{asset}/USDT"
            if asset != "USDT" and amount and symbol in spot.markets:
                await spot.create_order(symbol, "market", "sell", amount)
        await spot.fetch_balance()
        return time.perf_counter() - started
    finally:
        for client in clients.values():
            await client.close()


async def _round_trip_ms(url: str, key: str, samples: int = 20) -> float:
    client = make_exchange("binanceusdm", url, key, key + "-secret")
    try:
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            await client.fapiPrivateV3GetPositionRisk()
            timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings)
    finally:
        await client.close()


def _waves(sim: ExchangeSimulator, account: str) -> int:
    """Sequential request waves of ``account``'s flatten, as the venue saw them arrive: runs
    of the same kind (read, cancel, order) in arrival order. Read, cancel, close, verify: 4."""
    kinds = [
        {"GET": "read", "DELETE": "cancel", "POST": "order"}[entry.method]
        for entry in sorted(sim.requests(account=account), key=lambda entry: entry.ts)
        if not entry.path.endswith("/exchangeInfo")
    ]
    return sum(1 for i, kind in enumerate(kinds) if i == 0 or kind != kinds[i - 1])


def _serve_simulator(conn: Connection) -> None:
    """Child process: the simulator, seeded, answering ``exposure``/``rejections``/``stop``
    over ``conn``. Its own process, because a venue's work is not done on our cores."""
    logger.remove()
    logger.add(sys.stderr, level="ERROR")

    async def serve() -> None:
        markets = default_markets(extra_futures=SYMBOLS_PER_VENUE, extra_spot=SYMBOLS_PER_VENUE)
        async with ExchangeSimulator(markets=markets, latency_ms=LATENCY_MS) as sim:
            accounts = [_seed(sim, key) for key in ("executor", "sequential")]
            conn.send((sim.url, [_exposure(sim, account) for account in accounts]))
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    return
                rejected = sum(
                    sim.rate_counters(venue).rejected + sim.rate_counters(venue).banned
                    for venue in Venue
                )
                exposure = [_exposure(sim, account) for account in accounts]
                conn.send((exposure, rejected, _waves(sim, accounts[0])))

    asyncio.run(serve())


async def _repetition() -> dict[str, Any]:
    ours, theirs = mp.Pipe()
    child = mp.get_context("spawn").Process(target=_serve_simulator, args=(theirs,), daemon=True)
    child.start()
    try:
        loop = asyncio.get_running_loop()
        url, before = await loop.run_in_executor(None, ours.recv)
        round_trip = await _round_trip_ms(url, "executor")
        flatten_s = await _executor_flatten(url, "executor")
        sequential_s = await _sequential_flatten(url, "sequential")
        ours.send("check")
        after, rejected, waves = await loop.run_in_executor(None, ours.recv)
        if any(left != (0, 0) for left in after):
            raise RuntimeError(f"not flat after the flatten (positions, orders): {after}")
        positions, orders = before[0]
        return {
            "positions": positions,
            "orders": orders,
            "round_trip_ms": round(round_trip, 2),
            "flatten_s": round(flatten_s, 4),
            "sequential_s": round(sequential_s, 4),
            "request_waves": waves,
            "rate_limit_rejections": rejected,
        }
    finally:
        ours.send("stop")
        child.join(10)


def run(repeats: int = REPEATS) -> dict[str, Any]:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    runs: list[dict[str, Any]] = [asyncio.run(_repetition()) for _ in range(repeats)]

    def median(field: str) -> float:
        return float(statistics.median(run[field] for run in runs))

    flatten_s, sequential_s, round_trip = (
        median("flatten_s"),
        median("sequential_s"),
        median("round_trip_ms"),
    )
    speedup = sequential_s / flatten_s
    depth = flatten_s * 1000 / round_trip
    return {
        "benchmark": "flatten",
        "positions": runs[0]["positions"],
        "orders": runs[0]["orders"],
        "venues": 2,
        "latency_ms": LATENCY_MS,
        "round_trip_ms": round(round_trip, 2),
        "flatten_s": round(flatten_s, 4),
        "sequential_s": round(sequential_s, 4),
        "speedup": round(speedup, 1),
        "depth_round_trips": round(depth, 2),
        "request_waves": max(run["request_waves"] for run in runs),
        "rate_limit_rejections": sum(run["rate_limit_rejections"] for run in runs),
        "targets": {
            "speedup": TARGET_SPEEDUP,
            "depth_round_trips": TARGET_DEPTH,
            "request_waves": TARGET_DEPTH,
        },
        "met": {
            "speedup": speedup >= TARGET_SPEEDUP,
            "depth_round_trips": depth <= TARGET_DEPTH,
            "request_waves": max(run["request_waves"] for run in runs) <= TARGET_DEPTH,
        },
        "repeats": repeats,
        "runs": runs,
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    result = run(int(args[0]) if args else REPEATS)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""How fast does the executor flatten three exchanges at once, against a plain sequential loop?

Run: ``python -m bench.bench_flatten`` from the repository root (about a minute). Writes
``bench/results/flatten.json`` and prints it.

Set-up, per repetition: a fresh exchange simulator (rate budgets start empty) in its own
process (a venue's work is not done on our cores), with generated futures and spot markets and
a simulated network round trip of ``LATENCY_MS`` per request (loopback alone answers in about a
millisecond, which would hide what concurrency buys against a venue tens of milliseconds
away). Three families, each with its futures book and its spot book, each through unmodified
ccxt over real HTTP: Binance (USD-M and spot, the tuned :class:`~ess.venues.binance.BinanceVenue`),
Bybit v5 (linear and spot) and OKX v5 (swaps and spot), both through the generic
:class:`~ess.venues.generic.CcxtVenue`, built by :func:`ess.venues.config.make_venue` exactly as
the executor builds them from a venues file. :data:`POSITIONS` futures positions and spot
balances (50) are spread over the six books, each symbol with :data:`ORDERS_PER_SYMBOL`
resting orders (200). Two accounts per family are seeded identically (same RNG seed).

* ``flatten_s``: the executor (:class:`ess.roles.execute.engine.VenueFlattener` per venue, run by
  :func:`~ess.roles.execute.engine.enforce_all`) from the start of the activation to every venue
  reporting ``verified_flat`` (a complete, fresh read showing nothing). Clients are opened
  (markets loaded) beforehand, as in a running executor. Per family: until both its books did.
* ``sequential_s``: on the second accounts, a plain loop over ccxt clients, one venue after the
  other: list open orders, cancel them symbol by symbol, list positions (or balances), close
  them one by one (reduce-only on futures), and read once more to check.
* ``speedup`` = ``sequential_s / flatten_s``; ``depth_round_trips`` = ``flatten_s /
  round_trip_ms``, where ``round_trip_ms`` is the median of single signed requests measured in
  the same run. It includes the client's own CPU time for the ~300 signed requests (ccxt and
  aiohttp, 0.5-1 ms each on this machine, more for the generic adapter's unified parsing).
  ``request_waves`` counts, per venue, the sequential waves the venue saw (runs of reads,
  cancels and orders in arrival order): the depth in round trips without the CPU time; the
  target is at most 4 on every venue (read, cancel, close, verify).

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
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import ccxt.async_support as ccxt_async
from loguru import logger
from pydantic import SecretStr

from ess.clock import SystemClock
from ess.core import Activation
from ess.roles.execute.engine import VenueFlattener, enforce_all
from ess.settings import ExecuteSettings
from ess.sim import ExchangeSimulator, Venue, default_markets, localize_urls
from ess.sim.demo import seed_many
from ess.venues.config import VenueConfig, VenueCredentials, make_venue
from ess.venues.ports import VenuePort
from schemas import ActionReport, ReasonCode

RESULTS = Path(__file__).resolve().parent / "results" / "flatten.json"

ORDERS_PER_SYMBOL = 4
LATENCY_MS = 20.0
REPEATS = 3
SEED = 7
TARGET_SPEEDUP = 10.0
TARGET_DEPTH = 4.0
SETTINGS = ExecuteSettings(flatten_deadline_sec=30.0, status_port=-1)


@dataclass(frozen=True)
class Family:
    """One exchange in the benchmark: its ccxt ids per book and its share of the book."""

    name: str
    futures_id: str
    spot_id: str
    futures: int
    spot: int

    @property
    def generated(self) -> tuple[int, int]:
        return self.futures, self.spot


#: 50 positions over six books: Binance gets the odd ones.
FAMILIES: Final = (
    Family("binance", "binanceusdm", "binance", 9, 9),
    Family("bybit", "bybit", "bybit", 8, 8),
    Family("okx", "okx", "okx", 8, 8),
)
POSITIONS: Final = sum(f.futures + f.spot for f in FAMILIES)
#: The generated markets: each family's accounts use the first ``futures``/``spot`` of them.
MARKETS: Final = max(max(f.generated) for f in FAMILIES)


def _key(family: Family, role: str) -> str:
    return f"{role}-{family.name}"


def _secret(key: str) -> str:
    return key + "-secret"


def _passphrase(key: str) -> str:
    return key + "-pass"


def _seed(sim: ExchangeSimulator, family: Family, role: str) -> str:
    key = _key(family, role)
    account = sim.add_account(
        key, _secret(key), name=key, spot={"USDT": "100000"}, passphrase=_passphrase(key)
    )
    seed_many(
        sim,
        account,
        futures=family.futures,
        spot=family.spot,
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


def _credentials(key: str) -> VenueCredentials:
    return VenueCredentials(
        api_key=SecretStr(key),
        secret=SecretStr(_secret(key)),
        passphrase=SecretStr(_passphrase(key)),
    )


def _venues(url: str, family: Family) -> list[VenuePort]:
    """The family's two books, built as the executor builds them from a venues file."""
    key = _key(family, "executor")
    return [
        make_venue(
            VenueConfig(
                name=f"{family.name}-{market}",
                exchange=exchange,
                market=market,
                account=key,
                base_url=url,
                timeout_ms=10_000,
            ),
            _credentials(key),
        )
        for exchange, market in ((family.futures_id, "futures"), (family.spot_id, "spot"))
    ]


async def _executor_flatten(venues: dict[str, list[VenuePort]]) -> tuple[float, dict[str, float]]:
    """The executor over every family's opened books: total seconds and seconds per family."""
    every = [venue for books in venues.values() for venue in books]
    flat_at: dict[str, float] = {}
    done = asyncio.Event()

    def report(item: ActionReport) -> None:
        if (item.action, item.outcome) == ("flatten", "verified_flat"):
            flat_at.setdefault(item.venue, time.perf_counter())
            if len(flat_at) == len(every):
                done.set()

    flatteners = [
        VenueFlattener(venue, SETTINGS, clock=SystemClock(), report=report) for venue in every
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
    per_family = {
        name: max(flat_at[venue.name] for venue in books) - started
        for name, books in venues.items()
    }
    return elapsed, per_family


def _client(exchange: str, url: str, key: str) -> Any:
    client = getattr(ccxt_async, exchange)(
        {
            "apiKey": key,
            "secret": _secret(key),
            "password": _passphrase(key),
            "timeout": 10_000,
            "enableRateLimit": False,
        }
    )
    localize_urls(client, url)
    client.options["warnOnFetchOpenOrdersWithoutSymbol"] = False
    return client


async def _sequential_book(client: Any, market: str) -> None:
    """A plain loop over one book: cancel by symbol, close one by one, read once more."""
    # Bybit pages open orders (20 rows): without paging, the loop would miss some.
    orders = await client.fetch_open_orders(
        None, None, None, {"paginate": True} if client.id == "bybit" else {}
    )
    by_symbol: dict[str, list[str]] = {}
    for order in orders:
        by_symbol.setdefault(order["symbol"], []).append(order["id"])
    for symbol, ids in sorted(by_symbol.items()):
        if client.has.get("cancelAllOrders"):
            await client.cancel_all_orders(symbol)
        else:
            await client.cancel_orders(ids, symbol)
    if market == "futures":
        for position in await client.fetch_positions():
            size = Decimal(str(position["contracts"] or 0))
            if size:
                side = "sell" if position["side"] == "long" else "buy"
                await client.create_order(
                    position["symbol"], "market", side, float(size), None, {"reduceOnly": True}
                )
        await client.fetch_positions()
        return
    balance = await client.fetch_balance()
    for asset, amount in balance["free"].items():
        symbol = f"{asset}/USDT"
        if asset != "USDT" and amount and symbol in client.markets:
            await client.create_order(symbol, "market", "sell", amount)
    await client.fetch_balance()


async def _sequential_flatten(url: str) -> dict[str, float]:
    """Seconds per family for the plain loop, one book after the other."""
    seconds: dict[str, float] = {}
    for family in FAMILIES:
        key = _key(family, "sequential")
        books = {
            "futures": _client(family.futures_id, url, key),
            "spot": _client(family.spot_id, url, key),
        }
        try:
            for market, client in books.items():
                client.options["defaultType"] = "swap" if market == "futures" else "spot"
                await client.load_markets()
            started = time.perf_counter()
            for market, client in books.items():
                await _sequential_book(client, market)
            seconds[family.name] = time.perf_counter() - started
        finally:
            for client in books.values():
                await client.close()
    return seconds


async def _round_trip_ms(url: str, samples: int = 20) -> float:
    key = _key(FAMILIES[0], "executor")
    client = _client("binanceusdm", url, key)
    try:
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            await client.fapiPrivateV3GetPositionRisk()
            timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings)
    finally:
        await client.close()


def _kind(method: str, path: str) -> str:
    """A request as a flatten wave sees it: a read, a cancel or an order."""
    if method == "GET":
        return "read"
    if method == "DELETE" or "cancel" in path.lower():
        return "cancel"
    return "order"


def _waves(sim: ExchangeSimulator, account: str, since: int) -> dict[str, int]:
    """Sequential request waves per book of ``account``'s flatten (requests after the
    ``since``-th of the log), as the venue saw them arrive: runs of the same kind in arrival
    order. Read, cancel, close, verify: 4."""
    waves: dict[str, int] = {}
    for venue in Venue:
        kinds = [
            _kind(entry.method, entry.path)
            for entry in sorted(sim.log[since:], key=lambda entry: entry.ts)
            if entry.account == account and entry.venue is venue
        ]
        if kinds:
            waves[venue.value] = sum(1 for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1])
    return waves


def _serve_simulator(conn: Connection) -> None:
    """Child process: the simulator, seeded, answering ``mark``/``check``/``stop`` over
    ``conn``. Its own process, because a venue's work is not done on our cores."""
    logger.remove()
    logger.add(sys.stderr, level="ERROR")

    async def serve() -> None:
        markets = default_markets(extra_futures=MARKETS, extra_spot=MARKETS)
        async with ExchangeSimulator(markets=markets, latency_ms=LATENCY_MS) as sim:
            accounts = {
                (family.name, role): _seed(sim, family, role)
                for family in FAMILIES
                for role in ("executor", "sequential")
            }
            before = {key: _exposure(sim, account) for key, account in accounts.items()}
            conn.send((sim.url, before))
            loop = asyncio.get_running_loop()
            mark = 0
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    return
                if command == "mark":
                    mark = len(sim.log)
                    conn.send(mark)
                    continue
                rejected = sum(
                    counters.rejected + counters.banned
                    for family in FAMILIES
                    for venue in (Venue.FUTURES, Venue.SPOT)
                    for counters in (sim.rate_counters(venue, family=family.name),)
                )
                after = {key: _exposure(sim, account) for key, account in accounts.items()}
                waves = {
                    family.name: _waves(sim, accounts[(family.name, "executor")], mark)
                    for family in FAMILIES
                }
                conn.send((after, rejected, waves))

    asyncio.run(serve())


async def _repetition() -> dict[str, Any]:
    ours, theirs = mp.Pipe()
    child = mp.get_context("spawn").Process(target=_serve_simulator, args=(theirs,), daemon=True)
    child.start()
    venues: dict[str, list[VenuePort]] = {}
    try:
        loop = asyncio.get_running_loop()
        url, before = await loop.run_in_executor(None, ours.recv)
        round_trip = await _round_trip_ms(url)
        venues = {family.name: _venues(url, family) for family in FAMILIES}
        for books in venues.values():
            for venue in books:
                await venue.open()
        ours.send("mark")
        await loop.run_in_executor(None, ours.recv)
        flatten_s, flatten_by_family = await _executor_flatten(venues)
        sequential_by_family = await _sequential_flatten(url)
        ours.send("check")
        after, rejected, waves = await loop.run_in_executor(None, ours.recv)
        left = {f"{name}/{role}": v for (name, role), v in after.items() if v != (0, 0)}
        if left:
            raise RuntimeError(f"not flat after the flatten (positions, orders): {left}")
        families = {
            family.name: {
                "positions": before[(family.name, "executor")][0],
                "orders": before[(family.name, "executor")][1],
                "flatten_s": round(flatten_by_family[family.name], 4),
                "sequential_s": round(sequential_by_family[family.name], 4),
                "request_waves": waves[family.name],
            }
            for family in FAMILIES
        }
        return {
            "positions": sum(row["positions"] for row in families.values()),
            "orders": sum(row["orders"] for row in families.values()),
            "round_trip_ms": round(round_trip, 2),
            "flatten_s": round(flatten_s, 4),
            "sequential_s": round(sum(sequential_by_family.values()), 4),
            "request_waves": max(
                count for row in families.values() for count in row["request_waves"].values()
            ),
            "rate_limit_rejections": rejected,
            "families": families,
        }
    finally:
        for books in venues.values():
            for venue in books:
                await venue.aclose()
        ours.send("stop")
        child.join(10)


def _family_row(runs: list[dict[str, Any]], family: Family) -> dict[str, Any]:
    """One family's medians over the runs; request waves are the worst run's, per book."""
    rows = [run["families"][family.name] for run in runs]
    flatten_s = statistics.median(row["flatten_s"] for row in rows)
    sequential_s = statistics.median(row["sequential_s"] for row in rows)
    return {
        "positions": rows[0]["positions"],
        "orders": rows[0]["orders"],
        "flatten_s": round(flatten_s, 4),
        "sequential_s": round(sequential_s, 4),
        "speedup": round(sequential_s / flatten_s, 1),
        "request_waves": {
            book: max(row["request_waves"].get(book, 0) for row in rows)
            for book in ("futures", "spot")
        },
    }


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
    waves = max(run["request_waves"] for run in runs)
    return {
        "benchmark": "flatten",
        "positions": runs[0]["positions"],
        "orders": runs[0]["orders"],
        "venues": 2 * len(FAMILIES),
        "latency_ms": LATENCY_MS,
        "round_trip_ms": round(round_trip, 2),
        "flatten_s": round(flatten_s, 4),
        "sequential_s": round(sequential_s, 4),
        "speedup": round(speedup, 1),
        "depth_round_trips": round(depth, 2),
        "request_waves": waves,
        "rate_limit_rejections": sum(run["rate_limit_rejections"] for run in runs),
        "families": {family.name: _family_row(runs, family) for family in FAMILIES},
        "targets": {
            "speedup": TARGET_SPEEDUP,
            "depth_round_trips": TARGET_DEPTH,
            "request_waves_per_venue": TARGET_DEPTH,
        },
        "met": {
            "speedup": speedup >= TARGET_SPEEDUP,
            "depth_round_trips": depth <= TARGET_DEPTH,
            "request_waves_per_venue": waves <= TARGET_DEPTH,
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

"""Serve the exchange simulator standalone: ``python -m ess.sim --port 8090 --seed-demo``.

For demos and for humans poking at it with ccxt or curl. Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from ess.observability.logging import configure_logging
from ess.sim.demo import DEMO_API_KEY, DEMO_PASSPHRASE, DEMO_SECRET, seed_demo, seed_many
from ess.sim.markets import default_markets
from ess.sim.server import ExchangeSimulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ess.sim",
        description="Exchange simulator on loopback: Binance, Bybit v5 and OKX v5 for ccxt.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument(
        "--seed-demo", action="store_true", help="add the demo account with positions"
    )
    parser.add_argument(
        "--futures-symbols", type=int, default=0, help="extra generated futures markets"
    )
    parser.add_argument("--spot-symbols", type=int, default=0, help="extra generated spot markets")
    parser.add_argument(
        "--seed", type=int, default=0, help="RNG seed for faults and generated books"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="simulated network round trip per request"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--json-logs", action="store_true")
    return parser


async def serve(args: argparse.Namespace, *, stop: asyncio.Event | None = None) -> None:
    """Start the simulator, print how to reach it, serve until ``stop`` is set (by default:
    until SIGINT or SIGTERM)."""
    sim = ExchangeSimulator(
        markets=default_markets(extra_futures=args.futures_symbols, extra_spot=args.spot_symbols),
        seed=args.seed,
        latency_ms=args.latency_ms,
    )
    await sim.start(args.host, args.port)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
                handled.append(signum)
    try:
        lines = [f"ESS exchange simulator at {sim.url}"]
        if args.seed_demo:
            account = seed_demo(sim)
            seed_many(
                sim, account, futures=args.futures_symbols, spot=args.spot_symbols, seed=args.seed
            )
            lines.append(
                f"demo account: apiKey={DEMO_API_KEY} secret={DEMO_SECRET} "
                f"password={DEMO_PASSPHRASE} (OKX)"
            )
            lines.append(
                "ccxt: ess.sim.make_exchange('binanceusdm', url, apiKey, secret) "
                "(or 'binance' for spot); any ccxt client (bybit, okx, binancecoinm...): "
                "ess.sim.localize_urls(client, url)"
            )
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json=args.json_logs)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m ess.sim``: the standalone simulator for demos and humans."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from ess.sim import make_exchange
from ess.sim.__main__ import build_parser, serve
from ess.sim.demo import DEMO_API_KEY, DEMO_SECRET
from tests.helpers import eventually

pytestmark = pytest.mark.integration


async def demo_positions(url: str) -> list[str]:
    client = make_exchange("binanceusdm", url, DEMO_API_KEY, DEMO_SECRET)
    try:
        return sorted(p["symbol"] for p in await client.fetch_positions())
    finally:
        await client.close()


async def test_serve_seeds_the_demo_and_stops_on_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(
        ["--port", "0", "--seed-demo", "--futures-symbols", "2", "--spot-symbols", "1"]
    )
    stop = asyncio.Event()
    server = asyncio.ensure_future(serve(args, stop=stop))
    try:
        banner = await eventually(lambda: capsys.readouterr().out, timeout=5)
        url = banner.splitlines()[0].rsplit(" ", 1)[1]

        assert f"apiKey={DEMO_API_KEY}" in banner
        assert await demo_positions(url) == [
            "BTC/USDT:USDT",
            "ETH/USDT:USDT",
            "SIM001/USDT:USDT",
            "SIM002/USDT:USDT",
            "SOL/USDT:USDT",
        ]
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=5)


async def test_module_runs_standalone_and_exits_cleanly_on_sigint() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ess.sim",
        "--port",
        "0",
        "--seed-demo",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        url = line.decode().strip().rsplit(" ", 1)[1]

        assert len(await demo_positions(url)) == 3

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

"""Ready-made simulator state: the demo account, and many-symbol books for benchmarks.

Everything here is deterministic: the same arguments (and ``seed``) give the same book, so a
benchmark run can be repeated exactly.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Final

from ess.sim.markets import Venue
from ess.sim.server import ExchangeSimulator

__all__ = [
    "DEMO_API_KEY",
    "DEMO_PASSPHRASE",
    "DEMO_POSITIONS",
    "DEMO_SECRET",
    "seed_demo",
    "seed_demo_book",
    "seed_many",
]

#: Credentials of the demo account. They are public by design (printed by ``python -m ess.sim``)
#: and only ever valid against a simulator.
DEMO_API_KEY: Final = "ess-demo-key"
DEMO_SECRET: Final = "ess-demo-secret"  # noqa: S105 - a published demo credential
#: OKX also signs with a passphrase (ccxt's ``password``).
DEMO_PASSPHRASE: Final = "ess-demo-pass"  # noqa: S105 - a published demo credential


#: The demo account's futures positions: symbol -> (signed size, entry price).
DEMO_POSITIONS: Final = {
    "BTCUSDT": ("0.5", "58000"),
    "ETHUSDT": ("-2", "3100"),
    "SOLUSDT": ("10", "140"),
}


def seed_demo(
    sim: ExchangeSimulator,
    *,
    api_key: str = DEMO_API_KEY,
    secret: str = DEMO_SECRET,
    name: str = "demo",
) -> str:
    """Add the demo account and return its name.

    Futures: BTC +0.5 @ 58000, ETH -2 @ 3100, SOL +10 @ 140; a BTC limit buy, an ETH reduce-only
    limit buy and a BTC reduce-only stop-market (in the algo book). Spot: 0.2 BTC (0.05 of it
    locked by a limit sell), 1.5 ETH and 1000 USDT.
    """
    account = sim.add_account(
        api_key,
        secret,
        name=name,
        spot={"BTC": "0.2", "ETH": "1.5", "USDT": "1000"},
        passphrase=DEMO_PASSPHRASE,
    )
    seed_demo_book(sim, account)
    return account


def seed_demo_book(sim: ExchangeSimulator, account: str) -> None:
    """The demo's positions and orders on an existing ``account`` (see :func:`seed_demo`); the
    spot sell needs 0.05 BTC on the account's spot balance."""
    for symbol, (size, entry) in DEMO_POSITIONS.items():
        sim.seed_position(account, symbol, size, entry)
    sim.seed_order(account, "BTCUSDT", "BUY", "0.01", "50000")
    sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800", reduce_only=True)
    sim.seed_order(
        account,
        "BTCUSDT",
        "SELL",
        "0.5",
        order_type="STOP_MARKET",
        trigger_price="55000",
        reduce_only=True,
    )
    sim.seed_order(account, "BTCUSDT", "SELL", "0.05", "70000", venue=Venue.SPOT)


def seed_many(
    sim: ExchangeSimulator,
    account: str,
    *,
    futures: int = 0,
    spot: int = 0,
    orders_per_symbol: int = 1,
    seed: int = 0,
) -> None:
    """Seed ``futures`` positions and ``spot`` base balances on generated markets.

    Uses the simulator's generated ``SIM...USDT`` markets (build it with
    ``markets=default_markets(extra_futures=..., extra_spot=...)``), random sides and sizes from
    ``seed``, and ``orders_per_symbol`` resting limit orders away from the mark on each symbol.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible benchmark data, not crypto
    for venue, count in ((Venue.FUTURES, futures), (Venue.SPOT, spot)):
        generated = [m for m in sim.markets(venue) if m.symbol.startswith("SIM")]
        if count > len(generated):
            raise ValueError(f"only {len(generated)} generated {venue} markets, {count} wanted")
        for market in generated[:count]:
            qty = Decimal(rng.randint(1, 500)) * market.step_size
            if venue is Venue.FUTURES:
                side = rng.choice((-1, 1))
                drift = Decimal(rng.randint(-500, 500)) / 10_000
                entry = (market.mark_price * (1 + drift)).quantize(market.tick_size)
                sim.seed_position(account, market.symbol, qty * side, entry)
            else:
                free, _ = sim.spot_balance(account, market.base)
                sim.seed_balance(account, market.base, free + qty * (orders_per_symbol + 1))
            for _ in range(orders_per_symbol):
                below = (market.mark_price * Decimal("0.8")).quantize(market.tick_size)
                above = (market.mark_price * Decimal("1.2")).quantize(market.tick_size)
                if venue is Venue.SPOT:
                    sim.seed_order(account, market.symbol, "SELL", qty, above, venue=venue)
                else:
                    sim.seed_order(account, market.symbol, "BUY", qty, below, venue=venue)

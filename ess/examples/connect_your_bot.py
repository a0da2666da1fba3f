"""Connect a trading bot to ESS: report fills, PnL and heartbeats, and ask the gate first.

:func:`run_bot` is the "Connect your bot" section of the README and ``docs/connect-your-bot.md``,
line for line; ``tests/client/test_connect_your_bot.py`` runs it against a real broker and a
real Redis. Everything it imports comes with the plain ``pip install ess``.

``python -m ess.examples.connect_your_bot`` runs it once against ``KAFKA_BOOTSTRAP_SERVERS``
(``ess broker`` starts a local one) and the PolicyStore at ``ESS_REDIS_URL`` or
``ESS_POLICY_STORE_URL`` (default ``memory://``: no record, so the gate stays closed, which
is what a gate does when it cannot tell), under ``ESS_TOPIC_PREFIX`` (default ``ess``).
"""

from __future__ import annotations

import asyncio
import os
import sys

from loguru import logger

from ess.client import AsyncEssPublisher, GateStatus, connect_gate


async def run_bot(kafka: str, policy_store: str, prefix: str = "ess") -> GateStatus:
    """Report a fill (only if the gate allows trading), PnL and heartbeats, then retire."""
    async with (
        AsyncEssPublisher(kafka, topic_prefix=prefix) as ess,  # topics <prefix>.fills, ...
        ess.heartbeat("bot-1", interval=5.0) as beat,  # a beat now, then every 5 s
        connect_gate(policy_store) as gate,  # the record ESS writes to the PolicyStore
    ):
        status = gate.status()  # fails closed: allowed only on a fresh "inactive" record
        if status.allowed:
            # ... place the order on your venue; then report the fill:
            await ess.fill(
                account_id="acct-1",
                venue="binance",
                symbol="BTCUSDT",
                side="buy",
                qty=0.01,
                price=60_000.0,
                realized_pnl=0.0,
                is_stop_loss=False,
                order_id="o-1",
            )
        await ess.pnl_tick(account_id="acct-1", equity=10_250.0)
        await beat.retire()  # stopping for good: ESS will not count bot-1 as lost
    return status


def main() -> int:
    """Run :func:`run_bot` once; exit 0 when every record was delivered."""
    logger.enable("ess")  # a program, not a library: ESS's logs on
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not kafka:
        print("set KAFKA_BOOTSTRAP_SERVERS (`ess broker` starts a local broker)", file=sys.stderr)
        return 2
    store = os.environ.get("ESS_REDIS_URL") or os.environ.get("ESS_POLICY_STORE_URL") or "memory://"
    prefix = os.environ.get("ESS_TOPIC_PREFIX", "ess")
    status = asyncio.run(run_bot(kafka, store, prefix))
    print(f"gate {'open' if status.allowed else 'closed'} ({status.reason});")
    print(f"sent to {prefix}.fills/.pnl/.health: fill only if open, PnL, running + retired beats")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared pieces of the client tests: one sample per input record, reading topics back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from aiokafka import ConsumerRecord

from ess.kafka.clients import read_to_end
from schemas import TopicRegistry

#: A fixed event time: ids derived from it are the same in every run.
TS: Final = datetime(2026, 11, 22, 10, 15, 0, 123000, tzinfo=UTC)

#: Fields of one valid record per input record model (``ts``/``event_id`` left to the client).
#: A new input topic without a sample here fails ``test_every_input_record_has_a_sample``.
SAMPLES: Final[dict[str, dict[str, Any]]] = {
    "Fill": {
        "account_id": "acct-1",
        "venue": "binance",
        "symbol": "BTCUSDT",
        "side": "buy",
        "qty": 0.5,
        "price": 60_000.0,
        "realized_pnl": -12.5,
        "is_stop_loss": False,
        "order_id": "o-1",
    },
    "PnlTick": {"account_id": "acct-2", "equity": 10_250.0},
    "OrderSubmitted": {
        "account_id": "acct-3",
        "venue": "bybit",
        "symbol": "ETHUSDT",
        "side": "sell",
        "qty": 2.0,
        "price": 3_000.0,
        "notional": 6_000.0,
    },
    "OrderError": {
        "account_id": "acct-4",
        "venue": "okx",
        "symbol": "SOLUSDT",
        "kind": "reject",
        "code": "51008",
        "message": "insufficient margin",
    },
    "HealthBeat": {"component": "bot-7", "status": "HEALTHY", "checks": {"feed": "ok"}},
    "LatencySample": {"component": "gateway-2", "operation": "place_order", "latency_ms": 12.5},
    "MarketTick": {"symbol": "XRPUSDT", "bid": 0.5, "ask": 0.51, "last": 0.505},
    "SecurityEvent": {"kind": "api_key_changed", "source": "auth-1", "detail": "key rotated"},
}


async def read_topic(
    bootstrap: str, registry: TopicRegistry, logical: str
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of one topic, all partitions, in partition order."""
    spec = getattr(registry, logical)
    records: list[ConsumerRecord[bytes, bytes]] = []
    for partition in range(spec.partitions):
        records.extend(await read_to_end(bootstrap, spec.name, partition))
    return records

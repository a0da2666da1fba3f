"""Builders of contract input records as JSON-ready dicts (the wire form producers send),
shared by the suites that feed detection: live (``tests/roles/detect``) and replayed
(``tests/audit``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def pnl(account: str, equity: float, ts: datetime) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "account_id": account, "equity": equity, "ts": _iso(ts)}


def fill(
    account: str,
    ts: datetime,
    *,
    stop_loss: bool = False,
    qty: float = 1.0,
    price: float = 100.0,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "account_id": account,
        "venue": "binance",
        "symbol": "BTCUSDT",
        "side": "buy",
        "qty": qty,
        "price": price,
        "realized_pnl": -1.0,
        "is_stop_loss": stop_loss,
        "order_id": uuid.uuid4().hex,
        "ts": _iso(ts),
    }


def order(account: str, ts: datetime, notional: float) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "account_id": account,
        "venue": "binance",
        "symbol": "BTCUSDT",
        "side": "buy",
        "qty": 1.0,
        "price": notional,
        "notional": notional,
        "ts": _iso(ts),
    }


def order_error(account: str, ts: datetime, kind: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "account_id": account,
        "venue": "binance",
        "symbol": "BTCUSDT",
        "kind": kind,
        "code": "-2010",
        "message": "rejected",
        "ts": _iso(ts),
    }


def beat(component: str, ts: datetime, status: str = "HEALTHY", **checks: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "component": component,
        "status": status,
        "checks": checks,
        "ts": _iso(ts),
    }


def latency(component: str, ts: datetime, ms: float) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "component": component,
        "operation": "place_order",
        "latency_ms": ms,
        "ts": _iso(ts),
    }


def tick(symbol: str, ts: datetime, bid: float = 99.0, ask: float = 101.0) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "symbol": symbol,
        "bid": bid,
        "ask": ask,
        "last": 100.0,
        "ts": _iso(ts),
    }


def security(kind: str, source: str, ts: datetime) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "kind": kind,
        "source": source,
        "detail": f"{kind} seen",
        "ts": _iso(ts),
    }


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)

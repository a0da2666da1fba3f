"""One valid, JSON-compatible example of every contract record, keyed by model name.

Examples are plain dicts (what a producer would send), so tests can break one field at a time.
"""

from __future__ import annotations

import copy
import json
from typing import Any

TS = "2026-11-22T10:15:00.123+00:00"
TS_OTHER_OFFSET = "2026-11-22T12:15:00.123+02:00"

TRIGGER: dict[str, Any] = {
    "topic": "ess.fills",
    "partition": 2,
    "offset": 41,
    "event_ts": "2026-11-22T10:14:59.900+00:00",
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "Fill": {
        "event_id": "fill-1",
        "account_id": "acct-1",
        "venue": "binance",
        "symbol": "BTC/USDT",
        "side": "buy",
        "qty": 0.5,
        "price": 42000.5,
        "realized_pnl": -12.25,
        "is_stop_loss": False,
        "order_id": "ord-1",
        "ts": TS,
    },
    "PnlTick": {"event_id": "pnl-1", "account_id": "acct-1", "equity": 100000.0, "ts": TS},
    "OrderSubmitted": {
        "event_id": "os-1",
        "account_id": "acct-1",
        "venue": "binance",
        "symbol": "BTC/USDT",
        "side": "sell",
        "qty": 1.5,
        "price": 41000.0,
        "notional": 61500.0,
        "ts": TS,
    },
    "OrderError": {
        "event_id": "oe-1",
        "account_id": "acct-1",
        "venue": "binance",
        "symbol": "BTC/USDT",
        "kind": "reject",
        "code": "-2010",
        "message": "insufficient balance",
        "ts": TS,
    },
    "HealthBeat": {
        "event_id": "hb-1",
        "component": "gateway",
        "status": "DEGRADED",
        "checks": {"exchange": "up", "data_feed": "stale", "policy_store": "ok"},
        "ts": TS,
    },
    "LatencySample": {
        "event_id": "lat-1",
        "component": "gateway",
        "operation": "place_order",
        "latency_ms": 12.5,
        "ts": TS,
    },
    "MarketTick": {
        "event_id": "mt-1",
        "symbol": "BTC/USDT",
        "bid": 41999.5,
        "ask": 42000.5,
        "last": 42000.0,
        "ts": TS,
    },
    "SecurityEvent": {
        "event_id": "sec-1",
        "kind": "api_key_changed",
        "source": "auth",
        "detail": "key rotated outside change window",
        "ts": TS,
    },
    "TripCommand": {
        "command_id": "trip-1",
        "kind": "trip",
        "reason": "daily_loss",
        "detail": "daily loss 5.2% > 5%",
        "source": "detector:daily_loss",
        "trigger": TRIGGER,
        "ts": TS,
    },
    "ResetCommand": {
        "command_id": "reset-1",
        "kind": "reset",
        "operator": "alice",
        "detail": "root cause fixed",
        "nonce": "nonce-1",
        "signature": "c2lnbmF0dXJl",
        "ts": TS,
    },
    "ActivatedEntry": {
        "seq": 0,
        "kind": "activated",
        "command_id": "trip-1",
        "reason": "flash_crash",
        "detail": "BTC -12% in 60s",
        "source": "detector:flash_crash",
        "trigger": TRIGGER,
        "ts": TS,
    },
    "TripRecordedEntry": {
        "seq": 1,
        "kind": "trip_recorded",
        "command_id": "trip-2",
        "reason": "manual",
        "detail": "belt and braces",
        "source": "operator:bob",
        "trigger": None,
        "ts": TS,
    },
    "ResetApprovalEntry": {
        "seq": 2,
        "kind": "reset_approval",
        "command_id": "reset-1",
        "operator": "alice",
        "nonce": "nonce-1",
        "approvals": ["alice"],
        "quorum": 2,
        "expires_at": "2026-11-22T10:20:00.123+00:00",
        "ts": TS,
    },
    "ResetEntry": {
        "seq": 3,
        "kind": "reset",
        "command_id": "reset-2",
        "operators": ["alice", "bob"],
        "detail": "all clear",
        "nonce": "nonce-2",
        "ts": TS,
    },
    "ResetRejectedEntry": {
        "seq": 4,
        "kind": "reset_rejected",
        "command_id": "reset-3",
        "operator": "mallory",
        "why": "unknown_operator",
        "detail": "operator has no registered key",
        "nonce": None,
        "ts": TS,
    },
    "EmergencyStopEvent": {
        "type": "emergency.stop",
        "reason": "system_critical",
        "detail": "gateway CRITICAL",
        "timestamp": TS_OTHER_OFFSET,
        "seq": 0,
    },
    "EmergencyResetEvent": {
        "type": "emergency.reset",
        "reset_by": "alice",
        "operators": ["alice", "bob"],
        "timestamp": TS,
        "seq": 3,
    },
    "PolicyRecord": {
        "active": True,
        "reason": "system_critical",
        "timestamp": TS,
        "auto_recover": False,
        "seq": 0,
        "detail": "gateway CRITICAL",
    },
    "DeadLetter": {
        "source_topic": "ess.fills",
        "partition": 1,
        "offset": 7,
        "raw": "{not json",
        "raw_encoding": "utf-8",
        "error": "invalid Fill: Invalid JSON",
        "ts": TS,
    },
    "ActionReport": {
        "venue": "binance",
        "account": "acct-1",
        "action": "cancel_all",
        "outcome": "ok",
        "detail": "3 orders cancelled",
        "activation_seq": 0,
        "ts": TS,
    },
    "ProcessorBeat": {
        "kind": "processor_beat",
        "run_id": "run-1",
        "beat_no": 7,
        "owner": True,
        "next_command_offset": 12,
        "state_next_offset": 4,
        "state_next_seq": 4,
        "signer": "key-1",
        "signature": "c2lnbmF0dXJl",
        "ts": TS,
    },
    "CommandOutcome": {
        "command_id": "trip-1",
        "command_offset": 11,
        "command_kind": "trip",
        "outcome": "applied",
        "entry_kind": "activated",
        "seq": 0,
        "detail": "",
        "signer": "key-1",
        "signature": "c2lnbmF0dXJl",
        "ts": TS,
    },
}

#: Records that arrive on input topics (including the command topic), from other producers.
INPUT_MODELS = (
    "Fill",
    "PnlTick",
    "OrderSubmitted",
    "OrderError",
    "HealthBeat",
    "LatencySample",
    "MarketTick",
    "SecurityEvent",
    "TripCommand",
    "ResetCommand",
)

#: Float fields of the input models (the ones that must be finite).
FLOAT_FIELDS: tuple[tuple[str, str], ...] = (
    ("Fill", "qty"),
    ("Fill", "price"),
    ("Fill", "realized_pnl"),
    ("PnlTick", "equity"),
    ("OrderSubmitted", "qty"),
    ("OrderSubmitted", "price"),
    ("OrderSubmitted", "notional"),
    ("LatencySample", "latency_ms"),
    ("MarketTick", "bid"),
    ("MarketTick", "ask"),
    ("MarketTick", "last"),
)


def example(name: str, **changes: Any) -> dict[str, Any]:
    """A deep copy of the example of ``name`` with ``changes`` applied."""
    data = copy.deepcopy(EXAMPLES[name])
    data.update(changes)
    return data


def without(name: str, field: str) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLES[name])
    del data[field]
    return data


def json_with_literal(name: str, field: str, literal: str) -> bytes:
    """The example as JSON text with ``field``'s value replaced by a raw JSON ``literal``
    (``NaN``, ``1e999``...), which ``json.dumps`` could not produce from a Python value."""
    marker = "__REPLACE_ME__"
    text = json.dumps(example(name, **{field: marker}))
    assert text.count(f'"{marker}"') == 1
    return text.replace(f'"{marker}"', literal).encode()

"""Record builders and a one-rule driver for the rule unit tests (real rules, no mocks).

The driver round-trips every state it sees through ``dump``/JSON/``load`` and keeps going
with the *loaded* state, so every rule test is also a serialization test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ess.rules._common import to_us
from ess.rules.base import Context, Coordinates, Detection, Rule
from schemas import (
    Fill,
    HealthBeat,
    LatencySample,
    MarketTick,
    OrderError,
    OrderSubmitted,
    PnlTick,
    SecurityEvent,
)

#: A Monday morning, UTC.
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


_counter = iter(range(1_000_000_000))


def _id(event_id: str | None) -> str:
    return event_id if event_id is not None else f"ev-{next(_counter)}"


def pnl(
    equity: float, t: float = 0.0, account: str = "acct", event_id: str | None = None
) -> PnlTick:
    return PnlTick(event_id=_id(event_id), account_id=account, equity=equity, ts=at(t))


def fill(
    t: float = 0.0,
    *,
    account: str = "acct",
    symbol: str = "BTC/USDT",
    side: str = "buy",
    qty: float = 1.0,
    price: float = 100.0,
    stop_loss: bool = False,
    event_id: str | None = None,
) -> Fill:
    return Fill(
        event_id=_id(event_id),
        account_id=account,
        venue="binance",
        symbol=symbol,
        side=side,
        qty=qty,
        price=price,
        realized_pnl=0.0,
        is_stop_loss=stop_loss,
        order_id="o-1",
        ts=at(t),
    )


def order(
    t: float = 0.0,
    *,
    account: str = "acct",
    qty: float = 1.0,
    price: float = 100.0,
    notional: float | None = None,
    event_id: str | None = None,
) -> OrderSubmitted:
    return OrderSubmitted(
        event_id=_id(event_id),
        account_id=account,
        venue="binance",
        symbol="BTC/USDT",
        side="buy",
        qty=qty,
        price=price,
        notional=qty * price if notional is None else notional,
        ts=at(t),
    )


def order_error(
    t: float = 0.0, *, kind: str = "reject", account: str = "acct", event_id: str | None = None
) -> OrderError:
    return OrderError(
        event_id=_id(event_id),
        account_id=account,
        venue="binance",
        symbol="BTC/USDT",
        kind=kind,
        code="-2010",
        message="insufficient balance",
        ts=at(t),
    )


def beat(
    t: float = 0.0,
    *,
    component: str = "trader",
    status: str = "HEALTHY",
    event_id: str | None = None,
    lifecycle: str = "running",
    until: float | None = None,
    **checks: str,
) -> HealthBeat:
    """A beat at ``T0 + t``; ``until``: ``maintenance_until`` as ``T0 + until``."""
    return HealthBeat(
        event_id=_id(event_id),
        component=component,
        status=status,
        checks=checks,
        lifecycle=lifecycle,
        maintenance_until=None if until is None else at(until),
        ts=at(t),
    )


def latency(
    ms: float,
    t: float = 0.0,
    *,
    component: str = "gateway",
    operation: str = "place_order",
    event_id: str | None = None,
) -> LatencySample:
    return LatencySample(
        event_id=_id(event_id),
        component=component,
        operation=operation,
        latency_ms=ms,
        ts=at(t),
    )


def tick(
    t: float = 0.0,
    *,
    symbol: str = "BTC/USDT",
    bid: float = 100.0,
    ask: float = 100.1,
    last: float = 100.05,
    event_id: str | None = None,
) -> MarketTick:
    return MarketTick(event_id=_id(event_id), symbol=symbol, bid=bid, ask=ask, last=last, ts=at(t))


def security(
    kind: str, t: float = 0.0, *, source: str = "gateway", event_id: str | None = None
) -> SecurityEvent:
    return SecurityEvent(
        event_id=_id(event_id),
        kind=kind,
        source=source,
        detail="seen by test",
        ts=at(t),
    )


def roundtrip(rule: Rule[Any, Any], state: Any) -> Any:
    """``state`` through ``dump`` -> JSON text -> ``load``; asserts nothing was lost."""
    data = json.loads(json.dumps(rule.dump(state)))
    loaded = rule.load(data)
    assert loaded == state, (state, loaded)
    return loaded


@dataclass
class Driver:
    """Feeds one rule, keeping per-key state, like the runtime would."""

    rule: Rule[Any, Any]
    topic: str = "ess.test"
    partition: int = 0
    epoch: int = 0
    epoch_started: datetime | None = None
    states: dict[str, Any] = field(default_factory=dict)
    offset: int = 0
    detections: list[Detection] = field(default_factory=list)

    @property
    def ctx(self) -> Context:
        return Context(self.epoch, self.epoch_started)

    def reset(self, started: datetime | None = None) -> None:
        """An authorized reset happened: the epoch moves on."""
        self.epoch += 1
        self.epoch_started = started

    def state(self, key: str) -> Any:
        return self.states.get(key, self.rule.initial())

    def step(
        self, record: Any, offset: int | None = None, *, logged: datetime | None = None
    ) -> Detection | None:
        """Step one record; ``logged``: the broker's timestamp of it (unknown by default)."""
        key = self.rule.key(record)
        if offset is None:
            offset = self.offset
            self.offset += 1
        logged_us = None if logged is None else to_us(logged)
        coords = Coordinates(self.topic, self.partition, offset, logged_us)
        new, hit = self.rule.step(self.state(key), record, coords, self.ctx)
        self.states[key] = roundtrip(self.rule, new)
        if hit is not None:
            self.detections.append(hit)
        return hit

    def feed(self, records: list[Any]) -> list[Detection]:
        """Step every record; the detections they produced."""
        found = [self.step(record) for record in records]
        return [hit for hit in found if hit is not None]

    def tick(self, key: str, watermark: datetime) -> Detection | None:
        new, hit = self.rule.tick(self.state(key), key, watermark, self.ctx)
        self.states[key] = roundtrip(self.rule, new)
        if hit is not None:
            self.detections.append(hit)
        return hit

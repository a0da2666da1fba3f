"""Hand-written fakes of the API's ports, for tests, demos and dry runs.

They behave like the real thing (state changes, repeated calls are safe) and can be told to
fail, so callers can rehearse outages without mocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ess.api.evaluators import FINE, Verdict
from ess.errors import EssError
from schemas import EmergencyResetEvent, EmergencyStopEvent, ReasonCode


class FakeFailure(EssError, ConnectionError):
    """The failure a fake raises when told to fail."""


@dataclass
class FakeExchangeClient:
    """An account with positions (symbol -> signed quantity) and open order ids.

    ``fail_cancels`` / ``fail_closes`` make the next N calls raise :class:`FakeFailure`.
    """

    positions: dict[str, float] = field(default_factory=dict)
    open_orders: list[str] = field(default_factory=list)
    fail_cancels: int = 0
    fail_closes: int = 0
    cancel_calls: int = 0
    close_calls: int = 0

    @property
    def flat(self) -> bool:
        return not self.positions and not self.open_orders

    @property
    def orders_cancelled(self) -> bool:
        return self.cancel_calls > 0 and not self.open_orders

    @property
    def positions_closed(self) -> bool:
        return self.close_calls > 0 and not self.positions

    async def cancel_all_orders(self) -> None:
        self.cancel_calls += 1
        if self.fail_cancels > 0:
            self.fail_cancels -= 1
            raise FakeFailure("exchange unavailable while cancelling orders")
        self.open_orders.clear()

    async def close_all_positions(self) -> None:
        self.close_calls += 1
        if self.fail_closes > 0:
            self.fail_closes -= 1
            raise FakeFailure("exchange unavailable while closing positions")
        self.positions.clear()


@dataclass
class FakePolicyStore:
    """An in-memory PolicyStore; ``fail_reads`` / ``fail_writes`` raise on every call."""

    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_reads: bool = False
    fail_writes: bool = False
    writes: int = 0

    async def get(self, key: str) -> Mapping[str, Any] | None:
        if self.fail_reads:
            raise FakeFailure("policy store unreachable")
        value = self.data.get(key)
        return dict(value) if value is not None else None

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        if self.fail_writes:
            raise FakeFailure("policy store unreachable")
        self.writes += 1
        self.data[key] = dict(value)


@dataclass
class FakeEventBus:
    """Collects published events in order; ``fail`` raises on publish."""

    events: list[EmergencyStopEvent | EmergencyResetEvent] = field(default_factory=list)
    fail: bool = False

    async def publish(self, event: EmergencyStopEvent | EmergencyResetEvent) -> None:
        if self.fail:
            raise FakeFailure("event bus unreachable")
        self.events.append(event)


class FakeHealthEvaluator:
    """Healthy until ``fail`` is set, then ``system_critical``."""

    reason_code = ReasonCode.SYSTEM_CRITICAL

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def check(self) -> Verdict:
        if self.fail:
            return True, f"{ReasonCode.SYSTEM_CRITICAL}: health check failed"
        return FINE

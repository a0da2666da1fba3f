"""Ports of the in-process ESS API (the original brief's interfaces).

Every port is a ``typing.Protocol``: any object with the right methods fits, no base class
needed. ``runtime_checkable`` lets the system reject a wrong object at construction instead of
failing at the first emergency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from schemas import EmergencyResetEvent, EmergencyStopEvent

#: The PolicyStore key every trading gate reads.
EMERGENCY_STOP_KEY = "emergency_stop"


@dataclass(frozen=True, slots=True)
class EmergencyState:
    """What callers see of ESS: whether trading is stopped, why, and since when."""

    active: bool
    reason: str | None
    timestamp: datetime | None


@runtime_checkable
class EmergencyConditionEvaluator(Protocol):
    """One catastrophic condition. ``check`` returns ``(triggered, reason)``.

    ``reason`` is human text; it may start with a reason code and a colon
    (``"equity_drawdown: 27% from peak"``), which ESS then records as the reason code.
    Raising counts as triggered: an evaluator that cannot evaluate is never "fine".
    ``check`` may also be ``async``.
    """

    def check(self) -> tuple[bool, str | None] | Awaitable[tuple[bool, str | None]]: ...


@runtime_checkable
class ExchangeClient(Protocol):
    """A venue connection able to flatten. Both calls must be safe to repeat."""

    async def close_all_positions(self) -> None: ...

    async def cancel_all_orders(self) -> None: ...


@runtime_checkable
class PolicyStore(Protocol):
    """Key-value store of policy records read by trading gates (Redis, SQLite, memory)."""

    async def get(self, key: str) -> Mapping[str, Any] | None: ...

    async def set(self, key: str, value: Mapping[str, Any]) -> None: ...


@runtime_checkable
class EventBus(Protocol):
    """Where ``emergency.stop`` / ``emergency.reset`` events are published."""

    async def publish(self, event: EmergencyStopEvent | EmergencyResetEvent) -> None: ...


@runtime_checkable
class MetricsRepository(Protocol):
    """Account equity figures, in quote currency."""

    def current_equity(self) -> float: ...

    def peak_equity(self) -> float: ...

    def day_start_equity(self) -> float: ...


@runtime_checkable
class SystemHealthMonitor(Protocol):
    """Aggregate health: ``status()`` is ``HEALTHY``, ``DEGRADED`` or ``CRITICAL``."""

    def status(self) -> str: ...

    def exchange_connected(self) -> bool: ...


@runtime_checkable
class TradeLogsRepository(Protocol):
    """Execution outcomes: how many order errors (incl. rejects and timeouts) recently."""

    def error_count(self, window_sec: float) -> int: ...


@runtime_checkable
class DataFeedMonitor(Protocol):
    """Market data freshness and sanity."""

    def seconds_since_last_update(self) -> float | None: ...

    def is_corrupt(self) -> bool: ...

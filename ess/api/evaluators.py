"""The original brief's condition evaluators.

Every evaluator returns ``(triggered, "reason_code: detail")``. Bad data (NaN, a non-positive
peak, an unknown status) raises :class:`EvaluationError`; the system treats any exception as
triggered, so there is exactly one fail-closed path.
"""

from __future__ import annotations

import math

from ess.api.protocols import (
    DataFeedMonitor,
    MetricsRepository,
    SystemHealthMonitor,
    TradeLogsRepository,
)
from ess.errors import EssError
from schemas import HealthStatus, ReasonCode

Verdict = tuple[bool, str | None]
FINE: Verdict = (False, None)


class EvaluationError(EssError, RuntimeError):
    """The evaluator could not reach a verdict; ESS treats this as triggered."""


def _finite_positive(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise EvaluationError(f"{name} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise EvaluationError(f"{name} must be finite and positive, got {number!r}")
    return number


def _ratio(name: str, value: float) -> float:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    return value


class DrawdownEmergencyEvaluator:
    """Equity drawdown from the running peak (default 25 %) and loss since the day start
    (default 10 %). Both limits trip when reached (``>=``)."""

    reason_code = ReasonCode.EQUITY_DRAWDOWN

    def __init__(
        self, metrics: MetricsRepository, max_drawdown: float = 0.25, max_daily_loss: float = 0.10
    ) -> None:
        self._metrics = metrics
        self.max_drawdown = _ratio("max_drawdown", max_drawdown)
        self.max_daily_loss = _ratio("max_daily_loss", max_daily_loss)

    def check(self) -> Verdict:
        equity = _finite_positive("current equity", self._metrics.current_equity())
        peak = _finite_positive("peak equity", self._metrics.peak_equity())
        day_start = _finite_positive("day-start equity", self._metrics.day_start_equity())
        drawdown = (peak - equity) / peak
        if drawdown >= self.max_drawdown:
            return True, (
                f"{ReasonCode.EQUITY_DRAWDOWN}: drawdown {drawdown:.2%} from peak "
                f"{peak:,.2f} reached limit {self.max_drawdown:.2%}"
            )
        daily_loss = (day_start - equity) / day_start
        if daily_loss >= self.max_daily_loss:
            return True, (
                f"{ReasonCode.DAILY_LOSS}: loss {daily_loss:.2%} since day start "
                f"{day_start:,.2f} reached limit {self.max_daily_loss:.2%}"
            )
        return FINE


class SystemHealthEmergencyEvaluator:
    """Trips on CRITICAL health (``system_critical``) or a lost exchange connection
    (``exchange_disconnected``). An unknown status is an error, not "healthy"."""

    reason_code = ReasonCode.SYSTEM_CRITICAL

    def __init__(self, monitor: SystemHealthMonitor) -> None:
        self._monitor = monitor

    def check(self) -> Verdict:
        raw = self._monitor.status()
        try:
            status = HealthStatus(str(raw).upper())
        except ValueError as exc:
            raise EvaluationError(f"unknown health status {raw!r}") from exc
        if status is HealthStatus.CRITICAL:
            return True, f"{ReasonCode.SYSTEM_CRITICAL}: system health is CRITICAL"
        if self._monitor.exchange_connected() is not True:
            return True, f"{ReasonCode.EXCHANGE_DISCONNECTED}: exchange connection lost"
        return FINE


class ExecutionErrorEmergencyEvaluator:
    """More than ``max_errors`` order errors in the last ``window_sec`` seconds."""

    reason_code = ReasonCode.EXECUTION_ERRORS

    def __init__(
        self, trade_logs: TradeLogsRepository, max_errors: int = 5, window_sec: float = 60.0
    ) -> None:
        if max_errors < 0 or window_sec <= 0:
            raise ValueError("max_errors must be >= 0 and window_sec > 0")
        self._trade_logs = trade_logs
        self.max_errors = max_errors
        self.window_sec = window_sec

    def check(self) -> Verdict:
        count = self._trade_logs.error_count(self.window_sec)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise EvaluationError(f"error count is not a non-negative integer: {count!r}")
        if count > self.max_errors:
            return True, (
                f"{ReasonCode.EXECUTION_ERRORS}: {count} order errors in "
                f"{self.window_sec:g}s (limit {self.max_errors})"
            )
        return FINE


class DataFeedEmergencyEvaluator:
    """Market data older than ``max_staleness_sec`` (or never received) is stale; a feed
    the monitor flags as corrupt trips ``data_feed_corrupt``."""

    reason_code = ReasonCode.DATA_FEED_STALE

    def __init__(self, feed: DataFeedMonitor, max_staleness_sec: float = 30.0) -> None:
        if max_staleness_sec <= 0:
            raise ValueError("max_staleness_sec must be positive")
        self._feed = feed
        self.max_staleness_sec = max_staleness_sec

    def check(self) -> Verdict:
        if self._feed.is_corrupt():
            return True, f"{ReasonCode.DATA_FEED_CORRUPT}: market data flagged corrupt"
        age = self._feed.seconds_since_last_update()
        if age is None:
            return True, f"{ReasonCode.DATA_FEED_STALE}: no market data received yet"
        if not isinstance(age, int | float) or not math.isfinite(age) or age < 0:
            raise EvaluationError(f"data age is not a finite non-negative number: {age!r}")
        if age > self.max_staleness_sec:
            return True, (
                f"{ReasonCode.DATA_FEED_STALE}: last update {age:.1f}s ago "
                f"(limit {self.max_staleness_sec:g}s)"
            )
        return FINE


class ManualTriggerEmergencyEvaluator:
    """A big red button: :meth:`trigger` makes the next check trip with reason ``manual``.
    Clearing it does not reset ESS; only an authorized reset does."""

    reason_code = ReasonCode.MANUAL

    def __init__(self) -> None:
        self._detail: str | None = None

    @property
    def triggered(self) -> bool:
        return self._detail is not None

    def trigger(self, detail: str = "manual trigger") -> None:
        self._detail = detail

    def clear(self) -> None:
        self._detail = None

    def check(self) -> Verdict:
        if self._detail is None:
            return FINE
        return True, f"{ReasonCode.MANUAL}: {self._detail}"

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ess import (
    DataFeedEmergencyEvaluator,
    DrawdownEmergencyEvaluator,
    EvaluationError,
    ExecutionErrorEmergencyEvaluator,
    ManualTriggerEmergencyEvaluator,
    SystemHealthEmergencyEvaluator,
)


@dataclass
class Metrics:
    current: float = 100.0
    peak: float = 100.0
    day_start: float = 100.0

    def current_equity(self) -> float:
        return self.current

    def peak_equity(self) -> float:
        return self.peak

    def day_start_equity(self) -> float:
        return self.day_start


@dataclass
class Health:
    value: str = "HEALTHY"
    connected: bool = True

    def status(self) -> str:
        return self.value

    def exchange_connected(self) -> bool:
        return self.connected


@dataclass
class TradeLogs:
    count: object = 0
    asked_window: float | None = None

    def error_count(self, window_sec: float) -> int:
        self.asked_window = window_sec
        return self.count  # type: ignore[return-value]


@dataclass
class Feed:
    age: object = 1.0
    corrupt: bool = False

    def seconds_since_last_update(self) -> float | None:
        return self.age  # type: ignore[return-value]

    def is_corrupt(self) -> bool:
        return self.corrupt


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (Metrics(current=80, peak=100, day_start=80), None),
        (Metrics(current=75, peak=100, day_start=75), "equity_drawdown"),
        (Metrics(current=90, peak=100, day_start=100), "daily_loss"),
        (Metrics(current=91, peak=100, day_start=100), None),
    ],
)
def test_drawdown_evaluator_limits(metrics: Metrics, expected: str | None) -> None:
    triggered, reason = DrawdownEmergencyEvaluator(metrics).check()

    assert triggered is (expected is not None)
    assert (reason or "").split(":")[0] == (expected or "")


@pytest.mark.parametrize(
    "metrics",
    [Metrics(current=float("nan")), Metrics(peak=0), Metrics(day_start=-5), Metrics(current="100")],  # type: ignore[arg-type]
)
def test_drawdown_evaluator_refuses_bad_figures(metrics: Metrics) -> None:
    with pytest.raises(EvaluationError):
        DrawdownEmergencyEvaluator(metrics).check()


def test_drawdown_evaluator_validates_limits() -> None:
    with pytest.raises(ValueError, match="max_drawdown"):
        DrawdownEmergencyEvaluator(Metrics(), max_drawdown=1.5)


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (Health(), None),
        (Health("degraded"), None),
        (Health("CRITICAL"), "system_critical"),
        (Health("HEALTHY", connected=False), "exchange_disconnected"),
    ],
)
def test_health_evaluator(health: Health, expected: str | None) -> None:
    triggered, reason = SystemHealthEmergencyEvaluator(health).check()

    assert triggered is (expected is not None)
    assert (reason or "").split(":")[0] == (expected or "")


def test_health_evaluator_unknown_status_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="unknown health status"):
        SystemHealthEmergencyEvaluator(Health("GREEN-ISH")).check()


def test_execution_error_evaluator_counts_more_than_limit_in_window() -> None:
    logs = TradeLogs(count=5)
    evaluator = ExecutionErrorEmergencyEvaluator(logs, max_errors=5, window_sec=30)
    assert evaluator.check() == (False, None)
    assert logs.asked_window == 30

    logs.count = 6
    triggered, reason = evaluator.check()

    assert triggered
    assert reason is not None
    assert reason.startswith("execution_errors: 6 order errors")


@pytest.mark.parametrize("count", [-1, 1.5, None, True])
def test_execution_error_evaluator_refuses_bad_counts(count: object) -> None:
    with pytest.raises(EvaluationError):
        ExecutionErrorEmergencyEvaluator(TradeLogs(count=count)).check()


def test_execution_error_evaluator_validates_config() -> None:
    with pytest.raises(ValueError, match="window_sec"):
        ExecutionErrorEmergencyEvaluator(TradeLogs(), window_sec=0)


@pytest.mark.parametrize(
    ("feed", "expected"),
    [
        (Feed(age=1.0), None),
        (Feed(age=31.0), "data_feed_stale"),
        (Feed(age=None), "data_feed_stale"),
        (Feed(age=1.0, corrupt=True), "data_feed_corrupt"),
    ],
)
def test_data_feed_evaluator(feed: Feed, expected: str | None) -> None:
    triggered, reason = DataFeedEmergencyEvaluator(feed, max_staleness_sec=30).check()

    assert triggered is (expected is not None)
    assert (reason or "").split(":")[0] == (expected or "")


@pytest.mark.parametrize("age", [float("inf"), -1.0, "old"])
def test_data_feed_evaluator_refuses_bad_ages(age: object) -> None:
    with pytest.raises(EvaluationError):
        DataFeedEmergencyEvaluator(Feed(age=age)).check()


def test_data_feed_evaluator_validates_config() -> None:
    with pytest.raises(ValueError, match="max_staleness_sec"):
        DataFeedEmergencyEvaluator(Feed(), max_staleness_sec=0)


def test_manual_trigger_latches_until_cleared() -> None:
    button = ManualTriggerEmergencyEvaluator()
    assert button.check() == (False, None)

    button.trigger("risk desk")

    assert button.triggered
    assert button.check() == (True, "manual: risk desk")
    button.clear()
    assert button.check() == (False, None)

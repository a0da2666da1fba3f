"""ESS: the Emergency Stop System for automated trading.

The package top level is the original in-process API: a controller that stops trading and
only an authorized reset re-enables it, a system that runs condition evaluators, the
evaluators themselves, and fakes of every port. It runs on the same pure core
(:mod:`ess.core`) as the stream workers.
"""

from ess.api.controller import ActivationIncomplete, EmergencyStopController, ResetRejected
from ess.api.evaluators import (
    DataFeedEmergencyEvaluator,
    DrawdownEmergencyEvaluator,
    EvaluationError,
    ExecutionErrorEmergencyEvaluator,
    ManualTriggerEmergencyEvaluator,
    SystemHealthEmergencyEvaluator,
)
from ess.api.fakes import (
    FakeEventBus,
    FakeExchangeClient,
    FakeFailure,
    FakeHealthEvaluator,
    FakePolicyStore,
)
from ess.api.protocols import (
    EMERGENCY_STOP_KEY,
    DataFeedMonitor,
    EmergencyConditionEvaluator,
    EmergencyState,
    EventBus,
    ExchangeClient,
    MetricsRepository,
    PolicyStore,
    SystemHealthMonitor,
    TradeLogsRepository,
)
from ess.api.system import EmergencyStopSystem
from schemas import EmergencyResetEvent, EmergencyStopEvent, ReasonCode

__version__ = "0.1.0"

__all__ = [
    "EMERGENCY_STOP_KEY",
    "ActivationIncomplete",
    "DataFeedEmergencyEvaluator",
    "DataFeedMonitor",
    "DrawdownEmergencyEvaluator",
    "EmergencyConditionEvaluator",
    "EmergencyResetEvent",
    "EmergencyState",
    "EmergencyStopController",
    "EmergencyStopEvent",
    "EmergencyStopSystem",
    "EvaluationError",
    "EventBus",
    "ExchangeClient",
    "ExecutionErrorEmergencyEvaluator",
    "FakeEventBus",
    "FakeExchangeClient",
    "FakeFailure",
    "FakeHealthEvaluator",
    "FakePolicyStore",
    "ManualTriggerEmergencyEvaluator",
    "MetricsRepository",
    "PolicyStore",
    "ReasonCode",
    "ResetRejected",
    "SystemHealthEmergencyEvaluator",
    "SystemHealthMonitor",
    "TradeLogsRepository",
    "__version__",
]

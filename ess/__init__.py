"""ESS: the Emergency Stop System for automated trading.

The package top level is the original in-process API: a controller that stops trading and
only an authorized reset re-enables it, a system that runs condition evaluators, the
evaluators themselves, and fakes of every port. It runs on the same pure core
(:mod:`ess.core`) as the stream workers.

The names load lazily: ``import ess.gate`` in a trading service (or ``import ess.<anything>``)
does not import the in-process API and its fakes; ``from ess import EmergencyStopController``
imports just what it needs on first use. Importing ``ess`` silences its logs until
``logger.enable("ess")`` (loguru's convention for libraries).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loguru import logger as _logger

# A library stays quiet: a trading service importing ess.gate or ess.client must not get ESS's
# DEBUG lines on its stderr (loguru's default sink). Where ESS runs as a program (the `ess`
# command, the roles' entry points, the demos) it calls logger.enable("ess"); a bot that
# wants ESS's logs in its own sinks does the same.
_logger.disable("ess")

if TYPE_CHECKING:
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

#: Where each public name lives; imported on first access (PEP 562).
_LAZY: dict[str, str] = {
    "ActivationIncomplete": "ess.api.controller",
    "DataFeedEmergencyEvaluator": "ess.api.evaluators",
    "DataFeedMonitor": "ess.api.protocols",
    "DrawdownEmergencyEvaluator": "ess.api.evaluators",
    "EMERGENCY_STOP_KEY": "ess.api.protocols",
    "EmergencyConditionEvaluator": "ess.api.protocols",
    "EmergencyResetEvent": "schemas",
    "EmergencyState": "ess.api.protocols",
    "EmergencyStopController": "ess.api.controller",
    "EmergencyStopEvent": "schemas",
    "EmergencyStopSystem": "ess.api.system",
    "EvaluationError": "ess.api.evaluators",
    "EventBus": "ess.api.protocols",
    "ExchangeClient": "ess.api.protocols",
    "ExecutionErrorEmergencyEvaluator": "ess.api.evaluators",
    "FakeEventBus": "ess.api.fakes",
    "FakeExchangeClient": "ess.api.fakes",
    "FakeFailure": "ess.api.fakes",
    "FakeHealthEvaluator": "ess.api.fakes",
    "FakePolicyStore": "ess.api.fakes",
    "ManualTriggerEmergencyEvaluator": "ess.api.evaluators",
    "MetricsRepository": "ess.api.protocols",
    "PolicyStore": "ess.api.protocols",
    "ReasonCode": "schemas",
    "ResetRejected": "ess.api.controller",
    "SystemHealthEmergencyEvaluator": "ess.api.evaluators",
    "SystemHealthMonitor": "ess.api.protocols",
    "TradeLogsRepository": "ess.api.protocols",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ess' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

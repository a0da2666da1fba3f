"""Settings of every ESS process: one tree, :class:`EssSettings`, read from ``ESS_*`` and
``KAFKA_*`` environment variables (and ``.env``).

Sections (:mod:`ess.settings.sections`), each with its variables:

* ``kafka`` (``KAFKA_*``/``ESS_KAFKA_*``, ``ESS_TOPIC_PREFIX``, ``ESS_INPUT_PARTITIONS``),
  ``policy_store`` (``ESS_REDIS_URL``, ``ESS_POLICY_STORE_URL``), ``keys`` (operator and
  processor keys, reset quorum and bounds), ``observability`` (``ESS_LOG_*``,
  ``ESS_STATUS_HOST``);
* one per role: ``command`` (``ESS_COMMAND_*``), ``project`` (``ESS_STATUS_PORT``,
  ``ESS_REFRESH_INTERVAL_SEC``, ...), ``detect`` (``ESS_DETECT_*``), ``execute``
  (``ESS_EXECUTOR_*``), ``notify`` (``ESS_NOTIFY_*``, the opt-in alert notifier).

Only edges (CLI, worker) read settings; they pass plain values into the core. Each default is
written once, in its section. At start they call :func:`warn_environment`, which warns about
every ``ESS_*`` variable no setting reads (a typo leaves a default in force silently) and
about deprecated names still in use.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableSet

from ess.settings.environment import (
    OTHER_VARIABLES,
    Deprecation,
    EnvReport,
    Unknown,
    Variable,
    check_environment,
    process_environment,
)
from ess.settings.environment import env_table as _env_table
from ess.settings.environment import warn_environment as _warn_environment
from ess.settings.model import RETIRED_DIR, EssSettings
from ess.settings.sections import (
    CommandSettings,
    DetectSettings,
    ExecuteSettings,
    KafkaSettings,
    KeySettings,
    NotifySettings,
    ObservabilitySettings,
    PolicyStoreSettings,
    ProjectSettings,
    Section,
    StorageSettings,
)

__all__ = [
    "OTHER_VARIABLES",
    "RETIRED_DIR",
    "CommandSettings",
    "Deprecation",
    "DetectSettings",
    "EnvReport",
    "EssSettings",
    "ExecuteSettings",
    "KafkaSettings",
    "KeySettings",
    "NotifySettings",
    "ObservabilitySettings",
    "PolicyStoreSettings",
    "ProjectSettings",
    "Section",
    "StorageSettings",
    "Unknown",
    "Variable",
    "check_environment",
    "env_variables",
    "process_environment",
    "warn_environment",
]


def env_variables() -> tuple[Variable, ...]:
    """Every environment variable of every setting (current names first, then deprecated)."""
    return _env_table(EssSettings)


def warn_environment(
    environ: Mapping[str, str] | None = None, *, warned: MutableSet[str] | None = None
) -> EnvReport:
    """Warn (once per name and process) about unknown and deprecated ``ESS_*`` variables in
    ``environ`` (default: the process environment over ``.env``); see
    :func:`ess.settings.environment.warn_environment`."""
    return _warn_environment(EssSettings, environ, warned=warned)

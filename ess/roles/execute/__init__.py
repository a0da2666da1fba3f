"""The ``execute`` role: cancel every order and flatten every position on every configured
venue, verify it with fresh reads, keep it flat while ESS is ACTIVE, and keep the venues' own
dead-man's switches armed while ESS is healthy.

Layers: :mod:`ess.core.flatten` plans (pure); :mod:`ess.venues` holds the venue port and the
ccxt adapters; :mod:`ess.roles.execute.engine` runs the read-plan-act-verify loop per venue;
:mod:`ess.roles.execute.service` follows ``ess.state`` and publishes every step to
``ess.actions``.
"""

from __future__ import annotations

import asyncio

from ess.roles.context import RoleContext
from ess.roles.execute.service import run_executor
from ess.settings import EssSettings

__all__ = ["run", "run_executor"]


async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None:
    """The ``execute`` role until ``stop``: :func:`run_executor` over the context's venues,
    tuned by the ``execute`` section (``ESS_EXECUTOR_*``)."""
    await run_executor(
        settings.registry(),
        context.bootstrap,
        context.venues,
        settings.execute,
        stop,
        trust=context.trust,
        status_host=settings.observability.status_host,
        security=settings.kafka_security(),
    )

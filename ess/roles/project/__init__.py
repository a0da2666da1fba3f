"""The ``project`` role: the PolicyStore record, ``emergency.stop``/``emergency.reset`` events,
ESS's health beat, metrics and ``/status``, all projected from the state log."""

from __future__ import annotations

import asyncio

from loguru import logger

from ess.policystore import policy_store_from_url, redact_url
from ess.roles.context import RoleContext
from ess.roles.project.projector import run_projector
from ess.settings import EssSettings

__all__ = ["run", "run_projector"]


async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None:
    """The ``project`` role until ``stop``: :func:`run_projector` on the resolved cluster,
    into the context's PolicyStore or the configured one, with its status server on
    ``ESS_STATUS_PORT`` (``-1``: none)."""
    store = context.policy_store
    if store is None:
        url = settings.resolved_policy_store_url()
        logger.bind(policy_store=redact_url(url)).info("projector PolicyStore")
        store = policy_store_from_url(url)
    port = settings.project.status_port
    await run_projector(
        settings,
        store,
        stop,
        trust=context.trust,
        bootstrap=context.bootstrap,
        status_port=None if port < 0 else port,
    )

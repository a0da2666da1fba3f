"""The ``command`` role: the command processor, single writer of the state log."""

from __future__ import annotations

import asyncio

from ess.roles.command.processor import configured_policy_store, run_processor
from ess.roles.context import RoleContext
from ess.settings import EssSettings

__all__ = ["configured_policy_store", "run", "run_processor"]


async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None:
    """The ``command`` role until ``stop``: :func:`run_processor` on the resolved cluster,
    signing with the context's key (or ``ESS_PROCESSOR_KEY_FILE``), reading the context's
    PolicyStore (or the configured one) for the lost-log check."""
    async with configured_policy_store(settings, context.policy_store) as store:
        await run_processor(
            settings,
            stop,
            bootstrap=context.bootstrap,
            signing_key=context.signing_key,
            policy_store=store,
        )

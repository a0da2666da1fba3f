"""The ``command`` role: the command processor, single writer of the state log."""

from __future__ import annotations

import asyncio

from ess.roles.command.processor import run_processor
from ess.roles.context import RoleContext
from ess.settings import EssSettings

__all__ = ["run", "run_processor"]


async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None:
    """The ``command`` role until ``stop``: :func:`run_processor` on the resolved cluster,
    signing with the context's key (or ``ESS_PROCESSOR_KEY_FILE``)."""
    await run_processor(
        settings, stop, bootstrap=context.bootstrap, signing_key=context.signing_key
    )

"""Waiting and stopping helpers the long-running roles share (the projector, the notifier):
wait for the first of several events, and run a loop that cannot watch ``stop`` itself until
``stop`` is set, without ever hanging on a cleanup that cannot finish."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from loguru import logger

__all__ = ["run_until", "wait_any"]


async def wait_any(seconds: float | None, *events: asyncio.Event) -> None:
    """Return when any of ``events`` is set or after ``seconds`` (``None``: no limit)."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_until(
    stop: asyncio.Event, work: Coroutine[Any, Any, None], *, grace: float, name: str
) -> None:
    """Run ``work`` until it returns or ``stop`` is set, then cancel it and give it at most
    ``grace`` seconds to clean up; raises what ``work`` raised before ``stop``.

    For a loop that cannot look at ``stop`` itself (one iterating a follow that yields only
    when records arrive). Bounded: a client that cannot close (broker gone) is interrupted
    a second time and left to finish in the background, so stopping never hangs on it."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=grace)
        if not task.done():
            task.cancel()  # interrupt its cleanup rather than wait for it
            task.add_done_callback(_retrieve)
            logger.bind(task=name, grace=grace).warning(
                "task did not stop in time; left to finish in the background"
            )
    if task.done() and not task.cancelled():
        error = task.exception()
        if error is not None and not stop.is_set():
            raise error


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark an abandoned task's outcome as seen (asyncio logs unretrieved exceptions)."""
    if not task.cancelled():
        task.exception()

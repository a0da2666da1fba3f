"""Small helpers the timed campaigns share: bounded polling, teardown steps that never raise,
and the nearest-rank percentile their figures use."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from loguru import logger

from ess.errors import EssError

__all__ = ["CampaignError", "bounded", "first_true", "percentile", "rounded", "until"]

#: Longest any teardown step may take.
TEARDOWN_TIMEOUT_S: Final = 10.0


class CampaignError(EssError, RuntimeError):
    """The set-up did not come up in time (no figure can be taken)."""


async def until(
    check: Callable[[], bool], timeout_s: float, what: str, *, interval: float = 0.01
) -> None:
    """Poll ``check`` until true; :class:`CampaignError` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise CampaignError(f"{what} not within {timeout_s:g} s")
        await asyncio.sleep(interval)


async def first_true(check: Callable[[], bool], timeout_s: float) -> float | None:
    """``time.monotonic()`` when ``check`` first holds (polled every 10 ms), or ``None``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        await asyncio.sleep(0.01)
    return None


async def bounded(what: str, awaitable: Awaitable[Any]) -> None:
    """Teardown step: bounded, logged, never raising (the next step must still run)."""
    try:
        async with asyncio.timeout(TEARDOWN_TIMEOUT_S):
            await awaitable
    except TimeoutError:
        logger.bind(step=what).error("chaos: teardown step timed out")
    except Exception as exc:
        logger.bind(step=what, error=f"{type(exc).__name__}: {exc}").warning(
            "chaos: teardown step failed"
        )


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` in (0, 1]); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


def rounded(value: float | None) -> float | None:
    """Seconds to the millisecond, for figures."""
    return None if value is None else round(value, 3)

"""Small test helpers shared across suites."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...
async def eventually(
    check: Callable[[], Any],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the failure names the condition and last error
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; return that.

    An ``AssertionError`` raised by ``check`` counts as "not yet", so a check can be written
    as plain asserts. After ``timeout`` seconds this fails with the last such error attached.
    Use it instead of sleeping for a guessed duration.
    """
    deadline = time.monotonic() + timeout
    last_error: AssertionError | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except AssertionError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f": {message}" if message else ""
            raise AssertionError(f"condition not met within {timeout:g}s{detail}") from last_error
        await asyncio.sleep(interval)

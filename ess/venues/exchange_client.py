"""The in-process API's ``ExchangeClient`` port over real venues.

:class:`VenuesExchangeClient` lets :class:`ess.EmergencyStopController` (the original brief's
in-process API) flatten real accounts through the same adapters and the same pure planning
as the executor role. Each call is one verified step over every venue concurrently; a call
that cannot verify its result raises, and the controller's own retries (and its
``ActivationIncomplete`` when they run out) take it from there. The long-running, reporting,
enforcing version of the same work is :class:`ess.roles.execute.engine.VenueFlattener`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ess.core.flatten import VenueSnapshot, plan_flatten
from ess.core.ids import derive_id
from ess.errors import EssError
from ess.venues.ports import VenuePort

__all__ = ["NotFlatError", "VenuesExchangeClient"]


class NotFlatError(EssError, RuntimeError):
    """A venue still holds orders or positions after the step (or could not be read)."""


class VenuesExchangeClient:
    """``cancel_all_orders`` / ``close_all_positions`` over ``venues``, each verified by a
    fresh read. Client order ids derive from ``activation_id`` and what was read, as in the
    executor, so repeated calls can never double or flip a position."""

    def __init__(self, venues: Sequence[VenuePort], *, activation_id: str | None = None) -> None:
        if not venues:
            raise ValueError("VenuesExchangeClient needs at least one venue")
        self.venues = tuple(venues)
        self.activation_id = activation_id or derive_id(
            "in-process", *(venue.name for venue in venues)
        )

    async def cancel_all_orders(self) -> None:
        """Cancel every open order (both books) on every venue; raises unless a fresh read
        then shows none."""
        await self._each(self._cancel_all)

    async def close_all_positions(self) -> None:
        """Cancel what blocks and close every position on every venue; raises unless a fresh
        read then shows the venue flat."""
        await self._each(self._flatten)

    async def _each(self, step: Callable[[VenuePort], Awaitable[None]]) -> None:
        results = await asyncio.gather(
            *(step(venue) for venue in self.venues), return_exceptions=True
        )
        failures = [
            f"{venue.name}: {result}"
            for venue, result in zip(self.venues, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failures:
            raise NotFlatError("; ".join(failures))

    async def _cancel_all(self, venue: VenuePort) -> None:
        await venue.open()
        snapshot = await venue.snapshot()
        plan = plan_flatten(
            VenueSnapshot(orders=snapshot.orders),
            activation_id=self.activation_id,
            venue=venue.name,
            kind=venue.kind,
        )
        await asyncio.gather(*(venue.cancel_all(c) for p in plan.symbols for c in p.cancels))
        left = (await venue.snapshot()).orders
        if left:
            raise NotFlatError(f"{len(left)} open orders left")

    async def _flatten(self, venue: VenuePort) -> None:
        await venue.open()
        plan = plan_flatten(
            await venue.snapshot(),
            activation_id=self.activation_id,
            venue=venue.name,
            kind=venue.kind,
        )

        async def symbol(index: int) -> None:
            item = plan.symbols[index]
            await asyncio.gather(*(venue.cancel_all(cancel) for cancel in item.cancels))
            await asyncio.gather(*(venue.close(close) for close in item.closes))

        outcomes = await asyncio.gather(
            *(symbol(index) for index in range(len(plan.symbols))), return_exceptions=True
        )
        errors = [str(outcome) for outcome in outcomes if isinstance(outcome, Exception)]
        after = await venue.snapshot()
        if not after.flat:
            raise NotFlatError(
                f"{len(after.positions)} positions and {len(after.orders)} orders left"
                + (f" ({'; '.join(errors)})" if errors else "")
            )

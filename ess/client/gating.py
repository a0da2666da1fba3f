"""The trading gate, connected to the PolicyStore in one call.

:class:`ess.gate.TradingGate` answers "may I trade now?" from the ``emergency_stop`` record
ESS's projector writes to the PolicyStore, failing closed; a feed keeps its view current.
:func:`connect_gate` builds both from the store's URL, the same URL ESS is configured with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ess.api.protocols import PolicyStore
from ess.gate import TradingGate, gate_feed
from ess.policystore import AnyPolicyStore, policy_store_from_url

__all__ = ["connect_gate"]


@asynccontextmanager
async def connect_gate(
    policy_store: str | PolicyStore,
    *,
    gate: TradingGate | None = None,
    poll_interval: float = 0.5,
) -> AsyncIterator[TradingGate]:
    """A :class:`TradingGate` kept current from ``policy_store`` while the block runs.

    ``policy_store``: a URL (``redis://host:6379/0``, ``rediss://...``,
    ``sqlite:////path/ess.db``; see :func:`ess.policystore.policy_store_from_url`) or a store
    object. ``gate``: a gate with your own bounds (default ``TradingGate()``). The first read
    happens before the block starts, so ``gate.allowed()`` has a real answer at once; an
    unreachable store leaves the gate closed (never raises): "cannot tell" means "stopped".
    A store opened from a URL is closed at the end.
    """
    owned: AnyPolicyStore | None = None
    store: PolicyStore
    if isinstance(policy_store, str):
        store = owned = policy_store_from_url(policy_store)
    else:
        store = policy_store
    view = gate or TradingGate()
    feed = gate_feed(store, view, poll_interval)
    try:
        await feed.start()
        yield view
    finally:
        await feed.stop()
        if owned is not None:
            await owned.close()

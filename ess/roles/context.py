"""The one interface every role has: ``run(settings, stop, context)``.

Each role package (:mod:`ess.roles.detect`, ``command``, ``project``, ``execute``) exposes
``async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None``,
which runs the role until ``stop`` is set and raises when it fails. What a process prepares
once for all its roles (the resolved Kafka cluster, the keys it trusts, the processor's
signing key, the venues and their credentials) travels in :class:`RoleContext`, so that a
configuration error surfaces before anything starts and nothing is read twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from ess.api.protocols import PolicyStore
from ess.core.attestation import SigningKey
from ess.core.reader import Trust
from ess.settings import EssSettings
from ess.venues.config import VenueConfig, VenueCredentials

__all__ = ["Role", "RoleContext"]


@dataclass(frozen=True, slots=True)
class RoleContext:
    """What the worker prepared once, before any role starts."""

    #: The Kafka cluster every role uses: ``KAFKA_BOOTSTRAP_SERVERS``, or the embedded
    #: broker the worker started.
    bootstrap: str
    #: What readers of ``ess.state`` trust (processor and operator keys).
    trust: Trust
    #: ``command``: the processor's signing key (``None``: ``ESS_PROCESSOR_KEY_FILE``).
    signing_key: SigningKey | None = None
    #: ``execute``: the venues to flatten, with their credentials.
    venues: tuple[tuple[VenueConfig, VenueCredentials], ...] = ()
    #: ``project``: where to write the record (``None``: ``ESS_REDIS_URL`` or
    #: ``ESS_POLICY_STORE_URL``). A process that also gates trading passes its own store.
    policy_store: PolicyStore | None = None
    #: ``detect``: set once detection has joined its group and recovered its tables.
    detector_ready: asyncio.Event | None = None


class Role(Protocol):
    """A role's entry point (see the module docstring)."""

    def __call__(
        self, settings: EssSettings, stop: asyncio.Event, context: RoleContext
    ) -> Coroutine[Any, Any, None]: ...

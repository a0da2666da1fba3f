"""Deterministic ids: anything that must come out the same on replay is a uuid5 of its inputs."""

from __future__ import annotations

import uuid

#: Namespace of every ESS-derived id. Never change it: ids already in logs depend on it.
ESS_NAMESPACE = uuid.UUID("5d0c8a8e-6f1d-4f0e-9a51-1f0c2b7e0e55")


def derive_id(*parts: object) -> str:
    """A stable id from ``parts`` (joined with ``|``): same inputs, same id, on any machine."""
    return str(uuid.uuid5(ESS_NAMESPACE, "|".join(str(part) for part in parts)))

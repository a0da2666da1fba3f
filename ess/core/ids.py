"""Deterministic ids: anything that must come out the same on replay is a uuid5 of its inputs."""

from __future__ import annotations

import json
import uuid

#: Namespace of every ESS-derived id. Never change it: ids already in logs depend on it.
ESS_NAMESPACE = uuid.UUID("5d0c8a8e-6f1d-4f0e-9a51-1f0c2b7e0e55")


def derive_id(*parts: object) -> str:
    """A stable id from ``parts``: same inputs, same id, on any machine.

    The name hashed is the JSON array of the parts' ``str`` forms: unlike a joined string it
    is unambiguous (``("a|b", "c")`` and ``("a", "b|c")`` differ), and a collision would make
    the state machine drop the second command as a duplicate.
    """
    name = json.dumps([str(part) for part in parts], ensure_ascii=False, separators=(",", ":"))
    return str(uuid.uuid5(ESS_NAMESPACE, name))

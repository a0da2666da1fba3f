"""A PolicyStore in a dict: one process only (tests, demos, a single-process deployment)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ess.policystore.base import check_key, decode_value, encode_value


class InMemoryPolicyStore:
    """Keys to JSON objects, held in this process.

    Values are kept as JSON text, like the other adapters, so what comes out is always a new
    dict and a value that Redis or SQLite would refuse is refused here too.
    """

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    async def get(self, key: str) -> Mapping[str, Any] | None:
        raw = self._data.get(check_key(key))
        return None if raw is None else decode_value(key, raw, "memory policy store")

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        self._data[check_key(key)] = encode_value(key, value)

    async def close(self) -> None:
        """Nothing to release; here so every adapter can be closed the same way."""

    async def __aenter__(self) -> InMemoryPolicyStore:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "InMemoryPolicyStore()"

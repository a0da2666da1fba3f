"""The PolicyStore contract, once, for every adapter.

A test module subclasses :class:`PolicyStoreContract` and provides a ``store`` fixture (a
fresh, empty store); adapters that can be unreachable also mix in
:class:`UnreachableBackendContract` and provide ``unreachable_store``. The Redis subclass lives
in ``tests/policystore/test_redis_store.py`` because it needs the real server.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from ess.api.protocols import EMERGENCY_STOP_KEY, PolicyStore
from ess.policystore import ClosablePolicyStore, PolicyStoreUnavailable
from schemas import PolicyRecord, ReasonCode

#: An unreachable backend must answer (with an error) within this many seconds.
PROMPT = 3.0


def policy_json(**overrides: Any) -> dict[str, Any]:
    """A full ``emergency_stop`` value as JSON, every extension field set."""
    fields: dict[str, Any] = {
        "active": True,
        "reason": ReasonCode.FLASH_CRASH,
        "timestamp": datetime(2026, 11, 22, 10, 15, 0, 123000, tzinfo=UTC),
        "seq": 7,
        "detail": "BTC/USDT -9.1% in 40 s, caf\u00e9 \u2713",
        "refreshed_at": datetime(2026, 11, 22, 10, 15, 5, tzinfo=UTC),
    }
    fields.update(overrides)
    return PolicyRecord(**fields).model_dump(mode="json")


class PolicyStoreContract:
    """What every PolicyStore adapter guarantees. Needs a ``store`` fixture."""

    def test_store_when_checked_then_satisfies_both_protocols(
        self, store: ClosablePolicyStore
    ) -> None:
        assert isinstance(store, PolicyStore)
        assert isinstance(store, ClosablePolicyStore)

    async def test_get_when_key_never_set_then_returns_none(
        self, store: ClosablePolicyStore
    ) -> None:
        assert await store.get(EMERGENCY_STOP_KEY) is None

    async def test_get_when_policy_record_set_then_round_trips_exactly(
        self, store: ClosablePolicyStore
    ) -> None:
        value = policy_json()

        await store.set(EMERGENCY_STOP_KEY, value)
        got = await store.get(EMERGENCY_STOP_KEY)

        assert got == value
        assert PolicyRecord.model_validate(got) == PolicyRecord.model_validate(value)

    async def test_set_when_key_already_set_then_overwrites(
        self, store: ClosablePolicyStore
    ) -> None:
        await store.set(EMERGENCY_STOP_KEY, policy_json(seq=1))
        newer = policy_json(active=False, reason=None, seq=2, detail="")

        await store.set(EMERGENCY_STOP_KEY, newer)

        assert await store.get(EMERGENCY_STOP_KEY) == newer

    async def test_set_when_other_key_written_then_keys_stay_isolated(
        self, store: ClosablePolicyStore
    ) -> None:
        await store.set(EMERGENCY_STOP_KEY, policy_json(seq=1))

        await store.set("other_policy", {"limit": 5})

        assert await store.get(EMERGENCY_STOP_KEY) == policy_json(seq=1)
        assert await store.get("other_policy") == {"limit": 5}
        assert await store.get("never_written") is None

    async def test_get_when_returned_value_mutated_then_store_unchanged(
        self, store: ClosablePolicyStore
    ) -> None:
        await store.set(EMERGENCY_STOP_KEY, policy_json())
        first = await store.get(EMERGENCY_STOP_KEY)
        assert isinstance(first, dict)

        first["active"] = False
        first["extra"] = [1, 2]

        assert await store.get(EMERGENCY_STOP_KEY) == policy_json()

    async def test_set_when_caller_mutates_value_afterwards_then_store_unchanged(
        self, store: ClosablePolicyStore
    ) -> None:
        value = policy_json()
        value["nested"] = {"venues": ["binance"]}
        await store.set(EMERGENCY_STOP_KEY, value)

        value["active"] = False
        value["nested"]["venues"].append("okx")

        got = await store.get(EMERGENCY_STOP_KEY)
        assert got is not None
        assert got["active"] is True
        assert got["nested"] == {"venues": ["binance"]}

    @pytest.mark.parametrize(
        "bad_value",
        [
            {"active": True, "x": math.nan},
            {"active": True, "x": math.inf},
            {"active": True, "at": datetime(2026, 1, 1, tzinfo=UTC)},
            {"active": True, "tags": {"a", "b"}},
        ],
        ids=["nan", "infinity", "datetime", "set"],
    )
    async def test_set_when_value_not_finite_json_then_raises_and_keeps_old_value(
        self, store: ClosablePolicyStore, bad_value: dict[str, Any]
    ) -> None:
        await store.set(EMERGENCY_STOP_KEY, policy_json())

        with pytest.raises(ValueError, match="not valid JSON"):
            await store.set(EMERGENCY_STOP_KEY, bad_value)

        assert await store.get(EMERGENCY_STOP_KEY) == policy_json()

    async def test_set_when_value_not_a_mapping_then_raises_value_error(
        self, store: ClosablePolicyStore
    ) -> None:
        with pytest.raises(ValueError, match="must be a JSON object"):
            await store.set(EMERGENCY_STOP_KEY, [1, 2])  # type: ignore[arg-type]

    async def test_get_when_key_empty_then_raises_value_error(
        self, store: ClosablePolicyStore
    ) -> None:
        with pytest.raises(ValueError, match="non-empty string"):
            await store.get("")


class UnreachableBackendContract:
    """An unreachable backend raises :class:`PolicyStoreUnavailable` promptly, on reads and
    writes alike, and never answers "no record". Needs an ``unreachable_store`` fixture."""

    async def test_get_when_backend_unreachable_then_raises_unavailable_promptly(
        self, unreachable_store: ClosablePolicyStore
    ) -> None:
        started = time.monotonic()

        with pytest.raises(PolicyStoreUnavailable) as caught:
            await unreachable_store.get(EMERGENCY_STOP_KEY)

        assert time.monotonic() - started < PROMPT
        assert "policy store" in str(caught.value)
        assert isinstance(caught.value, ConnectionError)

    async def test_set_when_backend_unreachable_then_raises_unavailable_promptly(
        self, unreachable_store: ClosablePolicyStore
    ) -> None:
        started = time.monotonic()

        with pytest.raises(PolicyStoreUnavailable, match="policy store"):
            await unreachable_store.set(EMERGENCY_STOP_KEY, policy_json())

        assert time.monotonic() - started < PROMPT

"""The in-memory adapter against the shared PolicyStore contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ess.policystore import InMemoryPolicyStore
from tests.policystore.contract import PolicyStoreContract


class TestInMemoryPolicyStoreContract(PolicyStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[InMemoryPolicyStore]:
        async with InMemoryPolicyStore() as store:
            yield store


async def test_in_memory_store_when_two_instances_then_they_share_nothing() -> None:
    first, second = InMemoryPolicyStore(), InMemoryPolicyStore()

    await first.set("emergency_stop", {"active": True})

    assert await second.get("emergency_stop") is None

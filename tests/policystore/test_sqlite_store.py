"""The SQLite adapter: the shared contract, plus what only a file on disk can do."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE

import pytest

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.clock import ManualClock
from ess.policystore import (
    CorruptPolicyValue,
    PolicyStoreError,
    PolicyStoreUnavailable,
    SQLitePolicyStore,
)
from ess.policystore.sqlite_store import TABLE
from tests.policystore.contract import (
    PolicyStoreContract,
    UnreachableBackendContract,
    policy_json,
)


class TestSQLitePolicyStoreContract(PolicyStoreContract, UnreachableBackendContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLitePolicyStore]:
        async with SQLitePolicyStore(tmp_path / "policy.db") as store:
            yield store

    @pytest.fixture
    async def unreachable_store(self, tmp_path: Path) -> AsyncIterator[SQLitePolicyStore]:
        async with SQLitePolicyStore(tmp_path / "no-such-dir" / "policy.db") as store:
            yield store


async def test_sqlite_store_when_file_reopened_then_record_survives(tmp_path: Path) -> None:
    path = tmp_path / "policy.db"
    async with SQLitePolicyStore(path) as writer:
        await writer.set(EMERGENCY_STOP_KEY, policy_json())

    async with SQLitePolicyStore(path) as reopened:
        got = await reopened.get(EMERGENCY_STOP_KEY)

    assert got == policy_json()


async def test_sqlite_store_when_written_then_file_is_wal_with_updated_at(tmp_path: Path) -> None:
    path = tmp_path / "policy.db"
    clock = ManualClock(datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
    async with SQLitePolicyStore(path, clock=clock) as store:
        await store.set(EMERGENCY_STOP_KEY, policy_json())

    with sqlite3.connect(path) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        row = conn.execute(f"SELECT value, updated_at FROM {TABLE}").fetchone()
    assert mode == "wal"
    assert row[1] == "2026-11-22T10:00:00+00:00"
    assert '"reason":"flash_crash"' in row[0]


async def test_sqlite_store_when_stored_text_is_not_json_then_raises_corrupt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.db"
    async with SQLitePolicyStore(path) as store:
        await store.set(EMERGENCY_STOP_KEY, policy_json())
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE {TABLE} SET value = '[1, 2'")

        with pytest.raises(CorruptPolicyValue, match="not valid JSON"):
            await store.get(EMERGENCY_STOP_KEY)


async def test_sqlite_store_when_stored_json_is_not_an_object_then_raises_corrupt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.db"
    async with SQLitePolicyStore(path) as store:
        await store.set(EMERGENCY_STOP_KEY, policy_json())
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE {TABLE} SET value = 'true'")

        with pytest.raises(CorruptPolicyValue, match="not an object"):
            await store.get(EMERGENCY_STOP_KEY)


async def test_sqlite_store_when_file_is_not_a_database_then_raises_store_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.db"
    path.write_bytes(b"this is not an sqlite database, just some bytes" * 100)

    async with SQLitePolicyStore(path) as store:
        with pytest.raises(PolicyStoreError, match="not a database"):
            await store.get(EMERGENCY_STOP_KEY)


def test_sqlite_store_when_path_is_memory_then_refuses() -> None:
    with pytest.raises(ValueError, match="needs a file path"):
        SQLitePolicyStore(":memory:")


async def test_sqlite_store_when_closed_then_next_call_reopens(tmp_path: Path) -> None:
    store = SQLitePolicyStore(tmp_path / "policy.db")
    await store.set(EMERGENCY_STOP_KEY, policy_json())

    await store.close()

    assert await store.get(EMERGENCY_STOP_KEY) == policy_json()
    await store.close()


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from ess.policystore import SQLitePolicyStore

    async def main() -> None:
        async with SQLitePolicyStore(sys.argv[1]) as store:
            for i in range(int(sys.argv[3])):
                await store.set("emergency_stop", {"writer": sys.argv[2], "i": i})

    asyncio.run(main())
    """
)


async def test_sqlite_store_when_processes_write_concurrently_then_no_errors_and_reads_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.db"
    writes = 150
    async with SQLitePolicyStore(path) as reader:
        await reader.set(EMERGENCY_STOP_KEY, {"writer": "parent", "i": -1})
        writers = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WRITER, str(path), name, str(writes), stderr=PIPE
            )
            for name in ("a", "b")
        ]
        waits = [asyncio.create_task(proc.communicate()) for proc in writers]
        seen: list[dict[str, object]] = []
        while not all(wait.done() for wait in waits):  # read while they write
            got = await reader.get(EMERGENCY_STOP_KEY)
            assert got is not None
            seen.append(dict(got))
        errors = [stderr.decode() for _, stderr in await asyncio.gather(*waits)]

        final = await reader.get(EMERGENCY_STOP_KEY)

    assert [proc.returncode for proc in writers] == [0, 0], errors
    assert final in ({"writer": "a", "i": writes - 1}, {"writer": "b", "i": writes - 1})
    assert all(set(value) == {"writer", "i"} for value in seen)


async def test_sqlite_store_when_create_is_off_then_a_missing_file_is_no_record_and_not_made(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.db"
    async with SQLitePolicyStore(path, create=False) as reader:
        assert await reader.get(EMERGENCY_STOP_KEY) is None
        with pytest.raises(PolicyStoreUnavailable, match="does not exist"):
            await reader.set(EMERGENCY_STOP_KEY, policy_json())
        assert not path.exists()

        # Once a writer has made the file, the same reader sees what it wrote.
        async with SQLitePolicyStore(path) as writer:
            await writer.set(EMERGENCY_STOP_KEY, policy_json())
        assert await reader.get(EMERGENCY_STOP_KEY) == policy_json()

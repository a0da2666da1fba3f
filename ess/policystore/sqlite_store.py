"""A PolicyStore in one SQLite file: every process on one host shares it.

Why these settings:

* **WAL journal**: readers never block the writer and the writer never blocks readers, so many
  gates can poll while the projection writes. WAL needs a local file system (not NFS); if SQLite
  refuses it the store raises instead of silently running in a mode where readers can stall
  the writer.
* **busy timeout** (default 5 s): two writers in different processes queue instead of failing
  at once with "database is locked".
* **synchronous=FULL**: a committed stop survives a power cut. Writes are rare (state changes
  and periodic re-assertions), so the fsync is cheap insurance.
* **autocommit, one statement per operation**: every get and set is its own atomic transaction;
  an upsert is one statement, so no reader can see a half-written record.

``sqlite3`` is blocking, so each call runs in a worker thread (``asyncio.to_thread``). One
connection per store object, serialised by a lock (sqlite3 connections must not be used by
two threads at once).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from ess.clock import Clock, SystemClock
from ess.policystore.base import (
    PolicyStoreError,
    PolicyStoreUnavailable,
    check_key,
    decode_value,
    encode_value,
)

T = TypeVar("T")

#: The table every SQLite PolicyStore uses. ``updated_at`` is the writer's wall clock (ISO-8601
#: UTC), for humans and audits; gates judge freshness by the record's own ``refreshed_at``.
TABLE = "policy_records"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""
_UPSERT = (
    f"INSERT INTO {TABLE} (key, value, updated_at) VALUES (?, ?, ?) "  # noqa: S608 - constant
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_SELECT = f"SELECT value FROM {TABLE} WHERE key = ?"  # noqa: S608 - constant table name


class SQLitePolicyStore:
    """Keys to JSON objects in table :data:`TABLE` of the SQLite file at ``path``.

    The file (not its directory) is created on first use. Errors from SQLite surface as
    :class:`PolicyStoreUnavailable` (cannot open, locked past the busy timeout) or
    :class:`PolicyStoreError` (anything else, e.g. not a database); a missing key is ``None``.

    ``create=False`` is for a process that only *looks* at the record where a writer may
    never have run (the command processor's lost-log check): while the file does not exist,
    every key reads as missing and nothing is created; a write raises
    :class:`PolicyStoreUnavailable`. Once the writer has created the file, it reads as usual.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        clock: Clock | None = None,
        create: bool = True,
    ) -> None:
        if str(path) in {"", ":memory:"}:
            # A private in-memory database is not shared by anything: use InMemoryPolicyStore.
            raise ValueError(f"SQLitePolicyStore needs a file path, got {str(path)!r}")
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.create = create
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._where = f"sqlite policy store {self.path}"

    # ------------------------------------------------------------------ PolicyStore

    async def get(self, key: str) -> Mapping[str, Any] | None:
        check_key(key)
        if not self.create and self._conn is None and not self.path.exists():
            return None  # nobody has written a record here yet; do not create the file
        row = await self._run(lambda conn: conn.execute(_SELECT, (key,)).fetchone())
        if row is None:
            return None
        return decode_value(key, row[0], self._where)

    async def set(self, key: str, value: Mapping[str, Any]) -> None:
        text = encode_value(check_key(key), value)
        if not self.create and self._conn is None and not self.path.exists():
            raise PolicyStoreUnavailable(
                f"{self._where}: does not exist (opened with create=False)"
            )
        updated_at = self._clock.now().isoformat()
        await self._run(lambda conn: conn.execute(_UPSERT, (key, text, updated_at)))

    async def close(self) -> None:
        """Close the connection; a later call reopens it."""
        await asyncio.to_thread(self._close_locked)

    async def __aenter__(self) -> SQLitePolicyStore:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"SQLitePolicyStore({str(self.path)!r})"

    # ------------------------------------------------------------------ internals

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, operation)

    def _locked(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return operation(self._connection())
            except sqlite3.OperationalError as exc:
                self._drop(exc)
                raise PolicyStoreUnavailable(f"{self._where}: {exc}") from exc
            except sqlite3.Error as exc:
                self._drop(exc)
                raise PolicyStoreError(f"{self._where}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise PolicyStoreError(f"{self._where}: SQLite refused WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        logger.bind(path=str(self.path.resolve())).debug("sqlite policy store opened")
        self._conn = conn
        return conn

    def _drop(self, exc: BaseException) -> None:
        # After an error the connection may be in any state; the next call starts afresh.
        logger.bind(path=str(self.path), error=str(exc)).warning("sqlite policy store error")
        self._close()

    def _close_locked(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

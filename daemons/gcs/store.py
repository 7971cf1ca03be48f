"""The GCS's durable tables, written through to SQLite in the session directory.

Tables (key -> msgpack value): ``actors`` (state that changes: ALIVE, address,
restarts), ``actor_specs`` (creation spec and pickled class, written once),
``jobs``, ``kv`` (internal key-value store), ``placement_groups``, ``nodes`` (the
node table, written when a node registers or dies) and ``meta`` (session id).
The placement-group manager writes its rows with
``gcs.store.put("placement_groups", pg_id, row)`` (any msgpack value) and finds
them after a restart in ``gcs.persistence.placement_groups``.

Writes are collected per event-loop iteration and committed in one transaction at
its end (``call_soon``). A handler's reply is flushed to its socket by a callback
scheduled after the handler ran, so the commit that holds a handler's write always
runs before its reply leaves: whatever a client was told is stored is in SQLite.

Why WAL with ``synchronous=NORMAL``, committed on the loop's thread: in WAL mode
a commit is an append to the log file with no fsync (the fsync happens at
checkpoints), so it costs tens of microseconds (see docs/architecture.md) and
survives the GCS process being killed (the data is in the OS page cache). Only a
power loss can drop the last commits, and the database stays consistent even
then. A writer thread would not make the GCS faster at this cost, and would put a
reply ahead of its write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from typing import Any

import msgpack

logger = logging.getLogger(__name__)

TABLES = ("actors", "actor_specs", "jobs", "kv", "placement_groups", "nodes", "meta")
DB_FILE = "gcs.sqlite"


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


class GcsStore:
    """Durable tables; without a path (no session directory) a no-op."""

    def __init__(self, session_dir: str) -> None:
        self.path = os.path.join(session_dir, DB_FILE) if session_dir else ""
        self.db: sqlite3.Connection | None = None
        self._dirty: dict[tuple[str, bytes], bytes | None] = {}
        self._flush_scheduled = False
        self.commits = 0
        self.commit_seconds = 0.0
        if self.path:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            for table in TABLES:
                self.db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (key BLOB PRIMARY KEY, value BLOB)"
                )

    def __repr__(self) -> str:
        return f"<GcsStore {self.path or 'memory-only'} pending={len(self._dirty)}>"

    @property
    def durable(self) -> bool:
        return self.db is not None

    def load(self, table: str) -> dict[bytes, Any]:
        if self.db is None:
            return {}
        assert table in TABLES
        rows = self.db.execute(f"SELECT key, value FROM {table}").fetchall()
        return {bytes(k): unpack(v) for k, v in rows}

    def put(self, table: str, key: bytes, value: Any) -> None:
        if self.db is not None:
            self._dirty[(table, key)] = pack(value)
            self._schedule()

    def delete(self, table: str, key: bytes) -> None:
        if self.db is not None:
            self._dirty[(table, key)] = None
            self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit everything written since the last flush, in one transaction."""
        self._flush_scheduled = False
        if self.db is None or not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        start = time.perf_counter()
        try:
            self.db.execute("BEGIN")
            for (table, key), value in dirty.items():
                if value is None:
                    self.db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
                else:
                    self.db.execute(
                        f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)", (key, value)
                    )
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            # A full disk must not stop the GCS: it keeps serving from memory.
            logger.error("cannot persist %d GCS table rows: %s", len(dirty), e)
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        self.commits += 1
        self.commit_seconds += time.perf_counter() - start

    def close(self) -> None:
        self.flush()
        if self.db is not None:
            self.db.close()
            self.db = None

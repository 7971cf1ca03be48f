"""Connection handshake cost with and without a cluster token, and GCS SQLite commit cost.

python benchmarks/handshake_and_gcs_store.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from aioray.daemons.gcs.store import GcsStore

from aioray._private.rpc import loop as _loop
from aioray._private.rpc import rpc
from aioray._private.wire import auth


async def connect_cost(token: str | None, n: int = 2000) -> float:
    """Seconds per connect + handshake to a server in this process (loopback)."""
    auth.set_token(token)
    server = rpc.Server({})
    await server.start("127.0.0.1", 0)
    for i in range(n + 100):
        if i == 100:  # warmed up
            start = time.perf_counter()
        conn, _ = await rpc.connect(server.host, server.port)
        conn.close()
    elapsed = (time.perf_counter() - start) / n
    await server.stop()
    return elapsed


async def commit_cost() -> dict[str, float]:
    """Seconds per commit of the GCS store: 1 small row, 100 small rows, one 20 KB row."""
    store = GcsStore(tempfile.mkdtemp())
    results = {}
    for label, rows, size, rounds in (("1 row", 1, 100, 3000), ("100 rows", 100, 100, 300),
                                      ("20 KB row", 1, 20_000, 300)):  # fmt: skip
        store.commits, store.commit_seconds = 0, 0.0
        for r in range(rounds):
            for i in range(rows):
                store.put("kv", f"{label}-{r}-{i}".encode(), b"v" * size)
            await asyncio.sleep(0)  # one commit per loop iteration, as in the GCS
        results[label] = store.commit_seconds / store.commits
    store.close()
    return results


def main() -> None:
    for token in (None, auth.generate_token()):
        cost = _loop.run(connect_cost(token))
        print(f"connect + handshake, {'token' if token else 'no token'}: {cost * 1e6:.0f} us")
    auth.reset()
    for label, cost in _loop.run(commit_cost()).items():
        print(f"GCS store commit, {label}: {cost * 1e6:.0f} us")


if __name__ == "__main__":
    main()

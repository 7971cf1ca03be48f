"""The State API at 100,000 tasks: list (limit 100), a filter that finds the few
RUNNING tasks, get, and summarize, each timed; and the GCS's memory for the table.

The tasks are injected as task events (``add_task_events`` batches, the wire format
the workers send) rather than run, so the table fills in seconds. The first query
after the injection merges every batch (the GCS merges lazily, when asked): it is
timed separately.

    python benchmarks/state_api_benchmark.py [--tasks 100000] [--running 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from typing import Any

import msgpack
import psutil

import aioray as ray
from aioray import api
from aioray._private.node import node
from aioray._private.owner import task_events as te
from aioray._private.rpc import loop as _loop
from aioray._private.rpc import rpc
from aioray.util import state

BATCH = 10_000


def batches(n: int, running: int) -> list[tuple[dict[str, Any], bytes]]:
    """Owner and executor rows of ``n`` tasks, the last ``running`` still RUNNING."""
    out = []
    now = time.time()
    job = b"\x01\x00\x00\x00"
    for start in range(0, n, BATCH):
        owner, executor = [], []
        for i in range(start, min(n, start + BATCH)):
            tid = i.to_bytes(16, "little")
            t = now + i * 1e-4
            name = f"func_{i % 10}"
            info = (name, te.NORMAL_TASK, job, None, None, (("CPU", 1.0),), None)
            owner.append((tid, 0, te.PENDING_ARGS_AVAIL, t, *info))
            owner.append((tid, 0, te.SUBMITTED_TO_WORKER, t + 1e-5))
            executor.append((tid, 0, te.EXEC + te.RUNNING, t + 2e-5))
            if i < n - running:
                executor.append((tid, 0, te.EXEC + te.FINISHED, t + 5e-5))
                owner.append((tid, 0, te.FINISHED, t + 6e-5))
        new = min(n, start + BATCH) - start
        out.append(({"new": new, "node": b"\x01" * 16, "pid": 1}, msgpack.packb(owner)))
        where = {"new": 0, "node": b"\x01" * 16, "worker": b"\x02" * 16, "pid": 4242}
        out.append((where, msgpack.packb(executor)))
    return out


def inject(address: str, n: int, running: int) -> None:
    async def send() -> None:
        conn, _ = await rpc.connect(*node.split_address(address), hello={"role": "client"})
        for header, blob in batches(n, running):
            conn.notify("add_task_events", header, [blob])
            await conn.drain()
        await conn.call("get_nodes")  # every notification before it has been handled
        conn.close()

    _loop.run(send())


def timed(fn: Any, repeat: int = 5) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times), result


def gcs_rss() -> float:
    for p in psutil.Process().children(recursive=True):
        if "aioray.daemons.gcs" in " ".join(p.cmdline()):
            return float(p.memory_info().rss) / 2**20
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--running", type=int, default=5)
    a = p.parse_args()
    ray.init(num_cpus=1, _system_config={"task_events_max_num_task_in_gcs": a.tasks})
    address = api.connected_gcs_address()
    assert address is not None
    before = gcs_rss()
    start = time.perf_counter()
    inject(address, a.tasks, a.running)
    print(f"injected {a.tasks} tasks in {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    first = threading.Thread(target=state.summarize_tasks)  # it merges every batch received
    first.start()
    meanwhile = []  # the GCS answers other requests while it merges
    while first.is_alive():
        t0 = time.perf_counter()
        state.list_nodes()
        meanwhile.append(time.perf_counter() - t0)
    first.join()
    print(f"first query (merges {a.tasks} tasks' batches): {time.perf_counter() - start:.3f} s")
    print(
        f"  list_nodes() meanwhile: {len(meanwhile)} calls, "
        f"max {max(meanwhile) * 1000:.0f} ms, median {statistics.median(meanwhile) * 1000:.0f} ms"
    )
    print(f"GCS RSS: {before:.0f} MiB before, {gcs_rss():.0f} MiB with the table")
    checks = [
        ("list_tasks(limit=100)", lambda: state.list_tasks(limit=100)),
        (
            "list_tasks(filters=[state=RUNNING])",
            lambda: state.list_tasks(filters=[("state", "=", "RUNNING")]),
        ),
        ("get_task(id)", lambda: state.get_task((a.tasks // 2).to_bytes(16, "little").hex())),
        ("summarize_tasks()", state.summarize_tasks),
    ]
    for name, fn in checks:
        median, worst, result = timed(fn)
        size = len(result) if isinstance(result, list) else 1
        print(f"{name:<40} median {median * 1000:7.1f} ms  max {worst * 1000:7.1f} ms  rows {size}")
    ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("AIORAY_TASK_EVENTS_REPORT_INTERVAL_MS", "1000")
    main()

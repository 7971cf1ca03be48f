"""What a Prometheus scrape of a node costs, and whether it slows the raylet.

A local cluster whose processes hold ~1,000 user series (counters, gauges and
10-bucket histograms under 100 families) and ``ray_tasks`` for 100 task names.
Measured: the scrape's wall time over HTTP (p50/p90/max), the raylet's own render
time (its loop is busy only for that: ``get_state``'s ``metrics.render_s``), the
raylet's RPC round trip idle and while a thread scrapes back to back, and the
executor's per-task bookkeeping for ``ray_tasks``.

    python benchmarks/metrics_benchmark.py [--scrapes 50]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import timeit
import urllib.request
from collections.abc import Callable
from typing import Any

import aioray as ray
from aioray._private.core.metrics_registry import TaskCounts
from aioray._private.node import memory_tables
from aioray._private.wire import auth

FAMILIES, LABELS, TASK_NAMES = 100, 10, 100


@ray.remote
def record(families: int, labels: int) -> int:
    from aioray.util.metrics import Counter, Gauge, Histogram

    n = 0
    for f in range(families):
        kind = f % 5
        if kind < 2:
            m: Any = Counter(f"bench_counter_{f}", "a counter", ("k",))
        elif kind < 4:
            m = Gauge(f"bench_gauge_{f}", "a gauge", ("k",))
        else:
            m = Histogram(f"bench_hist_{f}", "a histogram", [2.0**i for i in range(10)], ("k",))
        for i in range(labels):
            tags = {"k": f"value-{i}"}
            if kind < 2:
                m.inc(1, tags=tags)
            elif kind < 4:
                m.set(i, tags=tags)
            else:
                m.observe(i * 10.0, tags=tags)
            n += 1
    return n


def _task_named(name: str) -> Any:
    def f() -> None:
        return None

    f.__name__ = f.__qualname__ = name
    return ray.remote(f)


def scrape(port: int) -> tuple[float, int]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Authorization": f"Bearer {auth.cluster_token()}"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return time.perf_counter() - start, len(body)


def rpc_round_trips(n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        memory_tables.raylet_state()
        out.append(time.perf_counter() - start)
    return out


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000


# Scrapes back to back from another process (in this one it would take the GIL from
# the driver's loop, which answers the round trips being measured).
SCRAPER = """
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
while True:
    urllib.request.urlopen(req, timeout=10).read()
"""


def while_scraping(port: int, measure: Callable[[], list[float]]) -> list[float]:
    url = f"http://127.0.0.1:{port}/metrics"
    token = auth.cluster_token() or ""
    proc = subprocess.Popen([sys.executable, "-c", SCRAPER, url, token])
    try:
        time.sleep(0.5)  # it is scraping
        return measure()
    finally:
        proc.kill()
        proc.wait()


def per_task_bookkeeping() -> float:
    counts = TaskCounts()

    def one_task() -> None:
        counts.started("f", b"\x01")
        counts.ended("f", b"\x01", False)

    return min(timeit.repeat(one_task, number=100_000, repeat=5)) / 100_000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scrapes", type=int, default=50)
    a = p.parse_args()
    ctx = ray.init(num_cpus=2)
    port = ctx.address_info["metrics_export_port"]
    try:
        ray.get(record.remote(FAMILIES, LABELS))
        ray.get([_task_named(f"bench_task_{i}").remote() for i in range(TASK_NAMES)])
        deadline = time.monotonic() + 30
        while memory_tables.raylet_state()["metrics"]["series"] < FAMILIES * LABELS:
            if time.monotonic() > deadline:
                raise SystemExit("the metrics never reached the raylet")
            time.sleep(0.2)
        scrape(port)  # the first scrape samples process memory
        walls, renders, size = [], [], 0
        for _ in range(a.scrapes):
            wall, size = scrape(port)
            walls.append(wall)
            renders.append(memory_tables.raylet_state()["metrics"]["render_s"])
        idle = rpc_round_trips(500)
        busy = while_scraping(port, lambda: rpc_round_trips(500))
    finally:
        ray.shutdown()
    per_task = per_task_bookkeeping()
    print(f"scrape body: {size / 1024:.0f} KiB, {FAMILIES} user families x {LABELS} series, "
          f"{TASK_NAMES} task names")  # fmt: skip
    print(f"scrape wall ms: p50 {pct(walls, .5):.1f}  p90 {pct(walls, .9):.1f}  "
          f"max {max(walls) * 1000:.1f}  (n={len(walls)})")  # fmt: skip
    print(f"raylet render ms (its loop's share): p50 {pct(renders, .5):.1f}  "
          f"max {max(renders) * 1000:.1f}")  # fmt: skip
    print(f"raylet rpc round trip ms: idle p50 {pct(idle, 0.5):.2f} p99 {pct(idle, 0.99):.2f}")
    print(f"  while scraped back to back: p50 {pct(busy, 0.5):.2f} p99 {pct(busy, 0.99):.2f}")
    print(f"executor ray_tasks bookkeeping per task: {per_task * 1e9:.0f} ns (best of 5)")


if __name__ == "__main__":
    main()

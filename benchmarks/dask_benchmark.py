"""A dask array sum over 1,000 chunks: the aioray scheduler (ray_dask_get) against dask's
threaded scheduler (and dask.distributed's LocalCluster when installed).

Each scheduler computes ``da.ones(1_000_000, chunks=1_000).sum()`` (1,000 chunk tasks
plus the tree reduction) after one warm-up; rounds interleave the schedulers and the
figure is each one's median.

    python benchmarks/dask_benchmark.py [--rounds 5] [--chunks 1000] [--processes 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import dask.array as da

import aioray as ray
from aioray.util.dask import ray_dask_get


def timed(compute: Callable[[], Any], expected: float) -> float:
    start = time.perf_counter()
    assert compute() == expected
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2)
    a = ap.parse_args()
    ray.init(num_cpus=a.processes, log_to_driver=False)
    x = da.ones(a.chunks * 1000, chunks=1000).sum()
    arms: dict[str, Callable[[], Any]] = {
        "aioray (ray_dask_get)": lambda: x.compute(scheduler=ray_dask_get),
        "dask threaded": lambda: x.compute(scheduler="threads"),
    }
    client = cluster = None
    try:
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=a.processes, threads_per_worker=1, processes=True)
        client = Client(cluster)
        arms["dask.distributed"] = lambda: client.compute(x).result()  # type: ignore[union-attr]
    except ImportError:
        print("(dask.distributed is not installed: its row is skipped)")
    expected = float(a.chunks * 1000)
    for compute in arms.values():
        timed(compute, expected)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(a.rounds):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for name in order:
            times[name].append(timed(arms[name], expected))
    print(f"dask array sum over {a.chunks} chunks, {a.processes} processes, {a.rounds} rounds")
    for name, t in times.items():
        print(f"  {name:<24} median {statistics.median(t) * 1e3:8.1f} ms")
    if client is not None:
        client.close()
        cluster.close()  # type: ignore[union-attr]
    ray.shutdown()


if __name__ == "__main__":
    main()

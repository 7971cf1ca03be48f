"""Object spilling: get of a spilled 100 MiB object, and a put that must spill first.

Each trial, on a 256 MiB store:
1. put A, B (100 MiB each; they fit), then C: C's put waits until A is spilled to
   disk (C's write overlaps the spill). "put of 100 MiB into a full store" times
   C's put.
2. free C, then time ``ray.get(A)``: the raylet restores A from its spill file into
   shared memory (room is free: no second spill) and the driver maps it. That is
   "get of a spilled 100 MiB object". The value is a zero-copy view, not read.
"spill throughput" and "restore copy throughput" are the raylet's own timings of
its file copies (shm -> spill disk, and back), from its stats.

Usage: python benchmarks/spill_benchmark.py [--trials N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

import aioray as ray
from aioray._private.node.memory_tables import raylet_state

MiB = 1 << 20
SIZE = 100 * MiB


def store_stats() -> dict[str, Any]:
    return dict(raylet_state()["object_store"])


def wait_used(at_most: int) -> None:
    deadline = time.monotonic() + 10
    while store_stats()["used"] > at_most:
        if time.monotonic() > deadline:
            raise TimeoutError(f"store still holds {store_stats()}")
        time.sleep(0.005)


def trial(arrays: list[Any]) -> tuple[float, float, float, float]:
    before = store_stats()
    t0 = time.perf_counter()
    a = ray.put(arrays[0])
    t1 = time.perf_counter()
    b = ray.put(arrays[1])
    t2 = time.perf_counter()
    c = ray.put(arrays[2])  # A is spilled to make room
    t3 = time.perf_counter()
    assert store_stats()["spilled_bytes"] >= SIZE
    del c
    wait_used(2 * SIZE + 4096)
    t4 = time.perf_counter()
    value = ray.get(a)
    t5 = time.perf_counter()
    assert value[0] == 0 and value.nbytes == SIZE
    del value, a, b
    wait_used(0)
    after = store_stats()

    def rate(kind: str) -> float:
        moved = after[f"{kind}_bytes"] - before[f"{kind}_bytes"]
        return moved / 2**30 / max(after[f"{kind}_seconds"] - before[f"{kind}_seconds"], 1e-9)

    _ = (t0, t1)
    return (
        SIZE / 2**30 / (t5 - t4),
        SIZE / 2**30 / (t3 - t2),
        rate("spill"),
        rate("restore"),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    a = p.parse_args()
    ray.init(num_cpus=1, object_store_memory=256 * MiB)
    try:
        arrays = [np.full(SIZE // 8, i, dtype=np.int64) for i in range(3)]
        trial(arrays)  # warm-up: page cache, spill directory
        rows: dict[str, list[float]] = {
            "get of a spilled 100 MiB object": [],
            "put of 100 MiB into a full store (spills 100 MiB first)": [],
            "spill throughput (100 MiB shm -> disk, raylet copy)": [],
            "restore copy throughput (100 MiB disk -> shm, raylet copy)": [],
        }
        for _ in range(a.trials):
            for key, value in zip(rows, trial(arrays), strict=True):
                rows[key].append(value)
        for name, values in rows.items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{name} GiB/s {statistics.mean(values):.2f} +- {sd:.2f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

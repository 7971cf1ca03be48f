"""Put and get of 100 MiB numpy arrays, the same code under aioray and under Ray (#21's
"get of large objects >= 3x Ray"), so the two can run side by side on one machine.

    python benchmarks/large_objects_vs_ray.py --impl aioray      # this checkout's aioray
    /ray-venv/bin/python benchmarks/large_objects_vs_ray.py --impl ray

- "put 100 MiB": ``put`` of a 100 MiB array whose ref is dropped at once, GiB/s.
- "get 100 MiB": ``get`` of a 100 MiB array already in the store (both zero-copy: a
  read-only view of shared memory), the value dropped at once; gets per second.
- "transfer 100 MiB between nodes" (``--transfer``): a two-node ``cluster_utils.Cluster``;
  a task on the second node makes the array; once it exists there (``wait`` without
  fetching), the driver on the head times its ``get`` (a pull, then a zero-copy read); GiB/s.
Each row: a warm-up, then ``--trials`` trials of ``--rounds`` operations; mean ± std.
Run it from a directory outside any checkout (a daemon started with ``python -m`` puts
the current directory on its path).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from typing import Any

import numpy as np

MIB = 1 << 20


def rate(fn: Any, rounds: int, trials: int, per: float) -> tuple[float, float]:
    """Mean and std over ``trials`` of ``per * rounds / seconds`` for ``rounds`` calls."""
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        out.append(per * rounds / (time.perf_counter() - t0))
    return statistics.mean(out), statistics.stdev(out) if len(out) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=["aioray", "ray"], required=True)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--get-rounds", type=int, default=2000)
    p.add_argument("--transfer", action="store_true", help="only the transfer row")
    a = p.parse_args()
    ray: Any = importlib.import_module(a.impl)
    if a.transfer:
        transfer(ray, importlib.import_module(f"{a.impl}.cluster_utils"), a.trials)
        return
    ray.init(num_cpus=2, object_store_memory=2 * 1024 * MIB, include_dashboard=False)
    try:
        array = np.ones(100 * MIB, dtype=np.uint8)
        for _ in range(5):  # warm-up: workers, pools, connections
            ray.put(array)
        put = rate(lambda: ray.put(array), a.rounds, a.trials, 100 / 1024)
        ref = ray.put(array)
        for _ in range(100):
            ray.get(ref)
        get = rate(lambda: ray.get(ref), a.get_rounds, a.trials, 1.0)
        version = getattr(ray, "__version__", "?")
        print(f"{a.impl} {version}")
        print(f"put 100 MiB GiB/s       {put[0]:10,.2f} ± {put[1]:.2f}")
        print(f"get 100 MiB per second  {get[0]:10,.0f} ± {get[1]:,.0f}")
    finally:
        ray.shutdown()


def transfer(ray: Any, cluster_utils: Any, trials: int) -> None:
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 1024 * MIB},
    )
    cluster.add_node(num_cpus=1, resources={"far": 1}, object_store_memory=1024 * MIB)
    ray.init(address=cluster.address)
    try:

        @ray.remote(resources={"far": 1})
        def make() -> Any:
            return np.ones(100 * MIB, dtype=np.uint8)

        rates = []
        for i in range(trials + 2):  # the first two warm up
            ref = make.remote()
            ray.wait([ref], fetch_local=False)
            t0 = time.perf_counter()
            ray.get(ref)
            if i >= 2:
                rates.append((100 / 1024) / (time.perf_counter() - t0))
            del ref
        print(f"{ray.__name__} {getattr(ray, '__version__', '?')}")
        mean, std = statistics.mean(rates), statistics.stdev(rates)
        print(f"transfer 100 MiB between nodes GiB/s  {mean:6.2f} ± {std:.2f}")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()

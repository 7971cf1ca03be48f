"""Pool.map over 10,000 tiny items: aioray's actor Pool against multiprocessing.Pool.

Issue #19's aim: within 2x of the stdlib's (and faster than Ray's Pool, which is not
installed here). Both pools are started once, warmed up with one map, then timed
round after round, interleaved (aioray then stdlib, then the other order) so that
machine drift hits both alike; the figure is the median per-round time of each and
the median of the per-round ratios.

    python benchmarks/pool_benchmark.py [--rounds 11] [--n 10000] [--processes 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import aioray as ray
from aioray.util.multiprocessing import Pool


def timed_map(pool: object, n: int) -> float:
    start = time.perf_counter()
    result = pool.map(abs, range(n))  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    assert result[-1] == n - 1
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=2)
    a = ap.parse_args()
    ray.init(num_cpus=a.processes, log_to_driver=False)
    ours = Pool(a.processes)
    std = multiprocessing.get_context("fork").Pool(a.processes)
    timed_map(ours, a.n), timed_map(std, a.n)  # warm-up
    t_ours: list[float] = []
    t_std: list[float] = []
    for i in range(a.rounds):
        pair = [(ours, t_ours), (std, t_std)]
        for pool, times in pair if i % 2 == 0 else pair[::-1]:
            times.append(timed_map(pool, a.n))
    ratios = [o / s for o, s in zip(t_ours, t_std, strict=True)]
    print(f"Pool.map of {a.n} items, {a.processes} processes, {a.rounds} rounds")
    print(f"  aioray Pool          median {statistics.median(t_ours) * 1e3:8.1f} ms")
    print(f"  multiprocessing.Pool median {statistics.median(t_std) * 1e3:8.1f} ms")
    print(f"  ratio aioray/stdlib  median {statistics.median(ratios):.2f}x")
    ours.terminate()
    std.terminate()
    ray.shutdown()


if __name__ == "__main__":
    main()

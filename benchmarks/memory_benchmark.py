"""Memory benchmarks of issue #4 (memory), in microbenchmark.py's line format.

- ``put+free of 10k small objects per second``: one call puts 10,000 small values,
  dropping each ref at once, then waits until the owner has freed them all (its
  memory store is back to where it started). The rate counts such calls, as Ray's
  "... containing 10k refs" lines do; multiply by 10,000 for objects per second.
- ``whole-cluster RSS over 10,000 task/put cycles``: one cycle puts a value and
  gets the result of a task that takes it (a small value, or every tenth cycle a
  200 KB array that travels through shared memory both ways). The RSS of the driver plus every
  process it started (GCS, raylet, fork server, workers) is summed at the start,
  every 1,000 cycles and at the end. The growth line is end minus start.
  The driver's CoreWorker tables and the raylet's counts are printed beside it,
  so a growth can be traced to the table that grows.

Run: ``python benchmarks/memory_benchmark.py`` (``--quick`` for a smoke run).
Results go to stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psutil

import aioray as ray
from aioray import api
from aioray._private.node.memory_tables import core_worker_tables, raylet_state

MiB = 1024 * 1024


def cluster_memory() -> tuple[int, int, int]:
    """(RSS, PSS, process count) of this driver and every process it started, in bytes.

    RSS counts the pages forked workers share with the fork server once per process;
    PSS splits them among the sharers, so its sum is the memory really in use.
    """
    me = psutil.Process()
    rss = pss = n = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:  # a worker that just exited
            continue
        rss += info.rss
        pss += info.pss
        n += 1
    return rss, pss, n


def wait_freed(baseline: int, timeout: float = 30.0) -> None:
    """Wait until the driver's memory store is back to ``baseline`` entries."""
    cw = api.ensure_connected()
    deadline = time.monotonic() + timeout
    while len(cw.memory_store) > baseline:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(cw.memory_store) - baseline} objects never freed")
        time.sleep(0.0005)


def put_free(trials: int, rounds: int) -> tuple[float, float]:
    """Rounds of 10k put+drop (each waited until freed) per second: mean, std over trials."""
    cw = api.ensure_connected()
    value = b"x" * 100
    baseline = len(cw.memory_store)

    def one_round() -> None:
        for _ in range(10_000):
            ray.put(value)  # the ref is dropped at once
        wait_freed(baseline)

    one_round()  # warm-up
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(rounds):
            one_round()
        rates.append(rounds / (time.perf_counter() - start))
    return statistics.fmean(rates), statistics.pstdev(rates)


BIG = np.ones(200_000 // 8)  # above the inline limit: goes through shared memory


def cycle(echo: Any, i: int) -> None:
    """A put and a task that takes it; every tenth cycle the value is a shm object."""
    if i % 10:
        assert ray.get(echo.remote(ray.put(i))) == i
    else:
        assert ray.get(echo.remote(ray.put(BIG))).nbytes == BIG.nbytes


def memory_over_cycles(cycles: int, every: int) -> list[tuple[int, tuple[int, int, int]]]:
    """Run put+task cycles; (cycle, cluster memory) at the start, every ``every``, the end."""

    @ray.remote
    def echo(x: int) -> int:
        return x

    for i in range(200):  # warm-up: workers started, code paths and caches exercised
        cycle(echo, i)
    time.sleep(0.5)  # idle leases go back
    gc.collect()
    samples = [(0, cluster_memory())]
    tables_before = core_worker_tables(api.ensure_connected())
    raylet_before = raylet_state()
    for i in range(1, cycles + 1):
        cycle(echo, i)
        if i % every == 0 or i == cycles:
            gc.collect()
            samples.append((i, cluster_memory()))
    time.sleep(0.2)  # let the last frees reach the raylet
    tables_after = core_worker_tables(api.ensure_connected())
    raylet_after = raylet_state()
    grown = {
        k: (tables_before.get(k, 0), v)
        for k, v in tables_after.items()
        if v > tables_before.get(k, 0)
    }
    print(f"driver tables that grew (before, after): {grown or 'none'}", file=sys.stderr)
    keys = ("workers", "leases", "queued", "objects")
    print(
        "raylet (before -> after): "
        + ", ".join(f"{k} {raylet_before.get(k)} -> {raylet_after.get(k)}" for k in keys),
        file=sys.stderr,
    )
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    p.add_argument("--cycles", type=int, default=10_000)
    args = p.parse_args(argv)
    trials, rounds = (2, 1) if args.quick else (4, 3)
    cycles = min(args.cycles, 1_000) if args.quick else args.cycles
    every = max(1, cycles // 10)
    ray.init(num_cpus=2)
    try:
        mean, std = put_free(trials, rounds)
        print(f"put+free of 10k small objects per second {round(mean, 2)} +- {round(std, 2)}")
        samples = memory_over_cycles(cycles, every)
    finally:
        ray.shutdown()
    for i, (rss, pss, n) in samples:
        print(
            f"whole-cluster RSS MiB after {i} task/put cycles {rss / MiB:.1f} "
            f"(PSS {pss / MiB:.1f}, {n} processes)"
        )
    (_, (rss0, pss0, _)), (_, (rss1, pss1, _)) = samples[0], samples[-1]
    print(
        f"whole-cluster RSS growth MiB over {cycles:,} task/put cycles {(rss1 - rss0) / MiB:.1f} "
        f"(PSS {(pss1 - pss0) / MiB:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

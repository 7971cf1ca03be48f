"""One sync round trip, taken apart: latency, CPU and thread wake-ups per call (#21).

A loop of ``ray.get(f.remote())`` (``--kind task``) or ``ray.get(a.m.remote())``
(``--kind actor``), as the microbenchmark's sync rows; ``task-batch`` and
``actor-batch`` are its async rows (a get of 1,000 at a time), counted per call.
Besides the rate and the median latency it reports what depends less on how loaded
the machine is: the CPU time each process spends per call (the driver, and the
workers that run the calls) and the context switches of all their threads per call
(voluntary: a thread went to sleep waiting for another; involuntary: the scheduler
took the core away).

    python benchmarks/sync_path.py [--kind task,actor,...] [--n 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import aioray as ray

BATCH = 1000  # calls per get in the batch kinds (the microbenchmark's async rows)


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches summed over the threads of ``pid``."""
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that just ended
    return vol, invol


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def totals(pids: set[int]) -> tuple[float, int, int]:
    """(CPU seconds, voluntary, involuntary switches) summed over ``pids``."""
    cpu, vol, invol = 0.0, 0, 0
    for pid in pids:
        cpu += cpu_seconds(pid)
        v, i = switches(pid)
        vol, invol = vol + v, invol + i
    return cpu, vol, invol


def measure(call: Callable[[], Any], workers: set[int], n: int, per: int) -> dict[str, float]:
    """``call()`` ``n // per`` times, each making ``per`` calls; figures per call."""
    me = {os.getpid()}
    lat = []
    d0, w0 = totals(me), totals(workers)
    start = time.perf_counter()
    for _ in range(n // per):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    d1, w1 = totals(me), totals(workers)
    return {
        "per_s": n / wall,
        "median_us": statistics.median(lat) / per * 1e6,
        "p10_us": statistics.quantiles(lat, n=10)[0] / per * 1e6,
        "driver_cpu_us": (d1[0] - d0[0]) / n * 1e6,
        "worker_cpu_us": (w1[0] - w0[0]) / n * 1e6,
        "driver_vol": (d1[1] - d0[1]) / n,
        "driver_invol": (d1[2] - d0[2]) / n,
        "worker_vol": (w1[1] - w0[1]) / n,
        "worker_invol": (w1[2] - w0[2]) / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="task,actor", help="of task, actor, task-batch, actor-batch")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)

    @ray.remote
    def f() -> int:
        return os.getpid()

    @ray.remote(num_cpus=0)
    class A:
        def m(self) -> int:
            return os.getpid()

    kinds = a.kind.split(",")
    actor = A.remote() if any(k.startswith("actor") for k in kinds) else None
    calls: dict[str, tuple[Callable[[], Any], int]] = {
        "task": (lambda: [ray.get(f.remote())], 1),
        "task-batch": (lambda: ray.get([f.remote() for _ in range(BATCH)]), BATCH),
    }
    if actor is not None:
        calls["actor"] = (lambda: [ray.get(actor.m.remote())], 1)
        calls["actor-batch"] = (lambda: ray.get([actor.m.remote() for _ in range(BATCH)]), BATCH)
    for kind in kinds:
        call, per = calls[kind]
        workers: set[int] = set()
        for _ in range(max(1, 300 // per)):  # warm up: workers leased, functions exported
            workers.update(call())
        for _ in range(a.rounds):
            r = measure(call, workers, max(a.n, per), per)
            print(
                f"{kind:11} {r['per_s']:7.0f}/s  median {r['median_us']:6.1f} us "
                f"(p10 {r['p10_us']:6.1f})  cpu us/call driver {r['driver_cpu_us']:6.1f} "
                f"workers {r['worker_cpu_us']:6.1f}  switches/call driver "
                f"{r['driver_vol']:.2f}+{r['driver_invol']:.2f} workers "
                f"{r['worker_vol']:.2f}+{r['worker_invol']:.2f}",
                flush=True,
            )
    ray.shutdown()


if __name__ == "__main__":
    main()

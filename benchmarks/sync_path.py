"""One sync round trip, taken apart: latency, CPU and thread wake-ups per call (#21).

A loop of ``ray.get(f.remote())`` (``--kind task``) or ``ray.get(a.m.remote())``
(``--kind actor``), as the microbenchmark's sync rows. Besides the median latency it
reports what does not depend on how loaded the machine is: the CPU time each process
spends per call (the driver, and the worker that runs the calls) and the context
switches of all their threads per call (voluntary: a thread went to sleep waiting for
another; involuntary: the scheduler took the core away).

    python benchmarks/sync_path.py [--kind task|actor|both] [--n 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import aioray as ray


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


def measure(call: Callable[[], Any], worker_pid: int, n: int) -> dict[str, float]:
    me = os.getpid()
    lat = []
    s0, w0 = switches(me), switches(worker_pid)
    c0, cw0 = cpu_seconds(me), cpu_seconds(worker_pid)
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    s1, w1 = switches(me), switches(worker_pid)
    c1, cw1 = cpu_seconds(me), cpu_seconds(worker_pid)
    return {
        "per_s": n / wall,
        "median_us": statistics.median(lat) * 1e6,
        "p10_us": statistics.quantiles(lat, n=10)[0] * 1e6,
        "driver_cpu_us": (c1 - c0) / n * 1e6,
        "worker_cpu_us": (cw1 - cw0) / n * 1e6,
        "driver_vol": (s1[0] - s0[0]) / n,
        "driver_invol": (s1[1] - s0[1]) / n,
        "worker_vol": (w1[0] - w0[0]) / n,
        "worker_invol": (w1[1] - w0[1]) / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["task", "actor", "both"], default="both")
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

    kinds = ["task", "actor"] if a.kind == "both" else [a.kind]
    actor = A.remote() if "actor" in kinds else None
    calls: dict[str, Callable[[], Any]] = {"task": lambda: ray.get(f.remote())}
    if actor is not None:
        calls["actor"] = lambda: ray.get(actor.m.remote())
    for kind in kinds:
        call = calls[kind]
        pids = {call() for _ in range(300)}  # warm up; one lease serves a sync loop
        if len(pids) != 1:
            print(f"{kind}: calls ran in {len(pids)} workers; the worker figures are one of them")
        pid = pids.pop()
        for _ in range(a.rounds):
            r = measure(call, pid, a.n)
            print(
                f"{kind:5} {r['per_s']:7.0f}/s  median {r['median_us']:6.1f} us "
                f"(p10 {r['p10_us']:6.1f})  cpu us/call driver {r['driver_cpu_us']:6.1f} "
                f"worker {r['worker_cpu_us']:6.1f}  switches/call driver "
                f"{r['driver_vol']:.2f}+{r['driver_invol']:.2f} worker "
                f"{r['worker_vol']:.2f}+{r['worker_invol']:.2f}",
                flush=True,
            )
    ray.shutdown()


if __name__ == "__main__":
    main()

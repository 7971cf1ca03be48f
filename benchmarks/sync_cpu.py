"""The CPU a sync round trip costs, the driver's and the worker's, and the rate (#21,
session 12: polling before sleeping turns some sleep into CPU; this says how much).

    python benchmarks/sync_cpu.py [--n 4000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import psutil

import aioray as ray

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=4000)
args = parser.parse_args()
ray.init(num_cpus=1, include_dashboard=False)


@ray.remote
def f() -> int:
    return os.getpid()


@ray.remote
class A:
    def m(self) -> int:
        return os.getpid()


def measure(call: Callable[[], int], n: int) -> tuple[float, float, float]:
    """(calls per second, driver µs of CPU per call, worker µs of CPU per call)."""
    wpid = call()
    for _ in range(500):
        call()
    me, w = psutil.Process(), psutil.Process(wpid)
    c0 = sum(me.cpu_times()[:2])
    w0 = sum(w.cpu_times()[:2])
    t = time.perf_counter()
    for _ in range(n):
        call()
    dt = time.perf_counter() - t
    c1 = sum(me.cpu_times()[:2])
    w1 = sum(w.cpu_times()[:2])
    return n / dt, (c1 - c0) / n * 1e6, (w1 - w0) / n * 1e6


a = A.remote()
kinds: dict[str, Callable[[], int]] = {
    "task": lambda: ray.get(f.remote()),
    "actor": lambda: ray.get(a.m.remote()),
}
for kind, call in kinds.items():
    rate, d, w = measure(call, args.n)
    print(
        f"{kind}: {rate:7.0f}/s  driver {d:5.1f} us/call  worker {w:5.1f} us/call  "
        f"sum {d + w:5.1f} (round trip {1e6 / rate:5.1f} us)"
    )
ray.shutdown()

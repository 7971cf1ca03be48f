"""What task events cost: CPU seconds per task, events on (the default interval) and
off (interval 0), alternated, on a fresh local cluster each time.

CPU time of every process (the driver, its workers, the GCS, the raylet) is far less
sensitive to a busy machine than throughput, so on a shared machine it is the
figure to compare; wall time is printed too.

    python benchmarks/task_events_overhead.py [--tasks 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import os, sys, time, psutil
import aioray as ray
n, kind = int(sys.argv[1]), sys.argv[2]
ray.init(num_cpus=2)

@ray.remote
def f():
    return 1

@ray.remote
class A:
    def m(self):
        return 1

a = A.remote()
call = (lambda: a.m.remote()) if kind == "actor" else (lambda: f.remote())
ray.get([call() for _ in range(1000)])  # warm: workers started, functions exported
time.sleep(1.5)  # (the warm-up's events flushed)
me = psutil.Process()
procs = [me, *me.children(recursive=True)]

def cpu():
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total

c0, w0 = cpu(), time.perf_counter()
ray.get([call() for _ in range(n)])
wall = time.perf_counter() - w0
time.sleep(2.5)  # the last events sent (two intervals) and handled
print(cpu() - c0, wall)
ray.shutdown()
"""


def run(n: int, kind: str, events_on: bool) -> tuple[float, float]:
    env = dict(os.environ)
    env["AIORAY_TASK_EVENTS_REPORT_INTERVAL_MS"] = "1000" if events_on else "0"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), kind],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kind", choices=("task", "actor"), default="task")
    a = p.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for r in range(a.rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            cpu, wall = run(a.tasks, a.kind, on)
            results[on].append((cpu, wall))
            print(
                f"round {r + 1} events {'on ' if on else 'off'}: "
                f"{cpu / a.tasks * 1e6:6.1f} us CPU/{a.kind}, {a.tasks / wall:8.0f} {a.kind}s/s",
                flush=True,
            )
    on = statistics.median(c for c, _ in results[True])
    off = statistics.median(c for c, _ in results[False])
    print(
        f"median CPU per {a.kind}: on {on / a.tasks * 1e6:.1f} us, off {off / a.tasks * 1e6:.1f} us"
    )
    print(f"events cost {100 * (on - off) / off:+.1f}% CPU ({time.strftime('%H:%M')})")


if __name__ == "__main__":
    main()

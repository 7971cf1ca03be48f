"""Pool.map over 10,000 tiny items: aioray's actor Pool against multiprocessing.Pool and
Ray's Pool (ray.util.multiprocessing).

Issue #19's aim: faster than Ray's Pool and within 2x of the stdlib's. Every pool is
started once and warmed up with one map, then timed round after round, interleaved
(the order reverses every round) so that machine drift hits all alike; the figures
are each pool's median per-round time and the median per-round ratios.

Ray's row runs when Ray can be imported: in this interpreter, or in the one named by
``--ray-python`` / ``AIORAY_BENCH_RAY_PYTHON`` (a venv of its own, since ray is never
a dependency of aioray). Ray's pool then lives in that subprocess with its own
cluster, and maps when told to over a pipe, so its rounds interleave with the others;
both clusters are up (and idle while the other maps) for the whole run.

    python benchmarks/pool_benchmark.py [--rounds 11] [--n 10000] [--processes 2]
        [--ray-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import aioray as ray
from aioray.util.multiprocessing import Pool

# Ray's side, run by the interpreter that has Ray: one line per map asked for on stdin.
RAY_ARM = """
import sys, time
import ray
from ray.util.multiprocessing import Pool
n, processes = int(sys.argv[1]), int(sys.argv[2])
ray.init(num_cpus=processes, include_dashboard=False, log_to_driver=False)
pool = Pool(processes)
def timed():
    start = time.perf_counter()
    result = pool.map(abs, range(n))
    elapsed = time.perf_counter() - start
    assert result[-1] == n - 1
    return elapsed
timed()  # warm-up
print("ready", ray.__version__, flush=True)
for line in sys.stdin:
    print(timed(), flush=True)
pool.terminate()
ray.shutdown()
"""


def timed_map(pool: object, n: int) -> float:
    start = time.perf_counter()
    result = pool.map(abs, range(n))  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    assert result[-1] == n - 1
    return elapsed


def ray_python(explicit: str | None) -> str | None:
    """The interpreter that can import Ray, or None (its row is skipped)."""
    for python in (explicit or os.environ.get("AIORAY_BENCH_RAY_PYTHON"), sys.executable):
        if not python:
            continue
        try:
            probe = subprocess.run([python, "-c", "import ray"], capture_output=True)
        except OSError:  # no such interpreter
            continue
        if probe.returncode == 0:
            return python
    return None


class RayArm:
    """Ray's Pool in a subprocess: ``map()`` asks it for one timed map."""

    def __init__(self, python: str, n: int, processes: int) -> None:
        self.proc = subprocess.Popen(
            [python, "-c", RAY_ARM, str(n), str(processes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"Ray's pool did not start (said {ready!r})")
        self.version = ready[1]

    def map(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--ray-python", default=None, help="an interpreter that can import ray")
    a = ap.parse_args()
    python = ray_python(a.ray_python)
    ray_arm = RayArm(python, a.n, a.processes) if python else None
    ray.init(num_cpus=a.processes, log_to_driver=False)
    ours = Pool(a.processes)
    std = multiprocessing.get_context("fork").Pool(a.processes)
    arms: dict[str, Callable[[], float]] = {
        "aioray Pool": lambda: timed_map(ours, a.n),
        "multiprocessing.Pool": lambda: timed_map(std, a.n),
    }
    if ray_arm is not None:
        arms[f"Ray {ray_arm.version} Pool"] = ray_arm.map
    arms["aioray Pool"](), arms["multiprocessing.Pool"]()  # warm-up (Ray's warmed itself)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(a.rounds):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for name in order:
            times[name].append(arms[name]())
    print(f"Pool.map of {a.n} tiny items, {a.processes} processes, {a.rounds} rounds (medians)")
    for name, t in times.items():
        print(f"  {name:<22} {statistics.median(t) * 1e3:8.1f} ms")
    ours_t = times["aioray Pool"]
    for name, t in times.items():
        if name != "aioray Pool":
            ratio = statistics.median(o / s for o, s in zip(ours_t, t, strict=True))
            print(f"  aioray / {name:<13} {ratio:8.2f}x")
    if ray_arm is None:
        print("  (Ray's Pool skipped: ray is not importable; set AIORAY_BENCH_RAY_PYTHON)")
    ours.terminate()
    std.terminate()
    ray.shutdown()
    if ray_arm is not None:
        ray_arm.close()


if __name__ == "__main__":
    main()

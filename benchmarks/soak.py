"""Soak: a steady stream of tiny tasks with the State API polled, and every process's
memory sampled, to show that nothing grows while the load stays the same.

A local cluster runs ``--rate`` tasks per second (default 1,000: one per ms, in
batches of 10 every 10 ms) for ``--duration`` seconds while a thread lists the
latest 100 tasks and summarizes them every second (as a dashboard would). Every
``--sample`` seconds the resident memory (RSS and USS) of every process of the
cluster is recorded. Memory legitimately grows while buffers and the GCS's task
table fill up (it keeps ``task_events_max_num_task_in_gcs`` tasks, then evicts the
oldest), so growth is measured from the sample at ``--settle`` (a fraction of the
run) to the last one.

    python benchmarks/soak.py --duration 3600              # the full hour
    python benchmarks/soak.py --duration 20 --check 25     # exit 1 if a process grew
                                                           # by more than 25 MiB

``--check`` is what the end-to-end suite runs (tests/e2e/test_soak.py), shorter, with
a small GCS task table so it fills within seconds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
from typing import Any

import psutil

import aioray as ray
from aioray.util.state import list_tasks, summarize_tasks

MIB = 1024 * 1024


def kind_of(proc: psutil.Process, driver_pid: int) -> str:
    """A short name for a cluster process (the driver, a daemon, or a worker)."""
    if proc.pid == driver_pid:
        return "driver"
    cmd = " ".join(proc.cmdline())
    for kind in ("gcs", "raylet", "dashboard", "forkserver"):
        if f"aioray.daemons.{kind}" in cmd or f"aioray.{kind}" in cmd:
            return kind
    return "worker"


def sample(driver: psutil.Process) -> dict[str, tuple[float, float]]:
    """(RSS, USS) in MiB of every process of the cluster, by kind and pid."""
    out: dict[str, tuple[float, float]] = {}
    for proc in [driver, *driver.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            out[f"{kind_of(proc, driver.pid)}:{proc.pid}"] = (info.rss / MIB, info.uss / MIB)
        except psutil.Error:  # a worker that exited meanwhile
            pass
    return out


def poll_state(stop: threading.Event, latencies: list[float]) -> None:
    """List the newest 100 tasks and summarize them, once a second."""
    while not stop.wait(1.0):
        t0 = time.perf_counter()
        list_tasks(limit=100, raise_on_missing_output=False)
        summarize_tasks()
        latencies.append(time.perf_counter() - t0)


def soak(
    duration: float, rate: int, every: float
) -> tuple[list[tuple[float, Any]], int, list[float]]:
    """Run the load; return the memory samples (time, sample), tasks run, poll times."""

    @ray.remote
    def tiny(i: int) -> int:
        return i

    driver = psutil.Process()
    stop = threading.Event()
    latencies: list[float] = []
    poller = threading.Thread(target=poll_state, args=(stop, latencies), daemon=True)
    poller.start()
    samples: list[tuple[float, Any]] = []
    start = time.monotonic()
    next_sample = start
    done = 0
    batch = 10
    pending: list[Any] = []
    try:
        while (now := time.monotonic()) - start < duration:
            if now >= next_sample:
                samples.append((now - start, sample(driver)))
                next_sample += every
            due = int((now - start) * rate) - done  # paced: the rate, not as fast as possible
            if due >= batch:
                pending.extend(tiny.remote(i) for i in range(batch))
                done += batch
                if len(pending) >= 10 * batch:
                    ray.get(pending)
                    pending = []
            else:
                time.sleep(batch / rate / 2)
        ray.get(pending)
        samples.append((time.monotonic() - start, sample(driver)))
    finally:
        stop.set()
        poller.join()
    return samples, done, latencies


def growth(samples: list[tuple[float, Any]], settle: float) -> dict[str, float]:
    """RSS growth in MiB of every process present from the settle sample to the last."""
    end = samples[-1][0]
    first = next(s for t, s in samples if t >= settle * end)
    last = samples[-1][1]
    return {k: last[k][0] - first[k][0] for k in first if k in last}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--rate", type=int, default=1000, help="tasks per second")
    p.add_argument("--sample", type=float, default=0.0, help="seconds (default: duration/20)")
    p.add_argument("--settle", type=float, default=0.25, help="fraction of the run")
    p.add_argument("--check", type=float, default=0.0, help="fail past this growth (MiB)")
    a = p.parse_args()
    every = a.sample or max(1.0, a.duration / 20)
    # (each poll would warn that evicted tasks are missing, as Ray's does: expected here)
    logging.getLogger("aioray.util.state.api").setLevel(logging.ERROR)
    ray.init(num_cpus=2)
    try:
        samples, done, latencies = soak(a.duration, a.rate, every)
    finally:
        ray.shutdown()
    grew = growth(samples, a.settle)
    print(f"soak: {done:,} tasks in {samples[-1][0]:.0f} s ({done / samples[-1][0]:,.0f}/s)")
    if latencies:
        ms = sorted(x * 1000 for x in latencies)
        print(
            f"state polls: {len(ms)}, list+summary median {statistics.median(ms):.0f} ms, "
            f"max {ms[-1]:.0f} ms"
        )
    print(f"{'process':28} {'RSS at settle':>14} {'RSS at end':>11} {'growth':>8}  USS at end")
    first = next(s for t, s in samples if t >= a.settle * samples[-1][0])
    for key in sorted(grew):
        rss0, rss1, uss1 = first[key][0], samples[-1][1][key][0], samples[-1][1][key][1]
        print(f"{key:28} {rss0:11.1f} MiB {rss1:7.1f} MiB {grew[key]:+7.1f}  {uss1:.1f} MiB")
    if a.check:
        worst = max(grew.values())
        if worst > a.check:
            raise SystemExit(f"a process grew by {worst:.1f} MiB (> {a.check} MiB)")
        print(f"check passed: no process grew by more than {a.check} MiB")


if __name__ == "__main__":
    main()

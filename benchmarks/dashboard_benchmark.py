"""What the dashboard costs: its process's USS idle (before and after it joins the
cluster), each API route's latency (p50/max over N requests), optionally with
``--tasks`` finished tasks and ``--actors`` actors in the GCS (made in batches of 20
and killed: their records stay, as DEAD), and a job's submit → RUNNING time on a warm
cluster.

    python benchmarks/dashboard_benchmark.py [--requests 20] [--tasks 0] [--actors 0] [--jobs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request

import psutil

import aioray as ray
from aioray._private.wire import auth
from aioray.job_submission import JobStatus, JobSubmissionClient

ROUTES = [
    "/api/version",
    "/api/gcs_healthz",
    "/api/v0/nodes",
    "/api/v0/actors?limit=100",
    "/api/v0/actors?filter_keys=state&filter_predicates=%3D&filter_values=DEAD",
    "/api/v0/placement_groups",
    "/api/v0/jobs",
    "/api/v0/actors/summarize",
    "/api/v0/tasks?limit=100",
    "/api/v0/tasks?filter_keys=state&filter_predicates=%3D&filter_values=FAILED&limit=100",
    "/api/v0/tasks/summarize",
    "/api/cluster_status",
    "/nodes?view=summary",
    "/logical/actors",
    "/api/jobs/",
    "/api/v0/logs",
    "/api/v0/logs/file?filename=gcs.log&lines=100",
]


def dashboard_uss() -> float:
    procs = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "aioray.dashboard" in " ".join(p.info["cmdline"] or ())
    ]
    return sum(p.memory_full_info().uss for p in procs) / 2**20


def get(url: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
        r.read()
    return time.perf_counter() - t0


@ray.remote(num_cpus=0)
class Idle:
    def ping(self) -> int:
        return 1


@ray.remote
def tiny() -> int:
    return 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--tasks", type=int, default=0)
    p.add_argument("--actors", type=int, default=0)
    p.add_argument("--jobs", type=int, default=5)
    a = p.parse_args()
    ctx = ray.init(num_cpus=2)
    url = "http://" + str(ctx.dashboard_url)
    headers = {"Authorization": f"Bearer {auth.cluster_token()}"}
    while True:
        try:
            get(url + "/api/healthz", {})
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(1)
    print(f"dashboard USS idle, not yet joined: {dashboard_uss():.1f} MiB")
    get(url + "/api/v0/nodes", headers)  # joins the cluster
    time.sleep(1)
    print(f"dashboard USS idle, joined:        {dashboard_uss():.1f} MiB")
    for start in range(0, a.tasks, 10_000):
        ray.get([tiny.remote() for _ in range(min(10_000, a.tasks - start))])
    for start in range(0, a.actors, 20):
        batch = [Idle.remote() for _ in range(min(20, a.actors - start))]
        ray.get([h.ping.remote() for h in batch])
        for h in batch:
            ray.kill(h)
    if a.tasks or a.actors:
        time.sleep(2.5)  # (the last task events reach the GCS: one interval, sent late)
        get(url + "/api/v0/tasks/summarize", headers)  # the GCS merges what it received
        print(f"{a.tasks} tasks, {a.actors} actors made; USS {dashboard_uss():.1f} MiB")
    for route in ROUTES:
        times = [get(url + route, headers) for _ in range(a.requests)]
        print(
            f"  {route:<75} p50 {statistics.median(times) * 1e3:6.1f} ms"
            f"  max {max(times) * 1e3:6.1f} ms"
        )
    client = JobSubmissionClient(url)
    for _ in range(a.jobs):
        t0 = time.perf_counter()
        sid = client.submit_job(entrypoint="sleep 5")
        while client.get_job_status(sid) != JobStatus.RUNNING:
            time.sleep(0.01)
        running = time.perf_counter() - t0
        client.stop_job(sid)
        print(f"  job submit -> RUNNING: {running * 1e3:.0f} ms")
    print(f"dashboard USS after the run: {dashboard_uss():.1f} MiB")
    ray.shutdown()


if __name__ == "__main__":
    main()

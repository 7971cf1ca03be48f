"""Autoscaler planner time (issue 20: under 10 ms for 1,000 nodes and 10,000 shapes).

The planner alone, no cluster: 1,000 live workers of three types in a realistic mix
(most full, some partly free, some idle), 10,000 pending lease shapes drawn from 20
distinct shapes (the GCS reports counts per shape, so identical requests arrive
grouped), 10 pending placement groups (one STRICT_SPREAD) and a request_resources
call. Prints the median and the worst of ``--rounds`` plans.

``--e2e``: submit-to-running with the ``local`` provider instead (issue 20: under
3 s). A head with 0 CPUs, a worker type of 2 CPUs (max 3); each round submits 6
one-CPU tasks that report when they start, and times the first and the sixth
start from the submission (three nodes are launched, joined and running workers);
then the nodes go idle and are removed (1 s idle timeout) before the next round.

Run: ``python benchmarks/autoscaler_benchmark.py [--nodes N] [--shapes N] [--rounds N]``
or ``python benchmarks/autoscaler_benchmark.py --e2e [--rounds N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from aioray.daemons.autoscaler.config import parse
from aioray.daemons.autoscaler.planner import (
    Demand,
    NodeState,
    PlacementGroupDemand,
    plan,
    shape_of,
)

TYPES = {
    "cpu4": {"resources": {"CPU": 4, "memory": 16e9}, "max_workers": 2000},
    "cpu16": {"resources": {"CPU": 16, "memory": 64e9}, "max_workers": 2000},
    "gpu": {"resources": {"CPU": 8, "GPU": 1, "memory": 32e9}, "max_workers": 200},
}


def cluster(n: int, rng: random.Random) -> list[NodeState]:
    nodes = [NodeState("head", "head", {"CPU": 0.0}, {"CPU": 0.0}, is_head=True)]
    for i in range(n):
        name = rng.choice(["cpu4", "cpu4", "cpu16", "gpu"])
        total = {k: float(v) for k, v in TYPES[name]["resources"].items()}  # type: ignore[attr-defined]
        state = rng.random()
        if state < 0.8:  # full
            free = {k: 0.0 for k in total}
        elif state < 0.95:  # partly used
            free = {k: (v / 2 if k == "CPU" else v) for k, v in total.items()}
        else:
            free = dict(total)
        idle = 0.0 if state >= 0.95 else None
        nodes.append(NodeState(f"n{i}", name, total, free, False, False, idle))
    return nodes


def demand(shapes: int, rng: random.Random) -> Demand:
    kinds = [{"CPU": float(c)} for c in (0.5, 1, 2, 3, 4, 8)]
    kinds += [{"CPU": float(c), "memory": 1e9 * m} for c in (1, 2) for m in (1, 2, 4)]
    kinds += [{"GPU": 1.0, "CPU": float(c)} for c in (1, 2)]
    kinds += [{"CPU": 1.0, "custom": 1.0}]  # infeasible: no type has it
    kinds += [{"CPU": float(c) / 4} for c in (1, 3)]
    kinds += [{"CPU": 6.0}, {"CPU": 12.0}, {"CPU": 16.0}]
    counts: dict[tuple[tuple[str, float], ...], int] = {}
    for _ in range(shapes):
        s = shape_of(rng.choice(kinds))
        counts[s] = counts.get(s, 0) + 1
    groups = [PlacementGroupDemand([{"CPU": 1.0}] * 4, "PACK") for _ in range(9)]
    groups.append(PlacementGroupDemand([{"CPU": 2.0}] * 4, "STRICT_SPREAD"))
    return Demand(counts, groups, [{"CPU": 4.0}] * 10)


def submit_to_running(rounds: int) -> None:
    import tempfile
    from pathlib import Path

    import aioray as ray
    from aioray.cluster_utils import AutoscalingCluster

    cluster = AutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types={"cpu2": {"resources": {"CPU": 2}, "max_workers": 3}},
        idle_timeout_minutes=1 / 60,
    )
    cluster.start()
    ray.init(address=cluster.address)
    tmp = Path(tempfile.mkdtemp(prefix="aioray-autoscaler-bench-"))

    @ray.remote(num_cpus=1)
    def started(path: str) -> None:
        Path(path).touch()
        time.sleep(0.5)

    def workers() -> int:
        return sum(n["Alive"] and not n.get("IsHead") for n in ray.nodes())

    try:
        for r in range(rounds):
            paths = [tmp / f"{r}-{i}" for i in range(6)]
            t0 = time.monotonic()
            refs = [started.remote(str(p)) for p in paths]
            seen: dict[Path, float] = {}
            while len(seen) < 6 and time.monotonic() - t0 < 60:
                for p in paths:
                    if p not in seen and p.exists():
                        seen[p] = time.monotonic() - t0
                time.sleep(0.005)
            ray.get(refs)
            times = sorted(seen.values())
            print(f"round {r}: first task running {times[0]:.2f} s, all six {times[-1]:.2f} s")
            while workers() and time.monotonic() - t0 < 90:  # idle nodes removed
                time.sleep(0.1)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--shapes", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--e2e", action="store_true", help="submit-to-running, local provider")
    a = ap.parse_args()
    if a.e2e:
        submit_to_running(a.rounds if a.rounds != 50 else 3)
        return
    rng = random.Random(20)
    config = parse(
        {
            "provider": {"type": "local"},
            "max_workers": 5000,
            "upscaling_speed": 1.0,
            "available_node_types": TYPES,
        }
    )
    nodes = cluster(a.nodes, rng)
    d = demand(a.shapes, rng)
    times = []
    result = None
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        result = plan(config, nodes, d, now=1e9)
        times.append(time.perf_counter() - t0)
    assert result is not None
    print(
        f"planner: {a.nodes} nodes, {a.shapes} pending shapes ({len(d.shapes)} distinct): "
        f"median {statistics.median(times) * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms "
        f"over {a.rounds} rounds; launches {result.launch}, "
        f"terminations {len(result.terminate)}, infeasible {result.infeasible}"
    )


if __name__ == "__main__":
    main()

"""Autoscaler planner time (issue 20: under 10 ms for 1,000 nodes and 10,000 shapes).

The planner alone, no cluster: 1,000 live workers of three types in a realistic mix
(most full, some partly free, some idle), 10,000 pending lease shapes drawn from 20
distinct shapes (the GCS reports counts per shape, so identical requests arrive
grouped), 10 pending placement groups (one STRICT_SPREAD) and a request_resources
call. Prints the median and the worst of ``--rounds`` plans.

Run: ``python benchmarks/autoscaler_benchmark.py [--nodes N] [--shapes N] [--rounds N]``.
The end-to-end submit-to-running latency with the local provider is measured by
``tests/e2e/test_autoscaler.py`` (it prints it) and written down in RESULTS.md.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--shapes", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=50)
    a = ap.parse_args()
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

"""Task throughput on a 3-node cluster from one driver (issue #5's "tasks/s with 3 nodes").

A ``Cluster`` of three real raylets on 127.0.0.1-3 (1 CPU each by default), one driver
attached to the head. Each line is ``ray.get`` of a batch of 1,000 trivial tasks, as
``single client tasks async`` in the microbenchmark, with three placements:

- DEFAULT: Ray's hybrid policy; tiny tasks mostly stay on the driver's node.
- SPREAD: leases round-robin over the nodes; every node runs part of the batch.
- all on the driver's node (hard NodeAffinitySchedulingStrategy): the one-node
  baseline, measured on the same machine in the same state.
- all on one other node: every lease is spilled once to a remote raylet.

Where the tasks ran (node counts) goes to stderr. Run:
``python benchmarks/multinode_benchmark.py [--quick] [--num-cpus N]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from collections.abc import Callable, Sequence

import aioray as ray
from aioray.cluster_utils import Cluster
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from microbenchmark import QUICK, Config, timeit

BATCH = 1000


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per node (default 1)")
    a = p.parse_args(argv)
    cfg = QUICK if a.quick else Config()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": a.num_cpus})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=a.num_cpus)
        cluster.wait_for_nodes()
        cluster.connect()
        run_all(cluster, cfg)
    finally:
        cluster.shutdown()
    return 0


def run_all(cluster: Cluster, cfg: Config) -> None:
    @ray.remote
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    nodes = [n.node_id for n in cluster.list_all_nodes()]

    def pinned(node: str) -> Callable[[], object]:
        strategy = NodeAffinitySchedulingStrategy(node, soft=False)
        return where.options(scheduling_strategy=strategy).remote  # type: ignore[no-any-return]

    placements: list[tuple[str, Callable[[], object]]] = [
        ("DEFAULT", where.remote),
        ("SPREAD", where.options(scheduling_strategy="SPREAD").remote),
        ("all on the driver's node, for comparison", pinned(nodes[0])),
        ("all on one other node", pinned(nodes[1])),
    ]
    for label, submit in placements:
        counts: collections.Counter[str] = collections.Counter()

        def batch(submit: Callable[[], object] = submit, counts: collections.Counter[str] = counts):
            counts.update(ray.get([submit() for _ in range(BATCH)]))  # type: ignore[arg-type]

        name = f"tasks/s with 3 nodes from one driver ({label})"
        print(timeit(name, batch, BATCH, cfg).line().replace(" per second", ""), flush=True)
        share = ", ".join(f"node{i} {counts[n]}" for i, n in enumerate(nodes) if counts[n])
        print(f"  placed: {share}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

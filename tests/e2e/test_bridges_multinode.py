"""The bridges on a 2-node Cluster: Pool's actors and dask's tasks use both nodes, and
values pass between nodes through the object store."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

import aioray as ray
from aioray.util.dask import ray_dask_get
from aioray.util.multiprocessing import Pool

CLUSTER_NODES = [{"num_cpus": 1}, {"num_cpus": 1}]


def test_pool_spans_both_nodes(ray_cluster):
    def node_of(_):
        return ray.get_runtime_context().get_node_id()

    # Actors holding a CPU each: one per 1-CPU node (default actors hold none, and pack).
    with Pool(2, ray_remote_args={"num_cpus": 1}) as p:
        nodes = set(p.map(node_of, range(8), 1))
    assert len(nodes) == 2


def test_dask_on_two_nodes(ray_cluster):
    x = da.arange(20_000, chunks=1_000)
    expected = np.arange(20_000)
    assert (x * 3).sum().compute(scheduler=ray_dask_get) == (expected * 3).sum()

    @dask.delayed
    def where(_):
        return ray.get_runtime_context().get_node_id()

    nodes = dask.compute(*[where(i) for i in range(16)], scheduler=ray_dask_get)
    assert set(nodes) <= {n["NodeID"] for n in ray.nodes()}

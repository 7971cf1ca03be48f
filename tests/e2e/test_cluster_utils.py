"""aioray.cluster_utils.Cluster: real raylets on their own loopback addresses."""

from __future__ import annotations

from typing import Any

import psutil
import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray.cluster_utils import Cluster

CLUSTER_NODES = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"custom": 2}}]


def alive_ids() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_cluster_without_head_cannot_connect() -> None:
    with pytest.raises(ValueError, match="initialize_head"):
        Cluster(connect=True)
    c = Cluster()
    with pytest.raises(RuntimeError, match="no head node"):
        c.connect()
    c.shutdown()


def test_add_node_rejects_unknown_arguments() -> None:
    c = Cluster()
    with pytest.raises(TypeError, match="num_cpu"):
        c.add_node(num_cpu=1)
    c.shutdown()


def test_nodes_have_own_addresses_and_ids(ray_cluster: Any) -> None:
    head, worker = ray_cluster.list_all_nodes()
    assert head is ray_cluster.head_node and head.head and not worker.head
    assert head.node_ip_address == "127.0.0.1"
    assert worker.node_ip_address == "127.0.0.2"
    assert head.address == worker.address == ray_cluster.address
    assert len({head.node_id, worker.node_id}) == 2
    assert alive_ids() == {head.node_id, worker.node_id}
    by_id = {n["NodeID"]: n for n in ray.nodes()}
    assert by_id[worker.node_id]["NodeManagerAddress"] == "127.0.0.2"
    assert by_id[head.node_id]["IsHead"] and not by_id[worker.node_id]["IsHead"]
    total = ray.cluster_resources()
    assert total["CPU"] == 2 and total["custom"] == 2


def test_driver_runs_on_the_head(ray_cluster: Any) -> None:
    @ray.remote
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    assert ray.get_runtime_context().get_node_id() == ray_cluster.head_node.node_id
    assert ray.get(where.remote()) == ray_cluster.head_node.node_id


@pytest.mark.parametrize("graceful", [True, False])
def test_remove_node_stops_its_processes(ray_cluster: Any, graceful: bool) -> None:
    extra = ray_cluster.add_node(num_cpus=1)
    assert extra.node_ip_address not in {"127.0.0.1", "127.0.0.2"}
    assert extra.node_id in alive_ids()
    procs = [psutil.Process(pid) for pid in extra.all_processes()]
    assert len(procs) >= 2  # raylet + fork server (+ prestarted workers)
    ray_cluster.remove_node(extra, allow_graceful=graceful)
    assert not extra.any_processes_alive()
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)
    wait_for_condition(lambda: extra.node_id not in alive_ids(), 10, message="node not dead")
    dead = next(n for n in ray.nodes() if n["NodeID"] == extra.node_id)
    assert dead["Alive"] is False
    # Ray's NodeDeathInfo.Reason: EXPECTED_TERMINATION (1) or UNEXPECTED_TERMINATION (2).
    assert dead["DeathReason"] == (1 if graceful else 2), dead["DeathReasonMessage"]
    ray_cluster.wait_for_nodes()
    with pytest.raises(ValueError, match="not a node"):
        ray_cluster.remove_node(extra)

"""Autoscaling end to end with the ``local`` provider: a head with 0 CPUs, a worker type
of 2 CPUs (max 3). Tasks launch nodes and run on them; idle nodes go away; a task no
type can run is reported infeasible and launches nothing; request_resources launches
nodes; ``aioray status`` shows it; no serve-node process outlives the cluster."""

from __future__ import annotations

import contextlib
import io
import os
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.node import node_commands
from aioray.autoscaler.sdk import request_resources
from aioray.cluster_utils import AutoscalingCluster

IDLE_S = 2.0
GPU_TASK = {"CPU": 1.0, "GPU": 1.0}  # a task's default CPU, and a GPU no type has
WORKER_TYPES = {"cpu2": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 3}}


def serve_nodes(gcs_address: str) -> list[psutil.Process]:
    """The serve-node processes joined to this cluster."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if "serve-node" in cmd and gcs_address in cmd and p.info["status"] != "zombie":
            found.append(p)
    return found


@contextlib.contextmanager
def autoscaling_cluster(**config: Any) -> Any:
    cluster = AutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types=WORKER_TYPES,
        idle_timeout_minutes=IDLE_S / 60,
        **config,
    )
    cluster.start()
    address = cluster.address
    try:
        ray.init(address=address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        # No leak: the autoscaler stopped every node it launched.
        wait_for_condition(lambda: not serve_nodes(address), 20, message="serve-node left")


def alive_workers() -> int:
    return sum(n["Alive"] and not n.get("IsHead") for n in ray.nodes())


def status(address: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        node_commands.cmd_status(Namespace(address=address, token=None))
    return out.getvalue()


def test_tasks_launch_nodes_then_idle_nodes_go(tmp_path: Path) -> None:
    go = tmp_path / "go"

    @ray.remote(num_cpus=1)
    def wait_for_go(i: int) -> str:
        (tmp_path / f"started-{i}").touch()
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return ray.get_runtime_context().get_node_id()

    with autoscaling_cluster() as cluster:
        t0 = time.monotonic()
        refs = [wait_for_go.remote(i) for i in range(6)]
        first = wait_for_condition(
            lambda: (
                any((tmp_path / f"started-{i}").exists() for i in range(6)) and time.monotonic()
            ),
            30,
            message="no task started on a launched node",
        )
        wait_for_condition(
            lambda: all((tmp_path / f"started-{i}").exists() for i in range(6)),
            30,
            message=lambda: f"not all 6 tasks running; status:\n{status(cluster.address)}",
        )
        every = time.monotonic()
        print(f"submit-to-running: first {first - t0:.2f}s, all six {every - t0:.2f}s")
        text = status(cluster.address)
        assert "Autoscaler status" in text and "Active:" in text
        go.touch()
        nodes = ray.get(refs, timeout=30)
        assert len(set(nodes)) == 3  # three 2-CPU nodes, two tasks each
        assert alive_workers() == 3
        # Idle for IDLE_S: every launched node is terminated; the head stays.
        wait_for_condition(lambda: alive_workers() == 0, 30, message="idle nodes not removed")
        wait_for_condition(lambda: not serve_nodes(cluster.address), 20, message="node left")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 1


def test_infeasible_demand_and_request_resources() -> None:
    @ray.remote(num_gpus=1)
    def needs_gpu() -> None:
        pass

    with autoscaling_cluster() as cluster:
        ref = needs_gpu.remote()

        def reported_infeasible() -> bool:
            state = node_commands.gcs_call(cluster.address, "get_autoscaler_status")
            return GPU_TASK in state["autoscaler"].get("infeasible", [])

        wait_for_condition(reported_infeasible, 20, message="GPU demand not reported")
        text = status(cluster.address)
        assert f"{GPU_TASK}: 1+ pending tasks/actors (infeasible)" in text
        assert alive_workers() == 0 and not serve_nodes(cluster.address)  # nothing launched
        request_resources(bundles=[{"CPU": 2}] * 2)
        wait_for_condition(lambda: alive_workers() == 2, 30, message="2 nodes not launched")
        assert "{'CPU': 2.0} * 2: from request_resources()" in status(cluster.address)
        assert len(serve_nodes(cluster.address)) == 2
        ray.cancel(ref)
        request_resources()  # cleared: the nodes go idle, then away
        wait_for_condition(lambda: alive_workers() == 0, 30, message="idle nodes not removed")


def test_bad_config_names_the_key() -> None:
    from aioray.daemons.autoscaler.config import ConfigError

    bad = AutoscalingCluster({"CPU": 0}, {"w": {"resources": {"CPU": "x"}}})
    with pytest.raises(ConfigError, match=r"available_node_types\.w\.resources\.CPU"):
        bad.start()
    assert not os.path.exists(bad._path or "/nonexistent")


def test_pending_actor_and_strict_spread_group_launch_nodes() -> None:
    from aioray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=2)
    class Where:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    with autoscaling_cluster():
        actor = Where.remote()
        pg = placement_group([{"CPU": 2}] * 2, strategy="STRICT_SPREAD")
        assert pg.wait(30)  # two distinct new nodes
        actor_node = ray.get(actor.node.remote(), timeout=30)  # and a third for the actor
        heads = {n["NodeID"] for n in ray.nodes() if n.get("IsHead")}
        assert actor_node not in heads and alive_workers() == 3
        remove_placement_group(pg)
        ray.kill(actor)
        wait_for_condition(lambda: alive_workers() == 0, 30, message="idle nodes not removed")


def test_a_node_holding_a_primary_copy_is_kept_until_it_is_freed() -> None:
    import numpy as np

    @ray.remote(num_cpus=1)
    def make() -> Any:
        return np.ones(1 << 20, dtype=np.uint8)  # 1 MiB: a primary copy in that node's store

    with autoscaling_cluster() as cluster:
        ref = make.remote()
        ray.wait([ref], timeout=30, fetch_local=False)
        assert alive_workers() == 1

        def state() -> dict[str, Any]:
            return dict(node_commands.gcs_call(cluster.address, "get_autoscaler_status"))

        def settled() -> bool:  # lease returned: all CPUs free again
            return all(n["available"].get("CPU") == n["total"].get("CPU") for n in state()["nodes"])

        wait_for_condition(settled, 20, message="the lease never returned")
        start, updates = time.monotonic(), state()["autoscaler"]["updates"]
        wait_for_condition(  # past the idle timeout, over several autoscaler rounds
            lambda: (
                time.monotonic() - start > IDLE_S + 1
                and state()["autoscaler"]["updates"] >= updates + 3
            ),
            30,
        )
        [worker] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and not n.get("IsHead")]
        assert worker not in state()["autoscaler"]["idle"]  # it holds the only copy
        del ref  # freed: the node is idle, then removed
        wait_for_condition(lambda: alive_workers() == 0, 30, message="idle node not removed")

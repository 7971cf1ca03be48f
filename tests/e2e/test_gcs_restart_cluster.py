"""The GCS of a 3-node cluster killed with SIGKILL mid-run and restarted: every node
rejoins, the running task finishes, and scheduling across nodes works again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import wait_for_condition

import aioray as ray
from aioray._private.node import node
from aioray.cluster_utils import Cluster
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

GET_TIMEOUT = 30


@ray.remote(num_cpus=1)
def where() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=1)
def wait_for(path: str) -> str:
    deadline = time.time() + 60
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)
    return ray.get_runtime_context().get_node_id()


def _alive() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"])


def test_gcs_killed_and_restarted_mid_run_on_a_3_node_cluster(tmp_path: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        cluster.connect()
        target = nodes[1].node_id
        marker = tmp_path / "go"
        strategy = NodeAffinitySchedulingStrategy(target, soft=False)
        running = wait_for.options(scheduling_strategy=strategy).remote(str(marker))

        gcs = cluster.head_node._local.procs[0]
        gcs.kill()
        gcs.wait(10)
        host, port = node.split_address(cluster.address)
        cmd = [sys.executable, "-m", "aioray.daemons.gcs", "--host", host, "--port", str(port)]
        cmd += ["--session-dir", cluster.head_node.session_dir]
        restarted.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))

        wait_for_condition(lambda: _alive() == 3, timeout=30, message="nodes never rejoined")
        marker.write_text("go")
        assert ray.get(running, timeout=GET_TIMEOUT) == target  # it ran through the outage
        # The restarted GCS knows every node and its resources again; each node takes work.
        wait_for_condition(lambda: ray.available_resources().get("CPU") == 3, timeout=20)
        for n in [cluster.head_node, *nodes]:
            on_it = NodeAffinitySchedulingStrategy(n.node_id, soft=False)
            assert ray.get(where.options(scheduling_strategy=on_it).remote()) == n.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()
        for proc in restarted:
            proc.terminate()
            proc.wait(10)

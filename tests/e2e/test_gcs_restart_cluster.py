"""The GCS of a 3-node cluster killed with SIGKILL mid-run and restarted: every node
rejoins, the running task finishes, and scheduling across nodes works again; the node
table answers at once from what the GCS saved; and a workload of tasks and actor calls
runs through the outage with every result correct."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.node import memory_tables, node
from aioray.cluster_utils import Cluster, ClusterNode
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


def restart_gcs(cluster: Cluster) -> subprocess.Popen[bytes]:
    """SIGKILL the head's GCS and start it again as docs/deploy.md says: same port,
    same session directory. The caller stops the new process."""
    assert cluster.head_node is not None
    gcs = cluster.head_node._local.procs[0]
    gcs.kill()
    gcs.wait(10)
    host, port = node.split_address(cluster.address)
    cmd = [sys.executable, "-m", "aioray.daemons.gcs", "--host", host, "--port", str(port)]
    cmd += ["--session-dir", cluster.head_node.session_dir]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def raylet_pid(n: ClusterNode) -> int:
    return next(p.pid for p in n._local.procs if "aioray.daemons.raylet" in str(p.args))


def rejoined(n: ClusterNode) -> bool:
    """The node's raylet registered with a restarted GCS (restored rows look alive)."""
    address = (n.node_ip_address, n.node_manager_port)
    return bool(memory_tables.raylet_state(address)["gcs_reconnects"])


@pytest.fixture
def cluster3() -> Iterator[tuple[Cluster, list[subprocess.Popen[bytes]]]]:
    """A head and two nodes of 1 CPU, this process connected; GCS restarts to stop."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cluster.connect()
        yield cluster, restarted
    finally:
        ray.shutdown()
        cluster.shutdown()
        for proc in restarted:
            proc.terminate()
            proc.wait(10)


def test_gcs_killed_and_restarted_mid_run_on_a_3_node_cluster(
    cluster3: tuple[Cluster, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    cluster, restarted = cluster3
    target = cluster.worker_nodes[1].node_id
    marker = tmp_path / "go"
    strategy = NodeAffinitySchedulingStrategy(target, soft=False)
    running = wait_for.options(scheduling_strategy=strategy).remote(str(marker))

    restarted.append(restart_gcs(cluster))

    for n in cluster.list_all_nodes():
        wait_for_condition(lambda n=n: rejoined(n), timeout=30, message=f"{n} never rejoined")
    assert _alive() == 3
    marker.write_text("go")
    assert ray.get(running, timeout=GET_TIMEOUT) == target  # it ran through the outage
    # The restarted GCS knows every node and its resources again; each node takes work.
    wait_for_condition(lambda: ray.available_resources().get("CPU") == 3, timeout=20)
    for n in cluster.list_all_nodes():
        on_it = NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        assert ray.get(where.options(scheduling_strategy=on_it).remote()) == n.node_id


def test_nodes_answers_from_the_saved_table_right_after_a_gcs_restart(
    cluster3: tuple[Cluster, list[subprocess.Popen[bytes]]],
) -> None:
    """Issue 14.7: not ``[]`` until the raylets register again. They are frozen here,
    so the only way to know the nodes is the table the GCS saved."""
    cluster, restarted = cluster3
    before = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert len(before) == 3
    everyone = cluster.list_all_nodes()
    frozen = [raylet_pid(n) for n in everyone]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        restarted.append(restart_gcs(cluster))
        after = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        assert after == before
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    for n in everyone:
        wait_for_condition(lambda n=n: rejoined(n), timeout=30, message=f"{n} never rejoined")
    for n in everyone:  # each takes work again
        on_it = NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        assert ray.get(where.options(scheduling_strategy=on_it).remote(), timeout=GET_TIMEOUT) == (
            n.node_id
        )


@ray.remote(max_retries=3)
def square(x: int) -> int:
    time.sleep(0.002)
    return x * x


@ray.remote
class Doubler:
    def double(self, x: int) -> int:
        return 2 * x


def test_chaos_gcs_killed_and_restarted_mid_workload(
    cluster3: tuple[Cluster, list[subprocess.Popen[bytes]]],
) -> None:
    """Tasks and actor calls in flight when the GCS is SIGKILLed, more submitted while
    it is down, more after it is back: every result arrives, and is right."""
    cluster, restarted = cluster3
    actor = Doubler.options(max_restarts=1, max_task_retries=-1).remote()
    assert ray.get(actor.double.remote(1), timeout=GET_TIMEOUT) == 2
    tasks = {i: square.remote(i) for i in range(300)}
    calls = {i: actor.double.remote(i) for i in range(300)}
    restarted.append(restart_gcs(cluster))  # while those run
    tasks.update({i: square.remote(i) for i in range(300, 400)})
    calls.update({i: actor.double.remote(i) for i in range(300, 400)})
    for n in cluster.list_all_nodes():
        wait_for_condition(lambda n=n: rejoined(n), timeout=30, message=f"{n} never rejoined")
    tasks.update({i: square.remote(i) for i in range(400, 500)})
    calls.update({i: actor.double.remote(i) for i in range(400, 500)})
    later = Doubler.remote()  # creating an actor needs the GCS
    assert ray.get(list(tasks.values()), timeout=GET_TIMEOUT) == [i * i for i in tasks]
    assert ray.get(list(calls.values()), timeout=GET_TIMEOUT) == [2 * i for i in calls]
    assert ray.get(later.double.remote(21), timeout=GET_TIMEOUT) == 42

"""Scheduling across nodes on a 3-node Cluster: DEFAULT, SPREAD, node affinity, resources."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.node.memory_tables import raylet_state
from aioray.exceptions import ActorUnschedulableError, TaskUnschedulableError
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

CLUSTER_NODES = [
    {"num_cpus": 1},
    {"num_cpus": 1, "resources": {"custom": 2}},
    {"num_cpus": 1},
]


def head_raylet_view(cluster: Any) -> dict[str, dict[str, float]]:
    """What the head's raylet believes every node has available."""
    head = cluster.head_node
    return dict(raylet_state((head.node_ip_address, head.node_manager_port))["view"])


@ray.remote
def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote
def meet(folder: str, n: int, timeout: float = 20.0) -> str:
    """Wait until ``n`` tasks are running at once (or time out); return this node's id."""
    me = ray.get_runtime_context().get_node_id()
    open(os.path.join(folder, f"{me}-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return me


@ray.remote
class Where:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def ids_of(cluster: Any) -> list[str]:
    return [n.node_id for n in cluster.list_all_nodes()]


def on(node: str, soft: bool = False) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node, soft=soft)


def settled(cluster: Any) -> bool:
    """Every node idle, as seen by the GCS and by the head's raylet."""
    views = [head_raylet_view(cluster), {n["NodeID"]: n["Available"] for n in ray.nodes()}]
    return all(view.get(nid, {}).get("CPU") == 1 for view in views for nid in ids_of(cluster))


@pytest.fixture
def warm(ray_cluster: Any) -> Any:
    """Every node has run a task (its worker is up) and is idle again in every view,
    so neither worker start-up nor stale views can skew placement."""
    for nid in ids_of(ray_cluster):
        assert ray.get(node_id.options(scheduling_strategy=on(nid)).remote()) == nid
    wait_for_condition(lambda: settled(ray_cluster), 10, message="views never settled")
    return ray_cluster


def test_cluster_state_covers_every_node(ray_cluster: Any) -> None:
    nodes = ray.nodes()
    assert {n["NodeID"] for n in nodes if n["Alive"]} == set(ids_of(ray_cluster))
    assert ray.cluster_resources()["CPU"] == 3
    assert ray.cluster_resources()["custom"] == 2
    wait_for_condition(lambda: ray.available_resources().get("CPU") == 3)


def test_hard_affinity_runs_tasks_and_actors_on_that_node(ray_cluster: Any) -> None:
    for nid in ids_of(ray_cluster):
        refs = [node_id.options(scheduling_strategy=on(nid)).remote() for _ in range(3)]
        assert ray.get(refs) == [nid] * 3
        actor = Where.options(scheduling_strategy=on(nid)).remote()
        assert ray.get(actor.node.remote()) == nid
        ray.kill(actor)


def test_default_packs_on_the_local_node_while_it_has_room(warm: Any) -> None:
    head = warm.head_node.node_id
    assert [ray.get(node_id.remote()) for _ in range(5)] == [head] * 5


def test_default_spreads_when_the_local_node_is_busy(warm: Any, tmp_path: Any) -> None:
    # Three tasks that only finish together: on 1-CPU nodes they must run on 3 nodes.
    refs = [meet.remote(str(tmp_path), 3) for _ in range(3)]
    assert sorted(ray.get(refs, timeout=30)) == sorted(ids_of(warm))


def test_spread_round_robins_over_nodes(warm: Any, tmp_path: Any) -> None:
    spread = meet.options(scheduling_strategy="SPREAD")
    refs = [spread.remote(str(tmp_path), 3) for _ in range(3)]
    assert sorted(ray.get(refs, timeout=30)) == sorted(ids_of(warm))


def test_default_actors_pack_on_the_local_node(warm: Any) -> None:
    # An actor needs 1 CPU to be placed and holds none: the local node fits them all.
    actors = [Where.remote() for _ in range(3)]
    assert ray.get([a.node.remote() for a in actors]) == [warm.head_node.node_id] * 3
    for a in actors:
        ray.kill(a)


def test_spread_actors_land_on_distinct_nodes(warm: Any) -> None:
    actors = [Where.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert sorted(ray.get([a.node.remote() for a in actors])) == sorted(ids_of(warm))
    for a in actors:
        ray.kill(a)


def test_custom_resources_steer_tasks_and_actors(ray_cluster: Any) -> None:
    custom_node = ray_cluster.worker_nodes[0].node_id
    refs = [node_id.options(resources={"custom": 1}).remote() for _ in range(4)]
    assert ray.get(refs) == [custom_node] * 4
    actor = Where.options(resources={"custom": 1}).remote()
    assert ray.get(actor.node.remote()) == custom_node
    ray.kill(actor)


def test_infeasible_task_and_actor_run_once_a_node_that_fits_joins(ray_cluster: Any) -> None:
    ref = node_id.options(resources={"late": 1}).remote()
    actor = Where.options(resources={"late": 1}).remote()
    ready, _ = ray.wait([ref], timeout=0.3)
    assert not ready
    late = ray_cluster.add_node(num_cpus=2, resources={"late": 2})
    try:
        assert ray.get(ref, timeout=20) == late.node_id
        assert ray.get(actor.node.remote(), timeout=20) == late.node_id
        ray.kill(actor)
    finally:
        ray_cluster.remove_node(late)


def test_affinity_to_a_dead_or_unknown_node(ray_cluster: Any) -> None:
    gone = ray_cluster.add_node(num_cpus=1)
    ray_cluster.remove_node(gone)
    wait_for_condition(
        lambda: not next(n for n in ray.nodes() if n["NodeID"] == gone.node_id)["Alive"]
    )
    alive = set(ids_of(ray_cluster))
    # Soft: falls back to an alive node.
    assert ray.get(node_id.options(scheduling_strategy=on(gone.node_id, soft=True)).remote()) in (
        alive
    )
    # Hard: can never run.
    for target in (gone.node_id, "ab" * 16):
        with pytest.raises(TaskUnschedulableError, match="NodeAffinitySchedulingStrategy"):
            ray.get(node_id.options(scheduling_strategy=on(target)).remote(), timeout=20)
    actor = Where.options(scheduling_strategy=on(gone.node_id)).remote()
    with pytest.raises(ActorUnschedulableError, match="is dead"):
        ray.get(actor.node.remote(), timeout=20)
    soft_actor = Where.options(scheduling_strategy=on(gone.node_id, soft=True)).remote()
    assert ray.get(soft_actor.node.remote(), timeout=20) in alive
    ray.kill(soft_actor)


def test_affinity_with_a_bad_node_id_is_refused() -> None:
    with pytest.raises(ValueError, match="node id in hex"):
        NodeAffinitySchedulingStrategy("not-a-node", soft=False)


@ray.remote
class Talker:
    def say(self, text: str) -> str:
        print(text)
        return ray.get_runtime_context().get_node_id()


def test_output_of_workers_on_other_nodes_reaches_the_driver(
    ray_cluster: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    late = ray_cluster.add_node(num_cpus=1)  # joined after the driver connected
    try:
        for target in (ray_cluster.worker_nodes[0], late):
            actor = Talker.options(scheduling_strategy=on(target.node_id)).remote()
            assert ray.get(actor.say.remote("warm-up")) == target.node_id
            token = f"hello-from-{target.node_ip_address}-{time.time_ns()}"
            start = time.monotonic()
            assert ray.get(actor.say.remote(token)) == target.node_id
            # The line is there when get returns (no 0.5 s wait for a sync notice).
            assert time.monotonic() - start < 0.45
            out, err = capfd.readouterr()
            assert token in out + err
            assert f"ip={target.node_ip_address}" in out + err
            ray.kill(actor)
    finally:
        ray_cluster.remove_node(late)


@ray.remote
def fan_out(folder: str) -> tuple[str, list[str]]:
    """A task that is itself an owner: its children spread from its own node."""
    spread = meet.options(scheduling_strategy="SPREAD")
    children = [spread.remote(folder, 3) for _ in range(3)]
    return ray.get_runtime_context().get_node_id(), ray.get(children)


def test_a_task_on_another_node_spreads_its_own_tasks(warm: Any, tmp_path: Any) -> None:
    # The parent holds no CPU while it waits in get, so its node can run a child too.
    last = warm.worker_nodes[-1].node_id
    parent, children = ray.get(
        fan_out.options(scheduling_strategy=on(last)).remote(str(tmp_path)), timeout=60
    )
    assert parent == last
    assert sorted(children) == sorted(ids_of(warm))

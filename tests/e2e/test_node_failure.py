"""Node failure on a Cluster: dead nodes, tasks retried elsewhere, actors restarted elsewhere."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from conftest import wait_for_condition, wait_for_file

import aioray as ray
from aioray.exceptions import (
    ActorDiedError,
    LocalRayletDiedError,
    NodeDiedError,
    RayActorError,
    TaskUnschedulableError,
)
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# Fast failure detection: a node silent for 5 x 100 ms is dead.
CLUSTER_NODES = [
    {
        "num_cpus": 1,
        "_system_config": {"health_check_period_ms": 100, "health_check_failure_threshold": 5},
    },
    {"num_cpus": 1},
]


@ray.remote
def stay(folder: str, victim: str) -> str:
    """Mark where it started; on the victim node, hang until the node is gone."""
    me = ray.get_runtime_context().get_node_id()
    marker = os.path.join(folder, f"started-{me}")
    with open(marker + ".tmp", "w") as f:
        f.write(me)
    os.rename(marker + ".tmp", marker)  # the test must never read a half-written marker
    if me == victim:
        time.sleep(60)
    return me


@ray.remote
class Where:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def on(node: str, soft: bool) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node, soft=soft)


def alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


@pytest.fixture
def victim(ray_cluster: Any) -> Any:
    """A third node for the test to kill; removed afterwards if it still runs."""
    node = ray_cluster.add_node(num_cpus=1)
    yield node
    if node in ray_cluster.worker_nodes:
        for pid in node.all_processes():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        ray_cluster.remove_node(node, allow_graceful=False)


def start_on(victim: Any, tmp_path: Any, max_retries: int) -> Any:
    ref = stay.options(
        scheduling_strategy=on(victim.node_id, soft=True), max_retries=max_retries
    ).remote(str(tmp_path), victim.node_id)
    assert wait_for_file(tmp_path / f"started-{victim.node_id}") == victim.node_id
    return ref


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_tasks_of_a_driver_whose_raylet_died_fail_with_local_raylet_died(ray_start: Any) -> None:
    """(First: its own single-node cluster, before the module's Cluster starts.)"""
    from conftest import listener_pids, port_of

    @ray.remote(max_retries=0)
    def hold() -> None:
        time.sleep(60)

    @ray.remote(max_retries=0)
    def queued() -> int:
        return 1

    held = hold.remote()
    waiting = queued.remote()  # no CPU left: it waits for a lease from the local raylet
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(waiting, timeout=0.5)
    (raylet,) = listener_pids(port_of(ray_start.address_info["raylet_address"]))
    os.kill(raylet, signal.SIGKILL)
    for ref in (waiting, held):
        with pytest.raises(LocalRayletDiedError) as info:
            ray.get(ref, timeout=30)
        assert str(info.value) == (
            "The task's local raylet died. Check raylet.out for more information."
        )


def test_removed_node_is_dead_in_nodes(ray_cluster: Any, victim: Any) -> None:
    assert alive(victim.node_id)
    ray_cluster.remove_node(victim, allow_graceful=False)
    wait_for_condition(lambda: not alive(victim.node_id), 10, message="node still alive")
    entry = next(n for n in ray.nodes() if n["NodeID"] == victim.node_id)
    assert entry["Alive"] is False
    assert entry["DeathReason"] == 2  # UNEXPECTED_TERMINATION
    assert "raylet died" in entry["DeathReasonMessage"]
    assert ray.cluster_resources()["CPU"] == 2


def test_task_on_removed_node_is_retried_elsewhere(
    ray_cluster: Any, victim: Any, tmp_path: Any
) -> None:
    ref = start_on(victim, tmp_path, max_retries=1)
    ray_cluster.remove_node(victim, allow_graceful=False)
    survivor = ray.get(ref, timeout=30)
    assert survivor != victim.node_id
    assert survivor in {n.node_id for n in ray_cluster.list_all_nodes()}


def test_task_without_retries_fails_when_its_node_dies(
    ray_cluster: Any, victim: Any, tmp_path: Any
) -> None:
    """Ray's NodeDiedError: the owner finds the worker's raylet gone too, not just the worker."""
    ref = start_on(victim, tmp_path, max_retries=0)
    ray_cluster.remove_node(victim, allow_graceful=False)
    with pytest.raises(NodeDiedError, match="was dead or unavailable"):
        ray.get(ref, timeout=30)


def test_actor_on_removed_node_restarts_elsewhere(ray_cluster: Any, victim: Any) -> None:
    actor = Where.options(
        scheduling_strategy=on(victim.node_id, soft=True), max_restarts=1
    ).remote()
    assert ray.get(actor.node.remote()) == victim.node_id
    ray_cluster.remove_node(victim, allow_graceful=False)

    def moved() -> str | None:
        try:
            where = ray.get(actor.node.remote(), timeout=10)
        except RayActorError:  # restarting: the call may be refused meanwhile
            return None
        return where if where != victim.node_id else None

    new_home = wait_for_condition(moved, 30, message="the actor did not restart elsewhere")
    assert alive(new_home)
    ray.kill(actor)


def test_actor_without_restarts_dies_with_its_node(ray_cluster: Any, victim: Any) -> None:
    actor = Where.options(scheduling_strategy=on(victim.node_id, soft=False)).remote()
    assert ray.get(actor.node.remote()) == victim.node_id
    ray_cluster.remove_node(victim, allow_graceful=False)
    with pytest.raises(ActorDiedError, match="its node has died"):
        wait_for_condition(lambda: ray.get(actor.node.remote(), timeout=10) and False, 30)


def test_silent_node_is_marked_dead_and_its_tasks_retried(
    ray_cluster: Any, victim: Any, tmp_path: Any
) -> None:
    """A frozen node (every process stopped, connections open): heartbeats stop."""
    ref = start_on(victim, tmp_path, max_retries=1)
    pids = victim.all_processes()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for_condition(lambda: not alive(victim.node_id), 10, message="not marked dead")
        entry = next(n for n in ray.nodes() if n["NodeID"] == victim.node_id)
        assert entry["DeathReason"] == 2
        assert "missing too many heartbeats" in entry["DeathReasonMessage"]
        survivor = ray.get(ref, timeout=30)
        assert survivor != victim.node_id
        with pytest.raises(TaskUnschedulableError, match="is dead"):
            ray.get(
                stay.options(scheduling_strategy=on(victim.node_id, soft=False)).remote(
                    str(tmp_path), ""
                ),
                timeout=10,
            )
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    # Awake again, its raylet finds the GCS gone and stops itself and its workers.
    wait_for_condition(lambda: not victim.any_processes_alive(), 15, message="node not stopped")


def test_actor_on_a_frozen_node_restarts_elsewhere(ray_cluster: Any, victim: Any) -> None:
    actor = Where.options(
        scheduling_strategy=on(victim.node_id, soft=True), max_restarts=1, max_task_retries=1
    ).remote()
    assert ray.get(actor.node.remote()) == victim.node_id
    pids = victim.all_processes()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # A call in flight on the frozen node is retried on the restarted actor.
        assert ray.get(actor.node.remote(), timeout=30) != victim.node_id
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    ray.kill(actor)

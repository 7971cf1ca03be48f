"""Placement groups on a 3-node Cluster: strategies, readiness, removal, atomicity, bad input."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray.exceptions import TaskPlacementGroupRemoved, WorkerCrashedError
from aioray.util import placement_group, placement_group_table, remove_placement_group
from aioray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

CLUSTER_NODES = [{"num_cpus": 2, "num_gpus": 2}, {"num_cpus": 2}, {"num_cpus": 2}]


@ray.remote(num_cpus=1)
def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
def current_group() -> Any:
    return ray.util.get_current_placement_group()


@ray.remote(num_cpus=1)
def parent_and_child() -> tuple[str, str]:
    """Runs a child task without a strategy: with capture it joins the parent's group."""
    child = ray.get(node_id.options(num_cpus=0).remote())
    return ray.get_runtime_context().get_node_id(), child


@ray.remote(num_cpus=1)
def hang(path: str) -> None:
    open(path, "w").close()
    time.sleep(60)


@ray.remote
class Where:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def group(self) -> Any:
        return ray.util.get_current_placement_group()


def in_bundle(pg: Any, index: int = -1, capture: bool = False) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, index, capture)


def nodes_of(pg: Any) -> list[str]:
    """The node each bundle's task runs on (from get_runtime_context in the task)."""
    refs = [
        node_id.options(scheduling_strategy=in_bundle(pg, i)).remote()
        for i in range(len(pg.bundle_specs))
    ]
    return ray.get(refs, timeout=30)


def all_cpus_free() -> bool:
    return ray.available_resources().get("CPU") == 6


@pytest.fixture
def idle(ray_cluster: Any) -> Any:
    """The cluster with every CPU free (as the GCS sees it) before and after the test."""
    wait_for_condition(all_cpus_free, 15, message="CPUs still reserved before the test")
    yield ray_cluster
    for info in placement_group_table().values():
        if info["state"] != "REMOVED":
            remove_placement_group(ray.util.PlacementGroup(_pgid(info), None))
    wait_for_condition(all_cpus_free, 15, message="CPUs still reserved after the test")


def _pgid(info: dict[str, Any]) -> Any:
    from aioray._private.owner.placement_groups import PlacementGroupID

    return PlacementGroupID(bytes.fromhex(info["placement_group_id"]))


# ---------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", ["STRICT_PACK", "PACK"])
def test_pack_strategies_put_every_bundle_on_one_node(idle: Any, strategy: str) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
    assert ray.get(pg.ready(), timeout=20) == pg
    where = nodes_of(pg)
    assert len(set(where)) == 1
    table = placement_group_table(pg)
    assert table["state"] == "CREATED" and table["strategy"] == strategy
    assert set(table["bundles_to_node_id"].values()) == set(where)
    remove_placement_group(pg)


@pytest.mark.parametrize("strategy", ["STRICT_SPREAD", "SPREAD"])
def test_spread_strategies_put_bundles_on_distinct_nodes(idle: Any, strategy: str) -> None:
    pg = placement_group([{"CPU": 1}] * 3, strategy=strategy)
    assert pg.wait(20)
    where = nodes_of(pg)
    assert sorted(where) == sorted(n.node_id for n in idle.list_all_nodes())
    assert placement_group_table(pg)["bundles_to_node_id"] == dict(enumerate(where))
    remove_placement_group(pg)


def test_pack_spills_over_when_one_node_is_too_small(idle: Any) -> None:
    # 3 CPUs cannot fit one 2-CPU node: PACK uses two nodes, STRICT_PACK stays pending.
    pg = placement_group([{"CPU": 1}] * 3, strategy="PACK")
    assert pg.wait(20)
    assert len(set(nodes_of(pg))) == 2
    strict = placement_group([{"CPU": 1}] * 3, strategy="STRICT_PACK")
    assert not strict.wait(0.5)
    remove_placement_group(pg)
    remove_placement_group(strict)


# ----------------------------------------------------------- using the group


def test_reserved_resources_show_in_the_cluster_views(idle: Any) -> None:
    pg = placement_group([{"CPU": 2}], strategy="STRICT_PACK")
    assert pg.wait(20)
    pg_hex = pg.id.hex()
    total = ray.cluster_resources()
    assert total["CPU"] == 6  # the totals keep the node's CPUs...
    assert total[f"CPU_group_{pg_hex}"] == 2 and total[f"CPU_group_0_{pg_hex}"] == 2
    wait_for_condition(lambda: ray.available_resources().get("CPU") == 4)  # ...not free now
    remove_placement_group(pg)
    wait_for_condition(all_cpus_free, 15)
    assert not any(pg_hex in k for k in ray.cluster_resources())
    assert not any(pg_hex in k for k in ray.available_resources())


def test_ready_is_awaitable_and_tasks_know_their_group(idle: Any) -> None:
    import asyncio

    pg = placement_group([{"CPU": 1}], strategy="PACK", name="")
    assert asyncio.run(_await(pg.ready())) == pg
    assert ray.get(current_group.options(scheduling_strategy=in_bundle(pg, 0)).remote()) == pg
    assert ray.get(current_group.remote()) is None
    assert ray.util.get_current_placement_group() is None  # the driver
    remove_placement_group(pg)


async def _await(ref: Any) -> Any:
    return await ref


def test_legacy_placement_group_options_still_work(idle: Any) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(20)
    where = placement_group_table(pg)["bundles_to_node_id"]
    for i in range(2):
        ref = node_id.options(placement_group=pg, placement_group_bundle_index=i).remote()
        assert ray.get(ref, timeout=20) == where[i]
    remove_placement_group(pg)


def test_capture_child_tasks_keeps_nested_tasks_in_the_group(idle: Any) -> None:
    pg = placement_group([{"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(20)
    home = placement_group_table(pg)["bundles_to_node_id"][0]
    for _ in range(2):
        ref = parent_and_child.options(scheduling_strategy=in_bundle(pg, 0, True)).remote()
        assert ray.get(ref, timeout=20) == (home, home)
    remove_placement_group(pg)


def test_actor_in_a_bundle(idle: Any) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(20)
    where = placement_group_table(pg)["bundles_to_node_id"]
    actor = Where.options(num_cpus=1, scheduling_strategy=in_bundle(pg, 1)).remote()
    assert ray.get(actor.node.remote(), timeout=20) == where[1]
    assert ray.get(actor.group.remote()) == pg
    # The actor holds the bundle's CPU: a task for that bundle must wait.
    ref = node_id.options(scheduling_strategy=in_bundle(pg, 1)).remote()
    assert ray.wait([ref], timeout=0.5)[0] == []
    ray.kill(actor)
    assert ray.get(ref, timeout=20) == where[1]
    # Removing the group kills its actors for good, even restartable ones.
    survivor = Where.options(max_restarts=-1, scheduling_strategy=in_bundle(pg, 0)).remote()
    assert ray.get(survivor.node.remote(), timeout=20) == where[0]
    remove_placement_group(pg)

    def died() -> bool:
        try:
            ray.get(survivor.node.remote(), timeout=20)
        except ray.exceptions.ActorDiedError:
            return True
        return False

    wait_for_condition(died, 20, message="the actor outlived its placement group")


@ray.remote(num_cpus=0, num_gpus=1)
def gpu_ids() -> tuple[list[int], str]:
    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_tasks_in_gpu_bundles_get_the_bundles_devices(idle: Any) -> None:
    pg = placement_group([{"GPU": 1}, {"GPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(20)
    assert set(placement_group_table(pg)["bundles_to_node_id"].values()) == {idle.head_node.node_id}
    seen = [
        ray.get(gpu_ids.options(scheduling_strategy=in_bundle(pg, i)).remote(), timeout=20)
        for i in range(2)
    ]
    assert sorted(ids[0] for ids, _ in seen) == [0, 1]
    assert [env for _, env in seen] == [str(ids[0]) for ids, _ in seen]
    # Both devices are the group's: a GPU task outside it waits until the group goes.
    outside = gpu_ids.remote()
    assert ray.wait([outside], timeout=0.5)[0] == []
    remove_placement_group(pg)
    assert len(ray.get(outside, timeout=20)[0]) == 1


def test_named_group_lookup(idle: Any) -> None:
    pg = placement_group([{"CPU": 1}], name="trainers")
    found = ray.util.get_placement_group("trainers")
    assert found == pg and found.bundle_specs == [{"CPU": 1.0}]
    assert found.wait(20)
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="trainers")
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="Failed to look up placement group with name: trainers"):
        ray.util.get_placement_group("trainers")
    with pytest.raises(ValueError, match="non-empty"):
        ray.util.get_placement_group("")


# ---------------------------------------------------------------- removal


def test_removal_frees_resources_and_kills_tasks_in_the_group(idle: Any, tmp_path: Any) -> None:
    pg = placement_group([{"CPU": 2}], strategy="STRICT_PACK")
    assert pg.wait(20)
    wait_for_condition(lambda: ray.available_resources().get("CPU") == 4)
    marker = str(tmp_path / "started")
    ref = hang.options(scheduling_strategy=in_bundle(pg, 0)).remote(marker)
    wait_for_condition(lambda: os.path.exists(marker), 20)
    remove_placement_group(pg)
    with pytest.raises((TaskPlacementGroupRemoved, WorkerCrashedError)):
        ray.get(ref, timeout=30)
    assert placement_group_table(pg)["state"] == "REMOVED"
    assert not pg.wait(0.1)
    wait_for_condition(all_cpus_free, 15)
    # A task submitted to the removed group fails instead of hanging.
    with pytest.raises(TaskPlacementGroupRemoved, match="removed"):
        ray.get(node_id.options(scheduling_strategy=in_bundle(pg)).remote(), timeout=20)


def test_ready_of_a_group_removed_while_pending_raises(idle: Any) -> None:
    pg = placement_group([{"CPU": 100}])
    ready = pg.ready()
    remove_placement_group(pg)
    with pytest.raises(ray.exceptions.RaySystemError, match="removed"):
        ray.get(ready, timeout=20)


def test_groups_fate_share_with_their_driver_unless_detached(idle: Any) -> None:
    script = (
        "import aioray as ray\n"
        f"ray.init(address={idle.address!r}, namespace='pgs')\n"
        "a = ray.util.placement_group([{'CPU': 1}], name='mine')\n"
        "b = ray.util.placement_group([{'CPU': 1}], name='kept', lifetime='detached')\n"
        "assert a.wait(20) and b.wait(20)\n"
        "ray.shutdown()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    states = {t["name"]: t["state"] for t in placement_group_table().values()}
    wait_for_condition(
        lambda: (
            {t["name"]: t["state"] for t in placement_group_table().values()}.get("mine")
            == "REMOVED"
        ),
        10,
    )
    assert states["kept"] == "CREATED"
    # The detached group lives on (in its namespace); the idle fixture removes it.


# ------------------------------------------------------- pending and atomicity


def test_a_group_that_cannot_fit_reserves_nothing(idle: Any) -> None:
    # Three bundles would fit, the fourth cannot: none of them is held.
    pg = placement_group([{"CPU": 2}, {"CPU": 2}, {"CPU": 2}, {"CPU": 1}], strategy="SPREAD")
    ready = pg.ready()
    assert ray.wait([ready], timeout=0.3) == ([], [ready])
    assert not pg.wait(0.2)
    assert ray.available_resources().get("CPU") == 6
    assert placement_group_table(pg)["state"] == "PENDING"
    assert placement_group_table(pg)["bundles_to_node_id"] == {}
    remove_placement_group(pg)


def test_strict_spread_waits_for_a_node_then_is_ready(idle: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="aioray")
    pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD", name="four")
    assert not pg.wait(0.5)
    assert placement_group_table(pg)["state"] == "PENDING"
    wait_for_condition(
        lambda: any(
            "'four'" in r.getMessage() and "pending" in r.getMessage() for r in caplog.records
        ),
        10,
        message="no warning naming the infeasible group",
    )
    extra = idle.add_node(num_cpus=1)
    try:
        assert pg.wait(20)
        where = nodes_of(pg)
        assert len(set(where)) == 4 and extra.node_id in where
        remove_placement_group(pg)
    finally:
        idle.remove_node(extra)
    wait_for_condition(lambda: sum(n["Alive"] for n in ray.nodes()) == 3, 15)


def test_bundles_on_a_dead_node_are_rescheduled(idle: Any) -> None:
    # Fill the three nodes, so the group's only bundle must go to a new node.
    blocker = placement_group([{"CPU": 2}] * 3, strategy="STRICT_SPREAD")
    assert blocker.wait(20)
    extra = idle.add_node(num_cpus=1)
    try:
        pg = placement_group([{"CPU": 1}])
        assert pg.wait(20)
        assert placement_group_table(pg)["bundles_to_node_id"] == {0: extra.node_id}
        remove_placement_group(blocker)
    finally:
        idle.remove_node(extra, allow_graceful=False)
    wait_for_condition(
        lambda: placement_group_table(pg)["bundles_to_node_id"].get(0) not in (None, extra.node_id),
        20,
    )
    assert pg.wait(20)
    assert nodes_of(pg) == [placement_group_table(pg)["bundles_to_node_id"][0]]
    remove_placement_group(pg)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bundles", "strategy", "message"),
    [
        ([], "PACK", "non-empty list"),
        ([{}], "PACK", "cannot be an empty dictionary"),
        ([{"CPU": 0}], "PACK", "only 0 values"),
        ([{"CPU": -1}], "PACK", "must be non-negative"),
        ([{"CPU": "one"}], "PACK", "must be a number"),
        ([{"CPU": True}], "PACK", "must be a number"),
        ({"CPU": 1}, "PACK", "must be a list"),
        (["CPU"], "PACK", "must be a dict"),
        ([{"bundle": 1}], "PACK", "system reserved"),
        ([{"CPU": 1}], "TIGHT", "Invalid placement group strategy 'TIGHT'"),
    ],
)
def test_bad_groups_are_refused(
    ray_cluster: Any, bundles: Any, strategy: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        placement_group(bundles, strategy=strategy)


def test_bad_lifetime_and_bundle_index_are_refused(idle: Any) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    for index in (2, -2):
        with pytest.raises(ValueError, match=f"bundle index {index} is invalid.*0 to 1"):
            node_id.options(scheduling_strategy=in_bundle(pg, index)).remote()
        with pytest.raises(ValueError, match=f"bundle index {index} is invalid"):
            Where.options(scheduling_strategy=in_bundle(pg, index)).remote()
    with pytest.raises(ValueError, match="cannot fit into bundle 0"):
        node_id.options(num_cpus=2, scheduling_strategy=in_bundle(pg, 0)).remote()
    with pytest.raises(ValueError, match="must be a PlacementGroup"):
        node_id.options(scheduling_strategy=in_bundle("pg")).remote()
    remove_placement_group(pg)

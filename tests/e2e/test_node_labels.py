"""Node labels on a 2-node Cluster: NodeLabelSchedulingStrategy for tasks and actors, and
the runtime context's get_node_labels."""

from __future__ import annotations

import aioray as ray
from aioray.util.scheduling_strategies import (
    DoesNotExist,
    In,
    NodeLabelSchedulingStrategy,
    NotIn,
)

CLUSTER_NODES = [
    {"num_cpus": 1, "labels": {"zone": "head"}},
    {"num_cpus": 1, "labels": {"zone": "east", "disk": "ssd"}},
]
GET_TIMEOUT = 60


@ray.remote(num_cpus=0)
def labels() -> dict[str, str]:
    return ray.get_runtime_context().get_node_labels()


def run(strategy: NodeLabelSchedulingStrategy) -> dict[str, str]:
    return ray.get(labels.options(scheduling_strategy=strategy).remote(), timeout=GET_TIMEOUT)


def test_tasks_follow_hard_labels(ray_cluster):
    for _ in range(3):
        assert run(NodeLabelSchedulingStrategy({"zone": In("east")}))["zone"] == "east"
        assert run(NodeLabelSchedulingStrategy({"zone": NotIn("east")}))["zone"] == "head"
        assert run(NodeLabelSchedulingStrategy({"disk": DoesNotExist()}))["zone"] == "head"


def test_tasks_prefer_soft_labels(ray_cluster):
    strategy = NodeLabelSchedulingStrategy({}, soft={"disk": In("ssd")})
    assert run(strategy)["zone"] == "east"


def test_actors_follow_hard_labels(ray_cluster):
    @ray.remote(num_cpus=0)
    class Where:
        def labels(self) -> dict[str, str]:
            return ray.get_runtime_context().get_node_labels()

    a = Where.options(
        scheduling_strategy=NodeLabelSchedulingStrategy({"zone": In("east")})
    ).remote()
    assert ray.get(a.labels.remote(), timeout=GET_TIMEOUT)["zone"] == "east"


def test_driver_sees_its_node_labels(ray_cluster):
    assert ray.get_runtime_context().get_node_labels() == {"zone": "head"}

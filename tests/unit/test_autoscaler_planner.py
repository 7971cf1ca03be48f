"""The autoscaling policy (pure): bin packing, limits, placement groups, infeasible
demand, request_resources and idle removal."""

from __future__ import annotations

from aioray.daemons.autoscaler.planner import Demand, PlacementGroupDemand, plan
from autoscaler_fakes import head, make_config, tasks, worker

CPU1 = {"CPU": 1.0}


def test_six_one_cpu_tasks_launch_three_two_cpu_nodes() -> None:
    p = plan(make_config(), [head()], tasks((CPU1, 6)), now=0)
    assert p.launch == {"cpu2": 3} and not p.infeasible and not p.terminate


def test_free_capacity_and_launches_in_flight_are_used_first() -> None:
    nodes = [head(), worker("a", free={"CPU": 1.0}), worker("b", launching=True)]
    assert plan(make_config(), nodes, tasks((CPU1, 3)), now=0).launch == {}
    assert plan(make_config(), nodes, tasks((CPU1, 4)), now=0).launch == {"cpu2": 1}


def test_max_workers_per_type_and_for_the_cluster() -> None:
    assert plan(make_config(), [head()], tasks((CPU1, 100)), now=0).launch == {"cpu2": 3}
    capped = make_config(max_workers=2)
    assert plan(capped, [head()], tasks((CPU1, 100)), now=0).launch == {"cpu2": 2}
    full = [head(), worker("a", free={}), worker("b", free={}), worker("c", free={})]
    assert plan(make_config(), full, tasks((CPU1, 5)), now=0).launch == {}


def test_upscaling_speed_bounds_pending_launches() -> None:
    types = {"w": {"resources": {"CPU": 1}, "max_workers": 100}}
    cfg = make_config(types, max_workers=100, upscaling_speed=1.0)
    assert plan(cfg, [head()], tasks((CPU1, 50)), now=0).launch == {"w": 5}  # at least 5
    running = [head()] + [worker(f"n{i}", "w", {"CPU": 1}, {}) for i in range(10)]
    assert plan(cfg, running, tasks((CPU1, 50)), now=0).launch == {"w": 10}
    inflight = running + [worker(f"l{i}", "w", {"CPU": 1}, launching=True) for i in range(4)]
    assert plan(cfg, inflight, tasks((CPU1, 50)), now=0).launch == {"w": 6}


def test_min_workers_are_kept_up_without_demand() -> None:
    types = {"w": {"resources": {"CPU": 2}, "min_workers": 2, "max_workers": 4}}
    p = plan(make_config(types), [head()], Demand(), now=0)
    assert p.launch == {"w": 2}
    # ...and the planned min nodes absorb demand before more are launched.
    assert plan(make_config(types), [head()], tasks((CPU1, 5)), now=0).launch == {"w": 3}


def test_the_type_that_fits_best_is_chosen() -> None:
    types = {
        "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 5},
        "cpu4": {"resources": {"CPU": 4}, "max_workers": 5},
    }
    p = plan(make_config(types), [head()], tasks((CPU1, 8)), now=0)
    assert p.launch == {"cpu4": 2}  # a GPU node would leave its GPU idle
    p = plan(make_config(types), [head()], tasks(({"GPU": 1, "CPU": 1}, 1), (CPU1, 2)), now=0)
    assert p.launch == {"gpu": 1}  # the CPU tasks fit beside the GPU task


def test_demand_no_type_can_hold_is_infeasible_and_launches_nothing() -> None:
    p = plan(make_config(), [head()], tasks(({"GPU": 1}, 2), ({"CPU": 3}, 1)), now=0)
    assert p.launch == {}
    assert sorted(map(str, p.infeasible)) == ["{'CPU': 3.0}", "{'GPU': 1.0}"]
    # A shape a live node could hold is not infeasible (it waits for that node).
    nodes = [head(), worker("big", "other", {"CPU": 8}, {})]
    assert plan(make_config(), nodes, tasks(({"CPU": 3}, 1)), now=0).infeasible == []


def test_strict_spread_needs_distinct_nodes() -> None:
    types = {"w": {"resources": {"CPU": 4}, "max_workers": 5}}
    pg = PlacementGroupDemand([{"CPU": 1}] * 3, "STRICT_SPREAD")
    assert plan(make_config(types), [head()], Demand(placement_groups=[pg]), now=0).launch == {
        "w": 3
    }
    packed = PlacementGroupDemand([{"CPU": 1}] * 3, "PACK")
    assert plan(make_config(types), [head()], Demand(placement_groups=[packed]), now=0).launch == {
        "w": 1
    }
    # One live node with room takes one bundle; two more nodes are launched.
    nodes = [head(), worker("a", "w", {"CPU": 4})]
    assert plan(make_config(types), nodes, Demand(placement_groups=[pg]), now=0).launch == {"w": 2}


def test_strict_pack_needs_one_node_for_the_whole_group() -> None:
    pg = PlacementGroupDemand([{"CPU": 1}] * 2, "STRICT_PACK")
    assert plan(make_config(), [head()], Demand(placement_groups=[pg]), now=0).launch == {"cpu2": 1}
    too_big = PlacementGroupDemand([{"CPU": 2}] * 2, "STRICT_PACK")
    p = plan(make_config(), [head()], Demand(placement_groups=[too_big]), now=0)
    assert p.launch == {} and p.infeasible == [{"CPU": 4.0}]


def test_request_resources_counts_against_totals() -> None:
    d = Demand(requests=[{"CPU": 2}] * 2)
    assert plan(make_config(), [head()], d, now=0).launch == {"cpu2": 2}
    # Busy nodes still count: the request is for capacity, whatever runs on it.
    busy = [head(), worker("a", free={}), worker("b", free={})]
    assert plan(make_config(), busy, d, now=0).launch == {}
    # ...and nodes the request holds are not removed when idle.
    idle = [head(), worker("a", idle_since=0), worker("b", idle_since=0)]
    assert plan(make_config(idle_timeout_minutes=1), idle, d, now=100).terminate == []


def test_idle_nodes_go_after_the_timeout_but_never_the_head() -> None:
    cfg = make_config(idle_timeout_minutes=1)
    nodes = [head(), worker("a", idle_since=0.0), worker("b", idle_since=50.0), worker("c")]
    assert plan(cfg, nodes, Demand(), now=59).terminate == []
    assert plan(cfg, nodes, Demand(), now=60).terminate == ["a"]
    assert plan(cfg, nodes, Demand(), now=200).terminate == ["a", "b"]  # c is busy
    idle_head = head(4)
    idle_head.idle_since = 0.0
    assert plan(cfg, [idle_head], Demand(), now=1e6).terminate == []


def test_idle_nodes_needed_by_demand_or_min_workers_stay() -> None:
    types = {"cpu2": {"resources": {"CPU": 2}, "min_workers": 1, "max_workers": 3}}
    cfg = make_config(types, idle_timeout_minutes=1)
    nodes = [head(), worker("a", idle_since=0.0), worker("b", idle_since=0.0)]
    assert plan(cfg, nodes, Demand(), now=100).terminate == ["a"]  # b keeps min_workers
    assert plan(cfg, nodes, tasks((CPU1, 3)), now=100).terminate == []  # both get work


def test_identical_shapes_are_packed_in_batches() -> None:
    types = {"w": {"resources": {"CPU": 2}, "max_workers": 1000}}
    cfg = make_config(types, max_workers=1000, upscaling_speed=10)
    busy = [head()] + [worker(f"n{i}", "w", free={}) for i in range(100)]
    p = plan(cfg, busy, tasks((CPU1, 1001), ({"CPU": 2}, 10)), now=0)
    assert p.launch == {"w": 511}  # 10 two-CPU nodes + 501 for 1001 one-CPU tasks

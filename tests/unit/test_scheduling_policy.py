"""The cluster scheduling policy as pure state: no loop, no sockets."""

from __future__ import annotations

from aioray.daemons.raylet.scheduler import (
    INFEASIBLE,
    LOCAL,
    NODE,
    SPILL,
    SPREAD,
    UNSCHEDULABLE,
    WAIT,
    ClusterView,
    NodeView,
)

A, B, C = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
CPU1 = {"CPU": 1.0}


def node(nid: bytes, cpus: float, free: float, **extra: float) -> NodeView:
    total = {"CPU": cpus, **extra}
    return NodeView(nid, f"127.0.0.{nid[0]}", 1000 + nid[0], total, {**total, "CPU": free})


def view(*nodes: NodeView, local: bytes = A) -> ClusterView:
    v = ClusterView(local)
    v.apply([n.to_wire() for n in nodes])
    return v


def test_default_packs_locally_below_half_utilization() -> None:
    v = view(node(A, 4, 3), node(B, 4, 4))
    d = v.pick(CPU1, None)
    assert d.kind == LOCAL and d.node is not None and d.node.node_id == A


def test_default_spreads_to_the_least_loaded_node_above_half() -> None:
    v = view(node(A, 4, 1), node(B, 4, 1), node(C, 4, 4))
    d = v.pick(CPU1, None)
    assert d.kind == SPILL and d.node is not None and d.node.node_id == C


def test_default_waits_locally_when_nothing_fits_now() -> None:
    v = view(node(A, 1, 0), node(B, 1, 0))
    assert v.pick(CPU1, None).kind == LOCAL
    assert v.pick(CPU1, None, waiting=True).kind == WAIT


def test_infeasible_here_goes_to_a_node_that_has_the_resource() -> None:
    v = view(node(A, 1, 1), node(B, 1, 0, gpu_like=1), node(C, 1, 1))
    d = v.pick({"gpu_like": 1.0}, None)
    assert d.kind == SPILL and d.node is not None and d.node.node_id == B
    assert v.pick({"nothing_has_this": 1.0}, None).kind == INFEASIBLE


def test_spread_round_robins_and_deduct_steers_the_next_pick() -> None:
    v = view(node(A, 1, 1), node(B, 1, 1), node(C, 1, 1))
    picked = []
    for _ in range(3):
        d = v.pick(CPU1, SPREAD)
        assert d.node is not None
        v.deduct(d.node, CPU1)
        picked.append(d.node.node_id)
    assert sorted(picked) == [A, B, C]


def test_node_affinity_hard_and_soft() -> None:
    v = view(node(A, 1, 1), node(B, 1, 0))
    d = v.pick(CPU1, [NODE, B, False])
    assert d.kind == SPILL and d.node is not None and d.node.node_id == B  # waits there
    v.mark_dead(B)
    hard = v.pick(CPU1, [NODE, B, False])
    assert hard.kind == UNSCHEDULABLE and "is dead" in hard.reason
    assert v.pick(CPU1, [NODE, B, True]).kind == LOCAL
    unknown = v.pick(CPU1, [NODE, C, False])
    assert unknown.kind == UNSCHEDULABLE and "is unknown" in unknown.reason


def test_a_dead_node_stays_dead_and_gets_nothing() -> None:
    v = view(node(A, 1, 0), node(B, 1, 1))
    v.mark_dead(B)
    v.apply([node(B, 1, 1).to_wire()])  # a late report from before its death
    assert not v.nodes[B].alive
    assert v.pick(CPU1, None).kind == LOCAL


def test_node_affinity_when_the_node_is_busy() -> None:
    v = view(node(A, 1, 1), node(B, 1, 0))
    # Default: wait there. _spill_on_unavailable (soft): go elsewhere.
    # _fail_on_unavailable (hard): fail now.
    assert v.pick(CPU1, [NODE, B, True, False, False]).kind == SPILL
    spilled = v.pick(CPU1, [NODE, B, True, True, False])
    assert spilled.kind == LOCAL
    failed = v.pick(CPU1, [NODE, B, False, False, True])
    assert failed.kind == UNSCHEDULABLE and "unavailable" in failed.reason


def test_strategy_wire_form() -> None:
    from aioray._private.core.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        strategy_to_wire,
    )

    assert strategy_to_wire(None) is None and strategy_to_wire("DEFAULT") is None
    assert strategy_to_wire("SPREAD") == SPREAD
    wire = strategy_to_wire(NodeAffinitySchedulingStrategy(B.hex(), soft=True))
    assert wire == (NODE, B, True, False, False)  # (a tuple here, an array on the wire)


# -- node labels ---------------------------------------------------------------------------
def labelled(nid: bytes, cpus: float, free: float, labels: dict[str, str]) -> NodeView:
    total = {"CPU": cpus}
    return NodeView(nid, "127.0.0.1", 1000 + nid[0], total, {"CPU": free}, True, labels)


def test_labels_hard_in_picks_only_matching_nodes() -> None:
    v = view(labelled(A, 4, 4, {"zone": "a"}), labelled(B, 4, 4, {"zone": "b"}))
    d = v.pick(CPU1, ["LABEL", [["zone", "in", ["b"]]], []])
    assert d.kind == SPILL and d.node is not None and d.node.node_id == B


def test_labels_not_in_exists_and_does_not_exist() -> None:
    v = view(labelled(A, 4, 4, {"gpu": "a100"}), labelled(B, 4, 4, {}))
    assert v.pick(CPU1, ["LABEL", [["gpu", "exists", []]], []]).kind == LOCAL
    d = v.pick(CPU1, ["LABEL", [["gpu", "does_not_exist", []]], []])
    assert d.node is not None and d.node.node_id == B
    d = v.pick(CPU1, ["LABEL", [["gpu", "not_in", ["a100"]]], []])
    assert d.node is not None and d.node.node_id == B


def test_labels_no_node_allowed_is_infeasible() -> None:
    v = view(labelled(A, 4, 4, {"zone": "a"}))
    assert v.pick(CPU1, ["LABEL", [["zone", "in", ["z"]]], []]).kind == INFEASIBLE


def test_labels_soft_prefers_matching_nodes_and_falls_back() -> None:
    v = view(labelled(A, 4, 4, {}), labelled(B, 4, 4, {"disk": "ssd"}))
    d = v.pick(CPU1, ["LABEL", [], [["disk", "in", ["ssd"]]]])
    assert d.node is not None and d.node.node_id == B
    d = v.pick(CPU1, ["LABEL", [], [["disk", "in", ["nvme"]]]])
    assert d.kind == LOCAL  # no node has it: any node

"""Placement-group state without processes: the strategies, and the two-phase reservation
against fake raylets (a refusal or a death rolls every prepare back)."""

from __future__ import annotations

import asyncio
from typing import Any

from aioray.daemons.gcs.cluster_view import ClusterViewPublisher
from aioray.daemons.gcs.pg_policy import infeasible_reason, place
from aioray.daemons.gcs.placement_groups import CREATED, PENDING, PlacementGroupManager
from aioray.daemons.raylet.scheduler import NodeView
from fakes import FakeConnection

A, B, C = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16


def node(node_id: bytes, cpus: float, free: float | None = None) -> NodeView:
    free = cpus if free is None else free
    return NodeView(node_id, "127.0.0.1", 1, {"CPU": cpus}, {"CPU": free})


def bundles(*cpus: float) -> dict[int, dict[str, float]]:
    return {i: {"CPU": c} for i, c in enumerate(cpus)}


def test_strict_pack_needs_one_node_for_everything() -> None:
    nodes = [node(A, 2), node(B, 4, free=3)]
    assert place(bundles(1, 2), "STRICT_PACK", nodes, {}) == {0: B, 1: B}
    assert place(bundles(2, 2), "STRICT_PACK", nodes, {}) is None


def test_pack_prefers_one_node_then_fills_the_fewest() -> None:
    nodes = [node(A, 2), node(B, 2), node(C, 2)]
    one = place(bundles(1, 1), "PACK", nodes, {})
    assert one is not None and len(set(one.values())) == 1
    split = place(bundles(1, 1, 1), "PACK", nodes, {})
    assert split is not None and len(set(split.values())) == 2


def test_spread_uses_distinct_nodes_while_there_are_any() -> None:
    nodes = [node(A, 4), node(B, 4)]
    plan = place(bundles(1, 1, 1), "SPREAD", nodes, {})
    assert plan is not None and set(plan.values()) == {A, B}
    assert place(bundles(1, 1, 1), "STRICT_SPREAD", nodes, {}) is None
    assert place(bundles(1, 1), "STRICT_SPREAD", nodes, {}) == {0: A, 1: B}


def test_rescheduling_respects_bundles_already_placed() -> None:
    nodes = [node(A, 4), node(B, 4), node(C, 4)]
    # Bundle 0 stays on A: STRICT_SPREAD must avoid A, STRICT_PACK must use it.
    assert place({1: {"CPU": 1}}, "STRICT_SPREAD", nodes, {0: A}) == {1: B}
    assert place({1: {"CPU": 1}}, "STRICT_PACK", nodes, {0: A}) == {1: A}


def test_dead_nodes_are_never_chosen_and_infeasibility_is_explained() -> None:
    dead = node(C, 8)
    dead.alive = False
    assert place(bundles(8), "PACK", [node(A, 2), dead], {}) is None
    why = infeasible_reason(bundles(1, 1, 1), "STRICT_SPREAD", [node(A, 2), node(B, 2)])
    assert why is not None and "STRICT_SPREAD" in why and "2 alive node(s)" in why
    # Busy but feasible once idle: no reason to warn.
    assert infeasible_reason(bundles(2), "PACK", [node(A, 2, free=0)]) is None


# ------------------------------------------------------- two-phase reservation


class FakeRaylet(FakeConnection):
    """A raylet's connection that answers the GCS's two-phase reservation at once."""

    def __init__(self, prepare: Any, commit: Any = True) -> None:
        super().__init__("raylet", answer=self._reply)
        self.prepare = prepare  # what prepare_bundles answers (an exception: the node died)
        self.commit = commit  # what commit_bundles answers

    def _reply(self, method: str, body: Any) -> Any:
        answer = self.prepare if method == "prepare_bundles" else self.commit
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def methods(self) -> list[str]:
        return [m for m in super().methods() if m != "cluster_view"]


class FakeGcs:
    def __init__(self, raylets: dict[bytes, FakeRaylet]) -> None:
        self.raylets = raylets
        self.nodes = {n: {"Resources": {"CPU": 2.0}} for n in raylets}
        self.view = ClusterViewPublisher(self)  # type: ignore[arg-type]
        self.view.view.apply([node(n, 2).to_wire() for n in raylets])
        self.actors = type("Actors", (), {"actors": {}})()
        self.server = type("Server", (), {"connections": set()})()

    def raylet_conn(self, node_id: bytes) -> Any:
        return self.raylets.get(node_id)


async def _settle(manager: PlacementGroupManager, pgid: bytes, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while manager._reserving or manager._pass_soon:
        assert asyncio.get_running_loop().time() < deadline, "reservation never settled"
        await asyncio.sleep(0.005)


def _create(manager: PlacementGroupManager, pgid: bytes, strategy: str) -> None:
    body = {"id": pgid, "bundles": [{"CPU": 1}] * 3, "strategy": strategy, "detached": True}
    assert manager.handle_create_placement_group(FakeRaylet(True), body, None) == {"ok": True}  # type: ignore[arg-type]


async def test_every_prepare_and_commit_succeed() -> None:
    raylets = {n: FakeRaylet(True) for n in (A, B, C)}
    manager = PlacementGroupManager(FakeGcs(raylets))  # type: ignore[arg-type]
    _create(manager, b"g1", "STRICT_SPREAD")
    await _settle(manager, b"g1")
    rec = manager.groups[b"g1"]
    assert rec["state"] == CREATED and sorted(rec["nodes"]) == [A, B, C]
    for r in raylets.values():
        assert r.methods() == ["prepare_bundles", "commit_bundles"]
    # The GCS's node table now lists the bundle's resources.
    assert any(k.startswith("CPU_group_") for k in manager.gcs.nodes[A]["Resources"])


async def test_a_refusing_raylet_rolls_back_every_prepare() -> None:
    raylets = {A: FakeRaylet(True), B: FakeRaylet(False), C: FakeRaylet(True)}
    manager = PlacementGroupManager(FakeGcs(raylets))  # type: ignore[arg-type]
    _create(manager, b"g2", "STRICT_SPREAD")
    await _settle(manager, b"g2")
    rec = manager.groups[b"g2"]
    assert rec["state"] == PENDING and rec["nodes"] == [None] * 3
    for n in (A, C):
        assert raylets[n].methods() == ["prepare_bundles", "cancel_bundles"]
    assert "commit_bundles" not in raylets[B].methods()
    manager.remove(b"g2")  # stops the retries


async def test_a_raylet_dying_during_prepare_rolls_back_every_prepare() -> None:
    raylets = {A: FakeRaylet(True), B: FakeRaylet(ConnectionError("gone")), C: FakeRaylet(True)}
    manager = PlacementGroupManager(FakeGcs(raylets))  # type: ignore[arg-type]
    _create(manager, b"g3", "SPREAD")
    await _settle(manager, b"g3")
    assert manager.groups[b"g3"]["state"] == PENDING
    for n in (A, C):
        assert raylets[n].methods() == ["prepare_bundles", "cancel_bundles"]
    # The node is gone for good: the retry places every bundle on the others (once the
    # raylets' reports after the rollback say their CPUs are free again).
    del raylets[B]
    manager.gcs.view.node_dead(B)
    for n in (A, C):
        manager.gcs.view.resources_changed(n, {"CPU": 2.0})
    manager.node_died(B)
    await asyncio.sleep(0.1)
    await _settle(manager, b"g3")
    rec = manager.groups[b"g3"]
    assert rec["state"] == CREATED and set(rec["nodes"]) == {A, C}


async def test_the_table_is_plain_data_that_can_be_loaded_back() -> None:
    raylets = {n: FakeRaylet(True) for n in (A, B, C)}
    manager = PlacementGroupManager(FakeGcs(raylets))  # type: ignore[arg-type]
    written: dict[bytes, dict[str, Any]] = {}
    manager.listeners.append(lambda rec: written.__setitem__(rec["id"], dict(rec)))
    _create(manager, b"g4", "PACK")
    await _settle(manager, b"g4")
    assert written[b"g4"]["state"] == CREATED
    manager.handle_create_placement_group(
        FakeRaylet(True),  # type: ignore[arg-type]
        {
            "id": b"g5",
            "name": "later",
            "bundles": [{"CPU": 64}],
            "strategy": "PACK",
            "detached": True,
        },
        None,
    )
    assert written[b"g5"]["state"] == PENDING
    again = PlacementGroupManager(FakeGcs({n: FakeRaylet(True) for n in (A, B, C)}))  # type: ignore[arg-type]
    again.load(list(written.values()))
    assert (
        again.groups[b"g4"]["state"] == CREATED
        and again.groups[b"g4"]["nodes"] == manager.groups[b"g4"]["nodes"]
    )
    assert again.names[("", "later")] == b"g5" and list(again._queue) == [b"g5"]
    again.remove(b"g5")
    manager.remove(b"g5")


def test_a_bad_peer_cannot_create_a_group_with_negative_resources() -> None:
    manager = PlacementGroupManager(FakeGcs({}))  # type: ignore[arg-type]
    body = {"id": b"g6", "bundles": [{"CPU": -1}], "strategy": "PACK", "detached": True}
    assert "error" in manager.handle_create_placement_group(FakeRaylet(True), body, None)  # type: ignore[arg-type]
    assert manager.groups == {}


async def test_a_failed_commit_gives_the_bundles_back_and_places_them_again() -> None:
    flaky = FakeRaylet(True, commit=RuntimeError("commit failed"))
    raylets = {A: FakeRaylet(True), B: flaky, C: FakeRaylet(True)}
    manager = PlacementGroupManager(FakeGcs(raylets))  # type: ignore[arg-type]
    _create(manager, b"g7", "STRICT_SPREAD")
    await _settle(manager, b"g7")
    rec = manager.groups[b"g7"]
    assert rec["state"] == PENDING and rec["nodes"].count(None) == 1
    assert flaky.methods() == ["prepare_bundles", "commit_bundles", "cancel_bundles"]
    flaky.commit = True
    manager.gcs.view.resources_changed(B, {"CPU": 2.0})  # its report after the cancel
    manager.kick()
    await asyncio.sleep(0.01)
    await _settle(manager, b"g7")
    assert rec["state"] == CREATED and sorted(rec["nodes"]) == [A, B, C]

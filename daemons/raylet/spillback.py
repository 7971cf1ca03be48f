"""The raylet's side of cluster scheduling: keep a request here, or spill it.

Each scheduling pass (``Raylet._run_scheduler``) starts with ``begin_pass``: the
local node's entry in the cluster view takes the live accounting. Then
``decide`` runs for each queued request, in order, and the local availability
shrinks by each request kept here that fits (so a burst of requests spreads
instead of all landing here). A request is:

1. new (``hops == 0``, not yet placed): the policy picks a node. Here -> it stays
   queued and is granted when a worker is free; elsewhere -> the owner is answered
   ``{"spill": [node_id, ip, port]}`` and re-requests there with ``hops + 1``;
   a hard constraint that can never hold -> ``{"error", "unschedulable"}``.
2. placed here and waiting (it does not fit now): moved only to a node where it
   fits now, so a busy cluster does not bounce requests around.
3. spilled here (``hops > 0``): it stays while this node could ever run it; when
   the node is full (not merely claimed by the requests before it in this pass) it
   moves like (2) to a node where it fits now (one that just joined: a burst spilled
   to the first new node spreads over those the autoscaler launched with it); if
   this node could never run it (the view was stale), it may hop again, at most
   MAX_HOPS times (MAX_MOVES in all for moves to a node where it fits now).
4. infeasible everywhere: it stays queued (the owner is warned once) and is
   placed as soon as a node that can run it joins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aioray.daemons.raylet.scheduler import (
    INFEASIBLE,
    LOCAL,
    SPILL,
    UNSCHEDULABLE,
    ClusterView,
    NodeView,
)

if TYPE_CHECKING:
    from aioray.daemons.raylet.resources import NodeResources
    from aioray.daemons.raylet.server import LeaseRequest

MAX_HOPS = 3
# Moves of a waiting request to a node where it fits now, hops included: more than
# MAX_HOPS, since nodes joining and groups reserving can each move it on once.
MAX_MOVES = 10

# What ``decide`` tells the raylet.
KEEP, ANSWERED, NOWHERE = "keep", "answered", "nowhere"


class Spillback:
    def __init__(self, node_id: bytes, ip: str, port: int) -> None:
        self.view = ClusterView(node_id)
        self.local = NodeView(node_id, ip, port, {}, {})
        self.view.set_local(self.local)
        self._pass_start: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<Spillback {self.view!r}>"

    def apply_view(self, entries: list[list[Any]]) -> tuple[list[NodeView], list[NodeView]]:
        """Take the GCS's news; return the nodes that just joined, and those that died."""
        known = set(self.view.nodes)
        was_alive = {n.node_id for n in self.view.nodes.values() if n.alive}
        self.view.apply([e for e in entries if e[0] != self.local.node_id])
        self.view.set_local(self.local)
        nodes = self.view.nodes.values()
        joined = [n for n in nodes if n.alive and n.node_id not in known]
        died = [n for n in nodes if not n.alive and n.node_id in was_alive]
        return joined, died

    def ip_shared(self, node: NodeView) -> bool:
        """Whether an alive node has the same IP (then an IP names no single node)."""
        return any(n.alive and n.ip == node.ip for n in self.view.nodes.values())

    def begin_pass(self, resources: NodeResources) -> None:
        self.local.total = resources.total
        self.local.available = dict(resources.available)
        self._pass_start = dict(resources.available)  # before this pass claims any

    def decide(self, req: LeaseRequest) -> str:
        local = self.local
        if req.placed or req.hops:
            if local.feasible(req.res):
                if local.fits(req.res):
                    self.view.deduct(local, req.res)
                    return KEEP
                if req.hops >= MAX_MOVES or _fits(self._pass_start, req.res):
                    return KEEP  # only the requests before it in this pass hold the room
                decision = self.view.pick(req.res, req.strategy, waiting=True)
                if decision.kind == SPILL:
                    return self._spill(req, decision.node)
                return KEEP
            if req.hops >= MAX_HOPS:
                return NOWHERE
        decision = self.view.pick(req.res, req.strategy)
        if decision.kind == LOCAL:
            req.placed = True
            if local.fits(req.res):
                self.view.deduct(local, req.res)
            return KEEP
        if decision.kind == SPILL:
            return self._spill(req, decision.node)
        if decision.kind == UNSCHEDULABLE:
            req.fut.set_result({"error": decision.reason, "unschedulable": True})
            return ANSWERED
        assert decision.kind == INFEASIBLE
        return NOWHERE

    def _spill(self, req: LeaseRequest, node: NodeView | None) -> str:
        assert node is not None
        self.view.deduct(node, req.res)
        req.fut.set_result({"spill": [node.node_id, node.ip, node.port], "hops": req.hops + 1})
        return ANSWERED


def _fits(available: dict[str, float], res: dict[str, float]) -> bool:
    return all(available.get(k, 0.0) >= v for k, v in res.items())

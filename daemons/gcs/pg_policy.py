"""Where a placement group's bundles go: the four strategies (pure, no I/O).

``place`` maps the bundles still to be placed to alive nodes, given what each node
has available now (the GCS's cluster view) and where the group's other bundles
already are (after a node death only the lost bundles are placed again). It
answers None when the strategy cannot be met now; the manager then keeps the
group pending. With Ray's semantics:

- STRICT_PACK: every bundle on one node (the node already holding the group, if
  any; else the least-utilized node where the sum fits).
- PACK: one node if the sum fits anywhere; else bundle by bundle, onto the nodes
  the group already uses first, then onto the node with the most room.
- STRICT_SPREAD: every bundle on a different node.
- SPREAD: bundle by bundle, onto the node holding the fewest of the group's
  bundles where it fits (so distinct nodes while there are any).

Nodes are visited in id order, so the same cluster gives the same placement.
"""

from __future__ import annotations

from collections.abc import Iterable

from aioray.daemons.raylet.scheduler import EPS, NodeView

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def _fits(room: dict[str, float], res: dict[str, float]) -> bool:
    return all(room.get(k, 0.0) + EPS >= v for k, v in res.items())


def _take(room: dict[str, float], res: dict[str, float]) -> None:
    for k, v in res.items():
        room[k] = room.get(k, 0.0) - v


def _total(bundles: Iterable[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _utilization(node: NodeView, room: dict[str, float], res: dict[str, float]) -> float:
    """The busiest of the requested resources (and CPU) as a used fraction."""
    worst = 0.0
    for k in {"CPU", *res}:
        total = node.total.get(k, 0.0)
        if total > 0:
            worst = max(worst, 1.0 - room.get(k, 0.0) / total)
    return worst


def place(
    bundles: dict[int, dict[str, float]],
    strategy: str,
    nodes: Iterable[NodeView],
    placed: dict[int, bytes],
) -> dict[int, bytes] | None:
    """Nodes for ``bundles`` (index -> resources) under ``strategy``; None if impossible now.

    ``placed`` says where the group's other bundles already are.
    """
    alive = sorted((n for n in nodes if n.alive), key=lambda n: n.node_id)
    room = {n.node_id: dict(n.available) for n in alive}
    by_id = {n.node_id: n for n in alive}
    count: dict[bytes, int] = {}
    for node_id in placed.values():
        count[node_id] = count.get(node_id, 0) + 1
    order = sorted(bundles)
    if strategy in ("STRICT_PACK", "PACK"):
        need = _total(bundles.values())
        if placed and strategy == "STRICT_PACK":
            home = next(iter(placed.values()))
            candidates = [by_id[home]] if home in by_id else []
        else:
            candidates = alive
        fitting = [n for n in candidates if _fits(room[n.node_id], need)]
        if fitting:
            best = min(
                fitting,
                key=lambda n: (-count.get(n.node_id, 0), _utilization(n, room[n.node_id], need)),
            )
            return dict.fromkeys(order, best.node_id)
        if strategy == "STRICT_PACK":
            return None
    out: dict[int, bytes] = {}
    for i in order:
        res = bundles[i]
        fitting = [n for n in alive if _fits(room[n.node_id], res)]
        if strategy == "STRICT_SPREAD":
            fitting = [n for n in fitting if count.get(n.node_id, 0) == 0]
        if not fitting:
            return None
        if strategy == "PACK":
            best = min(
                fitting,
                key=lambda n: (-count.get(n.node_id, 0), _utilization(n, room[n.node_id], res)),
            )
        else:
            best = min(
                fitting,
                key=lambda n: (count.get(n.node_id, 0), _utilization(n, room[n.node_id], res)),
            )
        out[i] = best.node_id
        count[best.node_id] = count.get(best.node_id, 0) + 1
        _take(room[best.node_id], res)
    return out


def infeasible_reason(
    bundles: dict[int, dict[str, float]], strategy: str, nodes: Iterable[NodeView]
) -> str | None:
    """Why no cluster of these nodes, even idle, could ever hold the group (None: it could)."""
    alive = [n for n in nodes if n.alive]
    idle = [NodeView(n.node_id, n.ip, n.port, n.total, dict(n.total)) for n in alive]
    if place(bundles, strategy, idle, {}) is None:
        totals = [{k: v for k, v in n.total.items() if "_group_" not in k} for n in alive]
        return (
            f"{len(bundles)} bundle(s) {list(bundles.values())} with strategy {strategy} "
            f"do not fit the cluster's {len(alive)} alive node(s) (totals: {totals})"
        )
    return None

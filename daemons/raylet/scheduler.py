"""Which node should grant a lease: the cluster scheduling policy (pure, no I/O).

Each raylet keeps a ``ClusterView`` of every node (totals, what is available,
alive or dead), fed by the GCS's batched ``cluster_view`` broadcasts and, for
itself, by its live accounting. The GCS actor manager uses the same policy over
its node table. A ``Decision`` says: grant here, spill to another node, keep
waiting, infeasible everywhere, or unschedulable (a hard constraint that can
never hold). Policies, with Ray's semantics:

- DEFAULT (Ray's hybrid policy): skip infeasible nodes; prefer nodes where the
  request fits now; among those, the lowest "critical resource utilization"
  (the busiest requested resource's used fraction), truncated to 0 below
  SPREAD_THRESHOLD; ties go to the local node, then to a fixed node order. So
  work packs onto the local node until it is half busy, then spreads to the
  least-loaded node. If nowhere fits now, wait on the local node when it could
  ever run the request, else on the best feasible node.
- SPREAD: round-robin over feasible nodes, taking the next one where the
  request fits now (any feasible one if none fits).
- Node affinity ``[NODE, node_id, soft, spill_on_unavailable, fail_on_unavailable]``:
  that node while it is alive and feasible, waiting there when busy (unless soft
  with spill_on_unavailable: DEFAULT; or hard with fail_on_unavailable:
  unschedulable). A dead, unknown or infeasible node: hard -> unschedulable,
  soft -> DEFAULT.
- Node labels ``[LABEL, hard, soft]`` (each a list of ``[key, op, values]``): DEFAULT
  over the nodes whose labels satisfy ``hard``, narrowed to those that also satisfy
  ``soft`` when one of them can run the request. No node allowed: infeasible (waits).

Resources are opaque names, so placement-group bundles (committed as resources
such as ``CPU_group_<pgid>`` on a node's totals) steer requests with no change
here; a placement-group strategy would add one more branch to ``pick``.
"""

from __future__ import annotations

from typing import Any, Literal

from aioray._private.wire.schema import Strategy

EPS = 1e-9
SPREAD_THRESHOLD = 0.5

# Decision kinds.
LOCAL, SPILL, WAIT, INFEASIBLE, UNSCHEDULABLE = "local", "spill", "wait", "infeasible", "unsched"
# Wire names of strategies (None means DEFAULT).
SPREAD = "SPREAD"
NODE = "NODE"
LABEL = "LABEL"


class NodeView:
    """What one raylet knows of one node."""

    __slots__ = ("alive", "available", "ip", "labels", "node_id", "port", "total")

    def __init__(
        self,
        node_id: bytes,
        ip: str,
        port: int,
        total: dict[str, float],
        available: dict[str, float],
        alive: bool = True,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.ip = ip
        self.port = port
        self.total = total
        self.available = available
        self.alive = alive
        self.labels = labels or {}

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead"
        return f"<NodeView {self.node_id.hex()[:8]} {self.ip}:{self.port} {state}>"

    def feasible(self, res: dict[str, float]) -> bool:
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in res.items())

    def fits(self, res: dict[str, float]) -> bool:
        return all(self.available.get(k, 0.0) + EPS >= v for k, v in res.items())

    def utilization(self, res: dict[str, float]) -> float:
        """The busiest of the requested resources (and CPU), as a used fraction."""
        worst = 0.0
        for k in {"CPU", *res}:
            total = self.total.get(k, 0.0)
            if total > 0:
                worst = max(worst, 1.0 - self.available.get(k, 0.0) / total)
        return worst

    def to_wire(self) -> list[Any]:
        return [
            self.node_id,
            self.ip,
            self.port,
            self.total,
            self.available,
            self.alive,
            self.labels,
        ]

    @classmethod
    def from_wire(cls, entry: list[Any]) -> NodeView:
        node_id, ip, port, total, available, alive, labels = entry
        return cls(node_id, ip, port, dict(total), dict(available), bool(alive), labels)


class Decision:
    __slots__ = ("kind", "node", "reason")

    def __init__(self, kind: str, node: NodeView | None = None, reason: str = "") -> None:
        self.kind = kind
        self.node = node
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Decision {self.kind} {self.node!r} {self.reason}>"


class ClusterView:
    """Every node this process knows of; ``local`` (if any) is the caller's own node."""

    def __init__(self, local_id: bytes | None = None) -> None:
        self.local_id = local_id
        self.nodes: dict[bytes, NodeView] = {}
        self._order: list[NodeView] = []  # alive remote nodes in a fixed (id) order
        self._order_key: tuple[Any, ...] = ()
        self._version = 0
        self._spread_next = 0

    def __repr__(self) -> str:
        alive = sum(n.alive for n in self.nodes.values())
        return f"<ClusterView nodes={alive}/{len(self.nodes)}>"

    def apply(self, entries: list[list[Any]]) -> None:
        """Take a batch of node entries from the GCS (newer facts replace older)."""
        for entry in entries:
            view = NodeView.from_wire(entry)
            old = self.nodes.get(view.node_id)
            if old is not None and not old.alive:
                continue  # a dead node never comes back (a restarted raylet has a new id)
            self.nodes[view.node_id] = view
        self._version += 1

    def set_local(self, node: NodeView) -> None:
        self.local_id = node.node_id
        self.nodes[node.node_id] = node
        self._version += 1

    def mark_dead(self, node_id: bytes) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.alive = False
            node.available = {}
            self._version += 1

    def remote_order(self) -> list[NodeView]:
        """Alive nodes other than the local one, in a fixed cluster-wide order (by id)."""
        key = (self.local_id, self._version)
        if self._order_key != key:
            self._order = sorted(
                (n for n in self.nodes.values() if n.alive and n.node_id != self.local_id),
                key=lambda n: n.node_id,
            )
            self._order_key = key
        return self._order

    def deduct(self, node: NodeView, res: dict[str, float]) -> None:
        """Assume a spilled request takes its resources there until the next update."""
        for k, v in res.items():
            node.available[k] = node.available.get(k, 0.0) - v

    # -- the policy ------------------------------------------------------------------
    def pick(self, res: dict[str, float], strategy: Any, *, waiting: bool = False) -> Decision:
        """Where to run ``res`` under ``strategy``.

        ``waiting``: the request already waits on the local node; only move it to a
        node where it fits now (WAIT otherwise), so it is not bounced around.
        """
        if isinstance(strategy, (list, tuple)) and strategy and strategy[0] == NODE:
            decision = self._pick_affinity(res, strategy)
            if decision is not None:
                return decision
            strategy = None  # soft affinity to a node that cannot run it: DEFAULT
        local = self.nodes.get(self.local_id) if self.local_id is not None else None
        if local is not None and not local.alive:
            local = None
        candidates = ([local] if local is not None else []) + self.remote_order()
        if isinstance(strategy, (list, tuple)) and strategy and strategy[0] == LABEL:
            candidates = _label_candidates(candidates, res, strategy[1], strategy[2])
            strategy = None  # among the nodes the labels allow: DEFAULT
        feasible = [n for n in candidates if n.feasible(res)]
        if not feasible:
            return Decision(INFEASIBLE)
        if strategy == SPREAD and not waiting:
            return self._place(self._pick_spread(res, feasible))
        available = [n for n in feasible if n.fits(res)]
        if not available:
            if waiting or (local is not None and local in feasible):
                return Decision(WAIT) if waiting else Decision(LOCAL, local)
            return self._place(min(feasible, key=lambda n: n.utilization(res)))
        best, best_score = available[0], _score(available[0], res)
        for n in available[1:]:
            score = _score(n, res)
            if score < best_score:
                best, best_score = n, score
        return self._place(best)

    def _pick_affinity(self, res: dict[str, float], strategy: Any) -> Decision | None:
        _, node_id, soft = strategy[:3]
        spill_if_busy, fail_if_busy = [*strategy[3:5], False, False][:2]
        target = self.nodes.get(node_id)
        if target is not None and target.alive and target.feasible(res):
            if target.fits(res) or not (spill_if_busy if soft else fail_if_busy):
                return self._place(target)
            if soft:
                return None
            why = "is unavailable (its resources are in use)"
        elif soft:
            return None
        elif target is None:
            why = "is unknown"
        elif not target.alive:
            why = "is dead"
        else:
            why = f"cannot fit {res} (its total resources: {target.total})"
        return Decision(
            UNSCHEDULABLE,
            reason=f"The node specified via NodeAffinitySchedulingStrategy {node_id.hex()} {why}.",
        )

    def _pick_spread(self, res: dict[str, float], feasible: list[NodeView]) -> NodeView:
        ring = sorted(feasible, key=lambda n: n.node_id)
        start = self._spread_next % len(ring)
        for i in range(len(ring)):
            n = ring[(start + i) % len(ring)]
            if n.fits(res):
                self._spread_next = start + i + 1
                return n
        self._spread_next = start + 1
        return ring[start]

    def _place(self, node: NodeView) -> Decision:
        return Decision(LOCAL if node.node_id == self.local_id else SPILL, node)


def label_matches(labels: dict[str, str], expressions: list[Any]) -> bool:
    """Whether a node's labels satisfy every ``[key, op, values]`` expression."""
    for key, op, values in expressions:
        value = labels.get(key)
        if op == "in":
            ok = value is not None and value in values
        elif op == "not_in":
            ok = value is None or value not in values
        elif op == "exists":
            ok = value is not None
        else:  # "does_not_exist"
            ok = value is None
        if not ok:
            return False
    return True


def _label_candidates(
    nodes: list[NodeView], res: dict[str, float], hard: list[Any], soft: list[Any]
) -> list[NodeView]:
    """The nodes the hard expressions allow; those the soft ones prefer, if any can run it."""
    allowed = [n for n in nodes if label_matches(n.labels, hard)]
    if soft:
        preferred = [n for n in allowed if label_matches(n.labels, soft) and n.feasible(res)]
        if preferred:
            return preferred
    return allowed


def _score(node: NodeView, res: dict[str, float]) -> float:
    score = node.utilization(res)
    return 0.0 if score < SPREAD_THRESHOLD else score


def strategy_from_wire(strategy: Strategy | Literal["DEFAULT"]) -> Strategy:
    """Normalize a strategy received over msgpack (lists stay lists, bytes stay bytes)."""
    if strategy is None or strategy == "DEFAULT":
        return None
    return strategy

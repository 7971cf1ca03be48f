"""The autoscaling policy: pure, synchronous, no I/O (the monitor is its async shell).

``plan(config, nodes, demand, now)`` bin-packs the unmet demand and returns what to
launch and what to terminate:

1. Types below ``min_workers`` get nodes first (they count as capacity below).
2. ``request_resources`` bundles are packed against every node's *total* resources
   (Ray: the request holds whatever the cluster is doing); what does not fit launches.
3. Pending demand, most constrained first: STRICT_SPREAD groups (each bundle on its
   own node), STRICT_PACK groups (one combined shape), then task, actor and other
   bundle shapes, first onto free capacity (live nodes, launches in flight, nodes
   planned above), then onto new nodes of the type that packs them best (highest
   mean utilization of the type's resources, then most items).
4. A shape no node type (nor live node) could ever hold is reported infeasible and
   never launched for. Launches respect each type's ``max_workers``, the cluster's
   ``max_workers``, and ``upscaling_speed`` (pending launches at most
   max(5, upscaling_speed x running workers)).
5. A worker node idle (no leases, no primary object copies: the monitor decides)
   for ``idle_timeout`` and not needed by this round's packing is terminated, while
   its type keeps ``min_workers``. The head is never terminated.

Capacity is kept as *bins* of identical nodes (same free resources), so 1,000 nodes
that are all full or all free cost one bin each, not 1,000 fit checks per shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from aioray.daemons.autoscaler.config import AutoscalingConfig, NodeType

Shape = tuple[tuple[str, float], ...]  # a resource dict, sorted, hashable
EPS = 1e-9
UPSCALING_INITIAL_NODES = 5  # Ray's upscaling_initial_num_nodes


def shape_of(res: dict[str, float]) -> Shape:
    """The hashable form of a resource dict (zero amounts dropped)."""
    return tuple(sorted((k, float(v)) for k, v in res.items() if v > 0))


@dataclass
class NodeState:
    """A node as the planner sees it: live (registered) or a launch in flight."""

    node_id: str
    node_type: str
    total: dict[str, float]
    available: dict[str, float]
    is_head: bool = False
    launching: bool = False
    idle_since: float | None = None  # None: busy (or launching)


@dataclass
class PlacementGroupDemand:
    bundles: list[dict[str, float]]
    strategy: str = "PACK"
    count: int = 1


@dataclass
class Demand:
    """Unmet resource demand: shapes with counts, pending groups, request_resources."""

    shapes: dict[Shape, int] = field(default_factory=dict)
    placement_groups: list[PlacementGroupDemand] = field(default_factory=list)
    requests: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Plan:
    launch: dict[str, int] = field(default_factory=dict)
    terminate: list[str] = field(default_factory=list)
    infeasible: list[dict[str, float]] = field(default_factory=list)


class _Bin:
    """Identical nodes (or planned nodes) with the same free resources."""

    __slots__ = ("avail", "ids")

    def __init__(self, avail: dict[str, float], ids: list[str]) -> None:
        self.avail = avail
        self.ids = ids


def _fit_count(avail: dict[str, float], shape: Shape) -> int:
    n = 1 << 30
    for k, v in shape:
        have = avail.get(k, 0.0)
        if have + EPS < v:
            return 0
        n = min(n, int((have + EPS) // v))
    return n


def _minus(avail: dict[str, float], shape: Shape, n: int) -> dict[str, float]:
    out = dict(avail)
    for k, v in shape:
        out[k] = out.get(k, 0.0) - v * n
    return out


class _Packer:
    """Free capacity as bins; packs shapes, splitting bins as nodes fill unevenly."""

    def __init__(self, bins: list[_Bin]) -> None:
        self.bins = bins
        self.used: set[str] = set()

    def pack(self, shape: Shape, count: int) -> int:
        """Place up to ``count`` of ``shape``; how many did not fit."""
        i = 0
        while count and i < len(self.bins):
            b = self.bins[i]
            f = _fit_count(b.avail, shape)
            if f == 0:
                i += 1
                continue
            m = len(b.ids)
            if count >= f * m:
                b.avail = _minus(b.avail, shape, f)
                self.used.update(b.ids)
                count -= f * m
                i += 1
                continue
            full, rest = divmod(count, f)
            new: list[_Bin] = []
            if full:
                new.append(_Bin(_minus(b.avail, shape, f), b.ids[:full]))
            if rest:
                new.append(_Bin(_minus(b.avail, shape, rest), b.ids[full : full + 1]))
            taken = full + (1 if rest else 0)
            self.used.update(b.ids[:taken])
            if taken < m:
                new.append(_Bin(b.avail, b.ids[taken:]))
            self.bins[i : i + 1] = new
            return 0
        return count

    def take_one(self, shape: Shape, exclude: set[str]) -> str | None:
        """Place one ``shape`` on a single node not in ``exclude``; that node's id."""
        for i, b in enumerate(self.bins):
            if _fit_count(b.avail, shape) == 0:
                continue
            pick = next((n for n in b.ids if n not in exclude), None)
            if pick is None:
                continue
            rest = [n for n in b.ids if n != pick]
            new = [_Bin(_minus(b.avail, shape, 1), [pick])]
            if rest:
                new.append(_Bin(b.avail, rest))
            self.bins[i : i + 1] = new
            self.used.add(pick)
            return pick
        return None


def _bins(items: Iterable[tuple[dict[str, float], str]]) -> list[_Bin]:
    groups: dict[Shape, _Bin] = {}
    for avail, node_id in items:
        key = tuple(sorted(avail.items()))
        b = groups.get(key)
        if b is None:
            groups[key] = _Bin(dict(avail), [node_id])
        else:
            b.ids.append(node_id)
    return list(groups.values())


class _Limits:
    """How many more nodes each type, and the cluster, may launch this round."""

    def __init__(self, config: AutoscalingConfig, nodes: list[NodeState]) -> None:
        workers = [n for n in nodes if not n.is_head]
        self.per_type = {
            name: t.max_workers - sum(n.node_type == name for n in workers)
            for name, t in config.worker_types.items()
        }
        self.cluster = config.max_workers - len(workers)
        running = sum(not n.launching for n in workers)
        cap = max(UPSCALING_INITIAL_NODES, math.ceil(config.upscaling_speed * running))
        self.speed = cap - sum(n.launching for n in workers)

    def room(self, name: str, demand_driven: bool = True) -> int:
        r = min(self.per_type.get(name, 0), self.cluster)
        return min(r, self.speed) if demand_driven else r

    def take(self, name: str, n: int, demand_driven: bool = True) -> None:
        self.per_type[name] -= n
        self.cluster -= n
        if demand_driven:
            self.speed -= n


class _Planner:
    def __init__(self, config: AutoscalingConfig, nodes: list[NodeState]) -> None:
        self.config = config
        self.types = config.worker_types
        self.limits = _Limits(config, nodes)
        self.launch: dict[str, int] = {}
        self.new_ids = 0
        self.live_totals = [n.total for n in nodes]

    def add_nodes(self, packers: list[_Packer], t: NodeType, n: int, demand: bool = True) -> None:
        """Plan ``n`` new nodes of type ``t``; they join every packer's capacity."""
        self.limits.take(t.name, n, demand)
        self.launch[t.name] = self.launch.get(t.name, 0) + n
        ids = [f"new-{self.new_ids + i}" for i in range(n)]
        self.new_ids += n
        for p in packers:
            p.bins.append(_Bin(dict(t.resources), list(ids)))

    def feasible(self, shape: Shape) -> bool:
        return any(_fit_count(t.resources, shape) for t in self.types.values()) or any(
            _fit_count(total, shape) for total in self.live_totals
        )

    def best_type(self, unmet: dict[Shape, int]) -> tuple[NodeType, dict[Shape, int]] | None:
        """The type whose one fresh node packs ``unmet`` best, with that packing."""
        best: tuple[tuple[float, int], NodeType, dict[Shape, int]] | None = None
        for t in self.types.values():
            if self.limits.room(t.name) <= 0:
                continue
            avail = dict(t.resources)
            packed: dict[Shape, int] = {}
            for shape, count in unmet.items():
                k = min(count, _fit_count(avail, shape))
                if k:
                    packed[shape] = k
                    avail = _minus(avail, shape, k)
            if not packed:
                continue
            used = [1 - avail[k] / v for k, v in t.resources.items() if v > 0]
            score = (sum(used) / max(1, len(used)), sum(packed.values()))
            if best is None or score > best[0]:
                best = (score, t, packed)
        return None if best is None else (best[1], best[2])

    def launch_for(self, unmet: dict[Shape, int], packers: list[_Packer]) -> None:
        """New nodes for ``unmet`` (feasible shapes), in batches of identical packings.

        The new nodes join every packer's capacity; ``unmet`` is packed onto them in
        the first only (request_resources holds totals, not the free capacity).
        """
        unmet = {s: c for s, c in unmet.items() if c > 0}
        while unmet:
            choice = self.best_type(unmet)
            if choice is None:
                return  # at the limits: the rest waits for a later round
            t, packed = choice
            k = min(unmet[s] // n for s, n in packed.items())
            k = max(1, min(k, self.limits.room(t.name)))
            self.add_nodes(packers, t, k)
            for s, n in packed.items():  # onto the new nodes (the others had no room)
                packers[0].pack(s, n * k)
            for s, n in packed.items():
                unmet[s] -= n * k
                if unmet[s] <= 0:
                    del unmet[s]


def _sorted_shapes(shapes: dict[Shape, int]) -> list[tuple[Shape, int]]:
    # First fit decreasing: the largest shapes first (by their biggest amount).
    return sorted(shapes.items(), key=lambda sc: (-max((v for _, v in sc[0]), default=0), sc[0]))


def plan(config: AutoscalingConfig, nodes: list[NodeState], demand: Demand, now: float) -> Plan:
    """What to launch and terminate for ``demand``, given ``nodes`` (live and launching)."""
    p = _Planner(config, nodes)
    free = _Packer(_bins((n.available if not n.launching else n.total, n.node_id) for n in nodes))
    totals = _Packer(_bins((n.total, n.node_id) for n in nodes))
    for name, t in p.types.items():  # 1. min_workers
        have = sum(n.node_type == name and not n.is_head for n in nodes)
        need = min(t.min_workers - have, p.limits.room(name, demand_driven=False))
        if need > 0:
            p.add_nodes([free, totals], t, need, demand=False)
    infeasible: dict[Shape, None] = {}
    # 2. request_resources, against totals.
    unmet: dict[Shape, int] = {}
    for bundle in demand.requests:
        s = shape_of(bundle)
        if s and totals.pack(s, 1):
            unmet[s] = unmet.get(s, 0) + 1
    _launch_feasible(p, unmet, [totals, free], infeasible)
    # 3. pending demand, most constrained first.
    shapes: dict[Shape, int] = {}
    for group in demand.placement_groups:
        _group_demand(p, free, group, shapes, infeasible)
    for s, c in demand.shapes.items():
        shapes[s] = shapes.get(s, 0) + c
    unmet = {}
    for s, c in _sorted_shapes(shapes):
        left = free.pack(s, c) if s else 0
        if left:
            unmet[s] = left
    _launch_feasible(p, unmet, [free], infeasible)
    return Plan(
        launch=p.launch,
        terminate=_idle_to_terminate(config, nodes, free.used | totals.used, now),
        infeasible=[dict(s) for s in infeasible],
    )


def _launch_feasible(
    p: _Planner, unmet: dict[Shape, int], packers: list[_Packer], infeasible: dict[Shape, None]
) -> None:
    for s in list(unmet):
        if not p.feasible(s):
            infeasible[s] = None
            del unmet[s]
    p.launch_for(dict(_sorted_shapes(unmet)), packers)


def _group_demand(
    p: _Planner,
    free: _Packer,
    group: PlacementGroupDemand,
    shapes: dict[Shape, int],
    infeasible: dict[Shape, None],
) -> None:
    """STRICT_SPREAD groups placed now, bundle by bundle; the others become shapes."""
    bundles = [shape_of(b) for b in group.bundles if shape_of(b)]
    if group.strategy == "STRICT_PACK":
        total: dict[str, float] = {}
        for b in bundles:
            for k, v in b:
                total[k] = total.get(k, 0.0) + v
        combined = shape_of(total)
        shapes[combined] = shapes.get(combined, 0) + group.count
        return
    if group.strategy != "STRICT_SPREAD":
        for b in bundles:
            shapes[b] = shapes.get(b, 0) + group.count
        return
    bad = [b for b in bundles if not p.feasible(b)]
    if bad:
        infeasible.update(dict.fromkeys(bad))
        return
    for _ in range(group.count):
        on: set[str] = set()
        for b in bundles:
            node = free.take_one(b, on)
            if node is None:  # a node of its own
                choice = p.best_type({b: 1})
                if choice is None:
                    break
                p.add_nodes([free], choice[0], 1)
                node = free.take_one(b, on)
            if node is not None:
                on.add(node)


def _idle_to_terminate(
    config: AutoscalingConfig, nodes: list[NodeState], needed: set[str], now: float
) -> list[str]:
    left = {
        name: sum(n.node_type == name and not n.is_head for n in nodes)
        for name in config.node_types
    }
    out = []
    idle = [
        n
        for n in nodes
        if not n.is_head
        and not n.launching
        and n.idle_since is not None
        and now - n.idle_since >= config.idle_timeout_s
        and n.node_id not in needed
    ]
    for n in sorted(idle, key=lambda n: n.idle_since or 0.0):
        t = config.node_types.get(n.node_type)
        if t is not None and left.get(n.node_type, 0) <= t.min_workers:
            continue
        left[n.node_type] = left.get(n.node_type, 0) - 1
        out.append(n.node_id)
    return out

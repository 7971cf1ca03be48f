"""The cluster's resource demand, for the autoscaler, and the autoscaler's state.

Demand has three sources, each counted cheaply:

- the lease requests queued at each raylet, as counts per resource shape
  (``report_demand``, from ``daemons/raylet/demand_report.py``, sent when they
  change; an actor waiting for a node is such a request too), with the node's
  idleness;
- the placement groups still pending here (their unplaced bundles, with strategy);
- ``request_resources`` (``aioray.autoscaler.sdk``): bundles the cluster should have
  room for whatever runs, kept in the durable key-value store (each call replaces
  the last, as in Ray).

``get_demand`` answers all of it with the alive nodes' resources in one snapshot.
An autoscaler that calls ``watch_demand`` is sent ``demand_changed`` (at most once
per loop iteration) when a node's queue or the standing request changes, so it
plans at once rather than at its next poll. The autoscaler reports its own state
back (``report_autoscaler_state``: pending and failed launches, idle nodes,
infeasible demand) for ``aioray status``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import TYPE_CHECKING, Any

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    AutoscalerState,
    CreatePlacementGroupReply,
    ReportDemand,
    Resources,
)

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer

KV_NAMESPACE = "autoscaler"
REQUEST_KEY = b"resource_request"
PENDING_GROUP_STATES = ("PENDING", "RESCHEDULING")


class DemandTable:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.by_node: dict[bytes, tuple[list[tuple[Resources, int]], bool]] = {}
        self.autoscaler: dict[str, Any] = {}
        self.watchers: list[rpc.Connection] = []
        self._notify_soon = False

    def __repr__(self) -> str:
        queued = sum(n for shapes, _ in self.by_node.values() for _, n in shapes)
        return f"<DemandTable nodes={len(self.by_node)} queued={queued}>"

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "report_demand": self.handle_report_demand,
            "request_resources": self.handle_request_resources,
            "get_demand": self.handle_get_demand,
            "report_autoscaler_state": self.handle_report_autoscaler_state,
            "get_autoscaler_status": self.handle_get_autoscaler_status,
            "watch_demand": self.handle_watch_demand,
        }

    # -- facts in ---------------------------------------------------------------------------
    def handle_report_demand(
        self, conn: rpc.Connection, body: ReportDemand, _: list[Buffer]
    ) -> None:
        """body = [node id, [[resource shape, count]], idle]; no reply. Replaces the node's
        queued lease shapes (alive nodes only); notifies watchers if the shapes changed."""
        node_id, shapes, idle = body
        node = self.gcs.nodes.get(node_id)
        if node is not None and node["Alive"]:
            old = self.by_node.get(node_id)
            self.by_node[node_id] = (shapes, bool(idle))
            if old is None or old[0] != shapes:
                self._changed()

    def node_dead(self, node_id: bytes) -> None:
        self.by_node.pop(node_id, None)

    def handle_request_resources(
        self, conn: rpc.Connection, bundles: list[Resources], _: list[Buffer]
    ) -> CreatePlacementGroupReply:
        """Replace the standing request (Ray: each call overrides the previous one)."""
        error = _check_bundles(bundles)
        if error:
            return {"error": error}
        value = json.dumps([{str(k): float(v) for k, v in b.items()} for b in bundles])
        self.gcs.handle_kv_put(conn, (KV_NAMESPACE, REQUEST_KEY, value.encode(), True), [])
        self._changed()
        return {"ok": True}

    def handle_watch_demand(self, conn: rpc.Connection, body: None, _: list[Buffer]) -> bool:
        """Send ``conn`` (the autoscaler) ``demand_changed`` notices from now on."""
        self.watchers.append(conn)
        conn.on_close.append(self.watchers.remove)
        return True

    def _changed(self) -> None:
        if self.watchers and not self._notify_soon:
            self._notify_soon = True
            asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._notify_soon = False
        for conn in self.watchers:
            if not conn.is_closed:
                conn.notify("demand_changed", None)

    def handle_report_autoscaler_state(
        self, conn: rpc.Connection, state: AutoscalerState, _: list[Buffer]
    ) -> None:
        """body = the autoscaler's state dict (pending and failed launches, idle nodes,
        infeasible demand); no reply. Kept, stamped ``reported_at``, for ``aioray status``."""
        self.autoscaler = {**state, "reported_at": time.time()}

    # -- snapshots --------------------------------------------------------------------------
    def handle_get_demand(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> dict[str, Any]:
        """``get_demand`` (no body) -> the snapshot: alive nodes' resources and idleness, queued
        shapes, pending placement-group bundles and the standing ``request_resources``."""
        return self.snapshot()

    def handle_get_autoscaler_status(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> dict[str, Any]:
        """``get_autoscaler_status`` (no body) -> the ``get_demand`` snapshot plus the
        autoscaler's last reported state under ``autoscaler``."""
        return {**self.snapshot(), "autoscaler": self.autoscaler}

    def snapshot(self) -> dict[str, Any]:
        nodes = []
        shapes: dict[tuple[tuple[str, float], ...], int] = {}
        for node_id, info in self.gcs.nodes.items():
            if not info["Alive"]:
                continue
            queued, idle = self.by_node.get(node_id, ([], False))
            for res, n in queued:
                key = tuple(sorted(res.items()))
                shapes[key] = shapes.get(key, 0) + n
            nodes.append(
                {
                    "node_id": info["NodeID"],
                    "ip": info["NodeManagerAddress"],
                    "total": info["Resources"],
                    "available": info["Available"],
                    "is_head": bool(info.get("IsHead")),
                    "idle": idle,
                    "labels": info.get("Labels") or {},
                }
            )
        return {
            "nodes": nodes,
            "shapes": [[dict(k), n] for k, n in shapes.items()],
            "placement_groups": self._pending_groups(),
            "requests": self._requests(),
        }

    def _pending_groups(self) -> list[list[Any]]:
        out = []
        for rec in self.gcs.placement_groups.groups.values():
            if rec["state"] in PENDING_GROUP_STATES:
                nodes = rec["nodes"]
                left = [b for i, b in enumerate(rec["bundles"]) if nodes[i] is None]
                if left:
                    out.append([left, rec["strategy"]])
        return out

    def _requests(self) -> list[dict[str, float]]:
        raw = self.gcs.kv.get(KV_NAMESPACE, {}).get(REQUEST_KEY)
        return list(json.loads(raw)) if raw else []


def _check_bundles(bundles: Any) -> str:
    if not isinstance(bundles, list):
        return "request_resources: bundles must be a list of resource dicts"
    for b in bundles:
        if not isinstance(b, dict):
            return f"request_resources: {b!r} is not a resource dict"
        for k, v in b.items():
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not isinstance(k, str) or not ok or v < 0:
                return f"request_resources: {k!r}: {v!r} is not a non-negative number"
    return ""

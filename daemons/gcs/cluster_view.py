"""The GCS's cluster resource view, and its batched broadcast to the raylets.

Raylets report their available resources when they change (``report_resources``);
the GCS keeps the latest per node and pushes what changed to every raylet in one
``cluster_view`` notice per RESOURCE_BROADCAST_S, so the cost is one small message
per raylet per period however many leases come and go. Joins and deaths go out
at once (a task with affinity to a new node must find it; a dead node must stop
receiving spills). A raylet that registers gets the whole view.

The actor manager places actors with the same policy (``pick``), preferring the
owner's node as a raylet prefers itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aioray.daemons.raylet.scheduler import ClusterView, Decision, NodeView

from aioray._private.core.bundle_resources import add
from aioray._private.wire import config

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer


class ClusterViewPublisher:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.view = ClusterView()
        self._dirty: set[bytes] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._flush_now = False

    def __repr__(self) -> str:
        return f"<ClusterViewPublisher {self.view!r} dirty={len(self._dirty)}>"

    # -- facts in -----------------------------------------------------------------------
    def node_added(self, info: dict[str, Any], node_id: bytes) -> None:
        node = NodeView(
            node_id,
            info["NodeManagerAddress"],
            info["NodeManagerPort"],
            dict(info["Resources"]),
            dict(info["Resources"]),
            True,
            info.get("Labels") or {},
        )
        self.view.apply([node.to_wire()])
        conn = self.gcs.raylets.get(node_id)
        if conn is not None and not conn.is_closed:
            conn.notify("cluster_view", [n.to_wire() for n in self.view.nodes.values()])
        self._mark(node_id, urgent=True)

    def resources_changed(
        self, node_id: bytes, available: dict[str, float], total: dict[str, float] | None = None
    ) -> None:
        node = self.view.nodes.get(node_id)
        if node is not None and node.alive:
            node.available = dict(available)
            if total is not None:
                node.total = dict(total)
            self._mark(node_id, urgent=False)

    def totals_changed(self, node_id: bytes, res: dict[str, float], sign: int) -> None:
        """Placement-group bundles joined (sign 1) or left (-1) a node's totals: tell all now."""
        node = self.view.nodes.get(node_id)
        if node is not None and node.alive:
            add(node.total, res, sign)
            add(node.available, res, sign)
            self._mark(node_id, urgent=True)

    def node_dead(self, node_id: bytes) -> None:
        self.view.mark_dead(node_id)
        self._mark(node_id, urgent=True)

    # -- broadcast ----------------------------------------------------------------------
    def _mark(self, node_id: bytes, urgent: bool) -> None:
        self._dirty.add(node_id)
        loop = asyncio.get_running_loop()
        if urgent and not self._flush_now:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_now = True
            self._flush_handle = loop.call_soon(self.flush)
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(config.RESOURCE_BROADCAST_S, self.flush)

    def flush(self) -> None:
        """Send what changed since the last broadcast to every raylet."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # called directly: the timer has nothing left to do
        self._flush_handle = None
        self._flush_now = False
        dirty, self._dirty = self._dirty, set()
        entries = [self.view.nodes[n].to_wire() for n in dirty if n in self.view.nodes]
        if not entries:
            return
        for conn in list(self.gcs.raylets.values()):
            if not conn.is_closed:
                conn.notify("cluster_view", entries)

    # -- placement ----------------------------------------------------------------------
    def pick(self, res: dict[str, float], strategy: Any, preferred: bytes | None) -> Decision:
        """Where an actor should go; ``preferred`` (the owner's node) wins ties."""
        self.view.local_id = preferred if preferred in self.view.nodes else None
        return self.view.pick(res, strategy)

    def deduct(self, node_id: bytes, res: dict[str, float]) -> None:
        node = self.view.nodes.get(node_id)
        if node is not None:
            self.view.deduct(node, res)

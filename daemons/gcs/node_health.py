"""Failure detection: a node whose raylet stays silent too long is dead.

Every raylet sends ``heartbeat`` each NODE_HEARTBEAT_S (any report counts too).
Once per period the GCS looks for nodes not heard from for NODE_TIMEOUT_S: such a
node may be frozen, partitioned or its machine gone without a TCP reset, so its
connection cannot tell us. The GCS then closes that connection, which runs the
same path as a dropped one (``GcsServer.node_dead``): the node is marked dead,
the deaths go out to every raylet (and from them to the owners, who retry the
tasks that ran there), and its actors restart elsewhere. A raylet that wakes up
to a closed GCS connection stops itself and its workers, so a node declared dead
never comes back under its old id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aioray._private.wire import config

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer

logger = logging.getLogger(__name__)


class NodeHealth:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.last_seen: dict[bytes, float] = {}
        self.period = config.NODE_HEARTBEAT_S
        self.timeout = config.NODE_TIMEOUT_S
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<NodeHealth nodes={len(self.last_seen)} timeout={self.timeout}s>"

    def seen(self, node_id: bytes) -> None:
        if node_id in self.last_seen:
            self.last_seen[node_id] = time.monotonic()

    def watch(self, node_id: bytes) -> None:
        self.last_seen[node_id] = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.period, self.check)

    def forget(self, node_id: bytes) -> None:
        self.last_seen.pop(node_id, None)

    def check(self) -> None:
        """(every period) Declare dead the nodes silent for longer than the timeout."""
        self._timer = None
        now = time.monotonic()
        for node_id, seen in list(self.last_seen.items()):
            if now - seen > self.timeout:
                logger.warning(
                    "node %s missed heartbeats for %.1fs; marking it dead",
                    node_id.hex()[:8],
                    now - seen,
                )
                self.forget(node_id)
                conn = self.gcs.raylets.get(node_id)
                self.gcs.node_dead(
                    node_id,
                    f"Health check failed due to missing too many heartbeats "
                    f"(none for {now - seen:.1f}s)",
                )
                if conn is not None:
                    conn.close()
        if self.last_seen:
            self._timer = asyncio.get_running_loop().call_later(self.period, self.check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

"""The raylet's link to the GCS: registration, and riding out a GCS restart.

When the GCS connection drops, the raylet keeps serving its workers and owners
(leases, objects, logs need no GCS) and reconnects with backoff for up to
``config.GCS_RECONNECT_TIMEOUT_S``; only then does it stop. On reconnecting it:

1. sends the notices it could not deliver meanwhile (an actor's worker died, an
   actor exited on purpose), in order, so the GCS restarts or buries those actors;
2. registers its node again under the same node id, listing the actors its
   workers still host, so the GCS can reconcile (see ``daemons/gcs/recovery.py``);
3. hands the actor leases the old GCS connection held to the new one, and
   reports its resources.

Lease requests the lost GCS had queued here are dropped: the restarted GCS
schedules those actors again.

A GCS that declared this node dead (missed heartbeats, ``node_health.py``) closes
the connection too; when the raylet comes back, the GCS refuses to register the
node again under its old id, and the raylet stops (with its workers), as a dead
node must. The raylet also sends the heartbeats here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from aioray._private.rpc import rpc
from aioray._private.wire import config

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet

# The mark on this raylet's own connection to the GCS, made when it opens: the GCS's
# requests arrive on it (bundle steps and ending actors' workers are accepted only there).
GCS_LINK = "gcs_link"

logger = logging.getLogger(__name__)


def check_from_gcs(conn: rpc.Connection, method: str) -> None:
    """Refuse ``method`` (PermissionError) unless it came on the link to the GCS: what only
    the GCS may ask (hold a node's resources, end an actor's worker) is refused from any
    other peer, however well formed. (Known by its mark, not as ``raylet.gcs``: that is
    set only once registered, and the GCS may ask before its reply is read.)"""
    if not conn.state.get(GCS_LINK):
        raise PermissionError(f"{method} is for the GCS to send")


class NodeRefused(Exception):
    """The GCS will not take this node back (it declared it dead)."""


class GcsLink:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self._undelivered: list[tuple[str, Any]] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self.reconnects = 0

    def __repr__(self) -> str:
        state = "reconnecting" if self._reconnecting else "connected"
        return f"<GcsLink {state} undelivered={len(self._undelivered)}>"

    async def connect(self, rejoin: bool = False) -> dict[str, Any]:
        """Open the connection, deliver what waited, register the node; the GCS's answer."""
        r = self.raylet
        host, port = r.gcs_address
        conn, _ = await rpc.connect(
            host,
            port,
            handlers=r.server_handlers,
            hello={"role": "raylet", "node_id": r.node_id},
            timeout=config.CONNECT_TIMEOUT_S,
            name="gcs",
        )
        # The GCS's requests on it are the GCS's from now on: it may send some (a waiting
        # placement group's bundles) before the registration's answer is read.
        conn.state[GCS_LINK] = True
        undelivered, self._undelivered = self._undelivered, []
        for method, body in undelivered:
            conn.notify(method, body)
        try:
            info = await conn.call("register_node", self._registration(rejoin))
        except BaseException:
            self._undelivered[:0] = undelivered
            conn.close()
            raise
        if info.get("refused"):
            conn.close()
            raise NodeRefused(info["refused"])
        old, r.gcs = r.gcs, conn
        if old is not None:
            for lease in r.leases.values():
                if lease.conn is old:
                    lease.conn = conn
        conn.on_close.append(lambda _: self.lost())
        self._heartbeat()
        return dict(info)

    def _heartbeat(self) -> None:
        """Tell the GCS this node lives (node_health.py), every NODE_HEARTBEAT_S."""
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        self._heartbeat_timer = None
        gcs = self.raylet.gcs
        if gcs is not None and not gcs.is_closed and not self.raylet.stopping:
            gcs.notify("heartbeat", self.raylet.node_id)
            loop = asyncio.get_running_loop()
            self._heartbeat_timer = loop.call_later(config.NODE_HEARTBEAT_S, self._heartbeat)

    def _registration(self, rejoin: bool) -> dict[str, Any]:
        r = self.raylet
        body: dict[str, Any] = {
            "node_id": r.node_id,
            "ip": r.node_ip,
            "port": r.port,
            "metrics_export_port": r.metrics_export_port,
            "hostname": socket.gethostname(),
            "resources": {
                **r.resources.total,
                "object_store_memory": float(r.object_store_memory),
            },
            "labels": r.labels,
            "head": r.head,
        }
        if rejoin:
            body["actors"] = [lease.actor for lease in r.leases.values() if lease.actor]
        return body

    def notify(self, method: str, body: Any) -> None:
        """Send a notice to the GCS now, or once it is back."""
        gcs = self.raylet.gcs
        if gcs is not None and not gcs.is_closed:
            gcs.notify(method, body)
        else:
            self._undelivered.append((method, body))

    async def call(self, method: str, body: Any) -> Any:
        """Ask the GCS now; ConnectionError while it is away."""
        gcs = self.raylet.gcs
        if gcs is None or gcs.is_closed:
            raise ConnectionError("the GCS is unreachable")
        return await gcs.call(method, body)

    def lost(self) -> None:
        r = self.raylet
        if r.stopping or self._reconnecting is not None:
            return
        logger.warning("lost the GCS connection; reconnecting")
        old = r.gcs
        for req in [q for q in r.requests if q.conn is old]:
            r.requests.remove(req)
            if not req.fut.done():
                req.fut.set_result({"error": "the GCS connection was lost"})
        self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        r = self.raylet
        deadline = time.monotonic() + config.GCS_RECONNECT_TIMEOUT_S
        delay = 0.05
        try:
            while not r.stopping:
                try:
                    await self.connect(rejoin=True)
                except NodeRefused as e:
                    logger.error("the GCS refused this node: %s; stopping", e)
                    r.request_stop()
                    return
                except (ConnectionError, rpc.RpcError) as e:
                    if time.monotonic() + delay >= deadline:
                        logger.error(
                            "the GCS at %s:%d is unreachable for %.0fs (%s); stopping",
                            *r.gcs_address,
                            config.GCS_RECONNECT_TIMEOUT_S,
                            e,
                        )
                        r.request_stop()
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                self.reconnects += 1
                logger.info("reconnected to the GCS; node re-registered")
                r.report_resources()
                return
        finally:
            self._reconnecting = None

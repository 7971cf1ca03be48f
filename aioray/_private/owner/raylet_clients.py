"""An owner's connections to raylets other than its own: spillback and node events.

1. An owner asks its local raylet for a worker lease (``request_lease``). The
   raylet may answer ``{"spill": [node_id, ip, port], "hops": n}``: another node
   should run it. The owner asks that raylet (``hops`` tells it not to bounce the
   request on). If that node died or is stopping, the request goes back to the
   local raylet, which places it again.
2. Connections to other raylets are opened on the first spill and kept, one per
   raylet, so a spilled lease costs one extra round trip and later leases on that
   node none more than local ones.
3. A driver's connections say ``role: driver`` so those raylets forward their
   workers' prints to it; a driver connects to every raylet (``follow_logs``).
4. ``node_event`` (from the raylets): a dead node's connections are closed, so
   what ran there fails as a crash and is retried elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    LeaseReply,
    NodeEvent,
    RequestLease,
    Resources,
    RuntimeEnv,
    Strategy,
)

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import RayletClientsHost

logger = logging.getLogger("aioray")

# Called once per lease request: (the raylet that answered, its reply or an exception).
LeaseDone = Callable[["rpc.Connection", "LeaseReply | BaseException"], None]


class RayletClients:
    def __init__(self, cw: RayletClientsHost) -> None:
        self.cw = cw
        self.conns: dict[tuple[str, int], rpc.Connection] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[rpc.Connection]] = {}
        self.following = False  # a driver connected to every raylet for their output

    def __repr__(self) -> str:
        return f"<RayletClients {sorted(self.conns)}>"

    async def connect(self, ip: str, port: int) -> rpc.Connection:
        """The connection to the raylet at ``ip:port`` (the local one if it is that)."""
        if (ip, port) == tuple(self.cw.raylet_address):
            return self.cw.raylet
        key = (ip, port)
        conn = self.conns.get(key)
        if conn is not None and not conn.is_closed:
            return conn
        pending = self._opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._opening[key] = self.cw.loop.create_future()
        try:
            conn, _ = await rpc.connect(
                ip,
                port,
                handlers={
                    "lease_infeasible": self.cw.handle_lease_infeasible,
                    "worker_log": self.cw.handle_worker_log,
                    "worker_oom_killed": self.cw.submitter.handle_worker_oom_killed,
                    "node_event": self.handle_node_event,  # each raylet tells: idempotent
                },
                hello={
                    "role": self.cw.mode,
                    "worker_id": self.cw.worker_id,
                    "pid": os.getpid(),
                    "logs": self.cw.log_to_driver,
                },
                name=f"raylet {ip}:{port}",
            )
        except BaseException as e:
            del self._opening[key]
            pending.set_exception(e)
            pending.exception()  # retrieved: the awaiters (if any) get it too
            raise
        del self._opening[key]
        self.conns[key] = conn
        pending.set_result(conn)
        return conn

    # -- lease requests ------------------------------------------------------------------
    def request_lease(self, body: RequestLease, done: LeaseDone) -> None:
        """Ask the local raylet for a lease, following spills to other raylets.

        ``done(raylet, reply)`` runs once: with the raylet that granted or refused
        it and its reply, or with an exception. A request whose target node died or
        is stopping goes back to the local raylet, which places it again.
        """
        self._send(self.cw.raylet, body, done)

    def _send(self, raylet: rpc.Connection, body: RequestLease, done: LeaseDone) -> None:
        try:
            fut = raylet.call_nowait("request_lease", body)
        except ConnectionError as e:
            if raylet is not self.cw.raylet:  # the node it was spilled to is gone
                self._send(self.cw.raylet, _unspilled(body), done)
            else:
                done(raylet, e)
            return
        fut.add_done_callback(partial(self._on_reply, raylet, body, done))

    def _on_reply(
        self,
        raylet: rpc.Connection,
        sent: RequestLease,
        done: LeaseDone,
        fut: asyncio.Future[tuple[LeaseReply, list[Buffer]]],
    ) -> None:
        local = raylet is self.cw.raylet
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            if isinstance(exc, ConnectionError) and not local and not self.cw.closing:
                self._send(self.cw.raylet, _unspilled(sent), done)  # its node died
            else:
                done(raylet, exc or asyncio.CancelledError())
            return
        reply, _ = fut.result()
        if "spill" in reply:
            self.cw.spawn(self._follow_spill(reply, sent, done))
        elif "error" in reply and not reply.get("unschedulable") and not local:
            self._send(self.cw.raylet, _unspilled(sent), done)  # that raylet is stopping
        else:
            done(raylet, reply)

    async def _follow_spill(self, reply: LeaseReply, sent: RequestLease, done: LeaseDone) -> None:
        _node_id, ip, port = reply["spill"]
        try:
            raylet = await self.connect(ip, port)
            body: RequestLease = {**sent, "hops": reply["hops"]}
        except ConnectionError:
            raylet, body = self.cw.raylet, _unspilled(sent)
        self._send(raylet, body, done)

    # -- node events (from the local raylet) --------------------------------------------
    def handle_node_event(
        self, conn: rpc.Connection | None, body: NodeEvent, _: list[Buffer]
    ) -> None:
        """``node_event`` ["dead", node id, ...] or ["added", node id, ip, port] (notice, from a
        raylet): a dead node's connections are closed; a driver following logs connects to a new
        node's raylet."""
        if body[0] == "dead":
            self.node_dead(body[1:])
        elif body[0] == "added" and self.following:
            _node_id, ip, port = body[1:4]
            self.cw.spawn(self._follow(ip, port))

    def follow_logs(self) -> None:
        """(loop) In a driver that prints its workers' output: hear every node's workers.

        A raylet forwards its workers' lines to the drivers connected to it, so a
        driver connects to every raylet now, and to each node that joins later.
        """
        if self.cw.mode != "driver" or not self.cw.log_to_driver:
            return
        self.following = True
        self.cw.spawn(self._follow_all())

    async def _follow_all(self) -> None:
        try:
            gcs = await self.cw.gcs_connection()
            nodes = await gcs.call("get_nodes")
        except (ConnectionError, rpc.RpcError) as e:
            logger.debug("cannot list the nodes to follow their output: %s", e)
            return
        for n in nodes:
            if n["Alive"]:
                await self._follow(n["NodeManagerAddress"], n["NodeManagerPort"])

    async def _follow(self, ip: str, port: int) -> None:
        try:
            await self.connect(ip, port)
        except ConnectionError as e:
            logger.debug("cannot follow the output of raylet %s:%d: %s", ip, port, e)

    def node_dead(self, body: tuple[bytes, str, int, bool]) -> None:
        """A node died: drop what this process had there.

        Closing the connections fails what is in flight on them the way a crash
        would, so tasks retry elsewhere under max_retries, actor calls wait for the
        restart, and lease requests queued there go back to the local raylet.
        """
        _node_id, ip, port, ip_shared = body
        raylet = self.conns.pop((ip, port), None)
        doomed: list[rpc.Connection] = []
        if raylet is not None:
            doomed.append(raylet)
            for cls in self.cw.submitter.classes.values():
                doomed.extend(lease.conn for lease in cls.leases if lease.raylet is raylet)
        if not ip_shared:  # the IP names that node alone: its workers (actors) too
            doomed.extend(self.cw.peers_on(ip))  # the owner's connections to its workers
        if doomed:
            logger.info("node %s:%d died; dropping %d connection(s) to it", ip, port, len(doomed))
        for c in doomed:
            c.close()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def lease_body(
    resources: Resources, env: RuntimeEnv | None, owner: bytes, strategy: Strategy
) -> RequestLease:
    body: RequestLease = {"res": resources, "env": env, "owner": owner}
    if strategy is not None:
        body["ss"] = strategy
    return body


async def raylet_answers(raylet: rpc.Connection, timeout: float) -> bool:
    """Does the raylet behind ``raylet`` still answer (``ping``) within ``timeout``? Asked
    after a leased worker's connection dropped: a closed or silent raylet means the
    worker's node died, not just the worker."""
    try:
        await asyncio.wait_for(raylet.call("ping"), timeout)
    except (ConnectionError, rpc.RpcError, asyncio.TimeoutError):
        return False
    return True


def _unspilled(body: RequestLease) -> RequestLease:
    local = body.copy()
    local.pop("hops", None)
    return local

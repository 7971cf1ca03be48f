"""An owner's connections to raylets other than its own, and lease spillback.

An owner asks its local raylet for a worker lease. The raylet may answer
``{"spill": [node_id, ip, port], "hops": n}``: another node should run it. The
owner then asks that raylet (``hops`` tells it not to bounce the request on).
Connections to other raylets are opened on the first spill and kept, one per
raylet, so a spilled lease costs one extra round trip and later leases on that
node none more than local ones. A driver's connections say ``role: driver`` so
those raylets also forward their workers' prints to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from aioray import rpc

if TYPE_CHECKING:
    from aioray.core_worker import CoreWorker

logger = logging.getLogger("aioray")


class RayletClients:
    def __init__(self, cw: CoreWorker) -> None:
        self.cw = cw
        self.conns: dict[tuple[str, int], rpc.Connection] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[rpc.Connection]] = {}

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

    def handle_node_dead(self, conn: rpc.Connection, body: list[Any], _: Any) -> None:
        """A node died (news from the local raylet): drop what this process had there.

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
            peers = self.cw._peers  # the owner's connections to workers, by address
            doomed.extend(c for (host, _port), c in peers.items() if host == ip)
        if doomed:
            logger.info("node %s:%d died; dropping %d connection(s) to it", ip, port, len(doomed))
        for c in doomed:
            c.close()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def lease_body(
    resources: dict[str, float], env: Any, owner: bytes, strategy: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"res": resources, "env": env, "owner": owner}
    if strategy is not None:
        body["ss"] = strategy
    return body

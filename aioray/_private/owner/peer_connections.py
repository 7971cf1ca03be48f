"""This process's connections to other workers and owners, one per address.

Owner floor. The CoreWorker builds it over its table of open peers and binds its
methods as its own ``connect_peer``, ``peer`` and ``peers_on`` (no call in between):
concurrent connects to one address share one attempt; a closed connection is
forgotten and reopened on next use.
"""

from __future__ import annotations

import asyncio

from aioray._private.owner.interfaces import PeersHost
from aioray._private.rpc import rpc

HostPort = tuple[str, int]


class PeerConnections:
    """Opens, reuses and forgets the connections to workers and owners, by address."""

    def __init__(self, cw: PeersHost, conns: dict[HostPort, rpc.Connection]) -> None:
        self.cw = cw
        self.conns = conns  # the open ones (the CoreWorker closes them when it stops)
        self._connecting: dict[HostPort, asyncio.Future[rpc.Connection]] = {}

    def __repr__(self) -> str:
        return f"<PeerConnections open={len(self.conns)} connecting={len(self._connecting)}>"

    async def connect(self, ip: str, port: int) -> rpc.Connection:
        """The connection to the worker or owner at ``ip:port``: the open one, or a new one."""
        key = (ip, port)
        conn = self.conns.get(key)
        if conn is not None and not conn.is_closed:
            return conn
        pending = self._connecting.get(key)
        if pending is None:
            pending = self.cw.loop.create_future()
            self._connecting[key] = pending
            try:
                conn, _ = await rpc.connect(
                    ip,
                    port,
                    handlers={
                        "stream_item": self.cw.streams.handle_stream_item,
                        **self.cw.extra_handlers,
                    },
                    hello={"role": "peer", "worker_id": self.cw.worker_id},
                    name=f"peer {ip}:{port}",
                )
            except BaseException as e:
                del self._connecting[key]
                pending.set_exception(e)
                pending.exception()  # mark retrieved
                raise
            del self._connecting[key]
            self.conns[key] = conn
            conn.on_close.append(lambda c: self._forget(key, c))
            pending.set_result(conn)
            return conn
        return await asyncio.shield(pending)

    def get(self, ip: str, port: int) -> rpc.Connection | None:
        """The connection to the worker or owner at ``ip:port``, if one is open."""
        conn = self.conns.get((ip, port))
        return conn if conn is not None and not conn.is_closed else None

    def on(self, ip: str) -> list[rpc.Connection]:
        """The connections to workers and owners at ``ip`` (on that node)."""
        return [c for (host, _port), c in self.conns.items() if host == ip]

    def _forget(self, key: HostPort, conn: rpc.Connection) -> None:
        if self.conns.get(key) is conn:
            del self.conns[key]

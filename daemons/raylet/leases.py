"""The raylet's records of the lease protocol (server.py): a request waiting for the
node's resources (``LeaseRequest``), and a granted lease (``Lease``). Plain slotted
records: the server, the scheduling pass, spillback, bundles and the memory monitor
read and update them."""

from __future__ import annotations

import asyncio
import time

from aioray.daemons.raylet.worker_pool import WorkerHandle, env_key_of

from aioray._private.rpc import rpc
from aioray._private.wire.schema import LeaseReply, RuntimeEnv, Strategy


class LeaseRequest:
    """A lease request waiting here: the resources to fit, and the future its reply takes."""

    __slots__ = (
        "actor",
        "conn",
        "env",
        "env_key",
        "fut",
        "hold",
        "hops",
        "placed",
        "res",
        "retriable",
        "strategy",
        "warned",
    )

    def __init__(
        self,
        conn: rpc.Connection,
        res: dict[str, float],
        env: RuntimeEnv | None,
        hold: dict[str, float] | None = None,
        actor: bytes | None = None,
    ) -> None:
        self.conn = conn
        self.res = res  # must fit to grant
        self.hold = res if hold is None else hold  # held while the lease lives
        self.actor = actor
        self.env = env
        self.env_key = env_key_of(env)
        self.fut: asyncio.Future[LeaseReply] = asyncio.get_running_loop().create_future()
        self.warned = False
        self.strategy: Strategy = None  # scheduler.py's wire form; None is DEFAULT
        self.hops = 0  # times it was spilled before reaching this raylet
        self.placed = False  # the policy chose this node
        self.retriable = False  # the task it is requested for may be retried (memory monitor)


class Lease:
    """A worker leased to an owner (or the GCS, for an actor), with what it holds."""

    __slots__ = (
        "actor",
        "blocked",
        "conn",
        "gpus",
        "granted_at",
        "lease_id",
        "res",
        "retriable",
        "worker",
    )

    def __init__(
        self, lease_id: int, worker: WorkerHandle, res: dict[str, float], conn: rpc.Connection
    ) -> None:
        self.lease_id = lease_id
        self.worker = worker
        self.res = res
        self.conn = conn
        self.blocked = False
        self.gpus: list[tuple[int, float]] = []
        self.actor: bytes | None = None
        self.retriable = False
        self.granted_at = time.monotonic()

"""Worker leases for normal tasks: a scheduling class (its queue, its leases, its
lease requests in flight), a lease, and a lease's life after the raylet's answer:
granted (spills already followed, raylet_clients.py), connected, returned when idle,
or lost. The task submitter queues and dispatches over them (task_submitter.py).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

from aioray._private.rpc import rpc
from aioray._private.wire.schema import LeaseReply, RuntimeEnv, Strategy
from aioray._private.wire.task_spec import TaskEntry
from aioray.exceptions import (
    LocalRayletDiedError,
    RaySystemError,
    RuntimeEnvSetupError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
)

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import LeasesHost


class Lease:
    """A worker leased from a raylet for one scheduling class."""

    __slots__ = (
        "cls",
        "conn",
        "gpus",
        "inflight",
        "lease_id",
        "linger",
        "oom",
        "raylet",
        "unknown",
        "worker_id",
    )

    def __init__(
        self,
        cls: SchedulingClass,
        lease_id: int,
        worker_id: bytes,
        conn: rpc.Connection,
        raylet: rpc.Connection,
    ) -> None:
        self.cls = cls
        self.raylet = raylet  # the raylet that granted it (spilled leases: another node's)
        self.lease_id = lease_id
        self.worker_id = worker_id
        self.conn = conn
        self.inflight = 0
        self.unknown = 0  # tasks in flight not known to be tiny: nothing may queue behind
        self.gpus: list[int] = []
        self.linger: asyncio.TimerHandle | None = None
        self.oom: str | None = None  # why the memory monitor killed the worker

    def __repr__(self) -> str:
        return f"<Lease {self.lease_id} worker={self.worker_id.hex()[:8]} inflight={self.inflight}>"


class SchedulingClass:
    __slots__ = ("env", "key", "leases", "pending_leases", "queue", "resources", "strategy")

    def __init__(
        self,
        key: tuple[object, ...],
        resources: dict[str, float],
        env: RuntimeEnv | None,
        strategy: Strategy = None,
    ) -> None:
        self.key = key
        self.resources = resources
        self.env = env
        self.strategy = strategy
        self.queue: collections.deque[TaskEntry] = collections.deque()
        self.leases: list[Lease] = []
        self.pending_leases = 0


class Leases:
    """What happens to a lease after the raylet answered: the task submitter's
    ``dispatch`` runs when a class gains a lease (or lost the chance of one), and
    ``fail`` stores the error of each queued task a refused request fails."""

    def __init__(
        self,
        cw: LeasesHost,
        dispatch: Callable[[SchedulingClass], None],
        fail: Callable[[TaskEntry, BaseException], None],
    ) -> None:
        self.cw = cw
        self.dispatch = dispatch
        self.fail = fail

    def granted(
        self, cls: SchedulingClass, raylet: rpc.Connection, reply: LeaseReply | BaseException
    ) -> None:
        """The final answer to a lease request (spills already followed, raylet_clients.py)."""
        cls.pending_leases -= 1
        if isinstance(reply, BaseException):
            if self.cw.closing:
                return
            if isinstance(reply, ConnectionError) and raylet is self.cw.raylet:
                self._fail_queue(cls, LocalRayletDiedError())  # as Ray: LOCAL_RAYLET_DIED
            else:
                self._fail_queue(cls, RaySystemError(f"worker lease failed: {reply}"))
            return
        if "error" in reply:
            error: type[Exception] = TaskUnschedulableError
            if reply.get("pg_removed"):
                error = TaskPlacementGroupRemoved
            elif reply.get("runtime_env_setup_failed"):
                error = RuntimeEnvSetupError
            self._fail_queue(cls, error(reply["error"]))
            return
        host, port = reply["addr"]
        self.cw.spawn(
            self._connect(
                cls, raylet, reply["lid"], reply["wid"], host, port, reply.get("gpus", [])
            )
        )

    async def _connect(
        self,
        cls: SchedulingClass,
        raylet: rpc.Connection,
        lease_id: int,
        worker_id: bytes,
        host: str,
        port: int,
        gpus: list[int],
    ) -> None:
        try:
            conn = await self.cw.connect_peer(host, port)
        except ConnectionError:
            if not raylet.is_closed:
                raylet.notify("return_lease", [lease_id, True])
            self.dispatch(cls)
            return
        lease = Lease(cls, lease_id, worker_id, conn, raylet)
        lease.gpus = gpus
        cls.leases.append(lease)
        self.dispatch(cls)

    def give_back(self, lease: Lease) -> None:
        """An idle lease lingered long enough: return it to its raylet."""
        lease.linger = None
        if lease.inflight or lease not in lease.cls.leases:
            return
        lease.cls.leases.remove(lease)
        if not lease.raylet.is_closed:
            lease.raylet.notify("return_lease", [lease.lease_id, False])

    def lost(self, lease: Lease) -> None:
        """The leased worker's connection dropped: forget the lease."""
        if lease in lease.cls.leases:
            lease.cls.leases.remove(lease)
        if lease.linger is not None:
            lease.linger.cancel()

    def _fail_queue(self, cls: SchedulingClass, exc: BaseException) -> None:
        while cls.queue:
            self.fail(cls.queue.popleft(), exc)

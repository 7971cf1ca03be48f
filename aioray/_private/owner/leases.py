"""Worker leases for normal tasks: a scheduling class (its queue, its leases, its
lease requests in flight), a lease, and a lease's life after the raylet's answer:
granted (spills already followed, raylet_clients.py), connected, parked when idle,
returned when idle long enough, or lost. The task submitter queues and dispatches
over them (task_submitter.py).

Parked leases are shared with caller threads, without a lock. A lease the loop leaves
idle with nothing queued is *parked*: ``lease.parked`` set and the lease appended to
``cls.parked``. Whoever removes it from that list owns it: a caller thread with
``cls.parked.pop()`` (``claim``; atomic under the GIL, IndexError: none idle), which
then pushes its task on it itself (TaskSubmitter.push_now); the loop with
``cls.parked.remove(lease)`` or ``pop()`` (``unpark``, ``give_back``; ValueError: a
thread took it first) before it pushes on the lease or gives it back. So the loop's
rule: a lease with ``parked`` set is not the loop's to use or to count until the loop
claimed it, or until the claiming thread's push reaches the loop (its reply, or its
hand-over when the thread did not write it), which clears ``parked``.

A Ctrl-C can raise KeyboardInterrupt in the main thread between any two bytecodes: the
claim pops and stores the lease in one C call, the write stores its byte count in one
C call (``Connection.call_then_now``), and the thread's handler hands a claimed push it
did not write to the loop, so an interrupt never leaves a lease claimed for good.

The linger is one timer per idle spell, not one per task: parking stamps the time
(``idle_since``) and arms the timer only if none is armed; nothing cancels it when the
lease is used (a thread could not: uvloop's ``TimerHandle.cancel`` is not
thread-safe; and re-arming per task cost the loop a timer each round trip). When it
fires it gives the lease back only if the lease has been idle and parked for
LEASE_LINGER_S; parked for less, it is armed again for the rest; busy, or taken by a
thread, it is left alone and armed again when the lease is next parked.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aioray._private.rpc import rpc
from aioray._private.wire import config
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
        "idle_since",
        "inflight",
        "lease_id",
        "linger",
        "oom",
        "parked",
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
        self.parked = False  # (loop) idle and offered to caller threads: see above
        self.idle_since = 0.0  # (time.monotonic: threads park it too) when it was last parked

    def __repr__(self) -> str:
        return f"<Lease {self.lease_id} worker={self.worker_id.hex()[:8]} inflight={self.inflight}>"


class SchedulingClass:
    """Tasks of one resource shape, runtime env and strategy: their queue and leases."""

    __slots__ = (
        "env",
        "key",
        "leases",
        "parked",
        "pending_leases",
        "queue",
        "resources",
        "strategy",
    )

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
        self.parked: list[Lease] = []  # idle leases a caller thread may claim (above)
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
        conn.allow_thread_writes()  # (caller threads may push on it once it is parked,
        conn.allow_thread_reads()  # and read the reply themselves)
        cls.leases.append(lease)
        self.dispatch(cls)

    def park(self, lease: Lease) -> None:
        """(loop) Offer an idle lease (nothing queued) to caller threads; it goes back to
        its raylet once idle LEASE_LINGER_S."""
        loop = self.cw.loop
        lease.idle_since = time.monotonic()
        if lease.linger is None:
            lease.linger = loop.call_later(config.LEASE_LINGER_S, self.give_back, lease)
        lease.parked = True
        lease.conn.pause_reads()  # (lent: the claimer reads its reply, rpc/thread_reads.py)
        lease.cls.parked.append(lease)

    def parked_by_thread(self, lease: Lease) -> None:
        """(loop) A caller thread that read its reply itself parked the lease again, and
        stamped when (owner/reply_reads.py): the linger armed if none is."""
        if lease.parked and lease.linger is None:
            lease.linger = self.cw.loop.call_later(config.LEASE_LINGER_S, self.give_back, lease)

    def unpark(self, cls: SchedulingClass) -> None:
        """(loop) Take back every parked lease no thread claimed (tasks are queued)."""
        parked = cls.parked
        while parked:
            try:
                lease = parked.pop()
            except IndexError:  # (a thread took the last one meanwhile)
                return
            lease.parked = False
            lease.conn.resume_reads()

    @staticmethod
    def claim(cls: SchedulingClass, claimed: list[Lease]) -> bool:
        """(a caller thread) Claim an idle lease of ``cls`` into ``claimed``; False if none.
        Popped and stored in one C call: an interrupt (Ctrl-C) raised right after it
        finds the lease in ``claimed``, never lost between the two."""
        try:
            claimed.extend(map(list.pop, (cls.parked,)))
        except IndexError:
            return False
        return True

    @staticmethod
    def settle(lease: Lease) -> None:
        """(loop) A push a thread made on the lease it claimed reached the loop: the
        lease is the loop's again, and so is its connection's reading."""
        lease.parked = False
        lease.conn.resume_reads()

    def give_back(self, lease: Lease) -> None:
        """(the linger) Return the lease to its raylet if it has been idle long enough."""
        lease.linger = None
        if lease.parked:
            try:
                lease.cls.parked.remove(lease)
            except ValueError:
                return  # a caller thread claimed it: armed again when next parked
            lease.parked = False
            left = lease.idle_since + config.LEASE_LINGER_S - time.monotonic()
            if left > 0:  # used since the timer was armed: idle for less
                lease.parked = True
                lease.cls.parked.append(lease)
                lease.linger = self.cw.loop.call_later(left, self.give_back, lease)
                return
        elif lease.inflight:
            return  # busy: armed again when next parked
        if lease not in lease.cls.leases:
            return
        lease.cls.leases.remove(lease)
        lease.conn.resume_reads()  # (the connection stays, for whatever comes next)
        if not lease.raylet.is_closed:
            lease.raylet.notify("return_lease", [lease.lease_id, False])

    def lost(self, lease: Lease) -> None:
        """The leased worker's connection dropped: forget the lease."""
        if lease in lease.cls.leases:
            lease.cls.leases.remove(lease)
        if lease.parked:
            try:
                lease.cls.parked.remove(lease)  # (a thread that takes it first finds
            except ValueError:  # the connection closed and hands its push to the loop)
                pass
        if lease.linger is not None:
            lease.linger.cancel()

    def _fail_queue(self, cls: SchedulingClass, exc: BaseException) -> None:
        while cls.queue:
            self.fail(cls.queue.popleft(), exc)

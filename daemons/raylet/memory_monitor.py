"""The raylet's memory monitor: kill one worker before the node runs out of memory.

This is Ray's out-of-memory prevention. Left alone, a node that runs out of memory
meets the kernel's OOM killer, which may pick the raylet or the driver and takes
the whole node down. Instead, every refresh period (AIORAY_MEMORY_MONITOR_REFRESH_MS,
0 disables it):

1. Read the node's memory use: total minus available, or the cgroup's usage
   (less its inactive file cache) when a cgroup limit is below the machine's RAM.
   Shared-memory objects count too: they are memory the node cannot reclaim.
2. Above the threshold (AIORAY_MEMORY_USAGE_THRESHOLD, a fraction), pick a victim
   among the leased workers with ``choose_victim``: the most recently granted
   lease whose task can be retried, else the most recently granted one. Killing
   the newest work first loses the least progress. A lease's retriability is that
   of the task it was requested for (the request carries it); the owner decides
   the actual outcome from the task it really had in flight.
3. Tell the lease's owner why, on the connection the lease was requested on, and
   wait (bounded) for its acknowledgement. When its connection to the worker then
   drops, the owner knows it was an OOM kill: the task retries while
   ``max_retries`` allows, else fails with OutOfMemoryError carrying this
   message. An actor's worker dies with the message as its death reason, which
   the GCS puts into the actor's ActorDiedError.
4. SIGKILL the worker. No other kill happens until that worker's death has been
   seen and one more refresh period has passed, so one pressure spike costs one
   worker, not one per reading taken while the memory is being given back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Lease, Raylet
    from aioray.daemons.raylet.worker_pool import WorkerHandle

logger = logging.getLogger(__name__)

# How long the owner may take to acknowledge the notice before the kill goes ahead.
OWNER_ACK_S = 1.0
# How long a kill may take to show up as the worker's death before the monitor
# stops waiting for it and may pick again.
DEATH_WAIT_S = 10.0

_GB = 1024**3


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory in use and the limit it counts against, in bytes."""

    used: int
    total: int

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


def read_memory() -> MemorySnapshot:
    """The node's memory use: the cgroup's when its limit is below the machine's RAM."""
    vm = psutil.virtual_memory()
    node = MemorySnapshot(vm.total - vm.available, vm.total)
    group = _cgroup_memory()
    if group is not None and 0 < group.total < node.total:
        return group
    return node


def _cgroup_memory() -> MemorySnapshot | None:
    # cgroup v2, then v1; usage less the inactive page cache, which the kernel
    # reclaims before it would kill anything (Ray counts it the same way).
    for limit_f, usage_f, stat_f, inactive_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
            "memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        try:
            limit_s = _read(limit_f)
            if limit_s == "max":
                return None
            usage = int(_read(usage_f))
            inactive = 0
            for line in _read(stat_f).splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
            return MemorySnapshot(max(0, usage - inactive), int(limit_s))
        except (OSError, ValueError):
            continue
    return None


def _read(name: str) -> str:
    with open(os.path.join("/sys/fs/cgroup", name)) as f:
        return f.read().strip()


@dataclass(frozen=True)
class Candidate:
    """A leased worker the monitor could kill."""

    lease_id: int
    retriable: bool
    granted_at: float


def choose_victim(candidates: Iterable[Candidate]) -> Candidate | None:
    """Ray's policy: the newest retriable lease first, then the newest non-retriable one."""
    return max(candidates, key=lambda c: (c.retriable, c.granted_at), default=None)


class MemoryMonitor:
    """Watches the node's memory from the raylet's loop and kills one worker at a time."""

    def __init__(
        self,
        raylet: Raylet,
        threshold: float,
        refresh_s: float,
        read: Callable[[], MemorySnapshot] = read_memory,
    ) -> None:
        self.raylet = raylet
        self.threshold = threshold
        self.refresh_s = refresh_s
        self.kills = 0
        self._read = read
        self._handle: asyncio.TimerHandle | None = None
        self._victim: bytes | None = None  # worker id of the kill in progress
        self._victim_deadline = 0.0
        self._quiet_until = 0.0
        self._reasons: dict[bytes, str] = {}  # worker id -> why it was killed
        self._warned = False
        self._tasks: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return (
            f"<MemoryMonitor threshold={self.threshold} refresh={self.refresh_s}s "
            f"kills={self.kills}>"
        )

    def start(self) -> None:
        if self.refresh_s > 0:
            self._handle = asyncio.get_running_loop().call_later(self.refresh_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def worker_dead(self, w: WorkerHandle) -> str | None:
        """A worker exited: why, if this monitor killed it. Ends the kill in progress."""
        if w.worker_id == self._victim:
            self._victim = None
            self._quiet_until = time.monotonic() + self.refresh_s
        return self._reasons.pop(w.worker_id, None)

    def _tick(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.refresh_s, self._tick)
        now = time.monotonic()
        if self._victim is not None:
            if now < self._victim_deadline:
                return
            logger.warning("the worker killed for memory pressure has not exited yet")
            self._victim = None
        if now < self._quiet_until:
            return
        try:
            snap = self._read()
        except Exception:  # a reading must never stop the raylet
            logger.exception("cannot read the node's memory usage")
            return
        if snap.fraction <= self.threshold:
            self._warned = False
            return
        leases = self.raylet.leases
        victim = choose_victim(
            Candidate(lid, lease.retriable and lease.actor is None, lease.granted_at)
            for lid, lease in leases.items()
        )
        if victim is None:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "memory use %s exceeds the threshold %.2f, but no leased worker "
                    "can be killed to relieve it",
                    _usage(snap),
                    self.threshold,
                )
            return
        lease = leases[victim.lease_id]
        self._victim = lease.worker.worker_id
        self._victim_deadline = now + DEATH_WAIT_S
        fut = asyncio.ensure_future(self._kill(lease, snap, victim.retriable))
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    async def _kill(self, lease: Lease, snap: MemorySnapshot, retriable: bool) -> None:
        w = lease.worker
        why = self.describe(w, snap, retriable, actor=lease.actor is not None)
        logger.warning("killing worker pid %d (lease %d): %s", w.pid, lease.lease_id, why)
        if lease.actor is None and not lease.conn.is_closed:
            try:
                await asyncio.wait_for(
                    lease.conn.call("worker_oom_killed", [lease.lease_id, why]), OWNER_ACK_S
                )
            except Exception as e:  # an owner that cannot answer still loses the worker
                logger.info("the owner of lease %d did not acknowledge: %r", lease.lease_id, e)
        if w.lease_id != lease.lease_id:
            # The lease ended while we waited: the worker went back to the pool
            # (perhaps to another owner, who was not told). Measure again instead.
            if self._victim == w.worker_id:
                self._victim = None
            return
        self._reasons[w.worker_id] = why
        self.kills += 1
        try:
            os.kill(w.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def describe(
        self, w: WorkerHandle, snap: MemorySnapshot, retriable: bool, actor: bool = False
    ) -> str:
        """Ray's wording: where, how much, against which threshold, and why this worker."""
        r = self.raylet
        if actor:
            which = "work: an actor (no task that could be retried was running)"
        elif retriable:
            which = "task that could be retried"
        else:
            which = "task (none could be retried)"
        return (
            f"Memory on the node (IP: {r.node_ip}, ID: {r.node_id.hex()}) where the worker "
            f"(pid={w.pid}, worker ID: {w.worker_id.hex()}) was running was {_usage(snap)}, "
            f"which exceeds the memory usage threshold of {self.threshold:g}. aioray killed "
            f"this worker because it ran the most recently scheduled {which}. Reduce the "
            f"memory each task uses or how many run at once (e.g. request more CPUs or "
            f"`memory` per task), or set AIORAY_MEMORY_USAGE_THRESHOLD."
        )


def _usage(snap: MemorySnapshot) -> str:
    return f"{snap.used / _GB:.2f}GB / {snap.total / _GB:.2f}GB ({snap.fraction:.3f})"

"""What each of the CoreWorker's services needs of it, named as Protocols.

The CoreWorker builds its services with itself (``TaskSubmitter(self)``), but each
service's annotation names only the members it uses: reading a service tells what
it can touch, a test may hand it anything that has those members, and mypy checks
that the CoreWorker has them. Members a service assigns are attributes; those it
only reads are properties; the rest are methods. The core floor's services name
theirs in ``core/interfaces.py``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aioray._private.core.borrowing import Borrowing
    from aioray._private.core.lineage import Lineage
    from aioray._private.core.memory_store import MemoryStore, StoredObject
    from aioray._private.core.metrics_registry import TaskCounts
    from aioray._private.owner.core_worker import TaskContext
    from aioray._private.owner.lazy_posts import LazyPosts
    from aioray._private.owner.object_ref import ObjectRef
    from aioray._private.owner.streaming import StreamManager
    from aioray._private.owner.task_submitter import TaskSubmitter
    from aioray._private.rpc import rpc
    from aioray._private.wire.ids import IdGenerator
    from aioray._private.wire.protocol import Buffer
    from aioray._private.wire.schema import Address, LeaseInfeasible, PushReply, WorkerLog

# This process's task-event recorders (owner/task_events.py): the fixed rows, the first
# rows, and the rows with extras (plain values). None: events are off.
TaskEventRows = bytearray
TaskEventExtras = collections.deque[tuple[Any, ...]]


class Posts(Protocol):
    """Runs a call on the CoreWorker's loop, from any thread."""

    def post(self, fn: Callable[..., object], *args: object) -> None: ...


class PeerConnector(Protocol):
    """Opens (or reuses) the connection to another worker or owner; runs background work."""

    async def connect_peer(self, ip: str, port: int) -> rpc.Connection: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class PeersHost(Protocol):
    """What ``PeerConnections`` uses: the loop, and what a new connection serves and says."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def worker_id(self) -> bytes: ...
    @property
    def streams(self) -> StreamManager: ...
    @property
    def extra_handlers(self) -> dict[str, rpc.Handler]: ...


class RayletClientsHost(PeerConnector, Protocol):
    """What ``RayletClients`` uses: the local raylet, the handlers other raylets may call."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def raylet(self) -> rpc.Connection: ...
    @property
    def raylet_address(self) -> tuple[str, int]: ...
    @property
    def mode(self) -> str: ...
    @property
    def worker_id(self) -> bytes: ...
    @property
    def log_to_driver(self) -> bool: ...
    @property
    def closing(self) -> bool: ...
    @property
    def submitter(self) -> TaskSubmitter: ...

    async def gcs_connection(self) -> rpc.Connection: ...

    def handle_lease_infeasible(
        self, conn: rpc.Connection, body: LeaseInfeasible, _: list[Buffer]
    ) -> None:
        """``lease_infeasible`` from another raylet: the CoreWorker warns."""

    def handle_worker_log(self, conn: rpc.Connection, body: WorkerLog, _: list[Buffer]) -> None:
        """``worker_log`` from another raylet: the CoreWorker prints the lines."""

    def peers_on(self, ip: str) -> list[rpc.Connection]: ...


class LeasesHost(PeerConnector, Protocol):
    """What ``Leases`` uses: the loop, the local raylet, whether the process is closing."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def raylet(self) -> rpc.Connection: ...
    @property
    def closing(self) -> bool: ...


class SubmitterHost(RayletClientsHost, Posts, Protocol):
    """What ``TaskSubmitter`` uses (and its ``RayletClients``): objects, counts, borrowing,
    lineage, streams, the task events, and posts (a caller thread's push handed over)."""

    @property
    def memory_store(self) -> MemoryStore: ...
    @property
    def owned(self) -> set[bytes]: ...
    @property
    def borrowing(self) -> Borrowing: ...
    @property
    def lineage(self) -> Lineage: ...
    @property
    def streams(self) -> StreamManager: ...
    @property
    def task_events(self) -> TaskEventRows | None: ...
    @property
    def task_event_extras(self) -> TaskEventExtras | None: ...

    @property
    def closing(self) -> bool: ...

    def in_loop_thread(self) -> bool: ...

    def expect_logs(self, body: PushReply) -> None: ...

    def store_result(self, oid: bytes, obj: StoredObject) -> None: ...

    @property
    def lazy_posts(self) -> LazyPosts: ...


class ActorSubmitterHost(PeerConnector, Posts, Protocol):
    """What ``ActorSubmitter`` uses: the GCS (creation, the actor's state), the task
    submitter (dependencies, results), new task ids."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def closing(self) -> bool: ...
    @property
    def job_id(self) -> bytes: ...
    @property
    def ids(self) -> IdGenerator: ...
    @property
    def submitter(self) -> TaskSubmitter: ...
    @property
    def task_events(self) -> TaskEventRows | None: ...

    async def gcs_connection(self) -> rpc.Connection: ...

    def in_loop_thread(self) -> bool: ...

    @property
    def lazy_posts(self) -> LazyPosts: ...

    def expect_logs(self, body: PushReply) -> None: ...


class StreamsHost(Posts, Protocol):
    """What ``StreamManager`` (and its generators) use: where items are stored and freed."""

    @property
    def address(self) -> Address: ...
    @property
    def memory_store(self) -> MemoryStore: ...
    @property
    def owned(self) -> set[bytes]: ...
    @property
    def borrowing(self) -> Borrowing: ...

    def free_shm(self, oid: bytes, node_id: bytes | None = None) -> None: ...

    def free_unreferenced(self, oid: bytes) -> None: ...

    def release_contained(self, obj: StoredObject) -> None: ...


class OwnerServiceHost(PeerConnector, Protocol):
    """What ``OwnerService`` uses: the owned objects, borrowing and lineage."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def worker_id(self) -> bytes: ...
    @property
    def memory_store(self) -> MemoryStore: ...
    @property
    def owned(self) -> set[bytes]: ...
    @property
    def borrowing(self) -> Borrowing: ...
    @property
    def lineage(self) -> Lineage: ...

    def release_contained(self, obj: StoredObject) -> None: ...


class GcsClientHost(Protocol):
    """What ``GcsClient`` uses: who this process is, and its GCS connection (it sets it)."""

    gcs: rpc.Connection | None

    @property
    def gcs_address(self) -> tuple[str, int] | None: ...
    @property
    def mode(self) -> str: ...
    @property
    def worker_id(self) -> bytes: ...
    @property
    def job_id(self) -> bytes: ...
    @property
    def closing(self) -> bool: ...

    def handle_lease_infeasible(
        self, conn: rpc.Connection, body: LeaseInfeasible, _: list[Buffer]
    ) -> None:
        """``lease_infeasible`` from the GCS: the CoreWorker warns."""


class TaskEventsHost(Protocol):
    """What ``TaskEventBuffer`` uses: the GCS, who this process is, the recorders (it
    points them at its current buffers)."""

    task_events: TaskEventRows | None
    task_event_infos: bytearray | None
    task_event_extras: TaskEventExtras | None

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def gcs(self) -> rpc.Connection | None: ...
    @property
    def node_id(self) -> bytes: ...
    @property
    def worker_id(self) -> bytes: ...

    async def gcs_connection(self) -> rpc.Connection: ...


class StoreHost(Posts, Protocol):
    """What ``store_client`` uses: the raylet, this node's store, the room it last had."""

    store_room: int  # bytes free at the raylet's last answer
    pool_writer: Any  # store_client.PoolWriter, made on the first pooled put
    closing: bool

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def raylet(self) -> rpc.Connection: ...
    @property
    def node_id(self) -> bytes: ...
    @property
    def session_id(self) -> str: ...
    @property
    def store_capacity(self) -> int: ...

    def in_loop_thread(self) -> bool: ...

    def notify_sealed(
        self, oid: bytes, size: int, owner: bytes | None = None, ino: int = 0
    ) -> None: ...


class WaitHost(PeerConnector, Protocol):
    """What ``object_waits`` uses: the objects here, fetches from their owners."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def memory_store(self) -> MemoryStore: ...
    @property
    def owned(self) -> set[bytes]: ...
    @property
    def fetching(self) -> dict[bytes, asyncio.Future[StoredObject]]: ...

    def fetch(self, ref: ObjectRef) -> asyncio.Future[StoredObject]: ...

    def materialize(self, oid: bytes, obj: StoredObject, owner: Address | None = None) -> Any: ...


class BlockedGetsHost(WaitHost, Protocol):
    """What ``BlockedGets`` uses: ``object_waits``, the raylet it tells, the running
    task's events, and waiting from the caller's thread."""

    @property
    def raylet(self) -> rpc.Connection: ...
    @property
    def task_context(self) -> TaskContext: ...
    @property
    def task_events(self) -> TaskEventRows | None: ...
    @property
    def task_counts(self) -> TaskCounts | None: ...

    def run_sync(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any: ...

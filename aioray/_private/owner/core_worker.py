"""CoreWorker: the owner of everything its process creates.

Every driver and every worker runs one. Its event loop (a background thread in a
driver, the main thread in a worker) holds the connections, the reference counts,
the memory store and the task submitter; user code runs on other threads and
reaches the loop through ``post`` (fire-and-forget, batched: one cross-thread
wake-up however many calls queue behind it) or ``run_sync`` (wait for a result).

Hot paths avoid the loop altogether where they can: ``put`` of a small value
writes straight into the memory store; ``get`` of a value already there reads it
in the caller's thread; a large value is written to and read from shared memory
by the caller's thread itself.

Owner services (RPC, for borrowers elsewhere):
    get_object(oid)   -> the value inline, or where it lives; waits until it exists
    wait_object(oid)  -> when it exists, without its value
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aioray._private.core.borrowing import Borrowing, pairs_of
from aioray._private.core.lineage import Lineage
from aioray._private.core.memory_store import (
    MemoryStore,
    StoredObject,
    decode_object,
)
from aioray._private.core.metrics_registry import MetricsReporter, TaskCounts
from aioray._private.core.reference_counter import ReferenceCounter
from aioray._private.owner import (
    log_monitor,
    store_client,
    task_events,
    thread_waits,
)
from aioray._private.owner.actor_submitter import ActorSubmitter
from aioray._private.owner.blocked_gets import BlockedGets
from aioray._private.owner.gcs_client import GcsClient
from aioray._private.owner.lazy_posts import LazyPosts
from aioray._private.owner.lifecycle import Lifecycle
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.owner.owner_service import OwnerService
from aioray._private.owner.peer_connections import PeerConnections
from aioray._private.owner.streaming import StreamManager
from aioray._private.owner.task_submitter import TaskSubmitter
from aioray._private.rpc import rpc
from aioray._private.rpc.loop import result_interruptibly
from aioray._private.wire import config, ids, serialization
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    Address,
    LeaseInfeasible,
    PushReply,
    RayletHelloReply,
    WorkerLog,
)
from aioray.exceptions import (
    GetTimeoutError,
    ObjectFetchTimedOutError,
    ObjectFreedError,
    ObjectLostError,
    OwnerDiedError,
    RayTaskError,
)

logger = logging.getLogger("aioray")

DRIVER = "driver"
WORKER = "worker"


class TaskContext(threading.local):
    """What the current thread runs: its task id (None outside a task), read on
    every submission as the new task's parent, so a class default (no exception)."""

    task_id: bytes | None = None


def release_gil() -> None:
    """Let a thread waiting for the GIL take it: ``sleep`` releases it, even for 0 s."""
    time.sleep(0)


class CoreWorker:
    def __init__(
        self,
        mode: str,
        node_ip: str,
        raylet_address: tuple[str, int],
        gcs_address: tuple[str, int] | None,
        worker_id: bytes | None = None,
        job_id: bytes = b"\0\0\0\0",
        namespace: str = "",
    ) -> None:
        self.mode = mode
        self.node_ip = node_ip
        self.raylet_address = raylet_address
        self.gcs_address = gcs_address
        self.worker_id = worker_id or ids.random_id(16)
        self.job_id = job_id
        self.namespace = namespace
        self.node_id = b""
        self.session_id = ""
        self.pool_writer: Any = None  # store_client.PoolWriter, made on the first large put
        self.store_capacity = self.store_room = 0  # set by the raylet's hello (lifecycle.py)
        self.canceled_tasks: set[bytes] = set()  # running tasks asked to stop
        self.ids = ids.IdGenerator(self.worker_id)
        self.refs: ReferenceCounter = ReferenceCounter(self._out_of_scope)
        self.borrowing: Borrowing = Borrowing(self)
        self.lineage: Lineage = Lineage(self)
        self.owner_service: OwnerService = OwnerService(self)
        self.memory_store: MemoryStore = MemoryStore()
        self.owned: set[bytes] = set()
        self.address: tuple[str, int, bytes] = (node_ip, 0, self.worker_id)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.raylet: rpc.Connection = None  # type: ignore[assignment]
        self.metrics_reporter: MetricsReporter | None = None  # user metrics to the raylet
        self.gcs: rpc.Connection | None = None
        self.server: rpc.Server | None = None
        self.submitter: TaskSubmitter = TaskSubmitter(self)
        self.actors: ActorSubmitter = ActorSubmitter(self)
        self.streams: StreamManager = StreamManager(self)
        self.loop_fetchers: dict[Any, Any] = {}  # caller loop -> async_api.LoopFetcher
        self.actor_id: bytes | None = None  # set in a worker that hosts an actor
        self.gcs_client: GcsClient = GcsClient(self)
        self.extra_handlers: dict[str, rpc.Handler] = {}
        self.task_context = TaskContext()
        self._loop_thread_id = -1
        self._posted: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._post_scheduled = False
        # The loop holds its tasks weakly: one awaiting a future nothing else holds would
        # be destroyed pending. Background tasks live here until they end (or stop()).
        self._background: set[asyncio.Task[Any]] = set()
        self.lazy_posts = LazyPosts(self)  # posts that need not wake the loop
        self._submitted = itertools.count(1)  # tasks and actor calls posted (post_task)
        self._peers: dict[tuple[str, int], rpc.Connection] = {}  # open, by address
        # Bound to the service's own methods: a caller's call goes straight to them.
        self.peer_connections = PeerConnections(self, self._peers)
        self.connect_peer = self.peer_connections.connect
        self.peer = self.peer_connections.get
        self.peers_on = self.peer_connections.on
        self.lifecycle = Lifecycle(self)
        # Objects being fetched from their owners (shared by every get and wait of them).
        self.fetching: dict[bytes, asyncio.Future[StoredObject]] = {}
        self._free_shm: list[tuple[bytes, bytes | None]] = []
        self.blocked_gets = BlockedGets(self)  # a worker's gets lend its CPUs after a while
        self.task_counts: TaskCounts | None = None  # a worker's executor's, for ray_tasks
        self._blocking: dict[int, concurrent.futures.Future[Any]] = {}
        self._warned: set[str] = set()
        self.closing = False
        self.log_to_driver = True
        self.logs = log_monitor.LogSync()
        # Task state transitions, appended on the task path (None: events are off):
        # fixed rows (task_events.ROW), first rows (INFO) and rows with an error.
        self.task_events: bytearray | None = None
        self.task_event_infos: bytearray | None = None
        self.task_event_extras: collections.deque[tuple[Any, ...]] | None = None
        self.event_buffer = task_events.TaskEventBuffer(self)

    def __repr__(self) -> str:
        return (
            f"<CoreWorker {self.mode} {self.worker_id.hex()[:8]} owned={len(self.owned)} "
            f"objects={len(self.memory_store)} tasks={len(self.submitter.tasks)}>"
        )

    # -- lifecycle (lifecycle.py) -----------------------------------------------------
    async def start(self) -> RayletHelloReply:
        """Start the owner's RPC server and register with the local raylet."""
        self.loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        return await self.lifecycle.start()

    async def gcs_connection(self) -> rpc.Connection:
        """The GCS connection: opened on first use in a worker, reopened after a restart."""
        return await self.gcs_client.connection()

    def actor_gpu_ids(self) -> list[int]:
        host = self.extra_handlers.get("create_actor")
        return list(getattr(getattr(host, "__self__", None), "gpus", []))

    def cancel(self, object_id: bytes, force: bool, recursive: bool = True) -> None:
        """(loop) Cancel the normal task or actor call that produces ``object_id``."""
        if ids.task_id_of(object_id) in self.submitter.tasks:
            self.submitter.cancel(object_id, force, recursive)
        else:
            self.actors.cancel(object_id, force)

    def start_in_thread(self, timeout: float = config.DAEMON_START_TIMEOUT_S) -> RayletHelloReply:
        """Run the loop in a daemon thread (driver mode) and start the CoreWorker on it."""
        return self.lifecycle.start_in_thread(timeout)

    async def stop(self) -> None:
        self.closing = True
        store_client.close(self)
        self.event_buffer.stop()
        self.submitter.shutdown()
        self._flush_frees()
        if self.metrics_reporter is not None:
            self.metrics_reporter.close()
        if self.server is not None:
            await self.server.stop()
        for conn in [self.raylet, self.gcs, *self._peers.values()]:
            if conn is not None:
                conn.close()
        self._peers.clear()
        background = [t for t in self._background if t is not asyncio.current_task()]
        for task in background:
            task.cancel()
        if background:  # (their connections are closed: they end at their next await)
            await asyncio.wait(background, timeout=1.0)

    def stop_thread(self) -> None:
        self.lifecycle.stop_thread()

    # -- crossing threads ----------------------------------------------------------
    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread_id

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon; calls from one thread keep their order."""
        self._posted.append((fn, args))
        if not self._post_scheduled:
            self._post_scheduled = True
            if self.in_loop_thread():
                self.loop.call_soon(self.drain_posted)
            else:
                try:
                    self.loop.call_soon_threadsafe(self.drain_posted)
                except RuntimeError:  # loop closed during shutdown
                    pass

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """(loop) Run ``coro`` in the background, held until it ends; cancelled by stop()."""
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def post_quietly(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` with the posts without waking the loop: it runs with the next
        drain (``LazyPosts`` bounds the wait)."""
        self._posted.append((fn, args))

    def post_task(self, submit: Callable[[Any], None], task: Any) -> None:
        """``post`` a task or actor call a caller thread submits.

        Every SUBMIT_YIELD_EVERY of them the caller releases the GIL once. A thread
        submitting in a tight loop otherwise keeps it for whole switch intervals (5 ms)
        while this loop, which pushes the tasks and stores their results, waits for it:
        workers run dry, and the results of the burst all arrive after it, as pending
        waits that cost more than finding them stored."""
        self.post(submit, task)
        if not next(self._submitted) % config.SUBMIT_YIELD_EVERY and not self.in_loop_thread():
            release_gil()

    @property
    def posts_waiting(self) -> bool:
        """(any thread) Posted calls the loop has not taken yet: a lazy ``read_check``
        among them means a reply a caller thread pushed for may wait unread
        (owner/reply_reads.py)."""
        return bool(self._posted)

    def drain_posted(self) -> None:
        """(loop) Run the posted calls, in order."""
        self._post_scheduled = False
        posted = self._posted
        while posted:
            fn, args = posted.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("posted call %s failed", getattr(fn, "__name__", fn))

    def run_sync(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run a coroutine on the loop from another thread and wait for its result."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("blocking aioray call on the CoreWorker's own event loop")
        if self.loop is None or not self.loop.is_running():
            # (a loop stopped by shutdown would never start it: closed here, not left for
            # the collector to warn "coroutine ... was never awaited")
            coro.close()
            raise RuntimeError("aioray's CoreWorker is not running (aioray.shutdown() ran?)")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        me = threading.get_ident()
        self._blocking[me] = fut
        try:
            return result_interruptibly(fut, timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise GetTimeoutError(
                f"Get timed out: some object(s) not ready after {timeout}s."
            ) from None
        except BaseException:
            fut.cancel()
            raise
        finally:
            self._blocking.pop(me, None)

    def interrupt_blocking(self, thread_id: int) -> None:
        """Wake a thread blocked in run_sync (so a cancel raised in it takes effect)."""
        fut = self._blocking.get(thread_id)
        if fut is not None:
            fut.cancel()

    # -- objects: put ----------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` as a new object owned by this process (any thread)."""
        so = serialization.serialize(value)
        return self.put_serialized(so)

    def put_serialized(self, so: serialization.SerializedObject) -> ObjectRef:
        oid = ids.object_id(self.ids.task_id(self.job_id), 0)
        self.owned.add(oid)
        ref = ObjectRef(oid, self.address)
        obj = self.store_serialized(oid, so, copy=True)
        if so.contained_refs:  # the new object holds the refs inside it
            obj.contained = pairs_of(so.contained_refs)
            self.refs.add_contained(p[0] for p in obj.contained)
        self.memory_store.put(oid, obj)
        return ref

    def store_serialized(
        self, oid: bytes, so: serialization.SerializedObject, copy: bool
    ) -> StoredObject:
        """Keep small values inline; write large ones to this node's shm store."""
        size = so.total_bytes
        if size < config.MAX_INLINE_BYTES:
            # Copy buffers that view the caller's memory: the object is immutable.
            bufs: list[Buffer] = [bytes(b) for b in so.buffers] if copy else so.buffers
            return StoredObject(so.data, bufs, is_error=so.is_error, size=size)
        size = store_client.write_object(self, oid, so.data, so.buffers)
        return StoredObject(node_id=self.node_id, size=size, is_error=so.is_error)

    def notify_sealed(
        self, oid: bytes, size: int, owner: bytes | None = None, ino: int = 0
    ) -> None:
        """(loop) Tell the raylet an object's segment is written (store_client); ``ino``:
        the pooled segment it was written into, if any."""
        if not self.raylet.is_closed:
            self.raylet.notify("object_sealed", [oid, size, owner or self.worker_id, ino])

    # -- objects: get ------------------------------------------------------------------
    def get(self, refs: Sequence[ObjectRef], timeout: float | None = None) -> list[Any]:
        """Values of ``refs`` in order (caller's thread); raises the first error."""
        store = self.memory_store
        if len(refs) == 1:  # (a sync round trip: no list built and walked three times)
            ref = refs[0]
            obj = store.get(ref._id) or thread_waits.wait_missing(self, [ref], timeout)[ref._id]
            return [self.materialize(ref._id, obj, ref._owner)]
        objs: list[StoredObject | None] = [store.get(r._id) for r in refs]
        if None in objs:
            found = thread_waits.wait_missing(
                self, [r for r, o in zip(refs, objs, strict=True) if o is None], timeout
            )
            objs = [o if o is not None else found[r._id] for r, o in zip(refs, objs, strict=True)]
        if len(objs) > 1:  # objects on other nodes: pulled together, not one by one
            store_client.prefetch(self, ((r._id, o) for r, o in zip(refs, objs, strict=True)))  # type: ignore[misc]
        return [self.materialize(r._id, o, r._owner) for r, o in zip(refs, objs, strict=True)]  # type: ignore[arg-type]

    def fetch(self, ref: ObjectRef) -> asyncio.Future[StoredObject]:
        """(loop) A future for the object: from this process, or from its owner."""
        oid = ref._id
        obj = self.memory_store.get(oid)
        if obj is not None or oid in self.owned:
            return self.memory_store.wait_for(oid, self.loop)
        pending = self.fetching.get(oid)
        if pending is None:
            pending = self.loop.create_task(self.fetch_from_owner(ref))
            self.fetching[oid] = pending
            pending.add_done_callback(lambda _: self.fetching.pop(oid, None))
        return pending

    async def fetch_from_owner(self, ref: ObjectRef, keep: bool = False) -> StoredObject:
        """(loop) Ask ``ref``'s owner for the object (``get_object``); cache it while the
        ref is held here, and hold the refs inside it (``keep``: the caller holds them)."""
        oid, owner = ref._id, ref._owner
        if owner is None or owner[2] == self.worker_id:
            raise ObjectFreedError(oid.hex())
        try:
            conn = await self.connect_peer(owner[0], owner[1])
            body, bufs = await conn.call_full("get_object", oid)
        except ConnectionError:
            raise OwnerDiedError(
                oid.hex(), f"The owner of object {oid.hex()} ({owner[0]}:{owner[1]}) has died."
            ) from None
        obj = decode_object(oid, body, bufs)
        if obj.contained:  # the owner lent us holds on the refs inside
            self.borrowing.hold(obj.contained)
        if self.refs.local_count(oid) > 0:
            self.memory_store.put(oid, obj)  # cache while this process holds the ref
        elif obj.contained and not keep:  # nobody wants it any more
            self.loop.call_soon(self.release_contained, obj)
        return obj

    def release_contained(self, obj: StoredObject) -> None:
        """A copy of an object is dropped: so are its holds on the refs inside."""
        if obj.contained:
            pairs, obj.contained = obj.contained, None
            self.refs.remove_contained(p[0] for p in pairs)

    def materialize(self, oid: bytes, obj: StoredObject, owner: Address | None = None) -> Any:
        """Deserialize a stored object in the caller's thread; raise it if it is an error.

        A lost shared-memory copy is rebuilt (lineage.py) by its owner, ``owner``."""
        if obj.in_shm:
            try:
                data, bufs = self.read_shm(oid, obj)
            except ObjectFetchTimedOutError:
                raise  # final, as in Ray: its node is alive, only silent
            except ObjectLostError as lost:
                if self.in_loop_thread() or self.closing:
                    raise
                try:
                    obj = self.run_sync(self.owner_service.recover(oid, owner, obj.node_id))
                except ObjectLostError as e:  # both reasons: why it is gone, why not rebuilt
                    raise type(e)(oid.hex(), f"{lost} {e}") from None
                data, bufs = self.read_shm(oid, obj)
        else:
            assert obj.data is not None
            data, bufs = obj.data, obj.buffers  # type: ignore[assignment]
        try:
            value = serialization.deserialize(data, bufs)
        except Exception as e:
            raise serialization.unreadable(e) from e
        if obj.is_error:
            if isinstance(value, RayTaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def read_shm(self, oid: bytes, obj: StoredObject) -> tuple[Any, list[Any]]:
        """Map (restore, or pull from its node) a shared-memory object; ObjectLostError
        if no copy is left to read."""
        return store_client.read_object(self, oid, obj.node_id)

    # -- freeing ----------------------------------------------------------------------------
    def _out_of_scope(self, oid: bytes) -> None:
        if self.loop is not None and not self.closing:
            self.lazy_posts.free(oid)

    def free_unreferenced(self, oid: bytes) -> None:
        """(loop) Free an owned object that no ObjectRef in this process names."""
        self._free(oid)

    def _free(self, oid: bytes) -> None:
        if self.refs.in_scope(oid):
            return  # referenced again since (e.g. a ref unpickled from a value)
        obj = self.memory_store.delete(oid)
        if oid in self.owned:
            self.owned.discard(oid)
            if self.memory_store.has_waiters(oid):  # (an error object costs ~3 us)
                self.memory_store.fail_waiters(oid, ObjectFreedError(oid.hex()))
            if obj is not None and obj.in_shm:
                self.free_shm(oid, obj.node_id)
            self.lineage.release(oid)
        else:
            self.borrowing.release(oid)
        if obj is not None and obj.contained:
            self.release_contained(obj)

    def free_shm(self, oid: bytes, node_id: bytes | None = None) -> None:
        """(loop) Free an object in ``node_id``'s store (default here) and its copies."""
        if not self._free_shm:
            self.loop.call_soon(self._flush_frees)
        self._free_shm.append((oid, node_id))

    def _flush_frees(self) -> None:
        frees, self._free_shm = self._free_shm, []
        if frees and self.raylet is not None and not self.raylet.is_closed:
            store_client.send_frees(self, frees)

    def store_result(self, oid: bytes, obj: StoredObject) -> None:
        """(loop) A task's return value arrived; keep it only if still referenced."""
        if obj.contained:  # the worker lent us holds on the refs inside
            self.borrowing.hold(obj.contained)
        if self.refs.in_scope(oid):
            self.memory_store.put(oid, obj)
        else:
            self.owned.discard(oid)
            if obj.in_shm:
                self.free_shm(oid, obj.node_id)
            self.release_contained(obj)

    def handle_worker_log(self, conn: rpc.Connection, body: WorkerLog, _: list[Buffer]) -> None:
        """``worker_log`` [pid, ip, stream, lines, name?, sync?] (notice, from a raylet): a
        worker's printed lines, for the driver to echo (log_monitor.LogSync)."""
        self.logs.received(body)

    def expect_logs(self, body: PushReply) -> None:
        """(loop) A reply says its task printed: get waits for those lines."""
        if self.mode == DRIVER and self.log_to_driver:
            self.logs.expect(body.get("o"))

    def wait_for_logs(self) -> None:
        self.logs.wait()

    def handle_lease_infeasible(
        self, conn: rpc.Connection, body: LeaseInfeasible, _: list[Buffer]
    ) -> None:
        """``lease_infeasible`` {res, total} (notice, from a raylet or the GCS): no node can ever
        fit this resource shape; warn once per shape."""
        shape = str({k: v for k, v in sorted(body["res"].items())})
        if shape in self._warned:
            return
        self._warned.add(shape)
        logger.warning(
            "The following resource request cannot be scheduled right now: %s. "
            "No node in the cluster has these resources (cluster total: %s); "
            "the task stays pending until a node that can run it joins.",
            shape,
            body.get("total"),
        )

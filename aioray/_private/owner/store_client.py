"""A process's side of the node object store's capacity: room before writing,
restore before reading, and the one place that declares an object lost.

Writing a large object (put, task return) asks the local raylet for room
(``create_object``) while the segment is being written: the raylet answers at
once when the object fits, or after evicting cached copies and spilling older
objects to disk, and the writer waits for that answer before sealing. A writer
first tries to claim a pre-faulted segment from the node's pool (``shm_pool``),
whose room the pool already holds, and keeps the segments it wrote twice mapped,
so writing into them again is a plain copy. Small objects never come here.
Reading needs no round trip unless the segment is gone: then the raylet restores
it from its spill file (``restore_object``), or, for an object whose primary copy
is on another node, pulls a copy into this node's store (``pull_object``), and the
read is tried again. The raylet's side is
``daemons/raylet/store_service.py`` and ``daemons/raylet/object_transfer.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from aioray._private.rpc.loop import result_interruptibly
from aioray._private.wire import config, object_store, shm_pool
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import CreateObjectReply, FreeObjectsAt, RestoreReply
from aioray.exceptions import (
    ObjectFetchTimedOutError,
    ObjectLostError,
    ObjectStoreFullError,
    OutOfDiskError,
    RayError,
    RaySystemError,
)

if TYPE_CHECKING:
    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.interfaces import StoreHost

# A restored object can be spilled again before this reader maps it (when others
# keep the store full); after this many restores the reader gives up.
RESTORE_ATTEMPTS = 8
# Pooled segments a process keeps mapped to write into again (shm_pool.SegmentMaps).
WRITER_MAPS_BYTES = int(config.env_float("SHM_POOL_WRITER_MAPS_BYTES", 2 << 30))
STALE_CHECK_S = 2.0  # how often mapped segments the raylet dropped are let go

_ERRORS: dict[str, type[RayError]] = {
    "ObjectStoreFullError": ObjectStoreFullError,
    "OutOfDiskError": OutOfDiskError,
    "ObjectLostError": ObjectLostError,
    "ObjectFetchTimedOutError": ObjectFetchTimedOutError,
}


def _nbytes(b: Buffer) -> int:
    return b.nbytes if isinstance(b, memoryview) else len(b)


def write_object(
    cw: StoreHost, oid: bytes, data: Buffer, buffers: list[Buffer], owner: bytes | None = None
) -> int:
    """Get room in this node's store, write the segment, announce it; return its size.

    The request for room and the write overlap, and the writer waits for the
    answer only when the raylet's previous answer left less than twice this
    object's size free: with room, a large put costs no round trip. When the
    store is full, this object's pages exist while the raylet spills others (a
    transient overshoot of at most one object per writing thread); a write that
    finds /dev/shm itself full waits for the room and is tried again. An object
    larger than the store goes to the file on disk the raylet names. Raises
    ObjectStoreFullError / OutOfDiskError when the object cannot be stored.
    """
    size, _ = object_store.layout(_nbytes(data), [_nbytes(b) for b in buffers])
    path = object_store.segment_path(cw.session_id, oid, cw.node_id)
    pool = _pool_writer(cw)
    cls = shm_pool.class_of(size)
    ino = pool.claim(cls, path) if cls else 0
    if cw.in_loop_thread():  # the loop cannot wait for itself: room is made after the seal
        if ino:
            pool.write(cw, path, ino, cls, oid, data, buffers)
        else:
            ino = _write(cw, oid, path, data, buffers, size)
        cw.post(cw.notify_sealed, oid, size, owner, ino)
        return size
    room = _send_to_raylet(cw, "create_object", [oid, size, ino] if ino else [oid, size])
    room.add_done_callback(lambda f: _learn_room(cw, f))
    # Plenty of room at the last answer: do not wait for this one (the raylet takes
    # the seal as is if it comes first). Half the room, so that several writers
    # racing on a stale figure cannot overshoot much; the raylet spills any excess.
    # A pooled segment's room is the pool's already.
    wait = not ino and size > cw.store_room // 2
    if not wait and not ino:
        cw.store_room -= size
    try:
        if ino:
            pool.write(cw, path, ino, cls, oid, data, buffers)
        elif 0 < cw.store_capacity < size:
            # Can never fit in memory: the raylet answers with a file on disk to write
            # it to (Ray's fallback allocation), or says why not.
            on_disk = result_interruptibly(room, None)
            _raise_if_error(oid, on_disk)
            object_store.write_fallback(path, on_disk, oid, data, buffers)
        else:
            try:
                ino = _write(cw, oid, path, data, buffers, size)
            except _ShmFull:
                _raise_if_error(oid, result_interruptibly(room, None))
                ino = _write(cw, oid, path, data, buffers, size, final=True)
            else:
                if wait:
                    _raise_if_error(oid, result_interruptibly(room, None))
    except BaseException:
        # Refused, or interrupted (Ctrl-C) while waiting for room: give back
        # whatever was granted or is still queued, and the pages.
        object_store.delete_segment(path)
        cw.post(_notify_raylet, cw, "free_objects", [oid])
        raise
    cw.post(cw.notify_sealed, oid, size, owner, ino)
    return size


class PoolWriter:
    """This process's side of its node's segment pool: claims, and its mapped segments."""

    def __init__(self, cw: StoreHost) -> None:
        self.dir = shm_pool.pool_dir(cw.session_id, cw.node_id)
        self.maps = shm_pool.SegmentMaps(WRITER_MAPS_BYTES)
        self.checking = False

    def claim(self, cls: int, path: str) -> int:
        """A free segment of class ``cls`` renamed to ``path``: its inode, or 0."""
        return shm_pool.claim(self.dir, cls, path, self.maps.prefer(cls) if self.maps else ())

    def write(
        self,
        cw: StoreHost,
        path: str,
        ino: int,
        cls: int,
        oid: bytes,
        data: Buffer,
        buffers: list[Buffer],
    ) -> None:
        """Write the object into the claimed segment at ``path``, trimmed to its size (the
        store counts the object's bytes, as for a fresh file)."""
        fd = os.open(path, os.O_RDWR)
        try:
            # Held while writing, as a reader holds it: should the raylet think the
            # object freed meanwhile (its creator's connection closed), it cannot reuse
            # the segment under this write.
            fcntl.flock(fd, fcntl.LOCK_SH)
            size = self.maps.write(path, fd, ino, cls, oid, data, buffers)
            if size < cls:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)  # (releases the lock)
        if self.maps and not self.checking:
            self.checking = True
            cw.post(self._check_later, cw)

    def _check_later(self, cw: StoreHost) -> None:
        cw.loop.call_later(STALE_CHECK_S, self._check, cw)

    def _check(self, cw: StoreHost) -> None:
        self.maps.drop_stale()
        if self.maps and not cw.closing:
            cw.loop.call_later(STALE_CHECK_S, self._check, cw)
        else:
            self.checking = False


def _pool_writer(cw: StoreHost) -> PoolWriter:
    pool: PoolWriter | None = cw.pool_writer
    if pool is None:
        pool = cw.pool_writer = PoolWriter(cw)
    return pool


def close(cw: StoreHost) -> None:
    """Let go of the segments this process kept mapped (at shutdown)."""
    if cw.pool_writer is not None:
        cw.pool_writer.maps.clear()


def _learn_room(cw: StoreHost, f: concurrent.futures.Future[CreateObjectReply]) -> None:
    if not f.cancelled() and f.exception() is None:
        room = f.result()
        if isinstance(room, int):
            cw.store_room = room


class _ShmFull(Exception):
    pass


def _write(
    cw: StoreHost,
    oid: bytes,
    path: str,
    data: Buffer,
    buffers: list[Buffer],
    size: int,
    final: bool = False,
) -> int:
    """Write a fresh segment file; its inode."""
    try:
        try:
            return object_store.write_segment(path, oid, data, buffers)[1]
        except FileExistsError:  # a copy of an earlier run of this task (lineage)
            object_store.delete_segment(path)
            return object_store.write_segment(path, oid, data, buffers)[1]
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        if not final and not cw.in_loop_thread():
            raise _ShmFull from None
        if cw.in_loop_thread():
            cw.post(_notify_raylet, cw, "free_objects", [oid])  # give the room back
        raise ObjectStoreFullError(
            f"Failed to write object {oid.hex()} of {size} bytes to shared memory: "
            f"{e.strerror} ({object_store.shm_dir()} is smaller than object_store_memory, "
            "or objects that were spilled are still mapped by readers)."
        ) from None


def read_object(
    cw: StoreHost, oid: bytes, node_id: bytes | None = None
) -> tuple[memoryview, list[memoryview]]:
    """Map this node's copy of the object: restored from the spill disk first if
    needed, or pulled from ``node_id`` (where its primary copy is) if that is not here."""
    path = object_store.segment_path(cw.session_id, oid, cw.node_id)
    remote = node_id is not None and node_id != cw.node_id
    for _ in range(RESTORE_ATTEMPTS):
        try:
            return object_store.read_segment(path, oid)
        except FileNotFoundError:
            pass
        if cw.in_loop_thread():
            raise RaySystemError(
                f"object {oid.hex()} was spilled and cannot be restored from the event loop "
                "thread; restore_async() it first"
            )
        if remote:
            reply: RestoreReply = _call_raylet(cw, "pull_object", [oid, node_id])
        else:
            reply = _call_raylet(cw, "restore_object", oid)
        if reply is not None and reply[0] == "ObjectLostError":
            object_lost(cw, oid, reply[1])
        _raise_if_error(oid, reply)
    object_lost(
        cw, oid, f"it was restored {RESTORE_ATTEMPTS} times and spilled again before it was read"
    )


def not_here(cw: StoreHost, oid: bytes, obj: StoredObject) -> bool:
    """Is ``obj`` in shared memory but not readable on this node (spilled, or its
    copy is on another node)? One stat call; ``restore_async`` fixes it."""
    return obj.in_shm and not os.path.exists(
        object_store.segment_path(cw.session_id, oid, cw.node_id)
    )


def prefetch(cw: StoreHost, objs: Iterable[tuple[bytes, StoredObject]]) -> None:
    """Pull the objects that live on other nodes all at once (not one read at a time);
    the reads that follow find them here. Failures are left to those reads."""
    if cw.in_loop_thread():
        return
    here = cw.node_id
    away = [(oid, obj.node_id) for oid, obj in objs if obj.node_id not in (None, here)]
    if len(away) < 2:  # the common case: one slot compare per object
        return
    wanted = [
        [oid, node]
        for oid, node in away
        if not os.path.exists(object_store.segment_path(cw.session_id, oid, here))
    ]
    if len(wanted) < 2:
        return
    all_done: concurrent.futures.Future[None] = concurrent.futures.Future()
    left = [len(wanted)]

    def send() -> None:
        if cw.raylet.is_closed:
            all_done.set_result(None)
            return
        for body in wanted:
            cw.raylet.call_nowait("pull_object", body).add_done_callback(one_done)

    def one_done(f: asyncio.Future[tuple[RestoreReply, list[Buffer]]]) -> None:
        if not f.cancelled():
            f.exception()  # retrieved: the read reports it
        left[0] -= 1
        if left[0] == 0 and not all_done.done():
            all_done.set_result(None)

    cw.post(send)
    result_interruptibly(all_done, None)


async def restore_async(cw: StoreHost, oid: bytes, node_id: bytes | None = None) -> None:
    """(loop) Make sure a local segment exists before ``read_object`` runs on the loop:
    restore it, or pull it from ``node_id``."""
    if os.path.exists(object_store.segment_path(cw.session_id, oid, cw.node_id)):
        return
    reply: RestoreReply
    if node_id is not None and node_id != cw.node_id:
        reply = await cw.raylet.call("pull_object", [oid, node_id])
    else:
        reply = await cw.raylet.call("restore_object", oid)
    if reply is not None and reply[0] == "ObjectLostError":
        object_lost(cw, oid, reply[1])
    _raise_if_error(oid, reply)


async def restore_all_async(cw: StoreHost, objs: list[tuple[bytes, bytes | None]]) -> None:
    """(loop) ``restore_async`` of several (object id, node id) at once."""
    await asyncio.gather(*[restore_async(cw, oid, node) for oid, node in objs])


def object_lost(cw: StoreHost, oid: bytes, reason: str) -> NoReturn:
    """Every copy of ``oid`` this node had is gone (e.g. its spill file was deleted).

    The single decision point for "the object is gone": lineage reconstruction
    hooks in here; for now the reader gets ObjectLostError with the reason.
    """
    raise ObjectLostError(oid.hex(), f"Object {oid.hex()} is lost: {reason}.")


def _raise_if_error(oid: bytes, reply: CreateObjectReply | RestoreReply) -> None:
    if reply is not None and not isinstance(reply, (int, str)):
        cls = _ERRORS.get(reply[0], RaySystemError)
        if issubclass(cls, ObjectLostError):
            raise cls(oid.hex(), reply[1])
        raise cls(reply[1])


def _notify_raylet(cw: StoreHost, method: str, body: object) -> None:
    if not cw.raylet.is_closed:
        cw.raylet.notify(method, body)


def _call_raylet(cw: StoreHost, method: str, body: object) -> Any:
    """A request to the local raylet from a thread other than the loop; wait for its reply."""
    return result_interruptibly(_send_to_raylet(cw, method, body), None)


def _send_to_raylet(cw: StoreHost, method: str, body: object) -> concurrent.futures.Future[Any]:
    """Send a request to the local raylet from any thread but the loop's; a future reply.

    Cheaper than ``run_sync``: no coroutine or Task, just a posted send and the reply's
    callback resolving a concurrent future.
    """
    result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def send() -> None:
        if cw.raylet.is_closed:
            result.set_exception(RaySystemError("the local raylet is gone"))
            return
        cw.raylet.call_nowait(method, body).add_done_callback(done)

    def done(f: asyncio.Future[tuple[Any, list[Buffer]]]) -> None:
        if f.cancelled():
            result.cancel()
        elif f.exception() is not None:
            result.set_exception(f.exception())
        else:
            result.set_result(f.result()[0])

    cw.post(send)
    return result


def send_frees(cw: StoreHost, frees: list[tuple[bytes, bytes | None]]) -> None:
    """(loop) Tell the local raylet which objects the owner freed. Those whose primary
    copy is on another node go as ``free_objects_at``: the raylet forwards them."""
    here: list[bytes] = []
    away: dict[bytes, list[bytes]] = {}
    for oid, node in frees:
        if node is None or node == cw.node_id:
            here.append(oid)
        else:
            away.setdefault(node, []).append(oid)
    if here:
        cw.raylet.notify("free_objects", here)
    if away:
        at: FreeObjectsAt = [(node, oids) for node, oids in away.items()]
        cw.raylet.notify("free_objects_at", at)

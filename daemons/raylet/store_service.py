"""The raylet's object store service: the async shell around ``ObjectManager``.

Protocol with the processes of this node (each message names one object):
1. ``create_object [oid, size, inode?]`` (request): the creator asks for room, writing
   the segment while the request is in flight. The reply comes when the object
   fits: at once in the common case (and always for a creator that claimed a
   pooled segment and names its inode: the pool held its room), after evictions
   and spills when the store is full. An int (the bytes still free) means keep
   it; ``[error class name, message]`` means it can never fit, or it does not fit
   and nothing can be spilled (ObjectStoreFullError, OutOfDiskError). A creator
   that knows the store has plenty of room (from the last reply) does not wait
   for the answer.
2. ``object_sealed [oid, size, worker, inode?]`` (notify, on the same connection):
   the segment (that inode) is complete; from now on it may be spilled. A seal
   with no room asked first (a creator on its own event loop cannot wait) is
   taken as is, and room is made after the fact.
   An object larger than the whole store gets, instead of room, a str: the path
   of a file in the spill directory to write it to (Ray's fallback allocation).
   The creator writes the segment there and links it from its usual place in
   /dev/shm, so readers map it as any other; freeing deletes both.
3. ``restore_object oid`` (request): a reader found the segment gone. Answered
   ``None`` once the segment exists again (restored from the spill file), or
   ``[class name, message]`` when it cannot be (the spill file vanished, ...).
4. ``free_objects [oid, ...]`` (notify, from the owner): delete the segment (or give
   it back to the segment pool, pool_service.py) and the spill file.
If a creator's connection closes before it sealed, its room is given back.

Spills and restores copy files on a small thread pool (``spill_io``), so the loop
never waits on a disk. A segment is unlinked only once its spill file is
complete; a reader that mapped it before keeps its pages (that is how unlinked
files work), and a reader that opens it after asks for a restore.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aioray.daemons.raylet import spill_io
from aioray.daemons.raylet.object_manager import (
    CREATE,
    CREATING,
    DISK_FULL,
    FALLBACK,
    IN_SHM,
    RESTORE,
    RESTORING,
    SECONDARY,
    SPILLED,
    SPILLING,
    TOO_BIG,
    Actions,
    Entry,
    ObjectManager,
    Request,
)
from aioray.daemons.raylet.pool_service import PoolService
from aioray.daemons.raylet.spill_io import SpillConfig, spill_config_from

from aioray._private.rpc import rpc
from aioray._private.wire import config, object_store
from aioray._private.wire.schema import CreateObject, CreateObjectReply, ObjectSealed

logger = logging.getLogger(__name__)

Reply = list[str] | None  # None: done; [error class name, message]: failed
# After a spill failed (disk full, directory unusable), requests that need a
# spill fail at once for this long before the disk is tried again.
SPILL_RETRY_S = 5.0


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB ({n} bytes)"


class StoreService:
    def __init__(
        self, capacity: int, spill: SpillConfig, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.manager = ObjectManager(capacity, spill.enabled)
        self.pool = PoolService(capacity)
        self.spill = spill
        self.on_change = on_change
        self.session_id = ""
        self.node_id = b""
        self.spill_dir = ""
        self._own_spill_dir = False  # the default <session_dir>/spill: removed when empty
        self.io = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="aioray-spill")
        self.lost: dict[bytes, str] = {}  # why an object here is gone (spill file vanished)
        self._restore_waiters: dict[bytes, list[asyncio.Future[Reply]]] = {}
        self._spill_error: str | None = None  # why spilling failed last (for a while)
        self._spill_error_at = 0.0
        self.io_totals = {
            "spill_bytes": 0,
            "spill_seconds": 0.0,
            "restore_bytes": 0,
            "restore_seconds": 0.0,
        }
        self._stuck_timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"<StoreService {self.manager!r} spill_dir={self.spill_dir!r}>"

    def start(self, session_id: str, session_dir: str, node_id: bytes) -> None:
        self.session_id = session_id
        self.node_id = node_id
        self.pool.start(session_id, node_id)
        try:
            st = os.statvfs(object_store.shm_dir())
            if self.manager.capacity > st.f_blocks * st.f_frsize:
                logger.warning(
                    "object_store_memory (%d bytes) is larger than %s (%d bytes): puts may "
                    "fail with ObjectStoreFullError before the store is full",
                    self.manager.capacity,
                    object_store.shm_dir(),
                    st.f_blocks * st.f_frsize,
                )
        except OSError:
            pass
        if self.spill.directory:
            self.spill_dir = os.path.join(
                self.spill.directory, f"aioray_spilled_objects_{node_id.hex()}"
            )
        else:
            self.spill_dir = os.path.join(session_dir or "/tmp", "spill", node_id.hex()[:12])
            self._own_spill_dir = True

    def stop(self, every_segment: bool = True) -> None:
        """Delete this node's segments and spill files (with ``every_segment``, the
        whole session's: the head sweeps what other nodes on this machine left)."""
        self._stopped = True
        self.io.shutdown(wait=True, cancel_futures=True)
        self.pool.stop()
        if every_segment:
            for path in object_store.list_segments(self.session_id):
                object_store.delete_segment(path)
        else:  # this node's namespace: also segments whose seal never came, partial pulls
            for path in object_store.list_segments(self.session_id, self.node_id):
                object_store.delete_segment(path)
        for e in self.manager.entries.values():
            spill_io.remove(e.spill_path)
        if self.spill_dir:
            spill_io.remove_tree(self.spill_dir)
            if self._own_spill_dir:  # <session_dir>/spill, once no other node uses it
                try:
                    os.rmdir(os.path.dirname(self.spill_dir))
                except OSError:
                    pass

    # -- handlers (the raylet delegates) ----------------------------------------------
    def create_object(
        self, conn: rpc.Connection, body: CreateObject
    ) -> CreateObjectReply | asyncio.Future[CreateObjectReply]:
        oid, size = body[0], int(body[1])
        e = self.manager.entries.get(oid)
        if e is not None:
            self._replaced(oid, e)
        self.pool.wanted(size)
        if len(body) > 2 and self.pool.claimed(body[2]):  # room taken from the pool
            self.manager.adopt(oid, size).ino = body[2]
            self._track_creating(conn, oid)
            self._run()
            return self.manager.available
        return self._ask(Request(oid, size, CREATE, conn))

    def _replaced(self, oid: bytes, e: Entry) -> None:
        """A new copy of ``oid`` is being created: its task ran again (lineage, or a
        retry after its worker died, maybe after it sealed). Forget the old copy (a
        cached copy, or the earlier run's) with its room and files, but not its segment:
        the creator may be writing it already, and rewrites it either way."""
        for req in self.manager.drop_requests(oid):  # the earlier run still waiting for room
            self._answer(req, ["ObjectLostError", "a newer copy replaced it"])
        self.manager.free(oid)
        if e.state != SPILLING:  # (a spill in flight deletes its own file when done)
            spill_io.remove(e.spill_path)
        self.lost.pop(oid, None)

    def object_sealed(self, conn: rpc.Connection | None, body: ObjectSealed) -> bool:
        """The creator wrote the segment. False if its owner freed it first."""
        oid, size = body[0], int(body[1])
        if conn is not None:
            creating = conn.state.get("creating")
            if creating:
                creating.pop(oid, None)
        e = self.manager.entries.get(oid)
        if (e is None or e.state == CREATING) and not os.path.exists(self.segment(oid)):
            # Freed before its seal arrived, and the free deleted the segment: seal and
            # free come on different links (creator's, owner's). The free may even
            # overtake the create_object, whose entry (or queued request) would then
            # outlive the object, holding its room until the owner exits.
            if e is not None or self.manager.queue:
                self.free_objects([oid])
            return False
        if e is None:
            # Written without waiting for room (the creator thought there was plenty):
            # its request, if still queued, is moot; room is made after the fact.
            for req in self.manager.drop_requests(oid):
                self._answer(req, None)
            if len(body) > 3 and self.pool.claimed(body[3]):  # (a creator on its own loop)
                self.manager.adopt(oid, size)
        self.manager.seal(oid, size)
        if len(body) > 3:
            self.manager.entries[oid].ino = body[3]
        self._run()
        return True

    def free_objects(self, oids: list[bytes]) -> None:
        for oid in oids:
            self.lost.pop(oid, None)
            for req in self.manager.drop_requests(oid):
                self._answer(req, ["ObjectLostError", "it was freed"])
            e = self.manager.free(oid)
            if e is not None and e.state in (CREATING, IN_SHM, SPILLING):
                self._release(oid, e.ino, e.size)
            else:
                object_store.delete_segment(self.segment(oid))
            if e is not None:
                if e.state != SPILLING:  # a spill in flight deletes its own file when done
                    spill_io.remove(e.spill_path)
                if e.state == RESTORING:
                    spill_io.remove(self.segment(oid) + ".part")
        self._run()

    def restore_object(self, oid: bytes) -> Any:
        """Bring a spilled object back into shared memory (a reader found it gone)."""
        e = self.manager.entries.get(oid)
        if e is None:
            reason = self.lost.get(oid) or (
                "it is not in this node's object store (it was freed, or its node lost it)"
            )
            return ["ObjectLostError", reason]
        if e.state in (CREATING, IN_SHM, SPILLING, FALLBACK):
            return None  # the segment exists: read again
        waiters = self._restore_waiters.get(oid)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if waiters is not None:
            waiters.append(fut)  # a restore is queued or under way
            return fut
        self._restore_waiters[oid] = [fut]
        self.manager.request(Request(oid, e.size, RESTORE))
        self._run()
        return fut

    # -- for object transfer between nodes -----------------------------------------------
    async def reserve_secondary(self, oid: bytes, size: int, source: bytes) -> Reply:
        """Make room for a copy of ``oid`` pulled from node ``source`` before writing
        its segment here.

        Then write ``segment(oid)`` (for a copy larger than the store: the file on
        disk ``on_disk(oid)`` names, linked from the segment) and call
        ``add_secondary`` (or ``free_objects([oid])`` if the transfer failed, to give
        the room back). Secondary copies are evicted (not spilled) when room is
        needed, unless pinned (``manager.pin``) by a reader.
        """
        reply = self._ask(Request(oid, size, SECONDARY))
        if isinstance(reply, asyncio.Future):
            reply = await reply
        if isinstance(reply, (int, str)):
            e = self.manager.entries.get(oid)
            if e is not None and not e.primary:
                e.source = source
            return None
        return reply

    def on_disk(self, oid: bytes) -> str | None:
        """The file on disk of an object too large for the store (None if in memory)."""
        e = self.manager.entries.get(oid)
        return e.spill_path if e is not None and e.state == FALLBACK else None

    def add_secondary(self, oid: bytes, size: int) -> None:
        self.manager.add_secondary(oid, size)
        self._run()

    def free_copies(self, source: bytes, oids: list[bytes]) -> None:
        """Free the copies of ``oids`` pulled from node ``source``, and only those.

        Why not every copy of those ids: a lost object is rebuilt under the same id,
        possibly here or on a node that then serves it. A free meant for the copies
        of the lost one must never hit the new primary or a copy pulled from it.
        """
        mine = []
        for oid in oids:
            e = self.manager.entries.get(oid)
            if e is not None and not e.primary and e.source == source:
                mine.append(oid)
        if mine:
            self.free_objects(mine)

    # -- scheduling -----------------------------------------------------------------------
    def _ask(self, req: Request) -> Any:
        """Queue a request for room: its reply now if decided at once, else a future."""
        conn = req.token
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        req.token = (fut, conn)
        self.manager.request(req)
        self._run()
        if fut.done():
            return fut.result()
        return fut

    def _run(self) -> None:
        if self._stopped:
            return
        act = self.manager.schedule(self._can_spill)
        self._perform(act)
        # The pool gives way to objects: it drops what does not fit beside them.
        self.pool.used = self.manager.used
        self.pool.busy = bool(self.manager.queue) or self.manager.in_flight > 0
        self.pool.run()
        self.on_change()  # cheap: the raylet reports usage at most every RESOURCE_REPORT_S

    def _release(self, oid: bytes, ino: int, size: int) -> None:
        """The segment of ``oid`` here is no longer the object's: to the pool, or deleted."""
        self.pool.release(self.segment(oid), ino, size)

    def _perform(self, act: Actions) -> None:
        for req in act.granted:
            self._granted(req)
        for req in act.fallback:
            self._granted_on_disk(req)
        for oid, e in act.evict:
            self._release(oid, e.ino, e.size)
            e.ino = 0
        for oid, e in act.spill:
            self._start_spill(oid, e)
        for req, reason in act.failed:
            self._answer(req, self._error(req, reason))
        if act.stuck and self._stuck_timer is None:
            self._stuck_timer = asyncio.get_running_loop().call_later(
                config.OBJECT_STORE_FULL_TIMEOUT_S, self._give_up
            )
        elif not act.stuck and self._stuck_timer is not None:
            self._stuck_timer.cancel()
            self._stuck_timer = None

    def _granted(self, req: Request) -> None:
        if req.kind == RESTORE:
            e = self.manager.entries.get(req.oid)
            if e is not None and e.state == RESTORING:
                self._start_restore(req.oid, e)
            else:
                self._restored(req.oid, None)
            return
        fut, conn = req.token
        if req.kind == CREATE and conn is not None:
            if conn.is_closed:  # the creator died while waiting for room
                self.manager.free(req.oid)
                return
            self._track_creating(conn, req.oid)
        if not fut.done():
            fut.set_result(self.manager.available)  # lets the creator skip the next wait

    def _granted_on_disk(self, req: Request) -> None:
        """A create larger than the store: answer with the file to write it to."""
        fut, conn = req.token
        e = self.manager.entries[req.oid]
        e.spill_path = os.path.join(self.spill_dir, f"{req.oid.hex()}.fallback")
        if conn is not None:
            if conn.is_closed:  # the creator died while waiting
                self.free_objects([req.oid])
                return
            self._track_creating(conn, req.oid)
        if not fut.done():
            fut.set_result(e.spill_path)

    def _track_creating(self, conn: rpc.Connection, oid: bytes) -> None:
        """Remember which entries ``conn``'s creator has not sealed yet (by identity: a
        newer copy of the same object, made by another creator, is not its to free)."""
        creating: dict[bytes, Entry] | None = conn.state.get("creating")
        if creating is None:
            creating = conn.state["creating"] = {}
            conn.on_close.append(self._creator_gone)
        creating[oid] = self.manager.entries[oid]

    def _creator_gone(self, conn: rpc.Connection) -> None:
        stale = [
            oid
            for oid, mine in conn.state.get("creating", {}).items()
            if self.manager.entries.get(oid) is mine and mine.state in (CREATING, FALLBACK)
        ]
        if stale:
            self.free_objects(stale)

    def _answer(self, req: Request, reply: Reply) -> None:
        if req.kind == RESTORE:
            self._restored(req.oid, reply)
            return
        fut, _ = req.token
        if not fut.done():
            fut.set_result(reply)

    def _restored(self, oid: bytes, reply: Reply) -> None:
        for fut in self._restore_waiters.pop(oid, []):
            if not fut.done():
                fut.set_result(reply)

    def _give_up(self) -> None:
        self._stuck_timer = None
        req = self.manager.fail_head()
        if req is not None:
            self._answer(req, self._error(req, "full"))
        self._run()

    def _can_spill(self) -> bool:
        if self._spill_error is not None:
            if time.monotonic() - self._spill_error_at < SPILL_RETRY_S:
                return False
            self._spill_error = None  # the disk may have room again: try it

        try:
            os.makedirs(self.spill_dir, exist_ok=True)
            return spill_io.disk_usage_fraction(self.spill_dir) < (
                self.spill.local_fs_capacity_threshold
            )
        except OSError as e:
            self._set_spill_error(f"cannot use the spill directory {self.spill_dir}: {e}")
            return False

    def _set_spill_error(self, why: str) -> None:
        self._spill_error = why
        self._spill_error_at = time.monotonic()

    def _error(self, req: Request, reason: str) -> list[str]:
        m = self.manager
        what = f"object {req.oid.hex()} of {fmt_bytes(req.size)}"
        if reason == TOO_BIG:
            return [
                "ObjectStoreFullError",
                f"Cannot store {what}: it is larger than the object store's capacity of "
                f"{fmt_bytes(m.capacity)}. Give the node a larger object_store_memory.",
            ]
        if reason == DISK_FULL:
            why = self._spill_error or (
                f"the spill directory {self.spill_dir} is "
                f"{spill_io.disk_usage_fraction(self.spill_dir):.0%} full, over "
                f"local_fs_capacity_threshold={self.spill.local_fs_capacity_threshold}"
            )
            if req.size > m.capacity:
                return [
                    "OutOfDiskError",
                    f"Local disk is full: {why}. Cannot store {what}: it is larger than the "
                    f"object store's capacity of {fmt_bytes(m.capacity)}, and the disk it "
                    "would be written to instead has no room.",
                ]
            return [
                "OutOfDiskError",
                f"Local disk is full: {why}. Cannot store {what}: the object store is full "
                f"({fmt_bytes(m.used)} of {fmt_bytes(m.capacity)} in use) and nothing can "
                "be spilled.",
            ]
        cause = (
            "object spilling is disabled" if not m.spilling_enabled else "nothing can be spilled"
        )
        return [
            "ObjectStoreFullError",
            f"Failed to store {what}: the object store is full ({fmt_bytes(m.used)} of "
            f"{fmt_bytes(m.capacity)} in use by objects still in scope) and {cause}.",
        ]

    # -- spill and restore I/O ------------------------------------------------------------
    def segment(self, oid: bytes) -> str:
        """This node's segment file for ``oid``."""
        return object_store.segment_path(self.session_id, oid, self.node_id)

    def _start_spill(self, oid: bytes, e: Entry) -> None:
        segment = self.segment(oid)
        dst = os.path.join(self.spill_dir, oid.hex())
        started = time.monotonic()
        fut = asyncio.get_running_loop().run_in_executor(
            self.io, spill_io.copy_file, segment, dst, e.size
        )
        fut.add_done_callback(lambda f: self._spill_finished(oid, dst, f, started))

    def _spill_finished(self, oid: bytes, dst: str, f: asyncio.Future[int], started: float) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        if exc is not None:
            self.manager.spill_failed(oid)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._set_spill_error(f"spilling to {self.spill_dir} failed: {exc.strerror}")
            elif not isinstance(exc, FileNotFoundError):  # not freed meanwhile
                logger.error("spilling object %s failed: %s", oid.hex(), exc)
                self._set_spill_error(f"spilling to {self.spill_dir} failed: {exc}")
        elif self.manager.spill_done(oid, dst):
            e = self.manager.entries[oid]
            self._release(oid, e.ino, e.size)
            e.ino = 0
            self._spill_error = None
            size, took = f.result(), max(time.monotonic() - started, 1e-6)
            self.io_totals["spill_bytes"] += size
            self.io_totals["spill_seconds"] += took
            logger.info(
                "Spilled %.1f MiB, 1 objects, write throughput %.0f MiB/s",
                size / 2**20,
                size / 2**20 / took,
            )
        else:
            spill_io.remove(dst)  # freed while being spilled
        self.on_change()
        self._run()

    def _start_restore(self, oid: bytes, e: Entry) -> None:
        assert e.spill_path is not None
        src, dst = e.spill_path, self.segment(oid)
        started = time.monotonic()
        fut = asyncio.get_running_loop().run_in_executor(self.io, spill_io.copy_file, src, dst)
        fut.add_done_callback(lambda f: self._restore_finished(oid, src, f, started))

    def _restore_finished(
        self, oid: bytes, src: str, f: asyncio.Future[int], started: float
    ) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        reply: Reply = None
        if exc is None:
            size, took = f.result(), max(time.monotonic() - started, 1e-6)
            self.io_totals["restore_bytes"] += size
            self.io_totals["restore_seconds"] += took
            logger.info(
                "Restored %.1f MiB, 1 objects, read throughput %.0f MiB/s",
                size / 2**20,
                size / 2**20 / took,
            )
            if not self.manager.restore_done(oid):
                object_store.delete_segment(self.segment(oid))  # freed meanwhile
            else:
                self.manager.entries[oid].ino = _inode(self.segment(oid))
        elif isinstance(exc, FileNotFoundError) and exc.filename == src:
            reply = ["ObjectLostError", self.object_gone(oid, src)]
        else:
            self.manager.restore_failed(oid)
            reply = ["ObjectStoreFullError", f"restoring object {oid.hex()} failed: {exc}"]
        self._restored(oid, reply)
        self.on_change()
        self._run()

    def object_gone(self, oid: bytes, spill_path: str) -> str:
        """The only copy of ``oid`` on this node (its spill file) vanished: forget it.

        Returns the reason, which every later reader is told too.
        """
        reason = (
            f"its spill file {spill_path} was deleted, and it had no other copy "
            "(it was spilled because the object store was full)"
        )
        e = self.manager.entries.get(oid)
        if e is not None and e.state in (SPILLED, RESTORING):
            self.manager.free(oid)
        self.lost[oid] = reason
        return reason

    def holds_primaries(self) -> bool:
        """Whether a primary copy (in memory or spilled) lives here: the node is not idle."""
        return any(e.primary for e in self.manager.entries.values())

    def stats(self) -> dict[str, Any]:
        return {
            **self.manager.stats(),
            **self.pool.stats(),
            **self.io_totals,
            "spill_dir": self.spill_dir,
        }


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


__all__ = ["SECONDARY", "SPILLED", "SpillConfig", "StoreService", "spill_config_from"]

"""Lineage: an owner re-runs the task that made an object whose only copy is lost.

Only objects in shared memory can be lost (a value kept inline lives in its
owner's memory and dies with the owner). So the owner keeps the finished tasks
that returned at least one shared-memory object and may run again (retries
left), while any of their return values is still referenced, within a byte
budget for their arguments. A kept task keeps its arguments alive too, so a
lost input can be rebuilt the same way, recursively: the worker that finds an
argument missing asks that argument's owner to rebuild it.

A ``put`` has no lineage, and neither has an actor call or a streamed item: such
a lost object raises ObjectLostError naming the reason; a task out of retries
raises ObjectReconstructionFailedMaxAttemptsExceededError; one whose lineage did
not fit the budget ObjectReconstructionFailedLineageEvictedError.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from aioray._private.core.memory_store import StoredObject
from aioray._private.wire import config, ids, object_store
from aioray._private.wire.task_spec import STREAMING, TaskEntry
from aioray.exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
)

if TYPE_CHECKING:
    from aioray._private.core.interfaces import LineageHost

logger = logging.getLogger("aioray")


def _blob_bytes(task: TaskEntry) -> int:
    blob = task.args_blob
    return blob.total_bytes if blob is not None else 0


class Lineage:
    def __init__(self, cw: LineageHost) -> None:
        self.cw = cw
        self.tasks: dict[bytes, TaskEntry] = {}
        self.nbytes = 0
        self.evicted: set[bytes] = set()  # tasks whose lineage did not fit the budget
        self._rebuilding: dict[bytes, asyncio.Future[None]] = {}

    def __repr__(self) -> str:
        return f"<Lineage tasks={len(self.tasks)} bytes={self.nbytes}>"

    def keep(self, task: TaskEntry, objs: list[StoredObject]) -> bool:
        """(loop) A task finished: keep it if it may have to run again. True if kept."""
        if task.attempts_left == 0 or task.spec.get("nret") == STREAMING:
            return False
        if not any(o.in_shm and not o.is_error for o in objs):
            return False
        size = _blob_bytes(task)
        if self.nbytes + size > config.MAX_LINEAGE_BYTES:
            self.evicted.add(task.task_id)
            return False
        if task.task_id not in self.tasks:
            self.nbytes += size
        self.tasks[task.task_id] = task
        return True

    def release(self, oid: bytes) -> None:
        """(loop) A return value was freed: drop the task once none is referenced."""
        tid = ids.task_id_of(oid)
        self.evicted.discard(tid)
        task = self.tasks.get(tid)
        if task is None or tid in self._rebuilding:
            return
        if any(self.cw.refs.in_scope(r) for r in task.return_ids):
            return
        del self.tasks[tid]
        self.nbytes -= _blob_bytes(task)
        task.dep_refs = ()  # the arguments may go now
        task.args_blob = None

    async def rebuild(self, oid: bytes) -> StoredObject:
        """(loop) Run the task that returns ``oid`` again; the new stored object."""
        tid = ids.task_id_of(oid)
        pending = self._rebuilding.get(tid)
        if pending is None:
            task = self.tasks.get(tid)
            if task is None:
                raise self._cannot(oid, tid)
            if task.attempts_left == 0:
                raise ObjectReconstructionFailedMaxAttemptsExceededError(
                    oid.hex(),
                    f"Object {oid.hex()} was lost and its task {task.spec.get('name')} "
                    "has no retries left (max_retries) to rebuild it.",
                )
            if task.attempts_left > 0:
                task.attempts_left -= 1
            logger.info("object %s lost: running %r again", oid.hex()[:12], task)
            pending = self._rebuilding[tid] = self.cw.loop.create_future()
            self._resubmit(task)
            waits = [self.cw.memory_store.wait_for(r, self.cw.loop) for r in task.return_ids]
            asyncio.gather(*waits, return_exceptions=True).add_done_callback(
                lambda _: self._done(tid)
            )
        await asyncio.shield(pending)
        obj = self.cw.memory_store.get(oid)
        if obj is None:
            raise ObjectLostError(oid.hex(), f"Object {oid.hex()} was freed while being rebuilt.")
        return obj

    def _done(self, tid: bytes) -> None:
        pending = self._rebuilding.pop(tid, None)
        if pending is not None and not pending.done():
            pending.set_result(None)

    def _resubmit(self, task: TaskEntry) -> None:
        cw = self.cw
        for rid in task.return_ids:
            old = cw.memory_store.delete(rid)
            if old is not None and old.in_shm and old.node_id == cw.node_id:
                # A surviving sibling's segment would block the new write: drop it here.
                try:
                    os.unlink(object_store.segment_path(cw.session_id, rid, cw.node_id))
                except FileNotFoundError:
                    pass
            elif old is not None and old.in_shm:
                # On another node (maybe dead): free it and the copies pulled from it,
                # wherever the new run puts its result.
                cw.free_shm(rid, old.node_id)
            cw.owned.add(rid)
        task.state = "pending_deps"
        task.cancelled = False
        task.lease = None
        cw.submitter.submit(task)

    def _cannot(self, oid: bytes, tid: bytes) -> ObjectLostError:
        if tid in self.evicted:
            return ObjectReconstructionFailedLineageEvictedError(
                oid.hex(),
                f"Object {oid.hex()} was lost and cannot be rebuilt: the lineage of its task "
                f"did not fit the lineage budget (AIORAY_MAX_LINEAGE_BYTES="
                f"{config.MAX_LINEAGE_BYTES}).",
            )
        return ObjectLostError(
            oid.hex(),
            f"Object {oid.hex()} was lost (its shared-memory copy is gone) and cannot be "
            "rebuilt: it was created by put, by an actor call, by a streaming generator or "
            "by a task with max_retries=0.",
        )

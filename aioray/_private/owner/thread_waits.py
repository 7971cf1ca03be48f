"""A caller thread blocked in ``get`` for objects this process owns, woken by the store.

The sync ``get`` of a task's result used to run a coroutine on the CoreWorker's loop
(``run_coroutine_threadsafe``: a Task, an asyncio future, and three loop iterations
between the reply's arrival and the caller's wake-up). Here the caller registers a
watch per missing object in ``MemoryStore.watched``, as a LoopFetcher does, and
sleeps on a lock; ``MemoryStore.put`` (on the loop) pops the watch and calls
``ThreadWait.arrived``, which releases the lock once everything is there. The loop
is not asked to do anything for the wait itself, so the submission's ``post`` and
the get share one wake-up of the loop, and the reply wakes the caller from inside
``put``.

The race with ``put`` is the LoopFetcher's: the caller registers, then looks for the
object; ``put`` stores, then looks for a watch. Whichever comes second sees the
other, and whoever pops the watch delivers it. A watch the caller takes back (the
object arrived in between) is delivered through the loop, so that ``arrived`` only
ever runs there and needs no lock. A caller that gives up (timeout, Ctrl-C) leaves
its watches in place, marked abandoned: removing a watch could take another
waiter's, so they go when their object is stored or freed.
"""

from __future__ import annotations

from _thread import allocate_lock
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aioray._private.owner import object_waits, reply_reads
from aioray._private.rpc.loop import acquire_interruptibly
from aioray.exceptions import GetTimeoutError, ObjectFreedError

if TYPE_CHECKING:
    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.core_worker import CoreWorker
    from aioray._private.owner.object_ref import ObjectRef


class ThreadWait:
    """Objects one blocked thread waits for: counted down on the loop, a lock to wake it."""

    __slots__ = ("error", "found", "left", "lock")

    def __init__(self, count: int) -> None:
        self.lock = allocate_lock()
        self.lock.acquire()  # released once: everything arrived, or an error ended the wait
        self.left = count  # (only the loop changes it, after the caller has set it)
        self.found: dict[bytes, StoredObject] = {}
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<ThreadWait left={self.left} error={self.error!r}>"

    def arrived(self, oid: bytes, _: Any, outcome: Any) -> None:
        """(loop) ``outcome`` is the stored object or the error that ended its wait."""
        if self.left <= 0:  # woken already (or abandoned): nothing more to count
            return
        if isinstance(outcome, BaseException):
            self.error = outcome
            self.left = 0
            self.lock.release()
            return
        self.found[oid] = outcome
        self.left -= 1
        if not self.left:
            self.lock.release()

    def abandon(self) -> None:
        """(caller) The caller stopped waiting: later arrivals are dropped."""
        self.left = -1


def _deliver_taken(cw: CoreWorker, oid: bytes, entry: tuple[Any, Any, Any]) -> None:
    """(loop) A watch taken back from the store after its object arrived."""
    entry[0].arrived(entry[1], entry[2], cw.memory_store.get(oid) or ObjectFreedError(oid.hex()))


def wait_missing(
    cw: CoreWorker, missing: list[ObjectRef], timeout: float | None
) -> dict[bytes, StoredObject]:
    """(a user's thread) Wait for objects not stored yet, by id. In a driver, the ones
    this process owns in the caller's thread (``wait_owned``), any others through the
    loop; in a worker, through the loop (blocked_gets: the task's CPUs may be lent)."""
    if cw.mode == "worker":  # (core_worker.WORKER, which imports this module)
        return cw.blocked_gets.get(missing, timeout)
    owned = cw.owned
    one = len(missing) == 1
    mine = missing[0]._id in owned if one else all(r._id in owned for r in missing)
    if mine and not cw.in_loop_thread():
        if one:  # (a call this thread pushed itself: it may read the reply itself)
            obj = reply_reads.read_own_reply(cw, missing[0]._id, timeout)
            if obj is not None:
                return {missing[0]._id: obj}
        found = wait_owned(cw, missing, timeout)
        if found is not None:
            return found
    return cw.run_sync(object_waits.fetch_many(cw, missing), timeout)


def wait_owned(
    cw: CoreWorker, refs: Sequence[ObjectRef], timeout: float | None
) -> dict[bytes, StoredObject] | None:
    """(caller thread, never the loop's) The objects of ``refs``, all owned by this process
    and none stored when the caller looked, by id, once they are all stored. Raises the
    first error that ends a wait, or GetTimeoutError. None if another waiter already
    watches one of them: the caller then waits through the loop instead."""
    watched = cw.memory_store.watched
    lookup = cw.memory_store.get
    # Each object once (a ref may come twice): one watch, one arrival each.
    oids = [refs[0]._id] if len(refs) == 1 else list(dict.fromkeys(r._id for r in refs))
    wait = ThreadWait(len(oids))
    for oid in oids:
        entry = (wait, oid, None)
        if watched.setdefault(oid, entry) is not entry:
            wait.abandon()  # (the watches already made are dropped when their objects come)
            return None
    for oid in oids:  # stored while we registered: whoever pops the watch delivers it
        if lookup(oid) is not None:
            taken = watched.pop(oid, None)
            if taken is not None:  # (ours, or another waiter's registered since: same)
                cw.post(_deliver_taken, cw, oid, taken)
    if cw.posts_waiting:  # (else every reply a thread pushed for is the loop's already)
        reply_reads.read_soon(cw, oids)
    try:
        woken = acquire_interruptibly(wait.lock, timeout)
    except BaseException:
        wait.abandon()
        raise
    if not woken:
        wait.abandon()
        if wait.lock.acquire(False):  # (woken just as the time ran out: take the result)
            woken = True
        else:
            raise GetTimeoutError(f"Get timed out: some object(s) not ready after {timeout}s.")
    if wait.error is not None:
        raise wait.error
    return wait.found

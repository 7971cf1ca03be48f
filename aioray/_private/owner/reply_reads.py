"""A caller thread reading the reply to the task it pushed itself (#21).

A thread that pushed its task on an idle lease it claimed (TaskSubmitter.push_now) and
then blocks in ``get`` for the result reads the reply from the lease's connection
itself: the loop lent that connection's read side while the lease was parked
(rpc/thread_reads.py). Neither the loop is woken for the reply nor the caller by the
loop: one wake-up where there were two.

The thread keeps only a plain success (one inline value, no refs inside it, not an
error, nothing printed to wait for). It stores the value without telling waiters
(``MemoryStore.put_quietly``: the get, and the free of the result's ref after it, need
not wait for the loop), gives up the read side, parks the lease again, and posts the
rest to the loop without waking it (LazyPosts): the task's end (``TaskSubmitter.replied``:
events, lineage, the put that tells waiters, the execution-time average, the linger).
Any other reply it hands to the loop as read, and waits as before.

A reply no thread reads is the loop's: each push a thread makes posts ``read_check``
lazily, which takes the read side back if that reply is still pending, so it is read
within LazyPosts.DELAY_S (or at once, when the loop wakes for something else). A thread
that waits for the object without reading the reply (a get of several objects, an
``await``) posts it at once (``read_soon``), unless the loop took every post already
(then every such check ran): the loop then reads the reply as before.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aioray._private.core.memory_store import parse_returns
from aioray._private.rpc.thread_reads import Frame, InterruptHold
from aioray._private.wire import ids
from aioray._private.wire.ids import TASK_ID_SIZE
from aioray._private.wire.protocol import RESPONSE
from aioray.exceptions import GetTimeoutError

if TYPE_CHECKING:
    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.core_worker import CoreWorker
    from aioray._private.rpc import rpc
    from aioray._private.wire.task_spec import TaskEntry


def read_check(conn: rpc.Connection, seq: int) -> None:
    """(loop, posted lazily by a push a thread made) Read that push's reply here if no
    thread has (a thread reading it now gives the read side back when done)."""
    if conn.awaits(seq):
        conn.resume_reads()


def read_soon(cw: CoreWorker, oids: Sequence[bytes]) -> None:
    """(a thread about to wait for ``oids`` without reading their replies: a get of several
    objects, an ``await``, a call with more than one return) Each of them not stored yet
    whose reply waits unread on a connection lent to threads: have the loop read it now,
    not at its lazy check. One call for all (a burst's get would pay per object)."""
    tasks, pushed, lookup = cw.submitter.tasks, cw.actors.thread_pushed, cw.memory_store.get
    for oid in oids:
        tid = oid[:TASK_ID_SIZE]
        task = tasks.get(tid)
        if task is not None:  # a task's
            if task.push_seq and task.lease is not None and lookup(oid) is None:
                cw.post(read_check, task.lease.conn, task.push_seq)
            continue
        actor = pushed.get(tid)  # an actor call's
        if actor is not None and actor.conn is not None:
            call = actor.inflight.get(tid)
            if call is not None:
                cw.post(read_check, actor.conn, call.push_seq)


def read_own_reply(cw: CoreWorker, oid: bytes, timeout: float | None) -> StoredObject | None:
    """(a caller thread in ``get``, the object not stored) ``oid``'s value, from the reply
    this thread read itself; None when the caller must wait as before: the push was not
    a thread's, its connection is not lent or another thread reads it, or the reply is
    not a plain success (then the loop deals with it). GetTimeoutError after ``timeout``."""
    tid = ids.task_id_of(oid)
    task = cw.submitter.tasks.get(tid)
    actor = None
    if task is not None:  # a task's
        conn = task.lease.conn if task.lease is not None else None
    else:  # an actor call's
        actor = cw.actors.thread_pushed.get(tid)
        if actor is None:
            return None
        task = actor.inflight.get(tid)
        conn = actor.conn
    if task is None or conn is None or not task.push_seq or len(task.return_ids) != 1:
        return None
    if not conn.take_reads():
        return None
    held = InterruptHold()
    deadline = None if timeout is None else time.monotonic() + timeout
    frame = conn.read_reply(task.push_seq, deadline, held)
    if frame is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise GetTimeoutError(f"Get timed out: some object(s) not ready after {timeout}s.")
        return None
    try:
        obj = _plain_success(cw, task, conn, frame, oid)
        if obj is not None:
            at = time.time()
            if actor is None:
                cw.submitter.thread_read(task, frame[3], [obj], at)
            else:
                cw.actors.thread_read(actor, task, frame[3], [obj], at)
        return obj
    finally:
        held.release()  # (a Ctrl-C that came while the reply was dealt with raises here)


def _plain_success(
    cw: CoreWorker, task: TaskEntry, conn: rpc.Connection, frame: Frame, oid: bytes
) -> StoredObject | None:
    """(the reading thread, Ctrl-C held off) The value of a plain success, stored quietly,
    the request forgotten and the read side given up but kept lent; else None, the
    reply handed to the loop."""
    kind, seq, _, body, bufs = frame
    if kind == RESPONSE and "x" not in body and "o" not in body and task.state != "finished":
        objs = parse_returns(body, bufs)
        obj = objs[0]
        if len(objs) == 1 and obj.data is not None and not obj.is_error and not obj.contained:
            if not conn.forget(seq):  # (failed by the connection's loss: the loop retries it)
                conn.release_reads(keep=False)
                return None
            cw.memory_store.put_quietly(oid, obj)
            conn.release_reads(keep=True)
            return obj
    conn.hand_over(frame)
    return None

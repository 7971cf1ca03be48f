"""Caller side of actors: creation, ordered calls, and following the actor's state.

For each actor this process talks to, one ``_Actor`` record, kept by the CoreWorker
loop (a handle keeps its actor's record too: ``record_of``):

1. Calls get a sequence number in the caller's thread (``tickets``, an atomic counter
   per actor), just before they are submitted; once their dependencies are ready
   they enter the send queue in that order, so one caller's calls run in order (the
   actor's worker runs them in the order they arrive).
2. The state comes from the GCS by long poll (``wait_actor [aid, version]``
   answers when the version moves past ours): PENDING, ALIVE at an address,
   RESTARTING, or DEAD with a cause. While not ALIVE, calls wait in the queue.
3. Calls are pushed straight to the actor's worker. If that connection drops,
   calls in flight are sent again after the restart while ``max_task_retries``
   allows. Otherwise they wait for the GCS's verdict: ActorUnavailableError if the
   actor is restarting (the call may or may not have run), ActorDiedError if it is
   dead. Once DEAD, every call fails fast.

A caller thread pushes a call itself (``push_now``, without waking the loop) only when
no call is in flight (a burst of calls is the loop's: it writes them together; ``.remote()``
looks at ``inflight`` before it calls ``push_now``, so a burst's call pays no more) and
every call numbered before it has been handed to the connection already: ``next_send``
is its number and ``sent_seq`` the one before (both move only when a call is sent,
and a call waiting for its turn in ``ready`` cannot be sent until ``next_send`` moves).
It registers the call, writes it (``Connection.call_then_now``, which refuses while the
loop has frames queued, so a call the loop sent but has not written yet is never
overtaken), then moves ``next_send`` on, and wakes the loop if the next call already
waits in ``ready``. A call it cannot write goes through the loop as any other.

Handles are counted per process. When the creator's last handle goes and no
copy has left the process, the actor gets ``__ray_terminate__``, which runs after
the calls queued before it (Ray's out-of-scope termination).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from aioray._private.core.memory_store import StoredObject, parse_returns
from aioray._private.owner import reply_reads
from aioray._private.owner.task_events import SUBMITTED_TO_WORKER, pack_row
from aioray._private.rpc import rpc
from aioray._private.wire import ids
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    ActorInfo,
    ActorMeta,
    ActorRequest,
    CreateActor,
    CreateActorReply,
    PushReply,
    TaskSpec,
)
from aioray._private.wire.task_spec import STREAMING, TaskEntry
from aioray.exceptions import (
    ActorAlreadyExistsError,
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    PendingCallsLimitExceeded,
    RuntimeEnvSetupError,
    TaskCancelledError,
)

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import ActorSubmitterHost

logger = logging.getLogger("aioray")

ALIVE, DEAD = "ALIVE", "DEAD"


class _Actor:
    __slots__ = (
        "aid",
        "conn",
        "death",
        "env_failed",
        "inflight",
        "lost",
        "next_send",
        "queue",
        "ready",
        "sent_seq",
        "state",
        "tickets",
        "unschedulable",
        "version",
        "watching",
    )

    def __init__(self, aid: bytes) -> None:
        self.aid = aid
        self.state = "PENDING_CREATION"
        self.version = 0
        self.conn: rpc.Connection | None = None
        self.death = ""
        self.next_send = 0  # next sequence number allowed into the queue
        self.sent_seq = -1  # the last call handed to the connection (for push_now)
        self.tickets = itertools.count()  # sequence numbers, taken in callers' threads
        self.ready: dict[int, TaskEntry] = {}
        self.queue: collections.deque[TaskEntry] = collections.deque()
        self.inflight: dict[bytes, TaskEntry] = {}
        self.lost: list[TaskEntry] = []  # in flight when the connection dropped
        self.watching = False
        self.unschedulable = False  # dead because it could never be placed
        self.env_failed = False  # dead because its runtime env could not be set up


def _requeue(a: _Actor, task: TaskEntry) -> None:
    """Put a call that was in flight back in the send queue, in submission order: the
    replies of a dropped connection fail first to last, and each goes before the calls
    submitted after it (appending each at the front would send them back to front)."""
    seq, queue = task.spec["seq"], a.queue
    i = 0
    while i < len(queue) and queue[i].spec["seq"] < seq:
        i += 1
    queue.insert(i, task)


class ActorSubmitter:
    def __init__(self, cw: ActorSubmitterHost) -> None:
        self.cw = cw
        self.actors: dict[bytes, _Actor] = {}
        self._lock = threading.Lock()
        self._handles: dict[bytes, int] = {}
        self._pending_calls: dict[bytes, int] = {}
        self._escaped: set[bytes] = set()
        self._created: dict[bytes, bool] = {}  # actors this process created -> detached
        self._doomed: set[bytes] = set()  # killed by this process: no call pushed directly
        # Calls a caller thread wrote, by task id, while in flight: that thread may read
        # the reply itself (reply_reads.py).
        self.thread_pushed: dict[bytes, _Actor] = {}

    def __repr__(self) -> str:
        return f"<ActorSubmitter actors={len(self.actors)}>"

    # -- creation --------------------------------------------------------------------------
    async def create(self, request: ActorRequest, task: TaskEntry) -> CreateActorReply:
        ready: asyncio.Future[TaskEntry] = self.cw.loop.create_future()
        self.cw.submitter.prepare(task, ready.set_result)
        await ready
        gcs = await self.cw.gcs_connection()
        body: CreateActor = {**request, "spec": task.spec}
        reply: CreateActorReply = await gcs.call("create_actor", body, task.out_buffers)
        if "error" in reply:
            raise (ActorAlreadyExistsError if reply.get("exists") else ValueError)(reply["error"])
        if reply["aid"] == request["aid"]:
            self._created[reply["aid"]] = request["detached"]
        return reply

    # -- handles (any thread) --------------------------------------------------------------
    def add_handle(self, aid: bytes, creator: bool) -> None:
        with self._lock:
            self._handles[aid] = self._handles.get(aid, 0) + 1

    def remove_handle(self, aid: bytes) -> None:
        with self._lock:
            n = self._handles.get(aid, 0) - 1
            if n > 0:
                self._handles[aid] = n
                return
            self._handles.pop(aid, None)
            owned = aid in self._created and not self._created[aid]
            if not owned or aid in self._escaped or self.cw.closing:
                return
        self.cw.post(self._terminate, aid)

    def owns_actors(self) -> bool:
        """True while a non-detached actor this process created may be alive."""
        return any(not detached for detached in self._created.values())

    def mark_escaped(self, aid: bytes) -> None:
        with self._lock:
            self._escaped.add(aid)

    def reserve_call(self, aid: bytes, meta: ActorMeta) -> None:
        """Count a call against max_pending_calls (caller's thread)."""
        limit = meta.get("max_pending_calls", -1)
        with self._lock:
            n = self._pending_calls.get(aid, 0)
            if 0 < limit <= n:
                raise PendingCallsLimitExceeded(
                    f"The actor {meta['cls']} ({aid.hex()}) has {n} pending calls "
                    f"(max_pending_calls={limit})."
                )
            self._pending_calls[aid] = n + 1

    def _release_call(self, aid: bytes) -> None:
        with self._lock:
            self._pending_calls[aid] = max(0, self._pending_calls.get(aid, 0) - 1)

    def record_of(self, aid: bytes) -> _Actor:
        """(any thread) The record of this process's calls to ``aid``, made if need be. A
        handle keeps it: ``.remote()`` numbers a call with its ``tickets`` and, when calls
        are in flight (a burst), posts the call without asking ``push_now``."""
        a = self.actors.get(aid)
        if a is None:  # (setdefault is atomic: racing threads share one record)
            a = self.actors.setdefault(aid, _Actor(aid))
        return a

    def tickets_of(self, aid: bytes) -> itertools.count[int]:
        """(any thread) The sequence numbers of this process's calls to ``aid``: ``next``
        of it numbers a call, which the caller must then submit (a number never
        submitted would hold back every later call). One counter per actor, shared by
        its handles here."""
        return self.record_of(aid).tickets

    def doom(self, aid: bytes) -> None:
        """(any thread) This process killed ``aid`` (``ray.kill``) and posted ``killed``:
        from now on its calls go through the loop, which fails them once that ran."""
        self._doomed.add(aid)

    def _terminate(self, aid: bytes) -> None:
        spec: TaskSpec = {
            "aid": aid,
            "m": "__ray_terminate__",
            "name": "__ray_terminate__",
            "nret": 0,
            "job": self.cw.job_id,
        }
        spec["tid"] = self.cw.ids.task_id(self.cw.job_id)
        spec["seq"] = next(self.tickets_of(aid))
        self._pending_calls[aid] = self._pending_calls.get(aid, 0) + 1
        self.submit(TaskEntry(spec, [], None, [], {}, 0, False, None, ()))

    # -- calls (loop) ----------------------------------------------------------------------
    def _actor(self, aid: bytes) -> _Actor:
        a = self.actors.get(aid)
        if a is None:  # (a handle made it, usually: no call to record_of per call)
            a = self.record_of(aid)
        if not a.watching and a.state != DEAD:
            a.watching = True
            self.cw.spawn(self._watch(a))
        return a

    def submit(self, task: TaskEntry) -> None:
        """(loop) Submit a call numbered by ``ticket``: it is sent in its number's turn."""
        a = self._actor(task.spec["aid"])
        self.cw.submitter.prepare(task, partial(self._ready, a, task.spec["seq"]))

    def push_now(self, task: TaskEntry) -> bool:
        """(a caller thread) Push a numbered call from this thread if
        its turn has come and the actor is connected (the module's essay); False, with
        nothing left behind, if it must be submitted through the loop."""
        spec = task.spec
        a = self.actors.get(spec["aid"])
        seq = spec["seq"]
        # (in a burst of calls the first test fails: it comes first, the others cost)
        if a is None or a.next_send != seq or a.inflight or a.sent_seq != seq - 1:
            return False  # (calls in flight: a burst, which the loop writes together)
        conn = a.conn
        if conn is None or a.state != ALIVE or a.queue or task.dep_ids:
            return False
        if spec.get("nret") == STREAMING:  # (its items come as notices the loop must read)
            return False
        blob = task.args_blob
        if blob is not None and blob.contained_refs:
            return False
        if spec["aid"] in self._doomed or self.cw.closing or self.cw.in_loop_thread():
            return False
        tid = task.task_id
        written: list[int] = []
        try:
            if blob is not None:
                task.out_buffers = [blob.data, *blob.buffers]
            a.inflight[tid] = task  # (before the write: the reply may be read before it)
            task.state = "running"
            reply = partial(self._on_reply, a, task)
            pushed = conn.call_then_now("push_actor_task", spec, task.out_buffers, reply, written)
            if pushed:
                task.push_seq = pushed  # (the caller may read the reply itself)
                self.thread_pushed[tid] = a
                self.cw.lazy_posts.post(reply_reads.read_check, conn, pushed)
                self._turn_taken(a, seq)
        except BaseException:  # (Ctrl-C in the middle: .remote() posts submit_if_lost)
            if written:
                self._turn_taken(a, seq)  # (again: it changes nothing the second time)
                self.cw.post(conn.resume_reads)  # (its reply is the loop's to read)
            else:
                a.inflight.pop(tid, None)
            raise
        if not pushed:
            # (if the actor was declared dead meanwhile, the loop failed the call: its
            # submission then only moves the turn on, _flush skips a finished call)
            a.inflight.pop(tid, None)
            return False
        events = self.cw.task_events
        if events is not None and "noev" not in spec:
            events += pack_row(tid, SUBMITTED_TO_WORKER, spec.get("at", 0), time.time())
        return True

    def _turn_taken(self, a: _Actor, seq: int) -> None:
        """(the thread that wrote call ``seq``) The next number's turn; wake the loop if
        that call already waits in ``ready`` (it came while this thread held the turn)."""
        a.sent_seq = seq
        if a.next_send == seq:  # (after the write: the loop may send the next one now)
            a.next_send = seq + 1
        if seq + 1 in a.ready:
            self.cw.post(self._move_ready, a)

    def submit_if_lost(self, task: TaskEntry) -> None:
        """(loop) Submit a numbered call unless it already was: its thread was
        interrupted (Ctrl-C) between numbering it and posting it. Posted after whatever
        that thread posted before, so a submission made is seen here (a call waiting
        for its arguments may be prepared twice: its turn takes it once)."""
        a = self._actor(task.spec["aid"])
        seq = task.spec["seq"]
        if task.state == "finished" or task.task_id in a.inflight:
            return
        if seq < a.next_send or seq in a.ready:
            return
        self.submit(task)

    def _ready(self, a: _Actor, seq: int, task: TaskEntry) -> None:
        a.ready[seq] = task
        while a.next_send in a.ready:  # (_move_ready, without a call per call)
            a.queue.append(a.ready.pop(a.next_send))
            a.next_send += 1
        self._flush(a)

    def _move_ready(self, a: _Actor) -> None:
        """(loop) Calls whose turn has come enter the send queue, in order; send them."""
        while a.next_send in a.ready:
            a.queue.append(a.ready.pop(a.next_send))
            a.next_send += 1
        self._flush(a)

    def _flush(self, a: _Actor) -> None:
        if a.state == DEAD:
            while a.queue:
                task = a.queue.popleft()
                if task.state != "finished":  # (failed already, e.g. cancelled)
                    self._fail(a, task)
            return
        conn = a.conn
        if a.state != ALIVE or conn is None or conn.is_closed:
            return
        while a.queue:
            task = a.queue.popleft()
            if task.state == "finished":  # cancelled before it was sent
                continue
            try:
                reply = partial(self._on_reply, a, task)
                conn.call_then("push_actor_task", task.spec, task.out_buffers, reply)
            except ConnectionError:
                a.queue.appendleft(task)
                return
            a.inflight[task.task_id] = task
            a.sent_seq = task.spec["seq"]
            task.state = "running"
            events = self.cw.task_events
            if events is not None and "noev" not in task.spec:
                spec = task.spec
                events += pack_row(spec["tid"], SUBMITTED_TO_WORKER, spec.get("at", 0), time.time())

    def _on_reply(
        self,
        a: _Actor,
        task: TaskEntry,
        reply: tuple[PushReply, list[Buffer]] | None,
        exc: BaseException | None,
    ) -> None:
        """The call's reply, as soon as it is read (rpc.Connection.call_then), or its error."""
        if task.state == "finished":  # already failed when the actor was declared dead
            return
        a.inflight.pop(task.task_id, None)
        if task.push_seq:  # (a thread wrote it: none reads it now)
            self.thread_pushed.pop(task.task_id, None)
        if isinstance(exc, ConnectionError):
            if a.state == DEAD or task.cancelled:
                self._fail(a, task, "The actor died unexpectedly before finishing this task.")
            elif task.attempts_left == 0:
                a.lost.append(task)  # its error depends on whether the actor comes back
            else:
                if task.attempts_left > 0:
                    task.attempts_left -= 1
                _requeue(a, task)  # sent again once the actor is back
            return
        self._release_call(a.aid)
        if exc is not None:
            self.cw.submitter.fail(task, ActorDiedError(f"actor call failed: {exc}"))
            return
        body, bufs = reply  # type: ignore[misc]  # (no error: a reply)
        if "o" in body:
            self.cw.expect_logs(body)
        self.cw.submitter.finish(task, parse_returns(body, bufs))
        if not a.inflight and a.conn is not None:  # idle: lent to the next caller thread
            a.conn.pause_reads()

    def thread_read(
        self, a: _Actor, task: TaskEntry, body: PushReply, objs: list[StoredObject], at: float
    ) -> None:
        """(the caller thread that read the call's reply itself, reply_reads.py) The call
        out of flight, the end of it posted to the loop lazily."""
        tid = task.task_id
        a.inflight.pop(tid, None)
        self.thread_pushed.pop(tid, None)
        self._release_call(a.aid)
        self.cw.lazy_posts.post(self._replied, task, objs, at)

    def _replied(self, task: TaskEntry, objs: list[StoredObject], at: float) -> None:
        """(loop) The end of a call whose reply a caller thread read itself."""
        if task.state != "finished":
            self.cw.submitter.finish(task, objs, at=at)

    def _fail(self, a: _Actor, task: TaskEntry, why: str = "") -> None:
        self._release_call(a.aid)
        err: type[Exception] = ActorUnschedulableError if a.unschedulable else ActorDiedError
        if a.env_failed:  # Ray: the calls of such an actor raise RuntimeEnvSetupError
            err = RuntimeEnvSetupError
        self.cw.submitter.fail(task, err(why or a.death or "The actor is dead."))

    def cancel(self, object_id: bytes, force: bool) -> bool:
        """Cancel an actor call producing ``object_id``; False if it is not one of ours."""
        tid = ids.task_id_of(object_id)
        for a in list(self.actors.values()):  # (a copy: handles add records from any thread)
            waiting = [t for t in (*a.queue, *a.ready.values()) if t.task_id == tid]
            if waiting:  # not sent yet: fail it where it stands; _flush skips it
                self._release_call(a.aid)
                self.cw.submitter.fail(waiting[0], TaskCancelledError(tid.hex()))
                return True
            task = a.inflight.get(tid)
            if task is not None and a.conn is not None and not a.conn.is_closed:
                task.cancelled = True
                a.conn.notify("cancel_task", [tid, force])
                return True
        return False

    # -- following the actor's state -------------------------------------------------------
    async def _watch(self, a: _Actor) -> None:
        try:
            while a.state != DEAD and not self.cw.closing:
                gcs = await self.cw.gcs_connection()  # reconnects after a GCS restart
                try:
                    info: ActorInfo = await gcs.call("wait_actor", [a.aid, a.version])
                except rpc.ConnectionLost:
                    continue  # the GCS went away mid-poll: ask it (or its successor) again
                await self._apply(a, info)
        except ConnectionError:
            if not self.cw.closing:
                self._apply_dead(a, "The GCS is unreachable; the actor's state is unknown.")
        finally:
            a.watching = False

    async def _apply(self, a: _Actor, info: ActorInfo) -> None:
        if info["state"] == DEAD:
            a.unschedulable = bool(info.get("unschedulable"))
            a.env_failed = bool(info.get("runtime_env_failed"))
            self._apply_dead(a, info.get("death") or "The actor is dead.")
            return
        a.version = info["version"]
        a.state = info["state"]
        lost, a.lost = a.lost, []
        for task in lost:
            self._release_call(a.aid)
            self.cw.submitter.fail(
                task,
                ActorUnavailableError(
                    "The actor is temporarily unavailable (it restarted); the call may or "
                    "may not have run."
                ),
            )
        if a.state != ALIVE:
            a.conn = None
            return
        addr = info.get("addr")
        assert addr is not None  # (ALIVE)
        host, port, _wid = addr
        try:
            conn = await self.cw.connect_peer(host, port)
        except ConnectionError:
            a.state = "UNREACHABLE"  # the GCS will report the death or the restart
            return
        a.conn = conn
        conn.allow_thread_writes()  # (a caller thread may push calls itself: push_now,
        conn.allow_thread_reads()  # and read the reply itself: reply_reads.py)
        conn.on_close.append(lambda c: self._disconnected(a, c))
        self._flush(a)

    def _disconnected(self, a: _Actor, conn: rpc.Connection) -> None:
        if a.conn is conn:
            a.conn = None
            if a.state == ALIVE:
                a.state = "UNREACHABLE"

    def killed(self, aid: bytes, death: str) -> None:
        """(loop) This process killed the actor for good (``ray.kill``): its calls fail
        from now on, as the GCS will say, without waiting for the GCS to say it (a call
        made right after the kill could otherwise reach the worker before its exit)."""
        a = self.actors.get(aid)
        if a is not None and a.state != DEAD:
            self._apply_dead(a, death)

    def _apply_dead(self, a: _Actor, death: str) -> None:
        a.state = DEAD
        a.death = death
        a.conn = None
        for task in [*a.inflight.values(), *a.lost]:
            a.inflight.pop(task.task_id, None)
            self._fail(a, task)
        a.lost = []
        self._flush(a)

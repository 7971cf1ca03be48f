"""Owner-driven, lease-based submission of normal tasks (docs/architecture.md, "Task path").

All on the CoreWorker's loop, but for one shortcut: a caller thread pushes a task
with nothing to prepare itself, on an idle lease of its class that it claims
(``push_now``; the claim protocol is in leases.py), without waking the loop.

1. ``submit``: wait for the task's owned dependencies; inline small values.
2. Queue it under its scheduling class (resource shape + runtime env).
3. Ask the local raylet for worker leases for that class, at most
   MAX_PENDING_LEASES_PER_CLASS at once and never more than queued tasks.
4. Push tasks straight to leased workers. One task in flight per worker, as in
   Ray, unless there is a real backlog (several queued tasks per lease) and the
   function is measured to be tiny (a moving average of the execution time workers
   report, under PIPELINE_BELOW_S): then it may queue behind other tiny tasks on a
   busy worker, hiding the round trip, up to PIPELINE_QUEUE_S of work by that average
   (at most MAX_TASKS_IN_FLIGHT_PER_WORKER): enough that the worker does not run dry
   while this loop waits for the GIL (a caller thread may hold it for 5 ms).
   Nothing queues behind a task not known to be tiny, and a few tasks never queue
   behind each other while another worker could be leased.
5. A reply stores the results; an idle lease lingers LEASE_LINGER_S for the next
   task of its class, then goes back to the raylet. (A lease's life: leases.py.)

Failures: a connection to a worker that drops with tasks in flight means the worker
died; those tasks are retried on a new lease while ``max_retries`` allows, else
fail with WorkerCrashedError. If the raylet's memory monitor said it killed the
worker for lack of memory (``worker_oom_killed``, before the kill), the failure is
an OutOfMemoryError carrying its message instead. Application errors retry only under
``retry_exceptions``. A cancelled task is never retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from aioray._private.core.borrowing import pairs_of
from aioray._private.core.memory_store import StoredObject
from aioray._private.core.memory_store import parse_returns as parse_returns
from aioray._private.owner import reply_reads
from aioray._private.owner.leases import Lease as Lease
from aioray._private.owner.leases import Leases
from aioray._private.owner.leases import SchedulingClass as SchedulingClass
from aioray._private.owner.raylet_clients import RayletClients, lease_body, raylet_answers
from aioray._private.owner.task_events import (
    FAILED,
    FINISHED,
    PENDING_NODE_ASSIGNMENT,
    SUBMITTED_TO_WORKER,
    error_of,
    pack_row,
)
from aioray._private.rpc import rpc
from aioray._private.wire import config, ids, serialization
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    Dependency,
    PushReply,
    RequestLease,
    WorkerOomKilled,
)
from aioray._private.wire.task_spec import (
    DEP_INLINE,
    DEP_OWNER,
    DEP_SHM,
    STREAMING,
    TaskEntry,
)
from aioray.exceptions import (
    NodeDiedError,
    OutOfMemoryError,
    RaySystemError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import SubmitterHost

logger = logging.getLogger("aioray")

# Queued tasks per lease that make a backlog: only then may tiny tasks queue on a busy
# worker (below it, a few tasks are spread over leases instead).
BACKLOG_PER_LEASE = 4
# A task whose result is an error it raised: the executor's row has the message.
APP_ERROR = ("TASK_EXECUTION_EXCEPTION", "")


class TaskSubmitter:
    def __init__(self, cw: SubmitterHost) -> None:
        self.cw = cw
        self.tasks: dict[bytes, TaskEntry] = {}
        self.classes: dict[tuple[object, ...], SchedulingClass] = {}
        self.exec_time: dict[bytes, float] = {}  # function id -> moving average (s)
        self.remote_raylets = RayletClients(cw)
        self.leases = Leases(cw, self._dispatch, self.fail)  # their life after the answer

    def _pipeline_limit(self, fid: bytes) -> int:
        """Tasks of ``fid`` one worker may have in flight: 1 unless they are tiny."""
        avg = self.exec_time.get(fid)
        if avg is None or avg >= config.PIPELINE_BELOW_S:
            return 1
        by_time = (
            int(config.PIPELINE_QUEUE_S / avg) if avg > 0 else config.MAX_TASKS_IN_FLIGHT_PER_WORKER
        )
        return max(2, min(config.MAX_TASKS_IN_FLIGHT_PER_WORKER, by_time))

    def __repr__(self) -> str:
        return f"<TaskSubmitter tasks={len(self.tasks)} classes={len(self.classes)}>"

    # -- 1. dependencies --------------------------------------------------------------------
    def submit(self, task: TaskEntry) -> None:
        self.tasks[task.task_id] = task
        self.prepare(task, self._enqueue)

    def prepare(self, task: TaskEntry, then: Callable[[TaskEntry], None]) -> None:
        """Wait for the task's owned dependencies, describe them, then call ``then``."""
        store, owned = self.cw.memory_store, self.cw.owned
        waiting = [
            store.wait_for(oid, self.cw.loop)
            for oid in task.dep_ids
            if oid not in store and oid in owned
        ]
        if not waiting:
            self._deps_ready(task, then)
            return
        remaining = [len(waiting)]

        def one_ready(_: asyncio.Future[StoredObject]) -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and task.state == "pending_deps":
                self._deps_ready(task, then)

        for fut in waiting:
            fut.add_done_callback(one_ready)

    def _deps_ready(self, task: TaskEntry, then: Callable[[TaskEntry], None]) -> None:
        blob = task.args_blob
        if blob is None and not task.dep_refs:  # no arguments: nothing to describe or lend
            then(task)
            return
        bufs: list[Buffer] = []
        if blob is not None:
            bufs.append(blob.data)
            bufs.extend(blob.buffers)
        descs: list[Dependency] = []
        store = self.cw.memory_store
        for ref in task.dep_refs:
            oid = ref._id
            obj = store.get(oid)
            if obj is None:
                descs.append((DEP_OWNER, oid, ref._owner))
            elif obj.in_shm:
                assert obj.node_id is not None
                descs.append((DEP_SHM, oid, obj.node_id, ref._owner))
            elif obj.is_error:
                # A failed argument fails the task without running it (as in Ray).
                self.finish(task, [obj] * len(task.return_ids))
                return
            else:
                descs.append((DEP_INLINE, oid, len(obj.buffers)))
                assert obj.data is not None  # (inline)
                bufs.append(obj.data)
                bufs.extend(obj.buffers)
        if descs:  # (the worker reads a missing "d" as none)
            task.spec["d"] = descs
        task.out_buffers = bufs
        lent = pairs_of(blob.contained_refs) if blob is not None else []
        for ref in task.dep_refs:
            obj = store.get(ref._id)
            if obj is not None and obj.contained:
                lent.extend(obj.contained)
        if not lent:
            then(task)
            return
        # Refs inside the arguments: the worker borrows them (borrowing.py).
        task.spec["cr"] = lent
        self.cw.borrowing.lend(lent, lambda: then(task))

    def _requeue(self, task: TaskEntry) -> None:
        """Run the task again: a new worker borrows the refs inside its arguments anew."""
        # A new attempt: a new spec, as the events recorded for the last one hold the old.
        task.spec = {**task.spec, "at": task.spec.get("at", 0) + 1}
        lent = task.spec.get("cr")
        if lent:
            self.cw.borrowing.lend(lent, lambda: self._enqueue(task))
        else:
            self._enqueue(task)

    # -- 2-4. queue, lease, push ---------------------------------------------------------------
    def _enqueue(self, task: TaskEntry) -> None:
        cls = self.classes.get(task.sched_key)
        if cls is None:
            env = task.spec.get("env")
            cls = self.classes[task.sched_key] = SchedulingClass(
                task.sched_key, task.resources, env, task.spec.get("ss")
            )
        task.state = "queued"
        events = self.cw.task_events
        if events is not None and "noev" not in task.spec:
            spec = task.spec
            events += pack_row(spec["tid"], PENDING_NODE_ASSIGNMENT, spec.get("at", 0), time.time())
        queue = cls.queue
        queue.append(task)
        backlog = BACKLOG_PER_LEASE * max(1, len(cls.leases))
        if len(queue) > max(backlog, config.MAX_PENDING_LEASES_PER_CLASS):
            # Past both lengths _dispatch looks at (the backlog that lets tiny tasks
            # queue on a worker, and the lease requests): the last dispatch found no
            # room, and room comes only with a reply or a lease, which dispatch.
            return
        self._dispatch(cls)

    def _dispatch(self, cls: SchedulingClass, replied: Lease | None = None) -> None:
        """Push queued tasks to the leases with room; ask for leases the queue needs.

        ``replied``: the lease a reply just came back on. Every dispatch leaves no
        lease with room while tasks wait, and a reply frees a slot on its own lease
        only, so that lease alone is offered the queue (not every lease walked again).
        """
        queue = cls.queue
        leases = cls.leases
        if replied is not None:
            leases = [replied] if replied in leases else []
        elif queue and cls.parked:
            self.leases.unpark(cls)  # (the loop's claim: a lease still parked is a thread's)
        limit_fid, limit = None, 1
        while queue:
            if len(queue) >= BACKLOG_PER_LEASE * max(1, len(cls.leases)):  # tiny tasks may queue
                fid = queue[0].spec["fid"]
                if fid is not limit_fid:
                    limit_fid, limit = fid, self._pipeline_limit(fid)
                tiny = limit > 1
            else:
                tiny = False
            best = None
            for lease in leases:
                ok = lease.inflight == 0 or (tiny and not lease.unknown and lease.inflight < limit)
                if ok and not lease.parked and (best is None or lease.inflight < best.inflight):
                    best = lease
            if best is None:
                break
            self._push(queue.popleft(), best, tiny)
        want = min(len(queue), config.MAX_PENDING_LEASES_PER_CLASS) - cls.pending_leases
        for _ in range(want):
            self._request_lease(cls)
        if not queue:
            for lease in cls.leases:
                if lease.inflight or lease.parked:  # (parked: idle already, or a thread's)
                    continue
                if cls.strategy == "SPREAD":  # placed anew each time: a lingering lease
                    if lease.linger is None:  # would pin the next task
                        lease.linger = self.cw.loop.call_later(0.0, self.leases.give_back, lease)
                    continue
                self.leases.park(lease)

    def _request_lease(self, cls: SchedulingClass) -> None:
        cls.pending_leases += 1
        body: RequestLease = lease_body(cls.resources, cls.env, self.cw.worker_id, cls.strategy)
        # The memory monitor kills retriable work first.
        body["retriable"] = bool(cls.queue) and cls.queue[0].attempts_left != 0
        self.remote_raylets.request_lease(body, partial(self.leases.granted, cls))

    def _push(self, task: TaskEntry, lease: Lease, tiny: bool) -> None:
        spec = task.spec  # (a linger armed stays: it finds the lease busy, leases.py)
        sent = lease.conn.state.setdefault("fids", set())
        if spec["fid"] not in sent:
            sent.add(spec["fid"])
            spec = {**spec, "fn": task.fn_bytes}
        if lease.gpus:
            spec = {**spec, "gpu": lease.gpus}
        task.state = "running"
        task.lease = lease
        events = self.cw.task_events
        if events is not None and "noev" not in spec:
            events += pack_row(spec["tid"], SUBMITTED_TO_WORKER, spec.get("at", 0), time.time())
        lease.inflight += 1
        lease.unknown += not tiny
        try:
            reply = partial(self._on_reply, task, lease, tiny)
            lease.conn.call_then("push_task", spec, task.out_buffers, reply)
        except ConnectionError:
            lease.inflight -= 1
            self.leases.lost(lease)
            self._crashed(task)

    def push_now(self, task: TaskEntry) -> bool:
        """(a caller thread) Push ``task`` from this thread on an idle
        lease of its class that it claims (leases.py), without waking the loop; False,
        with nothing done, if the task must be submitted through the loop: it has
        dependencies or refs to lend, its class has tasks queued or no lease parked,
        this is the loop's thread, or the process is closing.

        Once the lease is claimed the task is pushed exactly once: from here, or, when
        the connection cannot be written now (frames queued, closing, TLS), by the loop
        (``_push_claimed``). The task is registered and the lease counted busy before
        the write: its reply can be read before ``writev`` returns."""
        cls = self.classes.get(task.sched_key)
        if cls is None or not cls.parked or cls.queue or task.dep_ids:
            return False  # (in a burst of tasks ``parked`` is empty: the rest is not paid)
        blob = task.args_blob
        if blob is not None and blob.contained_refs:
            return False
        spec = task.spec
        if spec.get("nret") == STREAMING:  # (its items come as notices the loop must read)
            return False
        if self.cw.closing or self.cw.in_loop_thread():
            return False
        claimed: list[Lease] = []
        written: list[int] = []
        try:
            if not self.leases.claim(cls, claimed):
                return False
            lease = claimed[0]
            if blob is not None:
                task.out_buffers = [blob.data, *blob.buffers]
            self.tasks[task.task_id] = task
            task.state = "running"
            task.lease = lease
            lease.inflight = lease.unknown = 1  # (the loop leaves a parked lease alone)
            events = self.cw.task_events
            if events is not None and "noev" not in spec:
                now = time.time()
                events += pack_row(spec["tid"], PENDING_NODE_ASSIGNMENT, spec.get("at", 0), now)
            sent = lease.conn.state.setdefault("fids", set())
            fid = spec["fid"]
            if fid not in sent:
                spec = {**spec, "fn": task.fn_bytes}
            if lease.gpus:
                spec = {**spec, "gpu": lease.gpus}
            reply = partial(self._on_reply, task, lease, False)
            seq = lease.conn.call_then_now("push_task", spec, task.out_buffers, reply, written)
            if seq:
                task.push_seq = seq  # (the caller may read the reply itself: reply_reads.py)
                self.cw.lazy_posts.post(reply_reads.read_check, lease.conn, seq)
        except BaseException:
            if not claimed:
                raise
            # Interrupted (Ctrl-C) after the claim: unless the push went out, the loop
            # pushes it; either way the claim is settled and the task pushed once. A
            # push that went out has its reply read by the loop.
            if not written:
                self.cw.post(self._push_claimed, task, claimed[0])
            else:
                self.cw.post(claimed[0].conn.resume_reads)
            raise
        if not seq:
            self.cw.post(self._push_claimed, task, lease)
            return True
        sent.add(fid)
        if events is not None and "noev" not in spec:
            events += pack_row(spec["tid"], SUBMITTED_TO_WORKER, spec.get("at", 0), time.time())
        return True

    def _push_claimed(self, task: TaskEntry, lease: Lease) -> None:
        """(loop) A push the thread that claimed ``lease`` did not write: the loop's."""
        self.leases.settle(lease)
        lease.inflight = lease.unknown = 0  # (idle when claimed; maybe not counted yet)
        self.tasks[task.task_id] = task
        blob = task.args_blob
        if blob is not None:
            task.out_buffers = [blob.data, *blob.buffers]
        self._push(task, lease, False)

    def submit_if_lost(self, task: TaskEntry) -> None:
        """(loop) Submit ``task`` unless it already was: its submitting thread was
        interrupted (Ctrl-C) somewhere between ``push_now`` and ``post``. Posted after
        whatever that thread posted before, so a submission made is seen here."""
        if task.state == "pending_deps" and task.task_id not in self.tasks:
            self.submit(task)

    def _on_reply(
        self,
        task: TaskEntry,
        lease: Lease,
        tiny: bool,
        reply: tuple[PushReply, list[Buffer]] | None,
        exc: BaseException | None,
    ) -> None:
        """The push's reply, as soon as it is read (rpc.Connection.call_then), or its error."""
        if lease.parked:  # pushed by the caller thread that claimed the idle lease
            self.leases.settle(lease)
        lease.inflight -= 1
        lease.unknown -= not tiny
        replied = None  # (after an error every lease is walked again)
        if isinstance(exc, ConnectionError):
            self.leases.lost(lease)
            self._crashed(task)
        elif exc is not None:
            self.fail(task, RaySystemError(f"push_task failed: {exc}"))
        else:
            body, bufs = reply  # type: ignore[misc]  # (no error: a reply)
            if "o" in body:
                self.cw.expect_logs(body)
            t = body.get("t")
            if t is not None:
                fid = task.spec["fid"]
                avg = self.exec_time.get(fid)
                self.exec_time[fid] = t if avg is None else 0.8 * avg + 0.2 * t
            self._finished(task, body, bufs)
            replied = lease
        self._dispatch(lease.cls, replied)

    def thread_read(
        self, task: TaskEntry, body: PushReply, objs: list[StoredObject], at: float
    ) -> None:
        """(the caller thread that read ``task``'s reply itself, reply_reads.py) The lease
        idle and parked again, the task's end posted to the loop, lazily unless tasks of
        its class wait for a lease."""
        lease = task.lease
        assert lease is not None
        lease.inflight = lease.unknown = 0
        lease.idle_since = time.monotonic()
        cls = lease.cls
        cls.parked.append(lease)  # (still ``parked``: the loop leaves it to threads)
        if cls.queue:
            self.cw.post(self.replied, task, lease, body, objs, at)
        else:
            self.cw.lazy_posts.post(self.replied, task, lease, body, objs, at)

    def replied(
        self, task: TaskEntry, lease: Lease, body: PushReply, objs: list[StoredObject], at: float
    ) -> None:
        """(loop) The reply a caller thread read itself at ``at`` (reply_reads.py): the
        task's end. The thread counted the lease idle and parked it again already."""
        t = body.get("t")
        if t is not None:
            fid = task.spec["fid"]
            avg = self.exec_time.get(fid)
            self.exec_time[fid] = t if avg is None else 0.8 * avg + 0.2 * t
        self.finish(task, objs, at=at)
        self.leases.parked_by_thread(lease)
        if lease.cls.queue:
            self._dispatch(lease.cls)

    # -- 5. results and failures ------------------------------------------------------------------
    def _finished(self, task: TaskEntry, body: PushReply, bufs: list[Buffer]) -> None:
        if body.get("x") and self._should_retry_error(task, body, bufs):
            task.attempts_left -= 1 if task.attempts_left > 0 else 0
            self._requeue(task)
            return
        self.finish(task, parse_returns(body, bufs))

    def _should_retry_error(self, task: TaskEntry, body: PushReply, bufs: list[Buffer]) -> bool:
        if task.cancelled or task.attempts_left == 0 or not task.retry_exceptions:
            return False
        if task.retry_exceptions is True:
            return True
        try:
            err = serialization.deserialize(bufs[0], bufs[1 : 1 + body["r"][0][1]])
        except Exception:
            return False
        cause = err.cause if isinstance(err, RayTaskError) else err
        return isinstance(cause, tuple(task.retry_exceptions))

    def _crashed(self, task: TaskEntry) -> None:
        oom = task.lease.oom if task.lease is not None else None
        if task.cancelled:
            self.fail(task, TaskCancelledError(task.task_id.hex()))
        elif task.attempts_left != 0:
            if task.attempts_left > 0:
                task.attempts_left -= 1
            why = "was killed for lack of memory" if oom else "died"
            extras = self.cw.task_event_extras
            if extras is not None and "noev" not in task.spec:  # this attempt failed
                err = error_of(OutOfMemoryError(oom) if oom else WorkerCrashedError())
                spec = task.spec
                extras.append((spec["tid"], spec.get("at", 0), FAILED, time.time(), *err))
            logger.info("retrying %r after its worker %s", task, why)
            self._requeue(task)
        elif oom:
            name, tid = task.spec.get("name"), task.task_id.hex()
            self.fail(
                task,
                OutOfMemoryError(
                    f"Task {name} (task ID: {tid}) was killed due to the node running low "
                    f"on memory, and it has no retries left (max_retries).\n{oom}"
                ),
            )
        else:
            self._fail_crashed(task)

    def _fail_crashed(self, task: TaskEntry) -> None:
        """No retries left: WorkerCrashedError, or NodeDiedError if the raylet that leased
        the worker no longer answers (Ray asks that raylet why its worker died; no answer
        means the node died)."""
        lease = task.lease
        if lease is None:
            self.fail(task, WorkerCrashedError())
            return
        self.cw.spawn(self._fail_after_asking(task, lease.raylet))

    async def _fail_after_asking(self, task: TaskEntry, raylet: rpc.Connection) -> None:
        alive = await raylet_answers(raylet, 2 * config.NODE_TIMEOUT_S)
        if task.state == "finished":  # failed meanwhile (e.g. the local raylet was lost)
            return
        if alive:
            self.fail(task, WorkerCrashedError())
            return
        self.fail(
            task,
            NodeDiedError(
                "Task failed due to the node (where this task was running) was dead or "
                f"unavailable.\n\nIts {raylet.name or 'raylet'} does not answer. This can "
                "happen if the instance where the node was running failed, the node was "
                "preempted, or its raylet crashed unexpectedly (e.g., due to OOM).\n\nTo see "
                "node death information, use `aioray list nodes` or the dashboard."
            ),
        )

    def handle_worker_oom_killed(
        self, conn: rpc.Connection, body: WorkerOomKilled, _: list[Buffer]
    ) -> bool:
        """The raylet is about to kill a leased worker for memory: remember why."""
        lease_id, why = body
        for cls in self.classes.values():
            for lease in cls.leases:
                if lease.lease_id == lease_id and lease.raylet is conn:  # ids are per raylet
                    lease.oom = why
                    return True
        return False

    def fail(self, task: TaskEntry, exc: BaseException) -> None:
        """Store ``exc`` as every return value of the task."""
        so = serialization.serialize(exc, is_error=True)
        obj = StoredObject(so.data, so.buffers, is_error=True)
        # A stream has no return ids: its error becomes its last item.
        self.finish(task, [obj] * max(1, len(task.return_ids)), exc)

    def finish(
        self,
        task: TaskEntry,
        objs: list[StoredObject],
        exc: BaseException | None = None,
        at: float | None = None,
    ) -> None:
        """Store the task's return values and release what it pinned.

        ``exc``: the failure stored as its values, if it failed here (not in its code);
        ``at``: when its reply was read, if not now."""
        task.state = "finished"
        events, extras = self.cw.task_events, self.cw.task_event_extras
        if events is not None and extras is not None and "noev" not in task.spec:
            spec = task.spec
            if exc is not None:
                extras.append((spec["tid"], spec.get("at", 0), FAILED, time.time(), *error_of(exc)))
            elif objs and objs[0].is_error:  # raised in the task (the executor says how)
                extras.append((spec["tid"], spec.get("at", 0), FAILED, time.time(), *APP_ERROR))
            else:
                events += pack_row(spec["tid"], FINISHED, spec.get("at", 0), at or time.time())
        self.tasks.pop(task.task_id, None)
        if task.spec.get("nret") == STREAMING:
            self.cw.streams.task_done(task.task_id, objs)
        # An error reply carries one entry even for num_returns=0.
        for oid, obj in zip(task.return_ids, objs, strict=False):
            self.cw.store_result(oid, obj)
        task.out_buffers = ()
        if self.cw.lineage.keep(task, objs):
            return  # its arguments stay: it may run again to rebuild a lost result
        task.dep_refs = ()  # drop the argument pins (in the loop: frees are posted)
        task.args_blob = None

    # -- cancellation and shutdown ---------------------------------------------------------
    def cancel(self, object_id: bytes, force: bool, recursive: bool = True) -> None:
        self.cancel_task(ids.task_id_of(object_id), force, recursive)

    def cancel_task(self, task_id: bytes, force: bool, recursive: bool = True) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return
        task.cancelled = True
        if task.state == "pending_deps":
            self.fail(task, TaskCancelledError(task.task_id.hex()))
        elif task.state == "queued":
            cls = self.classes.get(task.sched_key)
            if cls is not None and task in cls.queue:
                cls.queue.remove(task)
            self.fail(task, TaskCancelledError(task.task_id.hex()))
        elif task.state == "running" and task.lease and not task.lease.conn.is_closed:
            task.lease.conn.notify("cancel_task", [task.task_id, force, recursive])

    def fail_all(self, exc: BaseException) -> None:
        for task in list(self.tasks.values()):
            if task.state != "finished":
                self.fail(task, exc)

    def shutdown(self) -> None:
        for cls in self.classes.values():
            for lease in cls.leases:
                if lease.linger is not None:
                    lease.linger.cancel()
            cls.leases.clear()
            cls.parked.clear()
        self.remote_raylets.close()

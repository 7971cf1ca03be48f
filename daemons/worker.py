"""A worker process: a CoreWorker on the main thread's loop, tasks on an execution thread.

The loop keeps answering (pushes, cancels, owner requests, the raylet) while user
code computes. ``push_task`` resolves arguments that must be fetched, then hands
the task to the execution thread through a queue. The thread that ran the task
writes its reply to the caller's socket itself (``rpc.Answer.send_now``) when nothing
must happen on the loop first and no other task waits behind it; otherwise the reply
goes through the CoreWorker's batched ``post`` and is sent from the loop: when refs
inside the return values are lent to the caller, when the task's arguments held
borrowed refs, for a streaming task (its items go out from the loop and must precede
the reply), and while tasks queue here (their replies leave together). A task is
cancelled by raising KeyboardInterrupt in the execution thread; ``force`` exits
the process, which its owner sees as a crash of a task it cancelled. A worker that
exits on purpose (forced cancel, ``exit_worker`` from the raylet) sends its task
events not yet sent first, as Ray's workers do.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aioray.daemons import worker_output
from aioray.daemons._common import setup_worker_logging
from aioray.daemons.actor_host import ActorHost, Job, run_terminate
from aioray.daemons.worker_streams import StreamSender

from aioray._private.core.borrowing import pairs_of
from aioray._private.core.memory_store import StoredObject
from aioray._private.core.metrics_registry import REGISTRY, TaskCounts
from aioray._private.owner import placement_groups, store_client
from aioray._private.owner.core_worker import WORKER, CoreWorker
from aioray._private.owner.object_ref import ObjectRef, set_core_worker
from aioray._private.owner.task_events import (
    EXEC,
    EXIT_SEND_TIMEOUT_S,
    FAILED,
    RUNNING,
    pack_row,
    record_end,
    reply_failed,
)
from aioray._private.rpc import loop as _loop
from aioray._private.rpc import rpc
from aioray._private.rpc.spin_wait import QueueSpin
from aioray._private.wire import config, serialization
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    Address,
    CancelTask,
    DepOwner,
    PushReply,
    Return,
    TaskSpec,
)
from aioray._private.wire.task_spec import (
    DEP_INLINE,
    DEP_OWNER,
    DEP_SHM,
    RET_INLINE,
    RET_SHM,
    STREAMING,
    CallArgs,
    substitute,
)
from aioray.exceptions import ActorExit, RaySystemError, RayTaskError, TaskCancelledError

logger = logging.getLogger(__name__)


class TaskExecutor:
    def __init__(self, cw: CoreWorker) -> None:
        self.cw = cw
        self.functions: dict[bytes, Any] = {}
        self.fn_bytes: dict[bytes, bytes] = {}
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.current: bytes | None = None
        self.cancelled: set[bytes] = set()
        self.queued: dict[bytes, Job] = {}  # waiting for the execution thread
        self.fetching = 0  # tasks whose arguments are still fetched from their owners
        self.streams = StreamSender(cw, self.pack_value)  # num_returns="streaming" items
        self.thread = threading.Thread(target=self._run, name="aioray-exec", daemon=True)
        self.pid = os.getpid()
        self.cuda_env = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.cuda_now = self.cuda_env  # what os.environ holds now
        self._exit_task: asyncio.Task[None] | None = None
        self.actor = ActorHost(self)
        self.task_counts = TaskCounts()  # ray_tasks, as this executor sees them
        cw.task_counts = self.task_counts  # (its gets and waits that block say so)
        REGISTRY.collectors.append(self.task_counts.collect)
        REGISTRY.start()  # a worker reports its task counts (only when they changed)

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "push_task": self.handle_push_task,
            "cancel_task": self.handle_cancel_task,
            "stream_ack": self.streams.handle_stream_ack,
            "exit_if_idle": self.handle_exit_if_idle,
            "is_busy": self.handle_is_busy,
            "exit_worker": self.handle_exit_worker,
            **self.actor.handlers(),
        }

    def handle_exit_if_idle(self, conn: rpc.Connection, body: None, _: list[Buffer]) -> bool:
        """(raylet) May this idle worker go? Not while it owns objects, actors or tasks
        that others may still need (Ray's workers refuse such an exit too)."""
        cw = self.cw
        busy = self.busy or cw.submitter.tasks
        return not (busy or cw.owned or cw.actors.owns_actors())

    def handle_is_busy(self, conn: rpc.Connection, body: None, _: list[Buffer]) -> bool:
        """``is_busy`` (raylet) -> whether a task runs or waits here: asked when the owner of
        this worker's lease died (busy, it is ended: nobody will read the result)."""
        return self.busy

    @property
    def busy(self) -> bool:
        """A task runs or waits here (one whose arguments are still being fetched counts:
        it runs once they are here)."""
        return self.current is not None or bool(self.queued) or self.fetching > 0

    def handle_exit_worker(self, conn: rpc.Connection, code: int, _: list[Buffer]) -> None:
        """``exit_worker`` exit code (notice, from the raylet: ``ray.kill`` of this worker's
        actor, or an idle worker let go): exit now, once the task events not yet sent are
        (the raylet SIGKILLs a worker still there after its grace period). Only this
        worker's raylet may send it, with an int code: anything else is refused, and the
        worker keeps serving."""
        if conn is not self.cw.raylet:
            raise PermissionError("exit_worker is for this worker's raylet to send")
        if type(code) is not int:
            raise TypeError(f"exit_worker takes an int exit code, not {type(code).__name__}")
        self.exit_soon(code)

    def exit_soon(self, code: int) -> None:
        """(loop) Exit on purpose: send the task events not yet sent, then go. No queued
        task starts meanwhile (they go with the process, as when it is SIGKILLed)."""
        if self._exit_task is None:
            while True:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break
            self.queue.put(None)  # the execution thread stops after its current task
            self._exit_task = self.cw.loop.create_task(self._exit(code))

    async def _exit(self, code: int) -> None:
        try:
            await self.cw.event_buffer.send_remaining(EXIT_SEND_TIMEOUT_S)
        finally:  # (its thread has stopped: a worker that does not exit now hangs)
            os._exit(code)

    # -- loop side --------------------------------------------------------------------------
    def handle_push_task(
        self, conn: rpc.Connection, spec: TaskSpec, buffers: list[Buffer]
    ) -> rpc.Answer:
        """``push_task`` task spec (task_spec.py; ``fn`` with the function the first time) +
        argument buffers, from the owner -> the push reply {r: return descriptors, t: execution
        time, o?: output to wait for, x?: an application error} + the return values' buffers."""
        fut = rpc.Answer()
        fn = spec.pop("fn", None)
        if fn is not None:
            self.fn_bytes[spec["fid"]] = fn
        job = Job(spec, buffers, fut, conn)
        if "cr" in spec:
            job.hold(self.cw, spec["cr"])
        remote: list[DepOwner] = [d for d in spec.get("d", ()) if d[0] == DEP_OWNER]
        if remote:
            self.fetching += 1  # (now: the fetch starts on the loop's next turn)
            self.cw.loop.create_task(self._fetch_then_run(job, remote))
        else:
            self.enqueue(job)
        return fut

    def enqueue(self, job: Job) -> None:
        """Hand a job to the execution thread (FIFO); it can be cancelled until it starts."""
        self.queued[job.spec["tid"]] = job
        self.queue.put(job)

    async def _fetch_then_run(self, job: Job, deps: list[DepOwner]) -> None:
        try:
            await self.fetch_deps(job, deps)
        finally:
            self.fetching -= 1
        self.enqueue(job)

    async def fetch_deps(self, job: Job, deps: list[DepOwner]) -> None:
        """Fetch dependencies owned elsewhere into ``job.fetched`` (errors stored as errors)."""
        cw = self.cw
        refs = [ObjectRef(d[1], _owner_of(d[2]), _count=False) for d in deps]
        results = await asyncio.gather(
            *[
                cw.fetch(r) if r._id in cw.memory_store else cw.fetch_from_owner(r, keep=True)
                for r in refs
            ],
            return_exceptions=True,
        )
        for d, obj in zip(deps, results, strict=True):
            if isinstance(obj, BaseException):
                so = serialization.serialize(obj, is_error=True)
                obj = StoredObject(so.data, so.buffers, is_error=True)
            elif obj.contained and d[1] not in cw.memory_store:  # ours until the reply
                job.holds.extend(p[0] for p in obj.contained)
            job.fetched[d[1]] = obj

    def handle_cancel_task(self, conn: rpc.Connection, body: CancelTask, _: list[Buffer]) -> None:
        """``cancel_task`` [task id, force, recursive?] (notice, from the owner): a queued task is
        answered with TaskCancelledError; a running one gets KeyboardInterrupt, or the worker
        exits if ``force``; ``recursive`` cancels the tasks it submitted too."""
        task_id, force = body[0], body[1]
        recursive = body[2] if len(body) > 2 else True
        if self.actor.cancel(task_id):
            return
        if self.current == task_id:
            self.cw.canceled_tasks.add(task_id)  # get_runtime_context().is_canceled()
            if recursive:  # Ray's default: the tasks this task submitted go too
                for child in list(self.cw.submitter.tasks):
                    self.cw.submitter.cancel_task(child, force)
            if force:
                logger.info("force-cancelling task %s: exiting", task_id.hex())
                self.exit_soon(1)
                return
            ident = self.thread.ident or 0
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt)
            )
            self.cw.interrupt_blocking(ident)  # a task blocked in get wakes to see it
        else:
            self.cancelled.add(task_id)
            job = self.queued.pop(task_id, None)
            if job is not None:  # not started: answer now, the thread will skip it
                answer, parts = self.error(job.spec, TaskCancelledError(task_id.hex()), False)
                self.reply(job, answer, parts)

    def reply(self, job: Job, body: PushReply, buffers: list[Buffer]) -> None:
        """(loop) Answer the caller; first lend it the refs inside the return values."""
        lend = body.pop("_lend", None)
        if lend:
            self.cw.borrowing.lend(pairs_of(lend), lambda: self._send_reply(job, body, buffers))
        else:
            self._send_reply(job, body, buffers)

    def answer(self, job: Job, body: PushReply, buffers: list[Buffer], more: bool = False) -> None:
        """(the thread that ran the job) Reply from this thread when nothing must happen on
        the loop before the reply leaves; else through the loop (``reply``). ``more``:
        other calls are queued or running here, so replies will follow; through the
        loop they leave together (one write for many), as a caller's batch wants."""
        if not more and "_lend" not in body and not job.holds and job.spec.get("nret") != STREAMING:
            try:
                if job.fut.send_now(body, buffers):
                    return
            except Exception:  # a bug of ours: the loop still answers, the thread lives on
                logger.exception("answering %s from its thread failed", _name_of(job.spec))
        self.cw.post(self.reply, job, body, buffers)

    def _send_reply(self, job: Job, body: PushReply, buffers: list[Buffer]) -> None:
        job.fut.send(rpc.Reply(body, buffers))
        if job.holds:
            holds, job.holds = job.holds, []
            self.cw.refs.remove_contained(holds)

    # -- execution thread ------------------------------------------------------------------------
    def _run(self) -> None:
        jobs = QueueSpin(self.queue)  # (spins a little while idle: rpc/spin_wait.py)
        while True:
            job = jobs.get()
            if job is None:
                return
            spec = job.spec  # may be malformed (a hostile peer): nothing here may raise
            name = _name_of(spec)
            job_id = (spec.get("job") if isinstance(spec, dict) else None) or b""
            self.task_counts.started(name, job_id)
            try:
                body, bufs = self.execute(job)
            except KeyboardInterrupt:  # a cancel that arrived just as the task finished
                body, bufs = self.error(job.spec, TaskCancelledError(job.spec["tid"].hex()), False)
            except ActorExit:
                self.task_counts.ended(name, job_id, False)
                self.actor.exit()  # no reply: the caller observes the actor's death
                continue
            except BaseException as e:  # a bug of ours, or a malformed spec: keep the thread alive
                logger.exception("executing %s failed", _name_of(job.spec))
                try:
                    body, bufs = self.error(job.spec, RaySystemError(f"worker error: {e!r}"), False)
                except Exception as malformed:
                    self.cw.post(self.fail, job, malformed)
                    continue
            try:
                failed = reply_failed(body)
                self.task_counts.ended(name, job_id, failed)
                record_end(self.cw, spec, failed)
            except Exception:  # bookkeeping of a malformed spec: the reply still goes
                logger.exception("recording the end of %s failed", name)
            self.answer(job, body, bufs, not self.queue.empty())

    def fail(self, job: Job, exc: BaseException) -> None:
        """(loop) Answer a job whose spec cannot even carry an error (a malformed request)
        with an RPC error, and let go of what it held."""
        job.fut.fail(ValueError(f"malformed task: {exc!r}"))
        if job.holds:
            holds, job.holds = job.holds, []
            self.cw.refs.remove_contained(holds)

    def execute(self, job: Job) -> tuple[PushReply, list[Buffer]]:
        """Run one task or actor call (any thread); return the reply body and buffers."""
        spec = job.spec
        task_id = spec["tid"]
        self.queued.pop(task_id, None)
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            return self.error(spec, TaskCancelledError(task_id.hex()), False)
        worker_output.set_current_name(spec["name"])  # the (name pid=...) prefix of its prints
        events = self.cw.task_events
        if events is not None and "noev" not in spec:
            events += pack_row(task_id, EXEC + RUNNING, spec.get("at", 0), time.time())
        if spec.get("create"):
            return self._create_actor(spec, job)
        ctx = self.cw.task_context
        ctx.task_id = task_id
        ctx.spec = spec  # (the runtime context reads the task's name and resources)
        ctx.pg = pg = spec.get("pg")  # get_current_placement_group; captured child tasks
        if pg:
            placement_groups.task_placement(pg)
        self.cw.job_id = spec.get("job", self.cw.job_id)
        self.cw.namespace = spec.get("ns", self.cw.namespace)
        gpus = spec.get("gpu") or self.actor.gpus
        ctx.gpu_ids = gpus or []
        cuda = ",".join(str(i) for i in gpus) if gpus else self.cuda_env
        if cuda != self.cuda_now:  # os.environ writes cost microseconds: only on change
            self.cuda_now = cuda
            if cuda is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = cuda
        self.current = task_id
        printed = worker_output.writes()
        start = time.perf_counter()
        try:
            try:
                fn = self._function(spec)
                args, kwargs = self.arguments(spec, job)
                result = fn(*args, **kwargs)
                if spec["nret"] == STREAMING:
                    result = self.streams.run(spec, job, result)
            finally:
                self.current = None
                elapsed = time.perf_counter() - start
        except KeyboardInterrupt:
            return self.error(spec, TaskCancelledError(task_id.hex()), False)
        except Exception as e:
            return self.task_error(spec, e)
        finally:
            ctx.task_id = None
            if self.cw.canceled_tasks:
                self.cw.canceled_tasks.discard(task_id)
        if spec["nret"] == STREAMING:
            body, bufs = result
            body["t"] = elapsed
            return body, bufs
        try:
            body, bufs = self.returns(spec, result)
        except Exception as e:
            return self.task_error(spec, e)
        body["t"] = elapsed
        if worker_output.writes() != printed:  # the task printed: its lines go first
            body["o"] = (self.pid, worker_output.sync())
        return body, bufs

    def _create_actor(self, spec: TaskSpec, job: Job) -> tuple[PushReply, list[Buffer]]:
        self.cw.job_id = spec["job"]
        self.actor.spec = spec  # (the runtime context: the actor's name, restarts, resources)
        placement_groups.set_actor_placement(spec.get("pg"))
        self.actor.gpus = spec.get("gpu") or []
        if self.actor.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.actor.gpus)
            self.cw.task_context.gpu_ids = self.actor.gpus
        try:
            cls = serialization.deserialize(spec["cls"])
            args, kwargs = self.arguments(spec, job)
            self.actor.construct(cls, args, kwargs)
        except Exception as e:
            _, parts = self.task_error(spec, e)
            return {"error": True}, parts
        return {"r": [], "pid": self.pid}, []

    def _function(self, spec: TaskSpec) -> Callable[..., Any]:
        method = spec.get("m")
        if method is not None:
            if method == "__ray_terminate__":
                return run_terminate
            return getattr(self.actor.instance, method)
        fid = spec["fid"]
        fn = self.functions.get(fid)
        if fn is None:
            fn = self.functions[fid] = serialization.deserialize(self.fn_bytes.pop(fid))
        return fn

    def arguments(self, spec: TaskSpec, job: Job) -> CallArgs:
        bufs = job.buffers
        off = 0
        call: Any = ((), {})
        if "a" in spec:
            n = spec["a"]
            call = serialization.deserialize(bufs[0], bufs[1 : 1 + n])
            off = 1 + n
        deps = []
        for dep in spec.get("d", ()):
            oid = dep[1]
            owner = None
            if dep[0] == DEP_INLINE:
                n = dep[2]
                obj = StoredObject(bufs[off], bufs[off + 1 : off + 1 + n])
                off += 1 + n
            elif dep[0] == DEP_SHM:
                obj = StoredObject(node_id=dep[2], size=0)
                owner = _owner_of(dep[3] if len(dep) > 3 else None)
            else:
                obj = job.fetched[oid]
                owner = _owner_of(dep[2])
            deps.append((oid, obj, owner))
        if len(deps) > 1:  # arguments on other nodes: pulled together, not one by one
            store_client.prefetch(self.cw, ((oid, obj) for oid, obj, _ in deps))
        values = [self.cw.materialize(oid, obj, owner) for oid, obj, owner in deps]
        if "ar" in spec:
            call = values[spec["ar"]]
        args, kwargs = call
        return substitute(args, kwargs, values)

    def returns(self, spec: TaskSpec, result: Any) -> tuple[PushReply, list[Buffer]]:
        nret = spec["nret"]
        if nret == 1:
            values = [result]
        elif nret == 0:
            values = []
        else:
            # A tuple, a list or a generator (Ray allows yielding the num_returns values).
            iterable = hasattr(result, "__iter__") and not isinstance(result, (str, bytes, dict))
            values = list(result) if iterable else []
            if len(values) != nret:
                raise ValueError(
                    f"Task {spec['name']} declared num_returns={nret} but returned "
                    f"{type(result).__name__} {_len_or_none(result)}."
                )
        rets: list[Return] = []
        bufs: list[Buffer] = []
        lend: list[ObjectRef] = []
        for i, value in enumerate(values):
            rets.append(self.pack_value(spec, i, value, bufs, lend))
        body: PushReply = {"r": rets}
        if lend:  # kept alive until lent: reply() pops it before sending
            body["_lend"] = lend
        return body, bufs

    def pack_value(
        self,
        spec: TaskSpec,
        index: int,
        value: Any,
        bufs: list[Buffer],
        lend: list[ObjectRef],
    ) -> Return:
        """Serialize return value ``index``: inline into ``bufs``, or into this node's shm.

        Refs inside the value are appended to ``lend``: the caller will borrow them."""
        so = serialization.serialize(value)
        contained = None
        if so.contained_refs:
            lend.extend(so.contained_refs)
            contained = pairs_of(so.contained_refs)
        if so.total_bytes < config.MAX_INLINE_BYTES:
            bufs.append(so.data)
            bufs.extend(so.buffers)
            return (RET_INLINE, len(so.buffers), False, contained)
        oid = spec["tid"] + (index + 1).to_bytes(4, "little")
        owner = spec["owner"][2] if spec.get("owner") else None  # the caller owns returns
        size = store_client.write_object(self.cw, oid, so.data, so.buffers, owner)
        return (RET_SHM, size, self.cw.node_id, contained)

    def task_error(self, spec: TaskSpec, e: BaseException) -> tuple[PushReply, list[Buffer]]:
        tb = "".join(traceback.format_exception(type(e), e, user_frames(e.__traceback__)))
        extras = self.cw.task_event_extras
        if extras is not None and "noev" not in spec:
            row = (spec["tid"], spec.get("at", 0), EXEC + FAILED, time.time())
            extras.append((*row, "TASK_EXECUTION_EXCEPTION", tb))
        err = RayTaskError(spec["name"], tb, e, self.pid, self.cw.node_ip)
        return self.error(spec, err, True)

    def error(
        self, spec: TaskSpec, err: BaseException, app_error: bool
    ) -> tuple[PushReply, list[Buffer]]:
        # (A RayTaskError pickles even when its cause does not: the cause is then
        # replaced by a RayError saying why, as in Ray; exceptions.py.)
        so = serialization.serialize(err, is_error=True)
        nret = max(1, spec["nret"])
        parts = [so.data, *so.buffers]
        body: PushReply = {"r": [(RET_INLINE, len(so.buffers), True)] * nret}
        if app_error:
            body["x"] = True
        return body, parts * nret


def _name_of(spec: object) -> str:
    return str(spec.get("name")) if isinstance(spec, dict) else repr(spec)[:80]


# Frames of aioray's own code (the installed package, and daemons/ in a source tree):
# a task's traceback starts at the user's first frame, as Ray's does.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(serialization.__file__)))
_INTERNAL_DIRS = (
    os.path.join(os.path.dirname(os.path.abspath(__file__)), ""),
    os.path.join(os.path.abspath(_PACKAGE_DIR), ""),
)


def user_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without its leading frames in aioray's code (the worker calling the task);
    all of it when every frame is aioray's (the error is not in the user's code)."""
    user = tb
    while user is not None and user.tb_frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        user = user.tb_next
    return user if user is not None else tb


def _owner_of(address: Address | None) -> Address | None:
    return (address[0], address[1], address[2]) if address else None


def _len_or_none(value: Any) -> str:
    try:
        return f"of length {len(value)}"
    except TypeError:
        return "(not a sequence)"


def main(args: dict[str, Any]) -> None:
    """Entry point of a forked worker: serve until the raylet goes away."""
    setup_worker_logging(args.get("session_dir"))
    loop = _loop.new_event_loop()
    asyncio.set_event_loop(loop)
    cw = CoreWorker(
        WORKER,
        args["node_ip"],
        (args["node_ip"], args["raylet_port"]),
        None,
        worker_id=bytes.fromhex(args["worker_id"]),
    )
    executor = TaskExecutor(cw)
    cw.extra_handlers = executor.handlers()
    set_core_worker(cw)

    async def start() -> None:
        await cw.start()
        cw.raylet.on_close.append(lambda _: os._exit(0))
        worker_output.capture(cw)
        executor.thread.start()
        await cw.raylet.call("register_worker", {"worker_id": cw.worker_id, "port": cw.address[1]})

    loop.run_until_complete(start())
    loop.run_forever()

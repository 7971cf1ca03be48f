"""Hosting one actor in a worker: creation, ordered calls, three ways to run them.

- A plain actor runs calls one at a time, in order, on the execution thread it
  shares with tasks (the same queue as TaskExecutor).
- A threaded actor (``max_concurrency`` > 1, or a concurrency group) runs calls
  on a thread pool per concurrency group.
- An async actor (any ``async def`` method) runs every call as a coroutine on an
  event loop of its own thread, at most ``max_concurrency`` at once per group, so
  a coroutine that blocks by mistake cannot silence the worker's main loop.

Calls start in arrival order: a call whose arguments must first be fetched holds
back the calls behind it (an ordering chain of futures), so one caller's calls
run in submission order. ``exit_actor()`` and ``__ray_terminate__`` tell the
raylet the exit is intentional and send the task events not yet sent, then the
process exits; callers see the death.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from aioray._private.owner import worker_context
from aioray._private.owner.task_events import (
    EXEC,
    EXIT_SEND_TIMEOUT_S,
    RUNNING,
    pack_row,
    record_end,
    reply_failed,
)
from aioray._private.rpc import rpc
from aioray._private.wire import serialization
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import ActorMeta, ContainedRef, DepOwner, PushReply, TaskSpec
from aioray._private.wire.task_spec import DEP_OWNER, STREAMING
from aioray.exceptions import ActorExit, TaskCancelledError

if TYPE_CHECKING:
    from aioray.daemons.worker import TaskExecutor

    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.core_worker import CoreWorker

logger = logging.getLogger(__name__)


class Job:
    """One task or actor call being run here: its spec, its arguments' buffers, the future
    its reply waits on, and the borrowed refs it holds until then."""

    __slots__ = ("buffers", "conn", "fetched", "fut", "holds", "spec")

    def __init__(
        self,
        spec: TaskSpec,
        buffers: list[Buffer],
        fut: rpc.Answer,
        conn: rpc.Connection | None = None,
    ) -> None:
        self.spec = spec
        self.buffers = buffers
        self.fut = fut
        self.conn = conn  # the caller's connection: streamed items go back on it
        self.fetched: dict[bytes, StoredObject] = {}
        self.holds: list[bytes] = []  # borrowed refs the job's arguments carry

    def hold(self, cw: CoreWorker, pairs: list[ContainedRef]) -> None:
        """(loop) The caller lent us these refs: hold them until the reply is sent."""
        cw.borrowing.hold(pairs)
        self.holds.extend(p[0] for p in pairs)


class ActorHost:
    def __init__(self, executor: TaskExecutor) -> None:
        self.ex = executor
        self.cw = executor.cw
        self.instance: Any = None
        self.meta: ActorMeta = {}
        self.pools: dict[str | None, concurrent.futures.ThreadPoolExecutor] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.semaphores: dict[str | None, asyncio.Semaphore] = {}
        self.running: dict[bytes, asyncio.Future[Any]] = {}
        self._tail: asyncio.Future[None] | None = None
        self._exiting = False
        self._exit_requested = False  # exit_actor() in an async actor
        self.gpus: list[int] = []
        self.spec: TaskSpec = {}  # the creation spec

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "create_actor": self.handle_create_actor,
            "push_actor_task": self.handle_push_actor_task,
        }

    # -- creation --------------------------------------------------------------------------
    def handle_create_actor(
        self, conn: rpc.Connection, spec: TaskSpec, bufs: list[Buffer]
    ) -> rpc.Answer:
        """``create_actor`` spec (with ``aid``, ``meta``, ``ns``) + argument buffers, from the GCS
        -> the push reply of running the actor's ``__init__`` (as ``push_task``)."""
        self.meta = spec["meta"]
        self.cw.actor_id = spec["aid"]
        self.cw.namespace = spec.get("ns", "")
        if self.meta.get("async"):
            self._start_loop()
            worker_context.request_async_actor_exit = self.request_exit
        return self.ex.handle_push_task(conn, spec, bufs)

    def construct(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """(execution thread) Run __init__; methods are callable from now on."""
        self.instance = cls(*args, **kwargs)

    def _start_loop(self) -> None:
        ready = threading.Event()

        def run() -> None:
            from aioray._private.rpc.loop import new_event_loop

            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="aioray-actor-loop", daemon=True).start()
        ready.wait()

    # -- calls -----------------------------------------------------------------------------
    def handle_push_actor_task(
        self, conn: rpc.Connection, spec: TaskSpec, bufs: list[Buffer]
    ) -> rpc.Answer:
        """``push_actor_task`` spec + buffers, from a caller -> the push reply ({r, ...} and the
        return values' buffers). Calls from one caller run in their sequence order; arguments
        held by their owners are fetched first."""
        fut = rpc.Answer()
        job = Job(spec, bufs, fut, conn)
        if "cr" in spec:
            job.hold(self.cw, spec["cr"])
        remote: list[DepOwner] = [d for d in spec.get("d", ()) if d[0] == DEP_OWNER]
        prev = self._tail
        if not remote and (prev is None or prev.done()):
            self._dispatch(job)
            return fut
        mine: asyncio.Future[None] = self.cw.loop.create_future()
        self._tail = mine
        self.cw.loop.create_task(self._dispatch_in_order(job, remote, prev, mine))
        return fut

    async def _dispatch_in_order(
        self,
        job: Job,
        remote: list[DepOwner],
        prev: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
    ) -> None:
        try:
            if remote:
                await self.ex.fetch_deps(job, remote)
            if prev is not None:
                await prev
            self._dispatch(job)
        except Exception as e:  # a malformed call: answer it, keep the actor serving
            self.ex.fail(job, e)
        finally:
            mine.set_result(None)

    def _dispatch(self, job: Job) -> None:
        if job.spec["m"] == "__ray_terminate__" and self._concurrent():
            self._terminate_concurrent()
            return
        group = job.spec.get("cg") or self._group_of(job.spec["m"])
        if self.meta.get("async"):
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(self._run_async(job, group), self.loop)
        elif group is not None or self.meta.get("max_concurrency", 1) > 1:
            self._pool(group).submit(self._run_threaded, job)
        else:
            self.ex.enqueue(job)

    def _concurrent(self) -> bool:
        return bool(self.meta.get("async") or self.meta.get("max_concurrency", 1) > 1 or self.pools)

    def _terminate_concurrent(self) -> None:
        """Calls already running finish first (Ray), then the actor exits."""
        if self.meta.get("async"):
            assert self.loop is not None

            async def drain() -> None:
                await asyncio.gather(*self.running.values(), return_exceptions=True)
                self.exit()

            asyncio.run_coroutine_threadsafe(drain(), self.loop)
            return

        def drain_pools() -> None:
            for pool in list(self.pools.values()):
                pool.shutdown(wait=True)
            self.exit()

        threading.Thread(target=drain_pools, name="aioray-actor-exit", daemon=True).start()

    def _group_of(self, method: str) -> str | None:
        m = self.meta["methods"].get(method)
        return m.get("cg") if m else None

    def _size(self, group: str | None) -> int:
        if group is None:
            return int(self.meta.get("max_concurrency", 1))
        groups = self.meta.get("groups") or {}
        if group not in groups:
            raise ValueError(f"unknown concurrency group {group!r}")
        return int(groups[group])

    def _pool(self, group: str | None) -> concurrent.futures.ThreadPoolExecutor:
        pool = self.pools.get(group)
        if pool is None:
            pool = self.pools[group] = concurrent.futures.ThreadPoolExecutor(
                self._size(group), thread_name_prefix=f"aioray-actor-{group or 'default'}"
            )
        return pool

    def _run_threaded(self, job: Job) -> None:
        try:
            try:
                body, bufs = self.ex.execute(job)
            except KeyboardInterrupt:
                tid = job.spec["tid"].hex()
                body, bufs = self.ex.error(job.spec, TaskCancelledError(tid), False)
        except ActorExit:
            self.exit()
            return
        except Exception as e:  # a malformed call: answer it, keep the pool thread serving
            self.cw.post(self.ex.fail, job, e)
            return
        record_end(self.cw, job.spec, reply_failed(body))
        self.ex.answer(job, body, bufs, more=True)  # (a pool's calls: their replies go together)

    async def _run_async(self, job: Job, group: str | None) -> None:
        try:
            await self._call_async(job, group)
        except Exception as e:  # a malformed call: answer it, keep the actor's loop serving
            self.cw.post(self.ex.fail, job, e)

    async def _call_async(self, job: Job, group: str | None) -> None:
        sem = self.semaphores.get(group)
        if sem is None:
            sem = self.semaphores[group] = asyncio.Semaphore(self._size(group))
        spec = job.spec
        task_id = spec["tid"]
        async with sem:
            current = asyncio.current_task()
            assert current is not None
            self.running[task_id] = current
            events = self.cw.task_events
            if events is not None and "noev" not in spec:
                events += pack_row(task_id, EXEC + RUNNING, spec.get("at", 0), time.time())
            worker_context.async_call_spec.set(spec)  # (this asyncio task's own context)
            start = time.perf_counter()
            try:
                fn = getattr(self.instance, spec["m"])
                args, kwargs = self.ex.arguments(spec, job)
                result = fn(*args, **kwargs)
                if inspect.iscoroutine(result):  # asyncio.iscoroutine also accepts generators
                    result = await result
                if spec["nret"] == STREAMING:
                    body, bufs = await self._stream_async(job, result)
                else:
                    body, bufs = self.ex.returns(spec, result)
                body["t"] = time.perf_counter() - start
            except asyncio.CancelledError:
                body, bufs = self.ex.error(spec, TaskCancelledError(task_id.hex()), False)
            except ActorExit:
                self.exit()
                return
            except Exception as e:
                body, bufs = self.ex.task_error(spec, e)
            finally:
                self.running.pop(task_id, None)
        if self._exit_requested:  # exit_actor() ran (AsyncioActorExit, caught or not)
            self.exit()
            return
        record_end(self.cw, spec, reply_failed(body))
        self.ex.answer(job, body, bufs, more=bool(self.running))  # (other calls still run)

    async def _stream_async(self, job: Job, gen: Any) -> tuple[PushReply, list[Buffer]]:
        task_id, limit, count = job.spec["tid"], job.spec.get("bp") or 0, 0
        items = gen if hasattr(gen, "__aiter__") else _as_async(gen)
        async for item in items:
            self.ex.streams.send_item(job, count, item)
            count += 1
            if limit > 0 and count - self.ex.streams.acks.get(task_id, 0) >= limit:
                # Off this loop: other calls of the actor keep running meanwhile.
                await asyncio.to_thread(
                    self.ex.streams.wait_for_consumer, task_id, count - limit + 1
                )
        return {"r": [], "n": count}, []

    def cancel(self, task_id: bytes) -> bool:
        """Cancel a running async call (its asyncio task); False if there is none."""
        task = self.running.get(task_id)
        if task is None or self.loop is None:
            return False
        self.loop.call_soon_threadsafe(task.cancel)
        return True

    # -- exit ------------------------------------------------------------------------------
    def request_exit(self) -> None:
        """(the async actor's loop) exit_actor() was called: the actor exits once the
        calling method returns or raises, and its caller sees the actor die."""
        self._exit_requested = True

    def exit(self) -> None:
        """(any thread) Intentional exit: the raylet hears it first, then the process ends."""
        if self._exiting:
            return
        self._exiting = True
        self.cw.post(self._exit_on_loop)

    def _exit_on_loop(self) -> None:
        self.cw.loop.create_task(self._exit())

    async def _exit(self) -> None:
        # 1. Let replies posted before the exit reach their connections' buffers.
        for _ in range(3):
            await asyncio.sleep(0)
        # 2. The raylet hears "intentional" before it sees this process die.
        aid = self.cw.actor_id
        if aid is not None and not self.cw.raylet.is_closed:
            self.cw.raylet.notify("actor_exiting", aid)
        # 3. Close callers' connections gracefully (flushing replies) and send the task
        #    events not yet sent (as Ray's workers do before exiting), then go.
        peers = list(self.cw.server.connections) if self.cw.server else []
        for conn in peers:
            conn.close()
        waits = [self.cw.event_buffer.send_remaining(EXIT_SEND_TIMEOUT_S)]
        if peers:
            waits.append(asyncio.wait([c.closed for c in peers], timeout=2.0))
        await asyncio.gather(*waits)
        if self.cw.metrics_reporter is not None:  # its last metrics, while the raylet listens
            self.cw.metrics_reporter.close()
        self.cw.raylet.close()
        await asyncio.wait([self.cw.raylet.closed], timeout=2.0)
        os._exit(0)


async def _as_async(items: Any) -> Any:
    for item in items:
        yield item


def run_terminate() -> None:
    """The body of ``__ray_terminate__``: reached after every call queued before it."""
    raise ActorExit()


def deserialize_class(data: bytes) -> Any:
    return serialization.deserialize(data)

"""The asyncio face of the API: awaitable get, wait, put, init and shutdown.

Every coroutine here works on any running loop. When the caller's loop is the
CoreWorker's own loop the work is awaited directly; from any other loop it is
handed over once (``run_coroutine_threadsafe``) and awaited as a wrapped future,
never by blocking a thread.
"""

from __future__ import annotations

import asyncio
import collections
import pickle
import threading
from collections.abc import Callable, Coroutine, Generator, Sequence
from functools import partial
from typing import Any

import aioray.api as api
from aioray._private.core.memory_store import StoredObject
from aioray._private.owner import object_ref, object_waits, reply_reads, store_client
from aioray._private.owner.core_worker import CoreWorker
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire import serialization
from aioray.exceptions import ObjectFreedError


async def _on_core_loop(cw: CoreWorker, coro: Coroutine[Any, Any, Any]) -> Any:
    if asyncio.get_running_loop() is cw.loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, cw.loop))


async def get_async(object_refs: Any, *, timeout: float | None = None) -> Any:
    """``await``-able get: the value(s), raising the task's error; never blocks the loop."""
    refs, single = api.check_refs(object_refs, "get")
    if timeout is not None:
        api.check_timeout(timeout)
    cw = api.ensure_connected()
    objs = [cw.memory_store.get(r.binary()) for r in refs]
    if None in objs:
        missing = [r for r, o in zip(refs, objs, strict=True) if o is None]
        try:
            fetching = _on_core_loop(cw, object_waits.fetch_many(cw, missing))
            found = await asyncio.wait_for(fetching, timeout)
        except asyncio.TimeoutError:
            from aioray.exceptions import GetTimeoutError

            raise GetTimeoutError(
                f"Get timed out: some object(s) not ready after {timeout}s."
            ) from None
        objs = [o if o is not None else found[r.binary()] for r, o in zip(refs, objs, strict=True)]
    spilled = [
        (r.binary(), o.node_id)  # type: ignore[union-attr]
        for r, o in zip(refs, objs, strict=True)
        if store_client.not_here(cw, r.binary(), o)  # type: ignore[arg-type]
    ]
    if spilled:  # restore on the core loop: reading must not block this one
        await _on_core_loop(cw, store_client.restore_all_async(cw, spilled))
    values = [cw.materialize(r.binary(), o, r._owner) for r, o in zip(refs, objs, strict=True)]  # type: ignore[arg-type]
    return values[0] if single else values


async def wait_async(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = False,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """``await``-able wait. With ``fetch_local=False`` (the default here) a ref is ready
    as soon as its object exists anywhere; its value is not pulled."""
    refs = api.check_wait_args(object_refs, num_returns, timeout)
    if not refs:
        return [], []
    cw = api.ensure_connected()
    ready_ids = await _on_core_loop(
        cw, object_waits.wait_async(cw, refs, num_returns, timeout, fetch_local)
    )
    return api.split_ready(refs, ready_ids, num_returns)


async def put_async(value: Any) -> ObjectRef:
    """``await``-able put: a large value is written to shared memory off the loop."""
    return await asyncio.to_thread(api.put, value)


class _InitAsync:
    """``await aioray.init_async(...)`` or ``async with aioray.init_async(...):``."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._args = args
        self._kwargs = kwargs
        self._ctx: Any = None

    async def _start(self) -> Any:
        # init starts processes and waits for them: do it off the caller's loop.
        self._ctx = await asyncio.to_thread(api.init, *self._args, **self._kwargs)
        return self._ctx

    def __await__(self) -> Generator[Any, None, Any]:
        return self._start().__await__()

    async def __aenter__(self) -> Any:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await shutdown_async()


def init_async(*args: Any, **kwargs: Any) -> _InitAsync:
    """Start or join a cluster without blocking the running loop (same arguments as init)."""
    return _InitAsync(args, kwargs)


async def shutdown_async() -> None:
    """Shut down without blocking the running loop."""
    await asyncio.to_thread(api.shutdown)


# A caller loop is woken when everything it awaits has arrived, else at most COALESCE_S
# after the first undelivered arrival. While results stream in and each wake-up delivers
# only part of them, the wait doubles up to COALESCE_MAX_S: a wake-up takes the GIL from
# the core loop, which is then not feeding workers.
COALESCE_S = 0.005
COALESCE_MAX_S = 0.05


class LoopFetcher:
    """Resolves the futures of one caller loop with object values, in batches.

    Every ref awaited on that loop during one iteration crosses to the CoreWorker's
    loop in a single call, and values come back in batches too (one wake-up of the
    caller's loop per CoreWorker loop iteration), so ``gather`` over 10,000 refs does
    not cost 10,000 thread hops each way.

    It is also the "loop" of the refs' own future states (ObjectRef._bind): a C Future
    schedules each callback with ``loop.call_soon``, which on asyncio's own loop costs a
    Handle per ref; through ``call_soon`` below, the callbacks of every ref resolved in
    one go run in a single call of the real loop.
    """

    # Future.__init__ asks its loop for get_debug(): answered without a Python frame.
    get_debug = staticmethod(bool)

    def __init__(self, cw: CoreWorker, loop: asyncio.AbstractEventLoop) -> None:
        self.cw = cw
        self.loop = loop
        # ObjectRef trusts a remembered fetcher while this is true. For asyncio's loops
        # it reads the thread running the loop (None when stopped) without a Python frame.
        self.loop_running: Callable[[], Any] = (
            partial(getattr, loop, "_thread_id")
            if isinstance(loop, asyncio.BaseEventLoop)
            else loop.is_running
        )
        # The results this process owns are awaited by a watch in its memory store,
        # registered from this loop's thread: no hop to the CoreWorker's loop and back.
        self._watch_direct = loop is not cw.loop
        self._owned_direct = cw.owned if self._watch_direct else frozenset()
        self._watched = cw.memory_store.watched
        self._asked: list[tuple[ObjectRef, Any]] = []
        self._ask_scheduled = False
        self._arrived: collections.deque[tuple[ObjectRef, Any, Any]] = collections.deque()
        self._deliver_scheduled = False
        self._deliver_timer: asyncio.TimerHandle | None = None
        self._coalesce_s = COALESCE_S
        self._outstanding = 0  # futures asked for and not yet delivered
        self._lookup = cw.memory_store.get
        self._ready: list[tuple[Any, Any, Any]] = []
        self._ready_scheduled = False
        # The ref get_loop has just bound, until its add_done_callback (ObjectRef).
        self.fresh: ObjectRef | None = None

    def call_soon(self, fn: Any, arg: Any, *, context: Any = None) -> None:
        """(caller loop) The refs' futures schedule their callbacks here."""
        self._ready.append((fn, arg, context))
        if not self._ready_scheduled:  # (_deliver runs them itself when it is done)
            self._ready_scheduled = True
            self.loop.call_soon(self._run_ready)

    def _run_ready(self) -> None:
        self._ready_scheduled = False
        ready, self._ready = self._ready, []
        for fn, arg, ctx in ready:
            try:
                if ctx is None:
                    fn(arg)
                else:
                    ctx.run(fn, arg)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as e:
                self.loop.call_exception_handler(
                    {"message": f"Exception in callback {fn!r}", "exception": e}
                )

    def is_closed(self) -> bool:
        return self.loop.is_closed()

    def future(self, ref: ObjectRef) -> asyncio.Future[Any]:
        """(caller loop) A new future that resolves to the value of ``ref``."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.watch(ref, fut)
        return fut

    def watch(self, ref: ObjectRef, fut: asyncio.Future[Any]) -> None:
        """(caller loop) Resolve ``fut``, a future of this loop (the ref's own, or one
        made for an await), with the value of ``ref``."""
        oid = ref._id
        obj = self._lookup(oid)
        if obj is not None and (
            obj.data is not None or not store_client.not_here(self.cw, oid, obj)
        ):
            _resolve(self.cw, ref, fut, obj)
            return
        self._outstanding += 1  # (before the watch: a delivery counts against it)
        if obj is None and oid in self._owned_direct:
            # MemoryStore.put pops the watch and calls self.arrived. Each dict operation
            # is atomic, and the order makes the race with a put on the core loop safe:
            # we register, then look for the object; put stores, then looks for a watch.
            # Whichever comes second sees the other, and whoever pops the watch delivers
            # it (here: through the core loop, as put would).
            entry = (self, ref, fut)
            if self._watched.setdefault(oid, entry) is entry:
                if self._lookup(oid) is not None:
                    taken = self._watched.pop(oid, None)
                    if taken is not None:
                        self.cw.post(_deliver_taken, self.cw, oid, taken)
                elif self.cw.posts_waiting:  # (a reply a caller thread could have read,
                    reply_reads.read_soon(self.cw, (oid,))  # its check not run: read it now)
                return
            # (another loop watches this object: the core loop serves this one)
        self._asked.append((ref, fut))
        if not self._ask_scheduled:
            self._ask_scheduled = True
            self.loop.call_soon(self._ask)

    def _ask(self) -> None:
        self._ask_scheduled = False
        batch, self._asked = self._asked, []
        if self.loop is self.cw.loop:
            self._fetch(batch)
        else:
            self.cw.post(self._fetch, batch)

    def _fetch(self, batch: list[tuple[ObjectRef, Any]]) -> None:
        """(CoreWorker loop)"""
        cw = self.cw
        store, owned = cw.memory_store, cw.owned
        for ref, target in batch:
            if ref._id in owned:  # this process makes it: wait in the store, no future
                store.when_stored(ref._id, partial(self.arrived, ref, target))
            else:
                cw.fetch(ref).add_done_callback(partial(self._arrive, ref, target))

    def _arrive(self, ref: ObjectRef, target: Any, done: asyncio.Future[Any]) -> None:
        """(CoreWorker loop)"""
        if done.cancelled():
            outcome: Any = asyncio.CancelledError()
        else:
            outcome = done.exception() or done.result()
        self.arrived(ref, target, outcome)

    def arrived(self, ref: ObjectRef, target: Any, outcome: Any, restored: bool = False) -> None:
        """(CoreWorker loop) ``outcome`` is the stored object or the error."""
        if (
            outcome.__class__ is StoredObject
            and outcome.data is None
            and not restored
            and store_client.not_here(self.cw, ref._id, outcome)
        ):
            # Restore or pull here, so the caller's loop only maps the segment.
            restore = self.cw.loop.create_task(
                store_client.restore_async(self.cw, ref._id, outcome.node_id)
            )
            restore.add_done_callback(partial(self._restored, ref, target, outcome))
            return
        if self._watch_direct:  # (delivery inlined: this runs once per result)
            arrived = self._arrived
            arrived.append((ref, target, outcome))
            if len(arrived) == self._outstanding:
                self._deliver_all()
            elif not self._deliver_scheduled and self._deliver_timer is None:
                self._deliver_timer = self.cw.loop.call_later(self._coalesce_s, self._wake_late)
        else:
            _resolve(self.cw, ref, target, outcome)

    def _restored(self, ref: ObjectRef, target: Any, obj: Any, t: Any) -> None:
        """(CoreWorker loop)"""
        outcome = asyncio.CancelledError() if t.cancelled() else (t.exception() or obj)
        self.arrived(ref, target, outcome, restored=True)

    def _deliver_all(self) -> None:
        """(CoreWorker loop) Everything asked for has arrived: wake the caller now."""
        self._coalesce_s = COALESCE_S
        if self._deliver_timer is not None:
            self._deliver_timer.cancel()
            self._deliver_timer = None
        if not self._deliver_scheduled:
            self._deliver_scheduled = True
            self._wake()

    def _wake_late(self) -> None:
        self._deliver_timer = None
        self._coalesce_s = min(self._coalesce_s * 2, COALESCE_MAX_S)
        if not self._deliver_scheduled:
            self._deliver_scheduled = True
            self._wake()

    def _wake(self) -> None:
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """(caller loop) Resolve what arrived, in one go."""
        self._deliver_scheduled = False
        self.fresh = None  # (never holds a ref past a delivery)
        arrived = self._arrived
        n = len(arrived)  # (what arrives meanwhile is delivered by the next wake-up)
        ran_ready = self._ready_scheduled
        self._ready_scheduled = True  # the callbacks of what we resolve run at the end
        try:
            self._resolve_arrived(arrived.popleft, n)
        finally:
            self._outstanding -= n
            if not ran_ready:  # else _run_ready is scheduled already and runs them
                self._run_ready()

    def _resolve_arrived(self, pop: Any, n: int) -> None:
        cw, loop = self.cw, self.loop
        for _ in range(n):
            ref, fut, outcome = pop()
            if fut._loop is not self:  # an await's own future; or a ref's state, rebound since
                if fut._loop is loop:
                    _resolve(cw, ref, fut, outcome)
                continue
            if (  # a ref's own state, an inline value: the common case, _resolve inlined
                outcome.__class__ is StoredObject
                and outcome.data is not None
                and not outcome.is_error
                and not _future_done(fut)
            ):
                try:
                    if outcome.buffers:
                        value = _loads(outcome.data, buffers=outcome.buffers)
                    else:
                        value = _loads(outcome.data)
                except Exception as e:
                    _set_exception(fut, serialization.unreadable(e))
                except BaseException as e:
                    _set_exception(fut, e)
                else:
                    _set_result(fut, value)
            else:
                _resolve(cw, ref, fut, outcome)


def _deliver_taken(cw: CoreWorker, oid: bytes, entry: tuple[LoopFetcher, ObjectRef, Any]) -> None:
    """(CoreWorker loop) A watch taken back from the store after its object arrived."""
    fetcher, ref, fut = entry
    fetcher.arrived(ref, fut, cw.memory_store.get(oid) or ObjectFreedError(oid.hex()))


def _resolve(cw: CoreWorker, ref: ObjectRef, fut: asyncio.Future[Any], outcome: Any) -> None:
    """(the future's loop) ``outcome`` is the stored object or the error that ended the wait."""
    if _future_done(fut):  # the waiter was cancelled: the task itself goes on
        return
    if isinstance(outcome, BaseException):
        _set_exception(fut, outcome)
        return
    try:
        if outcome.data is not None and not outcome.is_error:  # inline value: the common case
            try:
                value = serialization.deserialize(outcome.data, outcome.buffers)
            except Exception as e:
                raise serialization.unreadable(e) from e
        else:
            value = cw.materialize(ref._id, outcome, ref._owner)
    except BaseException as e:  # the object is an error, or was lost
        _set_exception(fut, e)
        return
    _set_result(fut, value)


# Called unbound: ObjectRef refuses set_result from users (its value comes from its task).
_future_done = asyncio.Future.done
_set_result = asyncio.Future.set_result
_set_exception = asyncio.Future.set_exception
_loads = pickle.loads  # serialization.deserialize, without its frame


def fetcher_for_running_loop() -> LoopFetcher:
    """The fetcher of the running loop, remembered for this thread while that loop runs
    (ObjectRef looks there first); outside a running loop, that of get_event_loop()."""
    loop = asyncio.get_event_loop()
    f = fetcher_for(api.ensure_connected(), loop)
    if asyncio.events._get_running_loop() is loop:
        running = object_ref.running_fetchers
        for ident, old in list(running.items()):  # (a copy: other threads write it too)
            if old.loop.is_closed():
                running.pop(ident, None)  # (at worst a live entry goes: it comes back)
        running[threading.get_ident()] = f
    return f


# ObjectRef (below this module) finds the running loop's fetcher through this hook.
object_ref.fetcher_for_running_loop = fetcher_for_running_loop


def fetcher_for(cw: CoreWorker, loop: asyncio.AbstractEventLoop) -> LoopFetcher:
    fetchers: dict[asyncio.AbstractEventLoop, LoopFetcher] = cw.loop_fetchers
    f = fetchers.get(loop)
    if f is None:
        # A fetcher holds its loop, so the weak keys never die on their own: drop the
        # fetchers of closed loops (one per finished asyncio.run) here.
        for old in [lp for lp in fetchers if lp.is_closed()]:
            del fetchers[old]
        f = fetchers[loop] = LoopFetcher(cw, loop)
    return f

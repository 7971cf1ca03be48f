"""LoopFetcher (aioray/async_api.py): values reach the awaiting futures on the caller's
own loop, a batch at a time, and the fetcher keeps no ref once it has delivered.

The CoreWorker is an offline one on the test's loop (its "core loop"); a caller loop
runs in a thread of its own, as a user's loop beside a driver's CoreWorker does."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakes import (
    OfflineCluster,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
)

from aioray._private.core.memory_store import StoredObject, encode_object
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire import ids, serialization
from aioray.async_api import LoopFetcher, fetcher_for
from aioray.exceptions import ObjectFreedError

OWNER = ("10.0.0.9", 4000, b"o" * 16)


@pytest.fixture
def caller_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="caller loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


async def on(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``loop``'s thread; its result."""
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as e:
            done.set_exception(e)

    loop.call_soon_threadsafe(run)
    return await asyncio.wrap_future(done)


async def outcome(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> Any:
    """Await ``fut`` (a future of ``loop``) there: (value or error, the thread it
    was resolved in)."""
    resolved_in: list[int] = []

    async def wait() -> Any:
        fut.add_done_callback(lambda _: resolved_in.append(threading.get_ident()))
        try:
            value: Any = await fut
        except BaseException as e:
            value = e
        return value

    value = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wait(), loop))
    return value, resolved_in[0]


def inline(value: Any) -> StoredObject:
    so = serialization.serialize(value)
    return StoredObject(so.data, so.buffers)


def owned_ref(offline: OfflineCluster) -> ObjectRef:
    oid = ids.object_id(offline.cw.ids.task_id(offline.cw.job_id), 1)
    offline.cw.owned.add(oid)
    return ObjectRef(oid, offline.cw.address)


async def test_an_owned_result_is_watched_from_the_caller_and_delivered_there(
    offline: OfflineCluster, caller_loop: asyncio.AbstractEventLoop
) -> None:
    cw, ref = offline.cw, owned_ref(offline)
    posted: list[Any] = []
    post = cw.post
    cw.post = lambda fn, *a: (posted.append(fn), post(fn, *a))  # type: ignore[method-assign,func-returns-value]
    f = fetcher_for(cw, caller_loop)
    fut = await on(caller_loop, f.future, ref)
    assert cw.memory_store.watched[ref.binary()][0] is f  # registered without a hop
    assert posted == []
    cw.memory_store.put(ref.binary(), inline("v"))  # the task's result, on the core loop
    value, thread = await outcome(caller_loop, fut)
    assert value == "v"
    assert thread != threading.get_ident()  # resolved on the caller's loop thread
    assert posted == []


async def test_borrowed_refs_cross_once_and_come_back_in_one_delivery(
    offline: OfflineCluster, caller_loop: asyncio.AbstractEventLoop
) -> None:
    cw = offline.cw
    refs = [ObjectRef(ids.object_id(bytes([i]) * 16, 1), OWNER) for i in range(3)]
    posted, wakes = [], []
    post = cw.post
    cw.post = lambda fn, *a: (posted.append(fn), post(fn, *a))  # type: ignore[method-assign,func-returns-value]
    f = fetcher_for(cw, caller_loop)
    wake = f._wake
    f._wake = lambda: (wakes.append(1), wake())  # type: ignore[method-assign,func-returns-value]

    def ask_all() -> list[asyncio.Future[Any]]:
        return [f.future(r) for r in refs]  # one loop iteration

    futs = await on(caller_loop, ask_all)
    await on(caller_loop, lambda: None)  # the caller's loop has run its _ask since
    await settle()
    assert len(posted) == 1  # the whole batch in one hop to the core loop
    owner = offline.peers.at("10.0.0.9", 4000)
    gets = owner.pending("get_object")
    assert [g.body for g in gets] == [r.binary() for r in refs]
    for i, g in enumerate(gets):
        reply = encode_object(inline(i))
        owner.reply(g, reply.body, reply.buffers)
    await settle()
    assert [(await outcome(caller_loop, fut))[0] for fut in futs] == [0, 1, 2]
    assert wakes == [1]  # all three arrived: one wake-up of the caller's loop


async def test_partial_arrivals_wait_for_the_rest_within_the_coalescing_window(
    offline: OfflineCluster, caller_loop: asyncio.AbstractEventLoop
) -> None:
    cw = offline.cw
    a, b = owned_ref(offline), owned_ref(offline)
    f = fetcher_for(cw, caller_loop)
    f._coalesce_s = 3600.0  # the window never closes in this test
    fa = await on(caller_loop, f.future, a)
    fb = await on(caller_loop, f.future, b)
    cw.memory_store.put(a.binary(), inline("a"))
    await settle()
    assert not await on(caller_loop, fa.done)  # held back: b is still awaited
    cw.memory_store.put(b.binary(), inline("b"))
    assert (await outcome(caller_loop, fa))[0] == "a"
    assert (await outcome(caller_loop, fb))[0] == "b"
    assert f._deliver_timer is None  # the window's timer went with the delivery


async def test_errors_reach_the_waiter(
    offline: OfflineCluster, caller_loop: asyncio.AbstractEventLoop
) -> None:
    cw = offline.cw
    failed, raised = owned_ref(offline), owned_ref(offline)
    f = fetcher_for(cw, caller_loop)
    f1 = await on(caller_loop, f.future, failed)
    f2 = await on(caller_loop, f.future, raised)
    cw.memory_store.fail_waiters(failed.binary(), ObjectFreedError(failed.hex()))
    so = serialization.serialize(KeyError("in the task"), is_error=True)
    cw.memory_store.put(raised.binary(), StoredObject(so.data, so.buffers, is_error=True))
    assert isinstance((await outcome(caller_loop, f1))[0], ObjectFreedError)
    err = (await outcome(caller_loop, f2))[0]
    assert isinstance(err, KeyError) and "in the task" in str(err)


async def test_a_cancelled_waiter_leaves_the_others_and_the_fetcher_keeps_no_ref(
    offline: OfflineCluster, caller_loop: asyncio.AbstractEventLoop
) -> None:
    cw = offline.cw
    ref = owned_ref(offline)
    oid = ref.binary()
    f = fetcher_for(cw, caller_loop)
    gone = await on(caller_loop, f.future, ref)  # the store's watch
    kept = await on(caller_loop, f.future, ref)  # a second wait: through the core loop
    await on(caller_loop, gone.cancel)
    await settle()
    cw.memory_store.put(oid, inline(7))
    assert (await outcome(caller_loop, kept))[0] == 7
    assert isinstance((await outcome(caller_loop, gone))[0], asyncio.CancelledError)
    assert f._outstanding == 0 and f.fresh is None and not cw.memory_store.has_waiters(oid)
    del ref  # the last ref: nothing in the fetcher holds the object
    await settle()
    assert oid not in cw.memory_store and not cw.refs.in_scope(oid)


async def test_on_the_core_loop_itself_values_resolve_without_a_hop(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    ref = owned_ref(offline)
    f = fetcher_for(cw, cw.loop)
    assert isinstance(f, LoopFetcher) and fetcher_for(cw, cw.loop) is f  # one per loop
    fut = f.future(ref)
    assert ref.binary() not in cw.memory_store.watched  # no watch from another thread
    await settle()
    cw.memory_store.put(ref.binary(), inline([1, 2]))
    assert await asyncio.wait_for(fut, 10) == [1, 2]
    stored = f.future(ref)  # already stored: resolved at once
    assert stored.done() and stored.result() == [1, 2]

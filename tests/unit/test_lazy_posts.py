"""LazyPosts (aioray/_private/owner/lazy_posts.py): the free of a small object whose last
ref a user thread dropped waits for the loop's next wake-up instead of causing one,
and never waits longer than DELAY_S.

The CoreWorker is an offline one on the test's loop; refs are dropped in threads of
their own, as a user's thread beside a driver's loop drops them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from fakes import (
    OfflineCluster,
    offline_fixture,  # noqa: F401  (the fixture)
)

from aioray._private.core.memory_store import StoredObject
from aioray._private.owner import lazy_posts
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire import ids, serialization

BOUND_S = 30.0


def small(value: Any) -> StoredObject:
    so = serialization.serialize(value)
    return StoredObject(so.data, so.buffers)


def stored_ref(offline: OfflineCluster, obj: StoredObject) -> ObjectRef:
    """A ref to an object this process owns, stored (a task's result that arrived)."""
    oid = ids.object_id(offline.cw.ids.task_id(offline.cw.job_id), 1)
    offline.cw.owned.add(oid)
    offline.cw.memory_store.put(oid, obj)
    return ObjectRef(oid, offline.cw.address)


def drop_in_thread(refs: list[ObjectRef]) -> None:
    """Drop the last ref in a thread that is not the loop's (the list's own goes here)."""
    thread = threading.Thread(target=refs.clear)
    thread.start()
    thread.join(BOUND_S)


def count_wakes(offline: OfflineCluster) -> list[Any]:
    """Record the calls other threads make the loop wake for."""
    loop = offline.cw.loop
    wakes: list[Any] = []
    wake = loop.call_soon_threadsafe

    def counted(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        wakes.append(fn)
        return wake(fn, *args, **kw)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    return wakes


async def until(predicate: Callable[[], Any]) -> float:
    """Let the loop run until ``predicate()`` holds; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < BOUND_S, "never happened"
        await asyncio.sleep(0.001)
    return time.monotonic() - start


async def test_a_small_result_dropped_in_a_thread_is_freed_without_waking_the_loop(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    wakes = count_wakes(offline)
    first, second = [stored_ref(offline, small(1))], [stored_ref(offline, small(2))]
    oid1, oid2 = first[0].binary(), second[0].binary()
    drop_in_thread(first)  # no timer runs yet: this one wakes the loop and starts it
    assert len(wakes) == 1
    await until(lambda: oid1 not in cw.memory_store and cw.lazy_posts.tick is not None)
    drop_in_thread(second)  # the timer runs: no wake-up, freed at its next tick at the latest
    assert len(wakes) == 1 and oid2 in cw.memory_store
    took = await until(lambda: oid2 not in cw.memory_store)
    assert took < lazy_posts.DELAY_S + 5.0  # (a loaded machine's margin)
    assert oid2 not in cw.owned


async def test_a_lazy_free_rides_with_the_next_post(offline: OfflineCluster) -> None:
    cw = offline.cw
    ref = [stored_ref(offline, small(1))]
    oid = ref[0].binary()
    cw.lazy_posts.tick = cw.loop.call_later(3600, lambda: None)  # a tick far away
    try:
        drop_in_thread(ref)
        await asyncio.sleep(0)
        assert oid in cw.memory_store  # nothing woke the loop for it
        ran: list[int] = []
        threading.Thread(target=cw.post, args=(ran.append, 1)).start()  # a submission
        await until(lambda: ran)
        assert oid not in cw.memory_store  # drained with it
    finally:
        cw.lazy_posts.tick.cancel()
        cw.lazy_posts.tick = None


async def test_the_tick_stops_once_lazy_posts_stop(offline: OfflineCluster) -> None:
    cw = offline.cw
    drop_in_thread([stored_ref(offline, small(1))])
    await until(lambda: cw.lazy_posts.tick is not None)
    await until(lambda: cw.lazy_posts.tick is None)  # a tick saw none since: no timer left
    wakes = count_wakes(offline)
    ref = [stored_ref(offline, small(2))]
    drop_in_thread(ref)  # and the next lazy post wakes the loop again
    assert len(wakes) == 1


async def test_objects_others_may_wait_for_are_freed_at_once(offline: OfflineCluster) -> None:
    """In shared memory (the raylet frees the segment), holding refs (their holds go),
    borrowed (the owner's count): a post, which wakes the loop, as before."""
    cw = offline.cw
    cw.lazy_posts.tick = cw.loop.call_later(3600, lambda: None)  # lazy posts would wait
    try:
        shm = stored_ref(offline, StoredObject(node_id=b"\x0e" * 16, size=1000))
        holder = StoredObject(small(0).data, contained=[[b"x" * 20, None]])
        contained = stored_ref(offline, holder)
        refs = [shm, contained]
        oids = [r.binary() for r in refs]
        del shm, contained
        wakes = count_wakes(offline)
        drop_in_thread(refs)
        assert len(wakes) >= 1
        await until(lambda: all(oid not in cw.memory_store for oid in oids))
    finally:
        cw.lazy_posts.tick.cancel()
        cw.lazy_posts.tick = None

"""A driver's sync ``get`` of results it owns (aioray/_private/owner/thread_waits.py):
the caller's thread registers a watch in the memory store and sleeps on a lock that
``put`` releases; the core loop is not asked to do anything for the wait.

The CoreWorker is an offline one on the test's loop (its core loop); the caller's
``get`` runs in a thread of its own, as a user's thread beside a driver's loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from fakes import (
    OfflineCluster,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
)

from aioray._private.core.memory_store import StoredObject, encode_object
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.owner.thread_waits import ThreadWait
from aioray._private.wire import ids, serialization
from aioray.async_api import fetcher_for
from aioray.exceptions import GetTimeoutError, ObjectFreedError

BOUND_S = 30.0  # generous: a loaded 2-core machine


def inline(value: Any) -> StoredObject:
    so = serialization.serialize(value)
    return StoredObject(so.data, so.buffers)


def owned_ref(offline: OfflineCluster) -> ObjectRef:
    oid = ids.object_id(offline.cw.ids.task_id(offline.cw.job_id), 1)
    offline.cw.owned.add(oid)
    return ObjectRef(oid, offline.cw.address)


async def until(predicate: Callable[[], Any]) -> None:
    """Let the loop run until ``predicate()`` holds (the caller's thread got there)."""
    deadline = time.monotonic() + BOUND_S
    while not predicate():
        assert time.monotonic() < deadline, "the caller's thread never got there"
        await asyncio.sleep(0.001)


def count_posts(offline: OfflineCluster) -> list[Any]:
    posted: list[Any] = []
    post = offline.cw.post
    offline.cw.post = lambda fn, *a: (posted.append(fn), post(fn, *a))  # type: ignore[method-assign,func-returns-value]
    return posted


def watch_of(offline: OfflineCluster, ref: ObjectRef) -> Any:
    entry = offline.cw.memory_store.watched.get(ref.binary())
    return entry[0] if entry else None


async def test_the_caller_waits_on_the_store_and_put_wakes_it_without_a_hop(
    offline: OfflineCluster,
) -> None:
    cw, ref = offline.cw, owned_ref(offline)
    posted = count_posts(offline)
    getting = asyncio.ensure_future(asyncio.to_thread(cw.get, [ref], BOUND_S))
    await until(lambda: isinstance(watch_of(offline, ref), ThreadWait))
    assert posted == []  # registered from the caller's thread: nothing for the loop
    cw.memory_store.put(ref.binary(), inline("v"))  # the reply stores the result
    assert await asyncio.wait_for(getting, 2 * BOUND_S) == ["v"]
    assert posted == [] and not cw.memory_store.has_waiters(ref.binary())


async def test_several_results_wake_the_caller_once_all_are_stored(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    refs = [owned_ref(offline) for _ in range(3)]
    getting = asyncio.ensure_future(asyncio.to_thread(cw.get, refs, BOUND_S))
    await until(lambda: all(watch_of(offline, r) is not None for r in refs))
    wait = watch_of(offline, refs[0])
    for i, r in enumerate(refs[:2]):
        cw.memory_store.put(r.binary(), inline(i))
    await settle()
    assert not getting.done() and wait.left == 1  # one still missing: still asleep
    cw.memory_store.put(refs[2].binary(), inline(2))
    assert await asyncio.wait_for(getting, 2 * BOUND_S) == [0, 1, 2]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_result_stored_as_the_caller_registers_is_delivered(
    offline: OfflineCluster, when: str
) -> None:
    """The race with the core loop's put: the result is stored just before the watch
    is registered (put saw no watch: the caller's own check finds the object) or just
    after (put pops the watch and delivers it)."""
    cw, ref = offline.cw, owned_ref(offline)
    oid = ref.binary()
    store = cw.memory_store

    class Racing(dict):  # type: ignore[type-arg]
        def setdefault(self, key: Any, value: Any) -> Any:
            if when == "before":
                store.put(oid, inline("raced"))
            entry = super().setdefault(key, value)
            if when == "after":
                store.put(oid, inline("raced"))
            return entry

    store.watched = Racing()
    posted = count_posts(offline)
    got = await asyncio.wait_for(asyncio.to_thread(cw.get, [ref], BOUND_S), 2 * BOUND_S)
    assert got == ["raced"]
    assert len(posted) == (1 if when == "before" else 0)  # a watch taken back: via the loop
    assert not store.has_waiters(oid)


async def test_a_timeout_raises_and_the_watch_it_leaves_harms_no_later_get(
    offline: OfflineCluster,
) -> None:
    cw, ref = offline.cw, owned_ref(offline)
    with pytest.raises(GetTimeoutError, match=r"not ready after 0\.05s"):
        await asyncio.wait_for(asyncio.to_thread(cw.get, [ref], 0.05), BOUND_S)
    left = watch_of(offline, ref)
    assert isinstance(left, ThreadWait) and left.left < 0  # abandoned, not removed
    # The next get finds the object watched: it waits through the core loop instead.
    again = asyncio.ensure_future(asyncio.to_thread(cw.get, [ref], BOUND_S))
    await until(lambda: cw.memory_store._callbacks.get(ref.binary()))
    cw.memory_store.put(ref.binary(), inline(5))  # the abandoned watch is dropped
    assert await asyncio.wait_for(again, 2 * BOUND_S) == [5]
    assert not cw.memory_store.has_waiters(ref.binary())


async def test_a_timeout_of_zero_raises_at_once(offline: OfflineCluster) -> None:
    cw, ref = offline.cw, owned_ref(offline)
    with pytest.raises(GetTimeoutError):
        await asyncio.wait_for(asyncio.to_thread(cw.get, [ref], 0), BOUND_S)


async def test_the_error_that_ends_a_wait_is_raised_in_the_caller(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    freed, other = owned_ref(offline), owned_ref(offline)
    getting = asyncio.ensure_future(asyncio.to_thread(cw.get, [freed, other], BOUND_S))
    await until(lambda: watch_of(offline, other) is not None)
    cw.memory_store.fail_waiters(freed.binary(), ObjectFreedError(freed.hex()))
    with pytest.raises(ObjectFreedError):
        await asyncio.wait_for(getting, 2 * BOUND_S)
    cw.memory_store.put(other.binary(), inline(1))  # arrives after: dropped quietly


async def test_a_result_another_waiter_watches_is_waited_for_through_the_loop(
    offline: OfflineCluster,
) -> None:
    """One watch per object: a sync get of an object a loop's fetcher already watches
    (or of several, one of them watched) goes through the core loop, and both see it."""
    cw = offline.cw
    a, b = owned_ref(offline), owned_ref(offline)
    caller_loop = asyncio.new_event_loop()  # a fetcher of another loop watches b
    try:
        fetcher = fetcher_for(cw, caller_loop)
        fut = caller_loop.create_future()
        fetcher.watch(b, fut)
        assert watch_of(offline, b) is fetcher
        getting = asyncio.ensure_future(asyncio.to_thread(cw.get, [a, b], BOUND_S))
        await until(lambda: cw.memory_store._callbacks.get(b.binary()))
        assert isinstance(watch_of(offline, a), ThreadWait)  # a's watch is abandoned
        cw.memory_store.put(a.binary(), inline("a"))
        cw.memory_store.put(b.binary(), inline("b"))
        assert await asyncio.wait_for(getting, 2 * BOUND_S) == ["a", "b"]
        assert fetcher._arrived and fetcher._arrived[0][0] is b  # its delivery is queued
    finally:
        caller_loop.close()


async def test_borrowed_refs_are_waited_for_through_the_loop(offline: OfflineCluster) -> None:
    cw = offline.cw
    ref = ObjectRef(ids.object_id(b"\x07" * 16, 1), ("10.0.0.9", 4000, b"o" * 16))
    getting = asyncio.ensure_future(asyncio.to_thread(cw.get, [ref], BOUND_S))
    await until(lambda: ("10.0.0.9", 4000) in cw._peers)
    owner = offline.peers.at("10.0.0.9", 4000)
    await until(lambda: owner.pending("get_object"))
    assert ref.binary() not in cw.memory_store.watched
    reply = encode_object(inline("borrowed"))
    owner.reply(owner.pending("get_object")[0], reply.body, reply.buffers)
    assert await asyncio.wait_for(getting, 2 * BOUND_S) == ["borrowed"]


def test_a_wait_is_released_once_and_ignores_arrivals_after_it_ended() -> None:
    wait = ThreadWait(2)
    wait.arrived(b"a", None, inline(1))
    assert not wait.lock.acquire(False)  # one still missing
    wait.arrived(b"a", None, ObjectFreedError("b"))  # the error ends the wait
    assert wait.lock.acquire(False) and isinstance(wait.error, ObjectFreedError)
    wait.arrived(b"b", None, inline(2))  # after the end: no second release (it would raise)
    abandoned = ThreadWait(1)
    abandoned.abandon()
    abandoned.arrived(b"a", None, inline(1))
    assert not abandoned.lock.acquire(False) and abandoned.found == {}


async def test_a_ref_listed_twice_is_one_watch_and_one_arrival(offline: OfflineCluster) -> None:
    cw = offline.cw
    a, b = owned_ref(offline), owned_ref(offline)
    getting = asyncio.ensure_future(asyncio.to_thread(cw.get, [a, b, a], BOUND_S))
    await until(lambda: watch_of(offline, b) is not None)
    wait = watch_of(offline, a)
    assert isinstance(wait, ThreadWait) and wait.left == 2
    cw.memory_store.put(a.binary(), inline("a"))
    await settle()
    assert not getting.done()  # b is still missing: a counted once
    cw.memory_store.put(b.binary(), inline("b"))
    assert await asyncio.wait_for(getting, 2 * BOUND_S) == ["a", "b", "a"]

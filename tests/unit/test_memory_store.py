"""MemoryStore: every way of waiting for an object ends exactly once, with the object
or with the error that ends the wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aioray._private.core.memory_store import (
    MemoryStore,
    StoredObject,
    decode_object,
    encode_object,
)
from aioray.exceptions import ObjectFreedError, ReferenceCountingAssertionError

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20


def obj(data: bytes = b"x") -> StoredObject:
    return StoredObject(data, [])


async def test_wait_for_resolves_on_put_or_at_once_if_stored() -> None:
    store, loop = MemoryStore(), asyncio.get_running_loop()
    early = store.wait_for(A, loop)
    assert not early.done() and store.has_waiters(A)
    o = obj()
    store.put(A, o)
    assert early.result() is o and not store.has_waiters(A)
    assert store.wait_for(A, loop).result() is o  # already stored


async def test_a_cancelled_waiter_does_not_break_the_put() -> None:
    store, loop = MemoryStore(), asyncio.get_running_loop()
    gone, kept = store.wait_for(A, loop), store.wait_for(A, loop)
    gone.cancel()
    store.put(A, obj())
    assert kept.done() and gone.cancelled()


def test_when_stored_calls_back_once_with_the_object_or_the_error() -> None:
    store = MemoryStore()
    got: list[Any] = []
    o = obj()
    store.put(A, o)
    store.when_stored(A, got.append)  # stored: at once
    store.when_stored(B, got.append)
    store.when_stored(C, got.append)
    assert got == [o]
    b = obj(b"b")
    store.put(B, b)
    store.put(B, obj(b"again"))  # a second put calls no callback twice
    err = ObjectFreedError("c")
    store.fail_waiters(C, err)
    assert got == [o, b, err] and not store.has_waiters(C)


async def test_when_all_stored_counts_to_the_last() -> None:
    store, loop = MemoryStore(), asyncio.get_running_loop()
    found: dict[bytes, StoredObject] = {}
    done = store.when_all_stored([A, B], found, loop)
    store.put(A, obj(b"a"))
    assert not done.done()
    store.put(B, obj(b"b"))
    assert done.done() and done.result() is None
    assert {k: v.data for k, v in found.items()} == {A: b"a", B: b"b"}


async def test_when_all_stored_fails_with_the_first_error_and_ignores_the_rest() -> None:
    store, loop = MemoryStore(), asyncio.get_running_loop()
    found: dict[bytes, StoredObject] = {}
    done = store.when_all_stored([A, B, C], found, loop)
    store.fail_waiters(B, ObjectFreedError("b"))
    with pytest.raises(ObjectFreedError):
        done.result()
    store.put(A, obj())  # arrives after the failure: not an error, not recorded
    store.fail_waiters(C, ObjectFreedError("c"))
    assert found == {}


async def test_when_all_stored_given_up_ignores_later_puts() -> None:
    store, loop = MemoryStore(), asyncio.get_running_loop()
    found: dict[bytes, StoredObject] = {}
    done = store.when_all_stored([A], found, loop)
    done.cancel()  # a timed-out wait
    store.put(A, obj())
    assert found == {}


class _Fetcher:
    def __init__(self) -> None:
        self.arrivals: list[tuple[Any, Any, Any]] = []

    def arrived(self, ref: Any, fut: Any, outcome: Any) -> None:
        self.arrivals.append((ref, fut, outcome))


def test_a_watch_is_delivered_once_by_put_or_by_failure() -> None:
    store, f = MemoryStore(), _Fetcher()
    store.watched[A] = (f, "ref-a", "fut-a")
    store.watched[B] = (f, "ref-b", "fut-b")
    assert store.has_waiters(A)
    o = obj()
    store.put(A, o)
    store.put(A, o)
    err = ObjectFreedError("b")
    store.fail_waiters(B, err)
    assert f.arrivals == [("ref-a", "fut-a", o), ("ref-b", "fut-b", err)]
    assert store.stats() == {"objects": 1, "waiting": 0}


async def test_fail_waiters_fails_futures_and_delete_removes() -> None:
    store, loop = MemoryStore(), asyncio.get_running_loop()
    fut = store.wait_for(A, loop)
    store.fail_waiters(A, ObjectFreedError("a"))
    with pytest.raises(ObjectFreedError):
        fut.result()
    store.put(B, obj())
    assert store.delete(B) is not None and B not in store and store.delete(B) is None


@pytest.mark.parametrize(
    "o",
    [
        StoredObject(b"data", [b"buf1", b"buf2"], contained=[[A, ["h", 1, b"w"]]]),
        StoredObject(b"err", [], is_error=True),
        StoredObject(node_id=b"n" * 16, size=123, contained=None),
    ],
)
def test_the_wire_form_round_trips(o: StoredObject) -> None:
    reply = encode_object(o)
    back = decode_object(A, reply.body, list(reply.buffers))
    assert (back.data, list(back.buffers), back.is_error) == (o.data, list(o.buffers), o.is_error)
    assert (back.node_id, back.contained, back.in_shm) == (o.node_id, o.contained, o.in_shm)
    if o.in_shm:
        assert back.size == o.size


def test_a_freed_object_on_the_wire_raises() -> None:
    """The owner no longer has it: Ray's OBJECT_DELETED error."""
    with pytest.raises(ReferenceCountingAssertionError):
        decode_object(A, [2], [])

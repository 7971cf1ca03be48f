"""The in-process object table: values of small objects, locations of large ones.

Owned objects land here when their task finishes or when they are put; borrowed
objects are cached here once fetched. Waiters are futures of the CoreWorker's
loop. Writes happen on that loop, except a put of a brand-new object (nothing can
be waiting for an id that did not exist); reads are single dict lookups and safe
from any thread.

The one thing other threads write is a watch: a caller loop's fetcher registers the
owned objects it awaits straight into ``watched`` (LoopFetcher.watch says why that is
safe), so awaiting a task's result costs no hop to this loop and back, only the delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import OBJ_FREED as OBJ_FREED
from aioray._private.wire.schema import OBJ_INLINE as OBJ_INLINE
from aioray._private.wire.schema import OBJ_SHM as OBJ_SHM
from aioray._private.wire.schema import ContainedRef, ObjectReply, PushReply
from aioray._private.wire.task_spec import RET_INLINE
from aioray.exceptions import ReferenceCountingAssertionError

if TYPE_CHECKING:
    pass


class StoredObject:
    """One object: inline (data + buffers) or a pointer to a node's shm store."""

    __slots__ = ("buffers", "contained", "data", "is_error", "node_id", "size")

    def __init__(
        self,
        data: Buffer | None = None,
        buffers: Sequence[Buffer] | None = None,
        is_error: bool = False,
        node_id: bytes | None = None,
        size: int = 0,
        contained: list[ContainedRef] | None = None,
    ) -> None:
        self.data = data
        self.buffers: Sequence[Buffer] = buffers or ()  # (no list per object for the GC)
        self.is_error = is_error
        self.node_id = node_id  # set: the object lives in that node's shm store
        self.size = size
        # Refs inside the value, as [object id, owner address] pairs: while this copy
        # is stored, it holds them (borrowing.py).
        self.contained = contained

    @property
    def in_shm(self) -> bool:
        return self.node_id is not None and self.data is None

    def __repr__(self) -> str:
        where = f"shm@{self.node_id.hex()[:8]}" if self.node_id else "inline"
        return f"<StoredObject {where} size={self.size} error={self.is_error}>"


Outcome = StoredObject | BaseException  # what a wait for an object ends with


class Watcher(Protocol):
    """Told when a watched object is stored: a caller loop's fetcher (async_api.LoopFetcher,
    ``key`` its ObjectRef) or a thread blocked in get (thread_waits.ThreadWait, ``key``
    the object id)."""

    def arrived(self, key: Any, target: object, outcome: Outcome) -> None: ...


def encode_object(obj: StoredObject) -> rpc.Reply:
    """The wire form of an object in get_object replies (schema.ObjectReply)."""
    if obj.in_shm:
        return rpc.Reply([OBJ_SHM, obj.size, obj.node_id, obj.contained])
    assert obj.data is not None
    return rpc.Reply(
        [OBJ_INLINE, len(obj.buffers), obj.is_error, obj.contained], [obj.data, *obj.buffers]
    )


def decode_object(oid: bytes, body: ObjectReply, buffers: list[Buffer]) -> StoredObject:
    contained = body[3] if len(body) > 3 else None
    if body[0] == OBJ_INLINE:
        return StoredObject(buffers[0], buffers[1 : 1 + body[1]], body[2], contained=contained)
    if body[0] == OBJ_SHM:
        return StoredObject(node_id=body[2], size=body[1], contained=contained)
    # OBJ_FREED: its owner no longer has it (Ray's OBJECT_DELETED)
    raise ReferenceCountingAssertionError(oid.hex())


def parse_returns(body: PushReply, bufs: list[Buffer]) -> list[StoredObject]:
    """The return values in a push reply: inline (pickle + buffers) or in shm."""
    objs = []
    off = 0
    for ret in body["r"]:
        contained = ret[3] if len(ret) > 3 else None
        if ret[0] == RET_INLINE:
            n = ret[1]
            objs.append(
                StoredObject(bufs[off], bufs[off + 1 : off + 1 + n], ret[2], contained=contained)
            )
            off += 1 + n
        else:
            objs.append(StoredObject(node_id=ret[2], size=ret[1], contained=contained))
    return objs


class MemoryStore:
    def __init__(self) -> None:
        self._objects: dict[bytes, StoredObject] = {}
        self._waiters: dict[bytes, list[asyncio.Future[StoredObject]]] = {}
        # Plain callbacks (the loop fetchers'): no future per awaited ref.
        self._callbacks: dict[bytes, list[Callable[[Outcome], None]]] = {}
        # The lookup every get and await makes: the dict's own method, no Python frame.
        self.get: Callable[[bytes], StoredObject | None] = self._objects.get
        # Watches registered from caller loops' threads: object id -> (fetcher, ref,
        # future), delivered with fetcher.arrived(ref, future, object or error).
        self.watched: dict[bytes, tuple[Watcher, Any, object]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, oid: bytes) -> bool:
        return oid in self._objects

    def put(self, oid: bytes, obj: StoredObject) -> None:
        self._objects[oid] = obj
        waiters = self._waiters.pop(oid, None)
        if waiters:
            for w in waiters:
                if not w.done():
                    w.set_result(obj)
        if self._callbacks:
            for cb in self._callbacks.pop(oid, ()):
                cb(obj)
        if self.watched:
            watch = self.watched.pop(oid, None)
            if watch is not None:
                watch[0].arrived(watch[1], watch[2], obj)

    def put_quietly(self, oid: bytes, obj: StoredObject) -> None:
        """(any thread) Store ``oid`` without telling its waiters: a caller thread read its
        task's reply itself (owner/reply_reads.py); the loop's ``put`` tells them."""
        self._objects[oid] = obj

    def wait_for(self, oid: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[StoredObject]:
        """A future resolved when ``oid`` is stored (at once if it already is)."""
        fut: asyncio.Future[StoredObject] = loop.create_future()
        obj = self._objects.get(oid)
        if obj is not None:
            fut.set_result(obj)
        else:
            self._waiters.setdefault(oid, []).append(fut)
        return fut

    def when_stored(self, oid: bytes, callback: Callable[[Outcome], None]) -> None:
        """(loop) Call ``callback(obj)`` once ``oid`` is stored, or with the error
        that ends the wait (``fail_waiters``); at once if it is already stored."""
        obj = self._objects.get(oid)
        if obj is not None:
            callback(obj)
        else:
            self._callbacks.setdefault(oid, []).append(callback)

    def when_all_stored(
        self, oids: list[bytes], found: dict[bytes, StoredObject], loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[None]:
        """(loop) A future done once every one of ``oids`` (none stored yet) is stored,
        each put in ``found``, or failed with the first error that ends one of their
        waits. One future and a count, not a future each."""
        done: asyncio.Future[None] = loop.create_future()
        left = len(oids)

        def stored(oid: bytes, obj: Outcome) -> None:
            nonlocal left
            if done.done():  # failed already, or the wait was given up (timeout)
                return
            if isinstance(obj, BaseException):
                done.set_exception(obj)
                return
            found[oid] = obj
            left -= 1
            if not left:
                done.set_result(None)

        for oid in oids:
            self.when_stored(oid, partial(stored, oid))
        return done

    def delete(self, oid: bytes) -> StoredObject | None:
        return self._objects.pop(oid, None)

    def has_waiters(self, oid: bytes) -> bool:
        return oid in self._waiters or oid in self._callbacks or oid in self.watched

    def fail_waiters(self, oid: bytes, exc: BaseException) -> None:
        for w in self._waiters.pop(oid, []):
            if not w.done():
                w.set_exception(exc)
        for cb in self._callbacks.pop(oid, ()):
            cb(exc)
        watch = self.watched.pop(oid, None)
        if watch is not None:
            watch[0].arrived(watch[1], watch[2], exc)

    def items(self) -> list[tuple[bytes, StoredObject]]:
        return list(self._objects.items())

    def stats(self) -> dict[str, int]:
        return {
            "objects": len(self._objects),
            "waiting": len(self._waiters) + len(self._callbacks) + len(self.watched),
        }

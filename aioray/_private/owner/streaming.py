"""Streaming generators: ``num_returns="streaming"`` tasks and actor methods.

Protocol (owner <-> worker, on the connection the task was pushed on):
1. The worker iterates the generator and sends each item as it is produced,
   ``stream_item [task_id, index, kind, a, b]`` plus the value's buffers (kind as in
   a push reply: inline, or in shared memory). Item ``i`` is object ``(task_id, i+1)``,
   owned by the caller.
2. With ``_generator_backpressure_num_objects=N`` the worker waits until the caller
   has consumed all but N items (``stream_ack [task_id, consumed]``).
3. The push reply ends the stream. An exception becomes the last item: reading
   that item raises it, as in Ray.

``ObjectRefGenerator`` yields ObjectRefs with ``for`` and ``async for`` while the
task still runs. Ray's peek (``_get_next_ref_n``, used by Ray Data) hands out refs
ahead of the head without consuming them; those past the end of a stream that ended
resolve to ObjectRefStreamEndOfStreamError, as in Ray.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from aioray._private.core.memory_store import StoredObject
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.rpc import rpc
from aioray._private.wire import ids, serialization
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import StreamAck, StreamItem
from aioray._private.wire.task_spec import RET_INLINE
from aioray.exceptions import ObjectRefStreamEndOfStreamError

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import StreamsHost


class _Stream:
    __slots__ = (
        "abandoned",
        "acked",
        "cond",
        "conn",
        "count",
        "done",
        "final",
        "next",
        "peeked",
        "task_id",
        "waiters",
    )

    def __init__(self, task_id: bytes) -> None:
        self.task_id = task_id
        self.cond = threading.Condition()
        self.count = 0  # items arrived
        self.next = 0  # items handed out
        self.peeked = 0  # positions handed out ahead by _get_next_ref_n, up to this one
        self.acked = 0
        self.done = False
        self.abandoned = False
        self.final: StoredObject | None = None  # what completed()'s ref resolves to
        self.conn: rpc.Connection | None = None
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []


class StreamManager:
    """Owner side: items arriving from workers, and the generators reading them."""

    def __init__(self, cw: StreamsHost) -> None:
        self.cw = cw
        self.streams: dict[bytes, _Stream] = {}

    def create(self, task_id: bytes) -> ObjectRefGenerator:
        s = self.streams[task_id] = _Stream(task_id)
        return ObjectRefGenerator(self, s)

    # -- loop side ------------------------------------------------------------------------------
    def handle_stream_item(
        self, conn: rpc.Connection, body: StreamItem, bufs: list[Buffer]
    ) -> None:
        """``stream_item`` [task id, index, kind, nbuf or size, is_error or node id, contained?] +
        buffers (notice, from the worker running a streaming task): one yielded item, stored for
        the generator."""
        task_id, index = body[0], body[1]
        contained = body[5] if len(body) > 5 else None
        s = self.streams.get(task_id)
        if body[2] == RET_INLINE:
            obj = StoredObject(bufs[0], bufs[1 : 1 + body[3]], body[4], contained=contained)
        else:
            obj = StoredObject(node_id=body[4], size=body[3], contained=contained)
        if contained:  # the worker lent us the refs inside the item
            self.cw.borrowing.hold(contained)
        self._add(s, task_id, index, obj, conn)

    def _add(
        self,
        s: _Stream | None,
        task_id: bytes,
        index: int,
        obj: StoredObject,
        conn: rpc.Connection | None,
    ) -> None:
        oid = ids.object_id(task_id, index + 1)
        if s is None or s.abandoned:
            if obj.in_shm:
                self.cw.free_shm(oid, obj.node_id)
            self.cw.release_contained(obj)
            return
        self.cw.owned.add(oid)
        self.cw.memory_store.put(oid, obj)
        with s.cond:
            s.count = max(s.count, index + 1)
            s.conn = conn
            s.cond.notify_all()
        self._wake(s)

    def task_done(self, task_id: bytes, objs: list[StoredObject]) -> None:
        """The push reply arrived: the stream ends (after an error item, if any)."""
        s = self.streams.get(task_id)
        if s is None:
            return
        if objs:  # the task failed: its error is the last item
            self._add(s, task_id, s.count, objs[0], s.conn)
        s.final = objs[0] if objs else _NONE
        done_id = ids.object_id(task_id, 0)
        if done_id in self.cw.owned:  # completed() was called: its ref is ready now
            self.cw.memory_store.put(done_id, s.final)
        with s.cond:
            s.done = True
            s.cond.notify_all()
        self.end_peeked(s)
        self._wake(s)
        if s.abandoned or s.next >= s.count:
            self.streams.pop(task_id, None)

    def end_peeked(self, s: _Stream) -> None:
        """(loop) Once the stream ended, the peeked refs past its end resolve to
        ObjectRefStreamEndOfStreamError (those no one holds any more are not kept)."""
        if not s.done:
            return
        owned = self.cw.owned
        for i in range(s.count, s.peeked):
            oid = ids.object_id(s.task_id, i + 1)
            if oid in owned and oid not in self.cw.memory_store:
                self.cw.memory_store.put(oid, _END_OF_STREAM)

    def _wake(self, s: _Stream) -> None:
        waiters, s.waiters = s.waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_set_done, fut)

    def ack(self, s: _Stream) -> None:
        if s.conn is not None and not s.conn.is_closed:
            ack: StreamAck = (s.task_id, s.next)
            s.conn.notify("stream_ack", ack)


_NONE = StoredObject(serialization.serialize(None).data, [])
_END_OF_STREAM = StoredObject(
    serialization.serialize(ObjectRefStreamEndOfStreamError()).data, [], is_error=True
)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ObjectRefGenerator:
    """The refs a streaming task yields, available while it still runs."""

    def __init__(self, manager: StreamManager, stream: _Stream) -> None:
        self._m = manager
        self._s = stream

    def __repr__(self) -> str:
        s = self._s
        return f"ObjectRefGenerator({s.task_id.hex()}, items={s.count}, done={s.done})"

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        s = self._s
        with s.cond:
            while s.next >= s.count and not s.done:
                s.cond.wait(0.25)  # in slices, so a Ctrl-C always gets through
        return self._take()

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        s = self._s
        loop = asyncio.get_running_loop()
        while True:
            with s.cond:
                if s.next < s.count or s.done:
                    break
                fut: asyncio.Future[None] = loop.create_future()
                s.waiters.append((loop, fut))
            await fut
        try:
            return self._take()
        except StopIteration:
            raise StopAsyncIteration from None

    def _take(self) -> ObjectRef:
        s = self._s
        with s.cond:
            if s.next >= s.count:
                raise StopIteration
            oid = ids.object_id(s.task_id, s.next + 1)
            s.next += 1
        ref = ObjectRef(oid, self._m.cw.address)
        self._m.cw.post(self._m.ack, s)
        return ref

    def _get_next_ref_n(self, num_refs: int) -> list[ObjectRef]:
        """The next ``num_refs`` refs from the head of the stream, not consumed (Ray's).

        Refs not produced yet resolve when their items arrive; those past the end of a
        stream that ended resolve to ObjectRefStreamEndOfStreamError."""
        if num_refs <= 0:
            raise ValueError("num_refs must be positive")
        s, cw = self._s, self._m.cw
        with s.cond:
            first = s.next
            s.peeked = max(s.peeked, first + num_refs)
        oids = [ids.object_id(s.task_id, i + 1) for i in range(first, first + num_refs)]
        cw.owned.update(oids)  # gets of the items not here yet wait for them
        refs = [ObjectRef(oid, cw.address) for oid in oids]
        cw.post(self._m.end_peeked, s)
        return refs

    def _consume_next_ref_n(self, num_refs: int) -> None:
        """Advance the head by ``num_refs`` (Ray's), after the last of them was waited for;
        end-of-stream positions in the range are consumed too."""
        if num_refs <= 0:
            raise ValueError("num_refs must be positive")
        s = self._s
        with s.cond:
            if s.next + num_refs > s.count and not s.done:
                raise ValueError(
                    f"cannot consume {num_refs} refs: the last of them is not produced yet "
                    "(wait for it first)"
                )
            s.next += num_refs
        self._m.cw.post(self._m.ack, s)

    @property
    def task_id(self) -> bytes:
        """The id of the streaming task that yields the items."""
        return self._s.task_id

    def is_finished(self) -> bool:
        """True once the task has ended and every item it yielded has been handed out."""
        s = self._s
        return s.done and s.next >= s.count

    def completed(self) -> ObjectRef:
        """A ref that is ready when the task has ended (its get raises the task's error)."""
        s = self._s
        done_id = ids.object_id(s.task_id, 0)
        cw = self._m.cw
        cw.owned.add(done_id)
        ref = ObjectRef(done_id, cw.address)
        if s.final is not None:
            cw.post(cw.memory_store.put, done_id, s.final)
        return ref

    def __del__(self) -> None:
        s = self._s
        try:
            s.abandoned = True
            for i in range(s.next, s.count):  # arrived but never handed out: free them
                self._m.cw.post(self._m.cw.free_unreferenced, ids.object_id(s.task_id, i + 1))
        except Exception:  # interpreter shutdown
            pass

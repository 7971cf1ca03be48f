"""What an owner answers to other processes about the objects it owns.

    get_object(oid)          -> the value inline, or where it lives; waits until it exists
    wait_object(oid)         -> when it exists, without its value
    reconstruct_object(oid | [oid, node])
                             -> its only copy is lost (the copy on ``node``): rebuild it
                                (lineage.py), then as get_object; if it was rebuilt
                                since, elsewhere than ``node``, just as get_object

and, on the asking side, ``recover``: the way back from a lost copy to a readable one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aioray.exceptions as exceptions
from aioray._private.core.memory_store import OBJ_FREED, StoredObject, decode_object, encode_object
from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import OBJ_LOST as OBJ_LOST  # [OBJ_LOST, error class, why]
from aioray._private.wire.schema import Address, ObjectReply, ReconstructObject
from aioray.exceptions import ObjectLostError, OwnerDiedError

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import OwnerServiceHost

# A get_object answer now (the object, or [OBJ_FREED]), or once the object is stored.
GetReply = rpc.Reply | list[int] | asyncio.Future[rpc.Reply]


class OwnerService:
    def __init__(self, cw: OwnerServiceHost) -> None:
        self.cw = cw

    def _reply_when_stored(self, oid: bytes) -> asyncio.Future[rpc.Reply]:
        cw = self.cw
        reply: asyncio.Future[rpc.Reply] = cw.loop.create_future()

        def done(f: asyncio.Future[StoredObject]) -> None:
            if reply.done():
                return
            if f.cancelled() or f.exception() is not None:
                reply.set_result(rpc.Reply([OBJ_FREED]))
                return
            self._send(reply, f.result())

        cw.memory_store.wait_for(oid, cw.loop).add_done_callback(done)
        return reply

    def _send(self, reply: asyncio.Future[rpc.Reply], obj: StoredObject) -> None:
        def send() -> None:
            if not reply.done():
                reply.set_result(encode_object(obj))

        # The reader will hold the refs inside: register that before it can see them.
        self.cw.borrowing.lend(obj.contained or (), send)

    def handle_get_object(self, conn: rpc.Connection, oid: bytes, _: list[Buffer]) -> GetReply:
        """``get_object`` oid -> the object's wire form (memory_store.encode_object: inline value
        and buffers, or where it lives in shm), once it is stored; ``[OBJ_FREED]`` if this owner
        no longer has it."""
        obj = self.cw.memory_store.get(oid)
        if obj is not None and not obj.contained:
            return encode_object(obj)
        if obj is None and oid not in self.cw.owned:
            return [OBJ_FREED]
        return self._reply_when_stored(oid)

    def handle_wait_object(
        self, conn: rpc.Connection, oid: bytes, _: list[Buffer]
    ) -> bool | asyncio.Future[bool]:
        """``wait_object`` oid -> True once the object exists (at once if stored or not owned here),
        without its value."""
        cw = self.cw
        if oid in cw.memory_store or oid not in cw.owned:
            return True
        reply: asyncio.Future[bool] = cw.loop.create_future()

        def done(_: asyncio.Future[StoredObject]) -> None:
            if not reply.done():
                reply.set_result(True)

        cw.memory_store.wait_for(oid, cw.loop).add_done_callback(done)
        return reply

    async def handle_reconstruct_object(
        self, conn: rpc.Connection, body: ReconstructObject, _: list[Buffer]
    ) -> rpc.Reply | list[int | str]:
        """``reconstruct_object`` oid or [oid, node it was lost on] -> the object's wire form after
        it was rebuilt from its lineage (or found rebuilt elsewhere already); ``[OBJ_LOST, error
        class, why]`` if it cannot be, ``[OBJ_FREED]`` if not owned here."""
        oid, lost_on = (body, None) if isinstance(body, bytes) else body
        if oid not in self.cw.owned:
            return [OBJ_FREED]
        try:
            obj = self._moved(oid, lost_on) or await self.cw.lineage.rebuild(oid)
        except ObjectLostError as e:
            return [OBJ_LOST, type(e).__name__, str(e)]
        reply: asyncio.Future[rpc.Reply] = self.cw.loop.create_future()
        self._send(reply, obj)
        return await reply

    def _moved(self, oid: bytes, lost_on: bytes | None) -> StoredObject | None:
        """The object as stored now, if it was rebuilt on another node than ``lost_on``
        (the reader had a stale location): no need to run its task once more."""
        obj = self.cw.memory_store.get(oid)
        if obj is not None and lost_on is not None and obj.in_shm and obj.node_id != lost_on:
            return obj
        return None

    # -- the asking side -------------------------------------------------------------------
    async def recover(
        self, oid: bytes, owner: Address | None, lost_on: bytes | None = None
    ) -> StoredObject:
        """(loop) A readable copy of ``oid`` after its copy on node ``lost_on`` was found lost."""
        cw = self.cw
        if oid in cw.owned:
            return self._moved(oid, lost_on) or await cw.lineage.rebuild(oid)
        if not owner or owner[2] == cw.worker_id:
            raise ObjectLostError(oid.hex(), f"Object {oid.hex()} is lost; its owner is unknown.")
        try:
            conn = await cw.connect_peer(owner[0], owner[1])
            body: ObjectReply
            body, bufs = await conn.call_full(
                "reconstruct_object", oid if lost_on is None else [oid, lost_on]
            )
        except ConnectionError:
            raise OwnerDiedError(
                oid.hex(), f"The owner of object {oid.hex()} ({owner[0]}:{owner[1]}) has died."
            ) from None
        if body[0] == OBJ_LOST:
            cls = getattr(exceptions, body[1], ObjectLostError)
            raise cls(oid.hex(), body[2])
        obj = decode_object(oid, body, bufs)
        if obj.contained:
            cw.borrowing.hold(obj.contained)
            cw.loop.call_soon(cw.release_contained, obj)  # the caller holds the ref itself
        cached = cw.memory_store.get(oid)
        if cached is not None and cached.in_shm and obj.in_shm:
            cached.node_id = obj.node_id  # rebuilt elsewhere: the cached location moves too
        return obj

"""A raylet's object handlers: creating and sealing objects in its store, restoring and
freeing them, and moving copies between nodes (object_transfer.py). Thin: each hands
the message to the store service or the transfer, which own the state."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    CreateObject,
    CreateObjectReply,
    FreeCopies,
    FreeObjectsAt,
    ObjectSealed,
    PullObject,
    RestoreReply,
    TransferBeginReply,
    TransferChunk,
)

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet


class ObjectHandlers:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet

    def handlers(self) -> dict[str, rpc.Handler]:
        """The object messages this raylet answers, by name."""
        return {
            "create_object": self.handle_create_object,
            "object_sealed": self.handle_object_sealed,
            "restore_object": self.handle_restore_object,
            "free_objects": self.handle_free_objects,
            "free_objects_at": self.handle_free_objects_at,
            "free_copies": self.handle_free_copies,
            "pull_object": self.handle_pull_object,
            "transfer_begin": self.handle_transfer_begin,
            "transfer_chunk": self.handle_transfer_chunk,
            "transfer_end": self.handle_transfer_end,
        }

    def handle_create_object(
        self, conn: rpc.Connection, body: CreateObject, _: list[Buffer]
    ) -> CreateObjectReply | asyncio.Future[CreateObjectReply]:
        """``create_object`` [oid, size, pooled segment's inode?] from a writer -> once room is
        granted (at once, or after spilling or eviction; at once for a pooled segment): the bytes
        left free, or the path of a file on disk to write an object larger than the store to; an
        error reply if no room comes."""
        return self.raylet.store.create_object(conn, body)

    def handle_object_sealed(
        self, conn: rpc.Connection, body: ObjectSealed, _: list[Buffer]
    ) -> None:
        """``object_sealed`` [oid, size, owner worker id?, segment inode?] (notice, from the
        writer): the segment is written; the object now counts in the store, under its owner."""
        if self.raylet.store.object_sealed(conn, body):  # not freed already: it has an owner
            self.raylet.owners.sealed(body[0], body[2] if len(body) > 2 else None)

    def handle_restore_object(
        self, conn: rpc.Connection, oid: bytes, _: list[Buffer]
    ) -> RestoreReply | asyncio.Future[RestoreReply]:
        """``restore_object`` oid -> None once the object is back in shared memory here (restored
        from spill), or [error class, why] if this node has no copy."""
        return self.raylet.store.restore_object(oid)

    def handle_free_objects(self, conn: rpc.Connection, oids: list[bytes], _: list[Buffer]) -> None:
        """``free_objects`` [oid, ...] (notice, from an owner): delete these objects here (segments
        and spill files)."""
        self.raylet.free_here(oids)

    def handle_free_objects_at(
        self, conn: rpc.Connection, groups: FreeObjectsAt, _: list[Buffer]
    ) -> None:
        """``free_objects_at`` [[node id, [oid, ...]], ...] (notice, from an owner here): free
        objects whose primary copies are on other nodes (forwarded to their raylets)."""
        self.raylet.transfer.free_at(groups)

    def handle_free_copies(self, conn: rpc.Connection, body: FreeCopies, _: list[Buffer]) -> None:
        """Another raylet frees the copies here of objects pulled from node ``source``."""
        source, oids = body
        self.raylet.store.free_copies(source, oids)

    def handle_pull_object(
        self, conn: rpc.Connection, body: PullObject, _: list[Buffer]
    ) -> RestoreReply | asyncio.Future[RestoreReply]:
        """``pull_object`` [oid, source node id] from a reader here -> None once a copy is in this
        node's shared memory (pulled from the source node), or the error that prevented it."""
        return self.raylet.transfer.pull(body[0], body[1])

    async def handle_transfer_begin(
        self, conn: rpc.Connection, oid: bytes, _: list[Buffer]
    ) -> TransferBeginReply:
        """``transfer_begin`` oid, from another raylet pulling it -> [size] (the copy is mapped and
        kept until ``transfer_end``), or [error class, why]."""
        return await self.raylet.transfer.begin(conn, oid)

    def handle_transfer_chunk(
        self, conn: rpc.Connection, body: TransferChunk, _: list[Buffer]
    ) -> rpc.Reply:
        """``transfer_chunk`` [oid, offset, length] -> the bytes, as one raw buffer sent from the
        mapping."""
        return self.raylet.transfer.chunk(body[0], int(body[1]), int(body[2]))

    def handle_transfer_end(self, conn: rpc.Connection, oid: bytes, _: list[Buffer]) -> None:
        """``transfer_end`` oid (notice, from the pulling raylet): it has the whole object; release
        the mapping."""
        self.raylet.transfer.end(conn, oid)

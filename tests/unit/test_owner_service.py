"""OwnerService (owner/owner_service.py): what an owner answers about its objects, and
the asking side's way back from a lost copy. On offline CoreWorkers: the borrower and
the owner's peers are fake connections."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import (
    FakeConnection,
    OfflineCluster,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
)

from aioray._private.core.memory_store import (
    OBJ_FREED,
    OBJ_INLINE,
    OBJ_SHM,
    StoredObject,
    encode_object,
)
from aioray._private.owner.owner_service import OBJ_LOST
from aioray._private.rpc import rpc
from aioray._private.wire import ids, serialization
from aioray.exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OwnerDiedError,
)

OTHER = ["10.0.0.9", 4000, b"o" * 16]
NODE_A, NODE_B = b"\x0a" * 16, b"\x0b" * 16


def owned(offline: OfflineCluster) -> bytes:
    oid = ids.object_id(offline.cw.ids.task_id(offline.cw.job_id), 1)
    offline.cw.owned.add(oid)
    return oid


def inline(value: Any, contained: list[list[Any]] | None = None) -> StoredObject:
    so = serialization.serialize(value)
    return StoredObject(so.data, so.buffers, contained=contained)


async def answer(reply: Any) -> Any:
    """A handler's reply, awaited if it is a future: its body."""
    if isinstance(reply, asyncio.Future):
        reply = await asyncio.wait_for(reply, 10)
    return reply.body if isinstance(reply, rpc.Reply) else reply


async def test_get_object_answers_stored_freed_and_not_yet_stored(
    offline: OfflineCluster,
) -> None:
    cw, borrower = offline.cw, FakeConnection("borrower")
    stored, later = owned(offline), owned(offline)
    cw.memory_store.put(stored, inline(1))
    assert (await answer(cw.owner_service.handle_get_object(borrower, stored, None)))[0] == (  # type: ignore[arg-type]
        OBJ_INLINE
    )
    assert await answer(cw.owner_service.handle_get_object(borrower, b"z" * 20, None)) == [  # type: ignore[arg-type]
        OBJ_FREED
    ]
    pending = cw.owner_service.handle_get_object(borrower, later, None)  # type: ignore[arg-type]
    assert isinstance(pending, asyncio.Future) and not pending.done()
    cw.memory_store.put(later, StoredObject(node_id=NODE_A, size=5))
    assert (await answer(pending))[:3] == [OBJ_SHM, 5, NODE_A]


async def test_get_object_of_an_object_freed_while_waited_says_freed(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    oid = owned(offline)
    pending = cw.owner_service.handle_get_object(FakeConnection(), oid, None)  # type: ignore[arg-type]
    cw.free_unreferenced(oid)
    assert await answer(pending) == [OBJ_FREED]


async def test_refs_inside_a_value_are_lent_before_the_reply(offline: OfflineCluster) -> None:
    cw = offline.cw
    oid = owned(offline)
    cw.memory_store.put(oid, inline("outer", contained=[[b"i" * 20, OTHER]]))
    pending = cw.owner_service.handle_get_object(FakeConnection(), oid, None)  # type: ignore[arg-type]
    await settle()
    owner = offline.peers.at("10.0.0.9", 4000)
    [borrow] = owner.pending("borrow")
    assert borrow.body == [[b"i" * 20, 1]] and not pending.done()  # not before the owner knows
    owner.reply(borrow, True)
    assert (await answer(pending))[0] == OBJ_INLINE


async def test_wait_object_answers_once_the_object_exists(offline: OfflineCluster) -> None:
    cw = offline.cw
    oid = owned(offline)
    assert cw.owner_service.handle_wait_object(FakeConnection(), b"z" * 20, None) is True  # type: ignore[arg-type]
    pending = cw.owner_service.handle_wait_object(FakeConnection(), oid, None)  # type: ignore[arg-type]
    assert not pending.done()
    cw.memory_store.put(oid, inline(None))
    assert await asyncio.wait_for(pending, 10) is True


async def test_reconstruct_of_a_copy_rebuilt_elsewhere_does_not_run_the_task(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    oid = owned(offline)
    cw.memory_store.put(oid, StoredObject(node_id=NODE_B, size=3))  # rebuilt on B already
    body = await answer(await cw.owner_service.handle_reconstruct_object(None, [oid, NODE_A], None))  # type: ignore[arg-type]
    assert body[:3] == [OBJ_SHM, 3, NODE_B]
    assert offline.raylet.pending("request_lease") == []


async def test_reconstruct_says_why_it_cannot(offline: OfflineCluster) -> None:
    cw = offline.cw
    put_oid = owned(offline)  # no lineage: a put
    body = await cw.owner_service.handle_reconstruct_object(None, put_oid, None)  # type: ignore[arg-type]
    assert body[:2] == [OBJ_LOST, "ObjectLostError"]
    assert await cw.owner_service.handle_reconstruct_object(None, b"z" * 20, None) == [OBJ_FREED]  # type: ignore[arg-type]


async def test_recover_asks_the_owner_and_raises_its_reason(offline: OfflineCluster) -> None:
    service, oid = offline.cw.owner_service, b"x" * 20
    asking = asyncio.ensure_future(service.recover(oid, tuple(OTHER), NODE_A))
    await settle()
    owner = offline.peers.at("10.0.0.9", 4000)
    [req] = owner.pending("reconstruct_object")
    assert req.body == [oid, NODE_A]
    owner.reply(req, [OBJ_LOST, "ObjectReconstructionFailedMaxAttemptsExceededError", "no retries"])
    with pytest.raises(ObjectReconstructionFailedMaxAttemptsExceededError, match="no retries"):
        await asyncio.wait_for(asking, 10)
    again = asyncio.ensure_future(service.recover(oid, tuple(OTHER)))
    await settle()
    [req] = owner.pending("reconstruct_object")
    reply = encode_object(StoredObject(node_id=NODE_B, size=9))
    owner.reply(req, reply.body, reply.buffers)
    assert (await asyncio.wait_for(again, 10)).node_id == NODE_B


async def test_recover_from_a_dead_or_unknown_owner(offline: OfflineCluster) -> None:
    service, oid = offline.cw.owner_service, b"x" * 20
    offline.peers.unreachable.add(("10.0.0.9", 4000))
    with pytest.raises(OwnerDiedError):
        await service.recover(oid, tuple(OTHER))
    with pytest.raises(ObjectLostError, match="owner is unknown"):
        await service.recover(oid, None)

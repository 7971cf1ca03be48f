"""Waiting for objects on the CoreWorker's loop: for their values (``fetch_many``, what
``get`` waits on) and for their readiness alone (``wait_async``, what ``wait`` waits on);
``get_future`` is a ref's value as a concurrent future (``ObjectRef.future``).

Owned objects are waited for in the memory store; borrowed ones at their owner.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aioray._private.owner import store_client
from aioray._private.owner.worker_context import ensure_connected

if TYPE_CHECKING:
    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.interfaces import WaitHost
    from aioray._private.owner.object_ref import ObjectRef


async def fetch_many(cw: WaitHost, refs: Sequence[ObjectRef]) -> dict[bytes, StoredObject]:
    """(loop) The objects of ``refs`` by id; raises the first error that ends a wait.

    The owned objects not stored yet (a get of task results) wait in the store
    together, counted down by one future: no future and gather callback each."""
    store, owned = cw.memory_store, cw.owned
    found: dict[bytes, StoredObject] = {}
    pending: list[bytes] = []
    waits: list[asyncio.Future[Any]] = []
    fetched: list[bytes] = []
    for r in refs:
        oid = r._id
        obj = store.get(oid)
        if obj is not None:
            found[oid] = obj
        elif oid in owned:
            pending.append(oid)
        else:
            fetched.append(oid)
            waits.append(cw.fetch(r))
    if pending:
        waits.append(store.when_all_stored(pending, found, cw.loop))
    if len(waits) == 1:
        got = [await waits[0]]
    elif waits:
        got = await asyncio.gather(*waits)
    else:
        return found
    found.update(zip(fetched, got[: len(fetched)], strict=True))  # (then the countdown)
    return found


def ready_now(cw: WaitHost, refs: Sequence[ObjectRef]) -> list[bool]:
    """(any thread) Which of ``refs`` are ready without waiting."""
    store = cw.memory_store
    return [r._id in store for r in refs]


async def wait_async(
    cw: WaitHost, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None, fetch: bool
) -> set[bytes]:
    """(loop) Ids of refs ready once ``num_returns`` are, or at the timeout."""
    ready = {r._id for r in refs if r._id in cw.memory_store}
    if len(ready) >= num_returns or timeout == 0:
        return ready
    futs: dict[asyncio.Future[Any], bytes] = {}
    shared: set[asyncio.Future[Any]] = set()  # other callers' fetches: never cancelled
    for r in refs:
        if r._id in ready:
            continue
        if fetch or r._id in cw.owned:
            fut: asyncio.Future[Any] = cw.fetch(r)
            if fut is cw.fetching.get(r._id):
                shared.add(fut)
        else:
            fut = cw.loop.create_task(_wait_at_owner(cw, r))
        futs[fut] = r._id
    # One callback per ref and a count: asyncio.wait(FIRST_COMPLETED) in a loop would
    # re-register every pending ref on each wake-up (quadratic in the number of refs).
    enough: asyncio.Future[None] = cw.loop.create_future()

    def arrived(f: asyncio.Future[Any]) -> None:
        ready.add(futs[f])
        if len(ready) >= num_returns and not enough.done():
            enough.set_result(None)

    for f in futs:
        f.add_done_callback(arrived)
    try:
        await asyncio.wait([enough], timeout=timeout)
    finally:
        for f in futs:
            if not f.done():
                f.remove_done_callback(arrived)
                if f not in shared:
                    f.cancel()
    return set(ready)


async def _wait_at_owner(cw: WaitHost, ref: ObjectRef) -> None:
    owner = ref._owner
    if owner is None:
        return
    try:
        conn = await cw.connect_peer(owner[0], owner[1])
        await conn.call("wait_object", ref._id)
    except ConnectionError:
        return  # the owner died: the object is "ready" (get will raise)


def get_future(ref: ObjectRef) -> concurrent.futures.Future[Any]:
    cw = ensure_connected()

    async def value() -> Any:  # waits on the CoreWorker's loop: no thread per future
        obj = await cw.fetch(ref)
        if obj.in_shm:  # restore or pull it here; read_object cannot wait on the loop
            await store_client.restore_async(cw, ref.binary(), obj.node_id)
        return cw.materialize(ref.binary(), obj)

    return asyncio.run_coroutine_threadsafe(value(), cw.loop)

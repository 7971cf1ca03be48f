"""Lineage (core/lineage.py): an owner keeps the finished tasks whose shared-memory
results may have to be rebuilt, within a byte budget, and runs one again, once, when
its result is lost. On an offline CoreWorker with a fake raylet and workers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import (
    OfflineCluster,
    normal_task,
    offline_fixture,  # noqa: F401  (the fixture)
    pushed,
    settle,
    shm_reply,
    value_reply,
)

from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire import config, ids, serialization
from aioray._private.wire.task_spec import TaskEntry
from aioray.exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
)

OTHER_NODE = b"\x0f" * 16


async def run(offline: OfflineCluster, task: TaskEntry, reply: Any) -> ObjectRef:
    """Submit ``task`` and answer its push with ``reply``; the ref to its result."""
    ref = ObjectRef(task.return_ids[0], offline.cw.address)
    offline.cw.submitter.submit(task)
    worker, push = await pushed(offline, task)
    worker.reply(push, *reply)
    await settle()
    return ref


async def test_a_retriable_task_with_a_shm_result_is_kept(offline: OfflineCluster) -> None:
    lineage = offline.cw.lineage
    kept = normal_task(offline.cw, max_retries=1)
    refs = [await run(offline, kept, shm_reply(OTHER_NODE))]
    assert lineage.tasks == {kept.task_id: kept}
    inline = normal_task(offline.cw, max_retries=1)
    refs.append(await run(offline, inline, value_reply(1)))  # dies with its owner anyway
    final = normal_task(offline.cw, max_retries=0)
    refs.append(await run(offline, final, shm_reply(OTHER_NODE)))  # could not run again
    assert list(lineage.tasks) == [kept.task_id]


async def test_a_task_leaves_once_its_results_are_out_of_scope(offline: OfflineCluster) -> None:
    cw = offline.cw
    task = normal_task(cw, max_retries=1)
    task.args_blob = serialization.SerializedObject(b"a" * 100, [])
    ref = await run(offline, task, shm_reply(OTHER_NODE))
    assert cw.lineage.nbytes == 100
    del ref
    await settle()
    assert cw.lineage.tasks == {} and cw.lineage.nbytes == 0
    assert task.args_blob is None  # its arguments are released with it


async def test_over_the_budget_a_task_is_not_kept_and_says_so(
    offline: OfflineCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "MAX_LINEAGE_BYTES", 50)
    task = normal_task(offline.cw, max_retries=1)
    task.args_blob = serialization.SerializedObject(b"a" * 100, [])
    ref = await run(offline, task, shm_reply(OTHER_NODE))
    assert offline.cw.lineage.tasks == {}
    with pytest.raises(ObjectReconstructionFailedLineageEvictedError, match="budget"):
        await offline.cw.lineage.rebuild(ref.binary())


async def test_a_put_object_cannot_be_rebuilt(offline: OfflineCluster) -> None:
    oid = ids.object_id(offline.cw.ids.task_id(offline.cw.job_id), 0)
    with pytest.raises(ObjectLostError, match="cannot be rebuilt"):
        await offline.cw.lineage.rebuild(oid)


async def test_a_lost_result_is_rebuilt_once_for_every_waiter(offline: OfflineCluster) -> None:
    cw = offline.cw
    task = normal_task(cw, max_retries=1)
    ref = await run(offline, task, shm_reply(OTHER_NODE))
    waits = [asyncio.ensure_future(cw.lineage.rebuild(ref.binary())) for _ in range(2)]
    await settle()
    assert task.attempts_left == 0 and cw.memory_store.get(ref.binary()) is None
    [push] = [p for w in offline.peers.opened for p in w.pending("push_task")]  # run once
    assert push.body["tid"] == task.task_id
    frees = [s for s in offline.raylet.sent if s.method.startswith("free_objects")]
    assert frees, "the lost copy's node is told to free it"
    worker = next(w for w in offline.peers.opened if push in w.sent)
    worker.reply(push, *shm_reply(OTHER_NODE, size=7))
    new = await asyncio.gather(*waits)
    assert new[0] is new[1] is cw.memory_store.get(ref.binary()) and new[0].size == 7
    with pytest.raises(ObjectReconstructionFailedMaxAttemptsExceededError, match="retries"):
        await cw.lineage.rebuild(ref.binary())  # max_retries=1: used up

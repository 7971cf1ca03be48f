"""ActorSubmitter (owner/actor_submitter.py): one caller's calls reach the actor in
submission order; they wait while it is not alive, are sent again after a restart
while retries allow, and fail with the actor's death. On an offline CoreWorker: the
GCS's long poll and the actor's worker are fake connections."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import (
    FakeConnection,
    OfflineCluster,
    actor_call,
    normal_task,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
    value_reply,
)

from aioray._private.core.memory_store import StoredObject
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire import serialization
from aioray._private.wire.task_spec import TaskEntry
from aioray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    PendingCallsLimitExceeded,
    TaskCancelledError,
)

AID = b"A" * 16


def call(offline: OfflineCluster, **kw: Any) -> tuple[TaskEntry, ObjectRef]:
    task = actor_call(offline.cw, AID, **kw)
    ref = ObjectRef(task.return_ids[0], offline.cw.address)
    offline.cw.actors.submit(task)
    return task, ref


async def gcs_says(offline: OfflineCluster, state: str, version: int, port: int = 6001) -> None:
    """Answer the actor's pending ``wait_actor`` poll."""
    await settle()
    [poll] = offline.gcs.pending("wait_actor")
    info: dict[str, Any] = {"state": state, "version": version}
    if state == "ALIVE":
        info["addr"] = ["127.0.0.1", port, b"w" * 16]
    elif state == "DEAD":
        info["death"] = "The actor was killed by ray.kill."
    offline.gcs.reply(poll, info)
    await settle()


def sent_ids(worker: FakeConnection) -> list[bytes]:
    return [s.body["tid"] for s in worker.sent if s.method == "push_actor_task"]


def _inline(value: Any) -> StoredObject:
    so = serialization.serialize(value)
    return StoredObject(so.data, so.buffers)


def result(offline: OfflineCluster, ref: ObjectRef) -> Any:
    obj = offline.cw.memory_store.get(ref.binary())
    assert obj is not None, "no result stored"
    return offline.cw.materialize(ref.binary(), obj)


async def test_calls_wait_for_the_actor_then_go_in_submission_order(
    offline: OfflineCluster,
) -> None:
    calls = [call(offline) for _ in range(3)]
    await settle()
    assert offline.gcs.pending("wait_actor")[0].body == [AID, 0]
    await gcs_says(offline, "ALIVE", 1)
    worker = offline.peers.at("127.0.0.1", 6001)
    assert sent_ids(worker) == [t.task_id for t, _ in calls]
    assert [s.body["seq"] for s in worker.sent] == [0, 1, 2]
    assert offline.gcs.pending("wait_actor")[0].body == [AID, 1]  # the poll goes on
    for i, push in enumerate(worker.pending()):
        worker.reply(push, *value_reply(i))
    await settle()
    assert [result(offline, r) for _, r in calls] == [0, 1, 2]


async def test_a_call_whose_argument_is_late_holds_back_the_later_ones(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    producer = normal_task(cw)
    arg = ObjectRef(producer.return_ids[0], cw.address)
    first = actor_call(cw, AID)
    first.dep_refs, first.dep_ids = [arg], (arg.binary(),)
    cw.actors.submit(first)
    second, _ = call(offline)
    await gcs_says(offline, "ALIVE", 1)
    worker = offline.peers.at("127.0.0.1", 6001)
    assert sent_ids(worker) == []  # the second is ready but must not overtake
    cw.submitter.finish(producer, [_inline(1)])
    await settle()
    assert sent_ids(worker) == [first.task_id, second.task_id]


async def test_calls_in_flight_are_sent_again_after_a_restart_in_order(
    offline: OfflineCluster,
) -> None:
    calls = [call(offline, max_task_retries=1) for _ in range(3)]
    await gcs_says(offline, "ALIVE", 1)
    offline.peers.at("127.0.0.1", 6001).drop()  # the actor's worker died
    await gcs_says(offline, "RESTARTING", 2)
    await gcs_says(offline, "ALIVE", 3, port=6002)
    worker = offline.peers.at("127.0.0.1", 6002)
    assert sent_ids(worker) == [t.task_id for t, _ in calls]
    assert all(t.attempts_left == 0 for t, _ in calls)


async def test_without_retries_a_call_lost_in_a_restart_is_unavailable(
    offline: OfflineCluster,
) -> None:
    _, lost = call(offline)
    await gcs_says(offline, "ALIVE", 1)
    offline.peers.at("127.0.0.1", 6001).drop()
    await settle()
    assert offline.cw.memory_store.get(lost.binary()) is None  # the GCS decides
    _, later = call(offline)
    await gcs_says(offline, "ALIVE", 2, port=6002)
    with pytest.raises(ActorUnavailableError):
        result(offline, lost)
    assert sent_ids(offline.peers.at("127.0.0.1", 6002)) == [later.task_id().binary()]


async def test_death_fails_calls_in_flight_queued_and_later(offline: OfflineCluster) -> None:
    _, inflight = call(offline)
    await gcs_says(offline, "ALIVE", 1)
    offline.peers.at("127.0.0.1", 6001).drop()
    _, queued = call(offline)
    await gcs_says(offline, "DEAD", 2)
    _, later = call(offline)
    await settle()
    for ref in (inflight, queued, later):
        with pytest.raises(ActorDiedError, match=r"killed by ray\.kill"):
            result(offline, ref)
    assert offline.gcs.pending("wait_actor") == []  # a dead actor is not polled


async def test_calls_after_this_process_killed_the_actor_fail_without_the_gcs(
    offline: OfflineCluster,
) -> None:
    """ray.kill: the killer's later calls fail at once, and none is sent to the worker
    (it may still be exiting), before the GCS reports the death."""
    _, first = call(offline)
    await gcs_says(offline, "ALIVE", 1)
    worker = offline.peers.at("127.0.0.1", 6001)
    offline.cw.actors.killed(AID, "The actor was killed by ray.kill().")
    task, later = call(offline)
    await settle()
    assert task.task_id not in sent_ids(worker)
    for ref in (first, later):
        with pytest.raises(ActorDiedError, match=r"killed by ray\.kill"):
            result(offline, ref)
    offline.cw.actors.killed(b"B" * 16, "unknown actor: nothing to do")


async def test_an_actor_that_cannot_be_placed_fails_its_calls_so(
    offline: OfflineCluster,
) -> None:
    _, ref = call(offline)
    await settle()
    poll = offline.gcs.pending("wait_actor")[0]
    offline.gcs.reply(poll, {"state": "DEAD", "unschedulable": True, "death": "no GPU node"})
    await settle()
    with pytest.raises(ActorUnschedulableError, match="no GPU node"):
        result(offline, ref)


async def test_an_unreachable_gcs_fails_the_calls(offline: OfflineCluster) -> None:
    async def no_gcs() -> Any:
        raise ConnectionError("refused")

    offline.cw.gcs_connection = no_gcs  # type: ignore[method-assign]
    _, ref = call(offline)
    await settle()
    with pytest.raises(ActorDiedError, match="GCS is unreachable"):
        result(offline, ref)


async def test_the_pending_calls_limit_counts_until_replies(offline: OfflineCluster) -> None:
    actors, meta = offline.cw.actors, {"max_pending_calls": 2, "cls": "A"}
    actors.reserve_call(AID, meta)
    call(offline)
    actors.reserve_call(AID, meta)
    call(offline)
    with pytest.raises(PendingCallsLimitExceeded, match="max_pending_calls=2"):
        actors.reserve_call(AID, meta)
    await gcs_says(offline, "ALIVE", 1)
    worker = offline.peers.at("127.0.0.1", 6001)
    worker.reply(worker.pending()[0], *value_reply(None))
    await settle()
    actors.reserve_call(AID, meta)  # one replied: room for one more
    with pytest.raises(PendingCallsLimitExceeded):
        actors.reserve_call(AID, meta)


async def test_cancel_fails_a_queued_call_and_asks_the_actor_for_a_sent_one(
    offline: OfflineCluster,
) -> None:
    actors = offline.cw.actors
    call(offline)  # in flight when the worker dies: lost
    await gcs_says(offline, "ALIVE", 1)
    worker = offline.peers.at("127.0.0.1", 6001)
    worker.drop()  # no connection: the next call queues
    _, queued_ref = call(offline, max_task_retries=0)
    assert actors.cancel(queued_ref.binary(), force=False)
    with pytest.raises(TaskCancelledError):
        result(offline, queued_ref)
    assert not actors.cancel(b"z" * 20, force=False)  # not a call of ours
    await gcs_says(offline, "ALIVE", 2, port=6002)
    again = offline.peers.at("127.0.0.1", 6002)
    assert sent_ids(again) == []  # the cancelled call was skipped
    _, running = call(offline)
    await settle()
    assert actors.cancel(running.binary(), force=True)
    assert again.sent[-1].method == "cancel_task"
    assert again.sent[-1].body == [running.task_id().binary(), True]

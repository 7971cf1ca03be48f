"""The task submitter's failure and retry paths (owner/task_submitter.py), on an
offline CoreWorker: lease requests are frames to a fake raylet, pushes are frames to
fake workers, and a worker dies by dropping its connection."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import (
    FakeConnection,
    OfflineCluster,
    error_reply,
    lease_grant,
    normal_task,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
    value_reply,
)

from aioray._private.owner.object_ref import ObjectRef
from aioray._private.rpc.rpc import ConnectionLost, RpcError
from aioray._private.wire.task_spec import TaskEntry
from aioray.exceptions import (
    LocalRayletDiedError,
    NodeDiedError,
    OutOfMemoryError,
    RaySystemError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
    WorkerCrashedError,
)


def submit(offline: OfflineCluster, task: TaskEntry) -> ObjectRef:
    """Submit ``task``; the ref to its result (held, so the result is kept)."""
    ref = ObjectRef(task.return_ids[0], offline.cw.address)
    offline.cw.submitter.submit(task)
    return ref


async def grant(offline: OfflineCluster, port: int) -> FakeConnection:
    """Answer the oldest lease request with a worker at ``port``; that worker."""
    req = offline.raylet.pending("request_lease")[0]
    offline.raylet.reply(req, lease_grant(port - 5000, port))
    await settle()
    return offline.peers.at("127.0.0.1", port)


def result(offline: OfflineCluster, ref: ObjectRef) -> Any:
    obj = offline.cw.memory_store.get(ref.binary())
    assert obj is not None, "no result stored"
    return offline.cw.materialize(ref.binary(), obj)


async def test_a_task_runs_on_a_leased_worker_and_its_value_is_stored(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    first, second = normal_task(cw), normal_task(cw)
    ref1, ref2 = submit(offline, first), submit(offline, second)
    worker = await grant(offline, 5001)
    [push] = worker.pending("push_task")  # one task in flight per worker
    assert push.body["tid"] == first.task_id and push.body["fn"] == b"fn"
    worker.reply(push, *value_reply(41))
    await settle()
    assert result(offline, ref1) == 41 and first.task_id not in cw.submitter.tasks
    [push2] = worker.pending("push_task")  # the next task reuses the lease...
    assert "fn" not in push2.body  # ...and the function went once per worker
    worker.reply(push2, *value_reply(42))
    await settle()
    assert result(offline, ref2) == 42


async def test_a_dead_worker_is_retried_while_attempts_last_then_crashes(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    task = normal_task(cw, max_retries=2)
    ref = submit(offline, task)
    for attempt, port in enumerate((5001, 5002, 5003)):
        worker = await grant(offline, port)
        assert len(worker.pending("push_task")) == 1
        assert task.attempts_left == 2 - attempt
        worker.drop()  # the worker died with the task in flight
        await settle()
    assert task.attempts_left == 0
    assert offline.raylet.pending("request_lease") == []  # no fourth attempt
    [ping] = offline.raylet.pending("ping")  # did the worker die, or its node?
    offline.raylet.reply(ping, True)
    await settle()
    with pytest.raises(WorkerCrashedError):
        result(offline, ref)


@pytest.mark.parametrize("silence", [ConnectionLost("raylet gone"), TimeoutError()])
async def test_a_dead_worker_whose_raylet_does_not_answer_is_a_node_death(
    offline: OfflineCluster, silence: BaseException
) -> None:
    """As Ray: the owner asks the worker's raylet; no answer means NodeDiedError."""
    ref = submit(offline, normal_task(offline.cw, max_retries=0))
    (await grant(offline, 5001)).drop()
    await settle()
    assert offline.cw.memory_store.get(ref.binary()) is None  # asking first
    [ping] = offline.raylet.pending("ping")
    offline.raylet.fail(ping, silence)
    await settle()
    with pytest.raises(NodeDiedError, match="was dead or unavailable") as info:
        result(offline, ref)
    assert not isinstance(info.value, WorkerCrashedError)


async def test_infinite_retries_stay_infinite(offline: OfflineCluster) -> None:
    task = normal_task(offline.cw, max_retries=-1)
    submit(offline, task)
    for port in (5001, 5002, 5003):
        (await grant(offline, port)).drop()
        await settle()
    assert task.attempts_left == -1 and len(offline.raylet.pending("request_lease")) == 1


async def test_application_errors_retry_only_under_retry_exceptions(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    plain = normal_task(cw, max_retries=3)
    ref = submit(offline, plain)
    worker = await grant(offline, 5001)
    worker.reply(worker.pending("push_task")[0], *error_reply(ValueError("boom")))
    await settle()
    with pytest.raises(ValueError, match="boom"):
        result(offline, ref)
    assert plain.attempts_left == 3  # not retried: no retry_exceptions


async def test_retry_exceptions_true_retries_until_attempts_run_out(
    offline: OfflineCluster,
) -> None:
    task = normal_task(offline.cw, max_retries=2, retry_exceptions=True)
    ref = submit(offline, task)
    worker = await grant(offline, 5001)
    for _ in range(3):
        [push] = worker.pending("push_task")  # again on the same worker
        worker.reply(push, *error_reply(ValueError("boom")))
        await settle()
    assert worker.pending("push_task") == [] and task.attempts_left == 0
    with pytest.raises(ValueError, match="boom"):
        result(offline, ref)


async def test_retry_exceptions_as_a_list_retries_only_those(offline: OfflineCluster) -> None:
    task = normal_task(offline.cw, max_retries=5, retry_exceptions=[KeyError])
    ref = submit(offline, task)
    worker = await grant(offline, 5001)
    worker.reply(worker.pending("push_task")[0], *error_reply(KeyError("k")))
    await settle()
    assert task.attempts_left == 4
    worker.reply(worker.pending("push_task")[0], *error_reply(ValueError("v")))
    await settle()
    with pytest.raises(ValueError):
        result(offline, ref)
    assert task.attempts_left == 4


async def test_a_worker_killed_for_memory_fails_with_out_of_memory(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    ref = submit(offline, normal_task(cw))
    worker = await grant(offline, 5001)
    other = FakeConnection("another raylet")
    why = "Memory on the node was 99% full."
    assert not cw.submitter.handle_worker_oom_killed(other, [1, why], None)  # type: ignore[arg-type]
    assert cw.submitter.handle_worker_oom_killed(offline.raylet, [1, why], None)  # type: ignore[arg-type]
    worker.drop()
    await settle()
    with pytest.raises(OutOfMemoryError, match="99% full"):
        result(offline, ref)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"error": "no node has 64 GPUs", "unschedulable": True}, TaskUnschedulableError),
        ({"error": "the group was removed", "pg_removed": True}, TaskPlacementGroupRemoved),
    ],
)
async def test_a_refused_lease_fails_the_queued_tasks(
    offline: OfflineCluster, reply: dict[str, Any], error: type[Exception]
) -> None:
    cw = offline.cw
    refs = [submit(offline, normal_task(cw)) for _ in range(2)]
    for req in offline.raylet.pending("request_lease"):
        offline.raylet.reply(req, reply)
    await settle()
    for ref in refs:
        with pytest.raises(error, match=reply["error"]):
            result(offline, ref)


async def test_a_lost_local_raylet_fails_the_queue_with_local_raylet_died(
    offline: OfflineCluster,
) -> None:
    """Ray's LOCAL_RAYLET_DIED: the local raylet's lease request failed with the connection."""
    ref = submit(offline, normal_task(offline.cw))
    offline.raylet.fail(offline.raylet.pending("request_lease")[0], ConnectionLost("gone"))
    await settle()
    with pytest.raises(LocalRayletDiedError, match="local raylet died"):
        result(offline, ref)


async def test_a_failed_lease_request_fails_the_queue_with_a_system_error(
    offline: OfflineCluster,
) -> None:
    ref = submit(offline, normal_task(offline.cw))
    failure = RpcError("request_lease", "KeyError", "boom")
    offline.raylet.fail(offline.raylet.pending("request_lease")[0], failure)
    await settle()
    with pytest.raises(RaySystemError, match="lease failed"):
        result(offline, ref)


async def test_an_unreachable_leased_worker_is_returned_and_another_asked_for(
    offline: OfflineCluster,
) -> None:
    ref = submit(offline, normal_task(offline.cw))
    offline.peers.unreachable.add(("127.0.0.1", 5001))
    offline.raylet.reply(offline.raylet.pending("request_lease")[0], lease_grant(1, 5001))
    await settle()
    returned = [s.body for s in offline.raylet.sent if s.method == "return_lease"]
    assert returned == [[1, True]]  # the worker is reported as broken
    worker = await grant(offline, 5002)
    worker.reply(worker.pending("push_task")[0], *value_reply("ok"))
    await settle()
    assert result(offline, ref) == "ok"


async def test_cancelling_a_queued_task_fails_it_without_running(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    task = normal_task(cw, max_retries=3)
    ref = submit(offline, task)
    cw.submitter.cancel(ref.binary(), force=False)
    with pytest.raises(TaskCancelledError):
        result(offline, ref)
    worker = await grant(offline, 5001)
    assert worker.pending("push_task") == []  # the lease finds nothing to run


async def test_a_cancelled_running_task_is_never_retried(offline: OfflineCluster) -> None:
    cw = offline.cw
    task = normal_task(cw, max_retries=3, retry_exceptions=True)
    ref = submit(offline, task)
    worker = await grant(offline, 5001)
    cw.submitter.cancel(ref.binary(), force=True)
    assert worker.sent[-1].method == "cancel_task"
    assert worker.sent[-1].body == [task.task_id, True, True]
    worker.drop()  # force-cancel kills the worker
    await settle()
    with pytest.raises(TaskCancelledError):
        result(offline, ref)
    assert task.attempts_left == 3 and offline.raylet.pending("request_lease") == []


async def test_a_task_waits_for_its_owned_argument_and_fails_with_it(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    producer = normal_task(cw)
    arg = submit(offline, producer)
    consumer = normal_task(cw, dep_refs=[arg])
    ref = submit(offline, consumer)
    assert consumer.state == "pending_deps" and len(offline.raylet.pending()) == 1
    cw.submitter.fail(producer, ValueError("upstream"))  # the argument is an error
    await settle()
    with pytest.raises(ValueError, match="upstream"):
        result(offline, ref)  # failed without running
    assert len(offline.raylet.pending()) == 1  # no lease was asked for it


async def test_fail_all_fails_every_unfinished_task(offline: OfflineCluster) -> None:
    cw = offline.cw
    refs = [submit(offline, normal_task(cw)) for _ in range(3)]
    await grant(offline, 5001)
    cw.submitter.fail_all(RaySystemError("the local raylet died"))
    for ref in refs:
        with pytest.raises(RaySystemError, match="raylet died"):
            result(offline, ref)
    assert cw.submitter.tasks == {}


async def test_a_push_to_a_worker_that_died_idle_is_retried_on_a_new_lease(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    first = submit(offline, normal_task(cw))
    worker = await grant(offline, 5001)
    worker.reply(worker.pending("push_task")[0], *value_reply(1))
    await settle()
    assert result(offline, first) == 1  # the lease now lingers, idle
    worker.drop()  # its worker dies with nothing in flight
    task = normal_task(cw, max_retries=1)
    ref = submit(offline, task)  # pushed to the lingering lease: refused at once
    assert task.attempts_left == 0
    again = await grant(offline, 5002)
    again.reply(again.pending("push_task")[0], *value_reply(2))
    await settle()
    assert result(offline, ref) == 2


async def test_a_push_that_fails_without_losing_the_worker_is_a_system_error(
    offline: OfflineCluster,
) -> None:
    ref = submit(offline, normal_task(offline.cw, max_retries=3))
    worker = await grant(offline, 5001)
    worker.fail(worker.pending("push_task")[0], RuntimeError("bad frame"))
    await settle()
    with pytest.raises(RaySystemError, match="push_task failed: bad frame"):
        result(offline, ref)

"""A caller thread pushing a task itself on an idle lease it claims (leases.py, parked
leases; TaskSubmitter.push_now), on an offline CoreWorker: the claim against the
loop's and against the linger, the hand-over when the thread cannot write, the retry
when the worker dies under a thread's push. The thread is a real one
(``asyncio.to_thread``); everything else runs on the test's loop."""

from __future__ import annotations

import asyncio
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
from test_task_submitter import grant, result, submit

from aioray._private.core.memory_store import StoredObject
from aioray._private.owner.leases import Lease, SchedulingClass
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire import config, serialization
from aioray._private.wire.task_spec import TaskEntry
from aioray.exceptions import TaskCancelledError


async def from_thread(offline: OfflineCluster, task: TaskEntry) -> bool:
    """``TaskSubmitter.push_now`` from a thread that is not the loop's; its answer."""
    pushed = await asyncio.wait_for(asyncio.to_thread(offline.cw.submitter.push_now, task), 10)
    await settle()
    return pushed


async def parked_lease(offline: OfflineCluster) -> tuple[SchedulingClass, Lease, FakeConnection]:
    """Run one task through the loop: its lease is left idle and parked."""
    cw = offline.cw
    ref = submit(offline, normal_task(cw))
    worker = await grant(offline, 5001)
    [push] = worker.pending("push_task")
    worker.reply(push, *value_reply(0))
    await settle()
    assert result(offline, ref) == 0
    cls = cw.submitter.classes[("k",)]
    [lease] = cls.leases
    assert cls.parked == [lease] and lease.parked and lease.linger is not None
    return cls, lease, worker


def held(offline: OfflineCluster, task: TaskEntry) -> ObjectRef:
    """The ref to ``task``'s result (held, so the result is kept), as ``.remote()`` returns."""
    return ObjectRef(task.return_ids[0], offline.cw.address)


async def test_a_thread_pushes_on_the_idle_lease_it_claims(offline: OfflineCluster) -> None:
    cw = offline.cw
    cls, lease, worker = await parked_lease(offline)
    task = normal_task(cw)
    ref = held(offline, task)
    assert await from_thread(offline, task)
    assert worker.written_by_threads == 1 and cls.parked == [] and lease.inflight == 1
    [push] = worker.pending("push_task")
    assert push.body["tid"] == task.task_id and "fn" not in push.body  # sent once per worker
    assert offline.raylet.pending("request_lease") == []  # no new lease asked for
    worker.reply(push, *value_reply(7))
    await settle()
    assert result(offline, ref) == 7 and task.task_id not in cw.submitter.tasks
    assert cls.parked == [lease] and lease.inflight == 0  # idle again, offered again


async def test_a_thread_takes_the_loop_path_when_nothing_is_parked(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    assert not await from_thread(offline, normal_task(cw))  # no class yet
    cls, lease, _ = await parked_lease(offline)
    dep = normal_task(cw, dep_refs=[submit(offline, normal_task(cw))])
    assert cls.parked == [] and lease.inflight == 1  # the loop claimed it for its task
    assert not await from_thread(offline, normal_task(cw))  # nothing idle
    cls.parked.append(lease)  # (as if idle: a task with dependencies still goes by the loop)
    assert not await from_thread(offline, dep)
    cls.parked.clear()


async def test_the_loop_never_pushes_on_a_lease_a_thread_claimed(offline: OfflineCluster) -> None:
    """Claimed (popped from ``parked``) but not written yet: the loop's dispatch skips it
    and asks for a lease for its own task instead."""
    cw = offline.cw
    cls, lease, worker = await parked_lease(offline)
    claimed: list[Lease] = []
    assert cw.submitter.leases.claim(cls, claimed) and claimed == [lease]  # a thread's claim
    ref = submit(offline, normal_task(cw))
    await settle()
    assert worker.pending("push_task") == [] and lease.inflight == 0
    assert len(offline.raylet.pending("request_lease")) == 1
    other = await grant(offline, 5002)
    [push] = other.pending("push_task")
    other.reply(push, *value_reply(3))
    await settle()
    assert result(offline, ref) == 3
    assert cw.submitter.leases.claim(cls, claimed) and claimed[1] is not lease  # the new one


async def test_a_linger_that_fires_on_a_claimed_lease_does_nothing(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    cls, lease, worker = await parked_lease(offline)
    old_linger = lease.linger
    task = normal_task(cw)
    ref = held(offline, task)
    assert await from_thread(offline, task)
    cw.submitter.leases.give_back(lease)  # the linger fires while the thread's task runs
    assert "return_lease" not in offline.raylet.methods() and lease in cls.leases
    [push] = worker.pending("push_task")
    worker.reply(push, *value_reply(1))
    await settle()
    assert result(offline, ref) == 1
    assert cls.parked == [lease] and lease.linger is not None and lease.linger is not old_linger


async def test_a_linger_armed_before_the_last_use_does_not_return_the_lease(
    offline: OfflineCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease in use by threads call after call keeps the timer armed at its first idle
    spell (nothing cancels it: a thread cannot); when it fires on a lease parked again
    since, idle for less than the linger, it is armed again for the rest."""
    cw = offline.cw
    cls, lease, worker = await parked_lease(offline)
    old_linger = lease.linger
    assert await from_thread(offline, normal_task(cw))
    [push] = worker.pending("push_task")
    worker.reply(push, *value_reply(1))
    await settle()
    assert lease.linger is old_linger and cls.parked == [lease]  # (no timer per task)
    monkeypatch.setattr(config, "LEASE_LINGER_S", 60.0)
    cw.submitter.leases.give_back(lease)  # fires: the lease was idle for less than that
    assert "return_lease" not in offline.raylet.methods() and cls.parked == [lease]
    assert lease.linger is not None and lease.linger is not old_linger
    monkeypatch.setattr(config, "LEASE_LINGER_S", 0.0)
    cw.submitter.leases.give_back(lease)  # fires again, the lease idle long enough now
    assert offline.raylet.sent[-1].method == "return_lease" and cls.leases == []


async def test_an_idle_lease_nobody_claimed_is_given_back(
    offline: OfflineCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cw = offline.cw
    cls, lease, _ = await parked_lease(offline)
    monkeypatch.setattr(config, "LEASE_LINGER_S", 0.0)
    cw.submitter.leases.give_back(lease)  # the linger fires, the lease idle long enough
    assert offline.raylet.sent[-1].method == "return_lease"
    assert cls.leases == [] and cls.parked == [] and not lease.parked
    assert not await from_thread(offline, normal_task(cw))


async def test_a_push_the_thread_cannot_write_is_handed_to_the_loop(
    offline: OfflineCluster,
) -> None:
    """A lease granted after its task was cancelled is parked before any push: the
    function's code must still go with the first push, which the loop writes."""
    cw = offline.cw
    first = normal_task(cw)
    cancelled = submit(offline, first)
    cw.submitter.cancel_task(first.task_id, force=False)
    worker = await grant(offline, 5001)
    cls = cw.submitter.classes[("k",)]
    [lease] = cls.parked
    worker.thread_writes = False  # e.g. frames queued on the connection
    task = normal_task(cw)
    ref = held(offline, task)
    assert await from_thread(offline, task)  # claimed: pushed exactly once, by the loop
    assert worker.written_by_threads == 0
    [push] = worker.pending("push_task")
    assert push.body["tid"] == task.task_id and push.body["fn"] == b"fn"
    assert not lease.parked and lease.inflight == 1
    worker.reply(push, *value_reply(5))
    await settle()
    assert result(offline, ref) == 5 and cls.parked == [lease]
    with pytest.raises(TaskCancelledError):
        result(offline, cancelled)


async def test_a_worker_dead_under_a_thread_s_push_is_retried(offline: OfflineCluster) -> None:
    cw = offline.cw
    cls, lease, worker = await parked_lease(offline)
    task = normal_task(cw, max_retries=1)
    ref = held(offline, task)
    assert await from_thread(offline, task)
    worker.drop()
    await settle()
    assert lease not in cls.leases and cls.parked == []
    second = await grant(offline, 5002)
    [push] = second.pending("push_task")
    assert push.body["tid"] == task.task_id and push.body["at"] == 1
    second.reply(push, *value_reply(9))
    await settle()
    assert result(offline, ref) == 9


async def test_a_spread_class_parks_nothing(offline: OfflineCluster) -> None:
    """SPREAD places each lease anew: a thread must not pin the next task to this one."""
    cw = offline.cw
    task = normal_task(cw)
    task.spec["ss"] = "SPREAD"
    task.sched_key = ("spread",)
    submit(offline, task)
    worker = await grant(offline, 5001)
    [push] = worker.pending("push_task")
    worker.reply(push, *value_reply(0))
    await settle()
    cls = cw.submitter.classes[("spread",)]
    assert cls.strategy == "SPREAD" and cls.parked == [] and cls.leases == []  # given back


# -- actor calls: a thread pushes a call whose turn has come -------------------------------
AID = b"A" * 16


async def alive_actor(offline: OfflineCluster) -> FakeConnection:
    """An actor this process called once (through the loop), now ALIVE and idle."""
    cw = offline.cw
    first = actor_call(cw, AID)
    ref = held(offline, first)
    cw.actors.submit(first)
    await settle()
    [poll] = offline.gcs.pending("wait_actor")
    offline.gcs.reply(poll, {"state": "ALIVE", "version": 1, "addr": ["127.0.0.1", 6001, b"w"]})
    await settle()
    worker = offline.peers.at("127.0.0.1", 6001)
    [push] = worker.pending("push_actor_task")
    worker.reply(push, *value_reply(0))
    await settle()
    assert result(offline, ref) == 0
    return worker


async def call_from_thread(offline: OfflineCluster, task: TaskEntry) -> bool:
    """``ActorSubmitter.push_now`` from a thread that is not the loop's; its answer."""
    pushed = await asyncio.wait_for(asyncio.to_thread(offline.cw.actors.push_now, task), 10)
    await settle()
    return pushed


def pushed_seqs(worker: FakeConnection) -> list[int]:
    return [s.body["seq"] for s in worker.sent if s.method == "push_actor_task"]


async def test_a_thread_pushes_an_actor_call_whose_turn_has_come(offline: OfflineCluster) -> None:
    cw = offline.cw
    worker = await alive_actor(offline)
    task = actor_call(cw, AID)
    ref = held(offline, task)
    assert await call_from_thread(offline, task)
    assert worker.written_by_threads == 1 and pushed_seqs(worker) == [0, 1]
    [push] = worker.pending("push_actor_task")
    worker.reply(push, *value_reply(8))
    await settle()
    assert result(offline, ref) == 8
    a = cw.actors.actors[AID]
    assert a.next_send == 2 and a.sent_seq == 1 and not a.inflight


async def test_a_call_never_overtakes_an_earlier_one_still_waiting(
    offline: OfflineCluster,
) -> None:
    """The earlier call waits for its argument on the loop: the later one, from a thread,
    goes through the loop too, and both are sent in order once the argument is there."""
    cw = offline.cw
    worker = await alive_actor(offline)
    producer = normal_task(cw)
    arg = ObjectRef(producer.return_ids[0], cw.address)
    earlier = actor_call(cw, AID)
    earlier.dep_refs, earlier.dep_ids = [arg], (arg.binary(),)
    cw.actors.submit(earlier)
    later = actor_call(cw, AID)
    assert not await call_from_thread(offline, later)  # not its turn
    cw.actors.submit(later)  # (what .remote() does next: post it)
    await settle()
    assert pushed_seqs(worker) == [0]
    so = serialization.serialize(1)
    cw.submitter.finish(producer, [StoredObject(so.data, so.buffers)])
    await settle()
    assert pushed_seqs(worker) == [0, 1, 2] and worker.written_by_threads == 0


async def test_a_call_that_came_during_a_thread_s_turn_is_sent_after_it(
    offline: OfflineCluster,
) -> None:
    """Numbered after the thread's call and submitted through the loop while the thread
    held the turn: it waits in ``ready``; the thread, once its call is written, hands
    the turn on and wakes the loop to send it."""
    cw = offline.cw
    worker = await alive_actor(offline)
    mine, next_one = actor_call(cw, AID), actor_call(cw, AID)
    cw.actors.submit(next_one)  # seq 2 while seq 1 is not submitted yet: it waits
    await settle()
    assert pushed_seqs(worker) == [0]
    assert await call_from_thread(offline, mine)
    assert pushed_seqs(worker) == [0, 1, 2] and worker.written_by_threads == 1


async def test_no_thread_push_to_an_actor_this_process_killed(offline: OfflineCluster) -> None:
    cw = offline.cw
    await alive_actor(offline)
    cw.actors.doom(AID)  # ray.kill: the marking is posted, calls must not overtake it
    task = actor_call(cw, AID)
    assert not await call_from_thread(offline, task)


# -- a Ctrl-C (KeyboardInterrupt) landing in the middle of a thread's push ------------------
async def interrupted(offline: OfflineCluster, push_now: Any, task: TaskEntry, post: Any) -> None:
    """Run ``push_now`` in a thread as ``.remote()`` does, with its handler: the interrupt
    propagates, and ``submit_if_lost`` is posted after whatever the push posted."""
    cw = offline.cw

    def remote() -> str:
        try:
            try:
                if not push_now(task):
                    cw.post(post, task)
            except BaseException:
                cw.post(post.__self__.submit_if_lost, task)
                raise
        except KeyboardInterrupt:  # (handed back as a value: asyncio re-raises it)
            return "interrupted"
        return "not interrupted"

    assert await asyncio.wait_for(asyncio.to_thread(remote), 10) == "interrupted"
    await settle()


async def test_a_task_interrupted_before_its_write_is_pushed_once_by_the_loop(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    cls, lease, worker = await parked_lease(offline)
    worker.interrupt = "before"
    task = normal_task(cw)
    ref = held(offline, task)
    await interrupted(offline, cw.submitter.push_now, task, cw.submitter.submit)
    [push] = worker.pending("push_task")  # the claimed lease, pushed by the loop, once
    assert push.body["tid"] == task.task_id and not lease.parked and lease.inflight == 1
    worker.reply(push, *value_reply(4))
    await settle()
    assert result(offline, ref) == 4 and cls.parked == [lease]  # not stuck claimed
    assert offline.raylet.pending("request_lease") == []


async def test_a_task_interrupted_after_its_write_is_not_pushed_again(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    cls, lease, worker = await parked_lease(offline)
    worker.interrupt = "after"
    task = normal_task(cw)
    ref = held(offline, task)
    await interrupted(offline, cw.submitter.push_now, task, cw.submitter.submit)
    [push] = worker.pending("push_task")
    assert worker.written_by_threads == 1
    worker.reply(push, *value_reply(6))
    await settle()
    assert result(offline, ref) == 6 and cls.parked == [lease]
    assert worker.pending("push_task") == []


@pytest.mark.parametrize("where", ["before", "after"])
async def test_an_actor_call_interrupted_mid_push_keeps_the_order_going(
    offline: OfflineCluster, where: str
) -> None:
    """Its number taken, the call is sent once (by the thread or by the loop), and the
    next call's turn comes: no number is left behind to hold back later calls."""
    cw = offline.cw
    worker = await alive_actor(offline)
    worker.interrupt = where
    task = actor_call(cw, AID)
    ref = held(offline, task)
    await interrupted(offline, cw.actors.push_now, task, cw.actors.submit)
    worker.interrupt = None
    later = actor_call(cw, AID)
    if not await call_from_thread(offline, later):
        cw.actors.submit(later)
    await settle()
    assert pushed_seqs(worker) == [0, 1, 2]
    [first, second] = worker.pending("push_actor_task")
    worker.reply(first, *value_reply(1))
    worker.reply(second, *value_reply(2))
    await settle()
    assert result(offline, ref) == 1

"""Concurrency inside actors: async actors, threaded actors, concurrency groups,
max_pending_calls, cancelling actor calls, and the actor-based utilities
(ray.util.ActorPool, ray.util.queue.Queue).

Overlap is proven with barriers: N calls that each wait (bounded) until all N have
arrived can only all succeed if they run at the same time. Limits are proven by
counting the calls running at once inside the actor.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray.exceptions import (
    PendingCallsLimitExceeded,
    RayTaskError,
    TaskCancelledError,
)

GET_TIMEOUT = 30


@ray.remote
class AsyncBarrier:
    """Async actor: ``meet`` returns True once ``parties`` calls are inside at once."""

    def __init__(self, parties):
        self.parties = parties
        self.arrived = 0
        self.running = 0
        self.max_running = 0
        self.event = None

    async def meet(self, timeout, hold=0.0):
        if self.event is None:
            self.event = asyncio.Event()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.arrived += 1
        if self.arrived >= self.parties:
            self.event.set()
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
            met = True
        except asyncio.TimeoutError:
            met = False
        await asyncio.sleep(hold)
        self.running -= 1
        return met

    async def stats(self):
        return self.max_running

    def sync_stats(self):
        return self.max_running


@ray.remote
class Signal:
    """A one-shot event other actors and tasks wait on (async actor)."""

    def __init__(self):
        self.event = None

    def _ev(self):
        if self.event is None:
            self.event = asyncio.Event()
        return self.event

    async def wait(self):
        await self._ev().wait()

    async def send(self):
        self._ev().set()


# ---------------------------------------------------------------------- async actors


def test_async_actor_runs_calls_concurrently_by_default(ray_shared):
    """Async actors default to max_concurrency=1000: 50 calls meet at a barrier."""
    barrier = AsyncBarrier.remote(50)
    refs = [barrier.meet.remote(20) for _ in range(50)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == [True] * 50
    assert ray.get(barrier.stats.remote(), timeout=GET_TIMEOUT) == 50


def test_async_actor_max_concurrency_one_runs_calls_one_at_a_time(ray_shared):
    barrier = AsyncBarrier.options(max_concurrency=1).remote(2)
    results = ray.get([barrier.meet.remote(0.5) for _ in range(2)], timeout=GET_TIMEOUT)
    assert sorted(results) == [False, True], "two calls overlapped with max_concurrency=1"
    assert ray.get(barrier.stats.remote(), timeout=GET_TIMEOUT) == 1


def test_async_actor_max_concurrency_bounds_running_calls(ray_shared):
    barrier = AsyncBarrier.options(max_concurrency=3).remote(3)
    refs = [barrier.meet.remote(20, 0.2) for _ in range(6)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == [True] * 6
    assert ray.get(barrier.stats.remote(), timeout=GET_TIMEOUT) == 3


def test_await_refs_inside_async_methods(ray_shared):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Echo:
        def echo(self, x):
            return x

    @ray.remote
    class Awaiter:
        def __init__(self, echo):
            self.echo = echo

        async def task_result(self, x):
            return await square.remote(x)

        async def actor_result(self, x):
            return await self.echo.echo.remote(x)

        async def gathered(self, n):
            return await asyncio.gather(*[square.remote(i) for i in range(n)])

        async def passed_ref(self, refs):
            return await refs[0]

    awaiter = Awaiter.remote(Echo.remote())
    assert ray.get(awaiter.task_result.remote(7), timeout=GET_TIMEOUT) == 49
    assert ray.get(awaiter.actor_result.remote("hi"), timeout=GET_TIMEOUT) == "hi"
    assert ray.get(awaiter.gathered.remote(4), timeout=GET_TIMEOUT) == [0, 1, 4, 9]
    assert ray.get(awaiter.passed_ref.remote([ray.put("inner")]), timeout=GET_TIMEOUT) == "inner"


def test_async_actor_sync_and_async_methods_share_state(ray_shared):
    @ray.remote
    class Mixed:
        def __init__(self):
            self.items = []

        def add_sync(self, x):
            self.items.append(x)
            return len(self.items)

        async def add_async(self, x):
            await asyncio.sleep(0)
            self.items.append(x)
            return len(self.items)

        async def items_(self):
            return sorted(self.items)

    mixed = Mixed.remote()
    ray.get([mixed.add_sync.remote(1), mixed.add_async.remote(2)], timeout=GET_TIMEOUT)
    assert ray.get(mixed.items_.remote(), timeout=GET_TIMEOUT) == [1, 2]


def test_async_actor_method_error_is_raised_and_actor_keeps_serving(ray_shared):
    @ray.remote
    class Failing:
        def __init__(self):
            self.calls = 0

        async def fail(self):
            self.calls += 1
            raise KeyError("async failure")

        async def calls_(self):
            return self.calls

    failing = Failing.remote()
    with pytest.raises(KeyError) as info:
        ray.get(failing.fail.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, RayTaskError)
    assert ray.get(failing.calls_.remote(), timeout=GET_TIMEOUT) == 1


def test_driver_can_await_actor_calls(ray_shared):
    counter = AsyncBarrier.remote(1)

    async def main():
        first = await counter.meet.remote(5)
        both = await asyncio.gather(counter.meet.remote(5), counter.meet.remote(5))
        stats = await asyncio.wait_for(counter.stats.remote(), GET_TIMEOUT)
        return first, both, stats

    first, both, stats = asyncio.run(main())
    assert first is True
    assert both == [True, True]
    assert stats >= 1


# ------------------------------------------------------------------- threaded actors


@ray.remote
class ThreadedBarrier:
    def __init__(self, parties, timeout):
        self.barrier = threading.Barrier(parties, timeout=timeout)
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.threads = set()

    def meet(self, hold=0.0):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.threads.add(threading.get_ident())
        try:
            self.barrier.wait()
            met = True
        except threading.BrokenBarrierError:
            met = False
        time.sleep(hold)
        with self.lock:
            self.running -= 1
        return met

    def stats(self):
        return self.max_running, len(self.threads)


def test_threaded_actor_runs_calls_in_parallel_threads(ray_shared):
    actor = ThreadedBarrier.options(max_concurrency=2).remote(2, 10)
    assert ray.get([actor.meet.remote() for _ in range(2)], timeout=GET_TIMEOUT) == [True, True]
    max_running, threads = ray.get(actor.stats.remote(), timeout=GET_TIMEOUT)
    assert max_running == 2
    assert threads == 2


def test_sync_actor_runs_one_call_at_a_time_by_default(ray_shared):
    actor = ThreadedBarrier.remote(2, 0.5)
    assert ray.get([actor.meet.remote() for _ in range(2)], timeout=GET_TIMEOUT) == [False, False]
    assert ray.get(actor.stats.remote(), timeout=GET_TIMEOUT)[0] == 1


def test_threaded_actor_max_concurrency_bounds_running_calls(ray_shared):
    actor = ThreadedBarrier.options(max_concurrency=3).remote(3, 10)
    refs = [actor.meet.remote(0.2) for _ in range(6)]
    # the first three meet; the barrier then resets for the next three
    assert ray.get(refs, timeout=GET_TIMEOUT) == [True] * 6
    assert ray.get(actor.stats.remote(), timeout=GET_TIMEOUT)[0] == 3


# --------------------------------------------------------------- concurrency groups


def _grouped_async_class():
    @ray.remote(concurrency_groups={"io": 2, "compute": 1})
    class Grouped:
        def __init__(self):
            self.running = {}
            self.max_running = {}
            self.release = None

        def _enter(self, group):
            self.running[group] = self.running.get(group, 0) + 1
            self.max_running[group] = max(self.max_running.get(group, 0), self.running[group])

        def _exit(self, group):
            self.running[group] -= 1

        def _event(self):
            if self.release is None:
                self.release = asyncio.Event()
            return self.release

        @ray.method(concurrency_group="io")
        async def io(self, hold):
            self._enter("io")
            await asyncio.sleep(hold)
            self._exit("io")
            return "io"

        @ray.method(concurrency_group="io")
        async def io_blocked(self):
            self._enter("io")
            await asyncio.wait_for(self._event().wait(), 20)
            self._exit("io")
            return "io released"

        @ray.method(concurrency_group="compute")
        async def compute(self, hold):
            self._enter("compute")
            await asyncio.sleep(hold)
            self._exit("compute")
            return "compute"

        async def tagged(self, tag, hold):
            self._enter(tag)
            await asyncio.sleep(hold)
            self._exit(tag)
            return tag

        async def open(self):
            self._event().set()

        async def stats(self):
            return dict(self.running), dict(self.max_running)

    return Grouped


def test_concurrency_groups_bound_their_methods(ray_shared):
    grouped = _grouped_async_class().remote()
    refs = [grouped.io.remote(0.2) for _ in range(4)]
    refs += [grouped.compute.remote(0.1) for _ in range(3)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == ["io"] * 4 + ["compute"] * 3
    _, max_running = ray.get(grouped.stats.remote(), timeout=GET_TIMEOUT)
    assert max_running == {"io": 2, "compute": 1}


def test_full_concurrency_group_does_not_block_the_default_group(ray_shared):
    grouped = _grouped_async_class().remote()
    blocked = [grouped.io_blocked.remote() for _ in range(2)]
    wait_for_condition(
        lambda: ray.get(grouped.stats.remote(), timeout=GET_TIMEOUT)[0].get("io") == 2,
        message="two io calls never started",
    )
    third = grouped.io.remote(0)
    # the default group answers while "io" is full, and the third io call waits
    assert ray.get(grouped.tagged.remote("default", 0), timeout=GET_TIMEOUT) == "default"
    ready, _ = ray.wait([third], timeout=0.3)
    assert ready == [], "a third call ran in a concurrency group of 2"
    ray.get(grouped.open.remote(), timeout=GET_TIMEOUT)
    assert ray.get([*blocked, third], timeout=GET_TIMEOUT) == ["io released", "io released", "io"]


def test_concurrency_group_chosen_at_call_time(ray_shared):
    grouped = _grouped_async_class().remote()
    blocked = [grouped.io_blocked.remote() for _ in range(2)]
    wait_for_condition(
        lambda: ray.get(grouped.stats.remote(), timeout=GET_TIMEOUT)[0].get("io") == 2,
        message="two io calls never started",
    )
    in_io = grouped.tagged.options(concurrency_group="io").remote("in-io", 0)
    in_compute = grouped.tagged.options(concurrency_group="compute").remote("in-compute", 0)
    assert ray.get(in_compute, timeout=GET_TIMEOUT) == "in-compute"
    ready, _ = ray.wait([in_io], timeout=0.3)
    assert ready == [], "a call sent to the full 'io' group ran anyway"
    ray.get(grouped.open.remote(), timeout=GET_TIMEOUT)
    assert ray.get(in_io, timeout=GET_TIMEOUT) == "in-io"
    ray.get(blocked, timeout=GET_TIMEOUT)


def test_concurrency_groups_on_a_threaded_actor(ray_shared, tmp_path):
    release = tmp_path / "release"

    @ray.remote(concurrency_groups={"io": 2})
    class ThreadedGrouped:
        def __init__(self):
            self.barrier = threading.Barrier(2, timeout=10)

        @ray.method(concurrency_group="io")
        def meet(self):
            try:
                self.barrier.wait()
                return True
            except threading.BrokenBarrierError:
                return False

        def block(self, path):
            deadline = time.time() + 20
            while not os.path.exists(path) and time.time() < deadline:
                time.sleep(0.01)
            return "unblocked"

    actor = ThreadedGrouped.remote()
    blocked = actor.block.remote(str(release))  # occupies the default group (1 thread)
    try:
        assert ray.get([actor.meet.remote() for _ in range(2)], timeout=GET_TIMEOUT) == [
            True,
            True,
        ]
    finally:
        release.touch()
    assert ray.get(blocked, timeout=GET_TIMEOUT) == "unblocked"


# ---------------------------------------------------------------- max_pending_calls


def _submit_when_accepted(submit):
    """Submit once the caller's pending count allows it (a reply may still be landing)."""

    def attempt():
        try:
            return [submit()]
        except PendingCallsLimitExceeded:
            return None

    return wait_for_condition(attempt, message="calls refused after the queue drained")[0]


def test_max_pending_calls(ray_shared):
    @ray.remote(max_pending_calls=1)
    class Slow:
        def nap(self, seconds):
            time.sleep(seconds)
            return seconds

        def ping(self):
            return "pong"

    slow = Slow.remote()
    assert ray.get(slow.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    first = _submit_when_accepted(lambda: slow.nap.remote(0.5))
    with pytest.raises(PendingCallsLimitExceeded):
        for _ in range(20):
            slow.nap.remote(0.01)
    assert ray.get(first, timeout=GET_TIMEOUT) == 0.5
    # once the queue drains, calls are accepted again
    ref = _submit_when_accepted(lambda: slow.ping.remote())
    assert ray.get(ref, timeout=GET_TIMEOUT) == "pong"


def test_max_pending_calls_through_options(ray_shared):
    signal = Signal.remote()

    @ray.remote
    class Waiter:
        def __init__(self, signal):
            self.signal = signal

        async def wait(self):
            await self.signal.wait.remote()
            return "done"

    waiter = Waiter.options(max_pending_calls=3).remote(signal)
    refs = [waiter.wait.remote() for _ in range(3)]
    with pytest.raises(PendingCallsLimitExceeded):
        waiter.wait.remote()
    ray.get(signal.send.remote(), timeout=GET_TIMEOUT)
    assert ray.get(refs, timeout=GET_TIMEOUT) == ["done"] * 3


# --------------------------------------------------------------------------- cancel


def test_cancel_running_async_call_cancels_its_asyncio_task(ray_shared):
    @ray.remote
    class LongRunner:
        def __init__(self):
            self.started = 0
            self.cancelled = 0

        async def long(self):
            self.started += 1
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return "finished"

        async def stats(self):
            return self.started, self.cancelled

    runner = LongRunner.remote()
    ref = runner.long.remote()
    wait_for_condition(
        lambda: ray.get(runner.stats.remote(), timeout=GET_TIMEOUT)[0] == 1,
        message="the async call never started",
    )
    t0 = time.monotonic()
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=GET_TIMEOUT)
    assert time.monotonic() - t0 < 10
    wait_for_condition(
        lambda: ray.get(runner.stats.remote(), timeout=GET_TIMEOUT) == (1, 1),
        message="the coroutine never saw asyncio.CancelledError",
    )


def test_cancel_queued_call_on_a_sync_actor(ray_shared, tmp_path):
    started = tmp_path / "started"
    release = tmp_path / "release"

    @ray.remote
    class Serial:
        def __init__(self):
            self.ran = []

        def block(self, started, release):
            open(started, "w").close()
            deadline = time.time() + 20
            while not os.path.exists(release) and time.time() < deadline:
                time.sleep(0.01)
            self.ran.append("block")
            return "block"

        def mark(self, tag):
            self.ran.append(tag)
            return tag

        def ran_(self):
            return self.ran

    serial = Serial.remote()
    blocker = serial.block.remote(str(started), str(release))
    wait_for_condition(started.exists, message="the blocking call never started")
    queued = serial.mark.remote("queued")
    ray.cancel(queued)
    try:
        # cancelled while still queued: it fails at once, not when the blocker ends
        with pytest.raises(TaskCancelledError):
            ray.get(queued, timeout=10)
    finally:
        release.touch()
    assert ray.get(blocker, timeout=GET_TIMEOUT) == "block"
    assert ray.get(serial.mark.remote("after"), timeout=GET_TIMEOUT) == "after"
    assert ray.get(serial.ran_.remote(), timeout=GET_TIMEOUT) == ["block", "after"]


# ------------------------------------------------------------------------ ActorPool


def test_actor_pool(ray_shared):
    """The API in Ray's docs; tests/e2e/test_actor_pool.py covers every corner."""
    from aioray.util import ActorPool

    @ray.remote
    class Doubler:
        def double(self, v):
            return 2 * v

    a1, a2 = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a1, a2])
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])) == [2, 4, 6, 8]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(5))) == [
        0,
        2,
        4,
        6,
        8,
    ]

    assert not pool.has_next()
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.has_next()
    assert not pool.has_free()
    assert pool.pop_idle() is None
    assert pool.get_next() == 2
    assert pool.get_next() == 4
    assert not pool.has_next()
    pool.submit(lambda a, v: a.double.remote(v), 5)
    assert pool.get_next_unordered() == 10
    with pytest.raises(StopIteration):
        pool.get_next()

    assert pool.has_free()
    idle = pool.pop_idle()
    assert idle in (a1, a2)
    with pytest.raises(ValueError):
        pool.push(next(a for a in (a1, a2) if a != idle))  # still in the pool
    pool.push(idle)
    assert sorted(pool.map(lambda a, v: a.double.remote(v), [7, 8])) == [14, 16]


# ---------------------------------------------------------------------------- Queue


def test_queue_put_get_fifo(ray_shared):
    from aioray.util.queue import Queue

    q = Queue()
    assert q.empty()
    assert q.qsize() == 0
    for i in range(10):
        q.put(i)
    assert q.qsize() == 10
    assert q.size() == 10
    assert len(q) == 10
    assert not q.empty()
    assert not q.full()  # maxsize=0: unbounded
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.empty()
    q.shutdown()


def test_queue_empty_and_full(ray_shared):
    from aioray.util.queue import Empty, Full, Queue

    q = Queue(maxsize=2)
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get_nowait()
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 10

    q.put("a")
    q.put_nowait("b")
    assert q.full()
    with pytest.raises(Full):
        q.put("c", block=False)
    with pytest.raises(Full):
        q.put_nowait("c")
    t0 = time.monotonic()
    with pytest.raises(Full):
        q.put("c", timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 10
    with pytest.raises(ValueError):
        q.put("c", timeout=-1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)

    assert q.get_nowait() == "a"
    assert q.get(block=False) == "b"
    q.shutdown()


def test_queue_batches(ray_shared):
    from aioray.util.queue import Empty, Full, Queue

    q = Queue(maxsize=5)
    q.put_nowait_batch([1, 2, 3])
    assert q.qsize() == 3
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5, 6])  # all or nothing
    assert q.qsize() == 3
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.qsize() == 3
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError):
        q.put_nowait_batch(7)
    with pytest.raises(TypeError):
        q.get_nowait_batch("1")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    assert q.get_nowait_batch(1) == [3]
    q.shutdown()


def test_queue_blocking_get_waits_for_a_producer(ray_shared):
    from aioray.util.queue import Queue

    @ray.remote
    def producer(queue, items):
        time.sleep(0.2)
        for item in items:
            queue.put(item)
        return "produced"

    @ray.remote
    def consumer(queue, n):
        return [queue.get(timeout=GET_TIMEOUT) for _ in range(n)]

    q = Queue()
    consumed = consumer.remote(q, 3)
    produced = producer.remote(q, ["x", "y", "z"])
    assert ray.get(produced, timeout=GET_TIMEOUT) == "produced"
    assert ray.get(consumed, timeout=GET_TIMEOUT) == ["x", "y", "z"]
    q.shutdown()


def test_queue_blocking_put_waits_for_room(ray_shared):
    from aioray.util.queue import Queue

    @ray.remote
    def drain_later(queue):
        time.sleep(0.2)
        return queue.get(timeout=GET_TIMEOUT)

    q = Queue(maxsize=1)
    q.put("first")
    drained = drain_later.remote(q)
    q.put("second", timeout=GET_TIMEOUT)  # blocks until the task makes room
    assert ray.get(drained, timeout=GET_TIMEOUT) == "first"
    assert q.get(timeout=GET_TIMEOUT) == "second"
    q.shutdown()


def test_queue_async_api(ray_shared):
    from aioray.util.queue import Empty, Full, Queue

    q = Queue(maxsize=1)

    async def main():
        await q.put_async("async-item")
        with pytest.raises(Full):
            await q.put_async("extra", block=False)
        with pytest.raises(Full):
            await q.put_async("extra", timeout=0.1)
        item = await q.get_async()
        with pytest.raises(Empty):
            await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        return item

    assert asyncio.run(main()) == "async-item"
    q.shutdown()


def test_queue_actor_options_and_shutdown(ray_shared):
    from aioray.util.queue import Queue

    q = Queue(actor_options={"num_cpus": 0, "name": "queue-actor-by-option"})
    q.put(1)
    assert ray.get_actor("queue-actor-by-option") is not None
    q.shutdown()

    def released() -> bool:
        try:
            ray.get_actor("queue-actor-by-option")
        except ValueError:
            return True
        return False

    wait_for_condition(released, message="Queue.shutdown() left its actor alive")

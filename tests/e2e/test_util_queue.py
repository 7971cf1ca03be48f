"""End-to-end tests of aioray.util.queue: every Queue method and error, as in Ray.

Blocked calls are released by the opposite operation, never by a sleep; "still
blocked" is checked with a short bounded ray.wait.
"""

from __future__ import annotations

import queue

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray.exceptions import RayActorError
from aioray.util.queue import Empty, Full, Queue

RAY_SHARED_INIT_KWARGS = {"num_cpus": 4}
GET_TIMEOUT = 20


@ray.remote
def get_from(q, block=True, timeout=GET_TIMEOUT):
    return q.get(block=block, timeout=timeout)


@ray.remote
def put_into(q, item, timeout=GET_TIMEOUT):
    q.put(item, timeout=timeout)
    return item


@pytest.fixture
def q(ray_shared):
    q = Queue()
    yield q
    q.shutdown()


@pytest.fixture
def q1(ray_shared):
    q = Queue(maxsize=1)
    yield q
    q.shutdown()


def not_ready_yet(ref) -> bool:
    ready, _ = ray.wait([ref], timeout=0.2)
    return not ready


def test_exceptions_are_the_stdlib_ones(ray_shared):
    assert issubclass(Empty, queue.Empty)
    assert issubclass(Full, queue.Full)


def test_fifo_and_sizes(q):
    assert q.empty() and not q.full()
    assert q.qsize() == q.size() == len(q) == 0
    for i in range(5):
        q.put(i)
    assert q.qsize() == q.size() == len(q) == 5
    assert not q.empty() and not q.full()  # unbounded: never full
    assert [q.get() for _ in range(5)] == list(range(5))
    assert q.empty()


def test_put_on_full_queue(q1):
    assert q1.maxsize == 1
    q1.put("a", block=False)
    assert q1.full()
    with pytest.raises(Full):
        q1.put_nowait("b")
    with pytest.raises(Full):
        q1.put("b", block=False)
    with pytest.raises(Full):
        q1.put("b", timeout=0.05)
    with pytest.raises(Full):
        q1.put("b", timeout=0)
    assert q1.get() == "a"
    q1.put("c", timeout=0)  # room now: a zero timeout still succeeds
    assert q1.get_nowait() == "c"


def test_get_on_empty_queue(q):
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get(timeout=0.05)
    with pytest.raises(Empty):
        q.get(timeout=0)
    q.put(1)
    assert q.get(timeout=0) == 1


def test_errors_are_plain_exceptions_not_task_errors(q, q1):
    q1.put(0)
    for call in (q.get_nowait, lambda: q.get(timeout=0), lambda: q1.put(1, timeout=0)):
        with pytest.raises((Empty, Full)) as info:
            call()
        assert type(info.value) in (Empty, Full)


def test_negative_timeout_is_value_error_only_when_blocking(q):
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    q.put(1, block=False, timeout=-1)  # ignored without block, as in Ray
    assert q.get(block=False, timeout=-1) == 1


def test_blocked_get_is_woken_by_put(q):
    ref = get_from.remote(q)
    assert not_ready_yet(ref)
    q.put("x")
    assert ray.get(ref, timeout=GET_TIMEOUT) == "x"


def test_blocked_put_is_woken_by_get(q1):
    q1.put(0)
    ref = put_into.remote(q1, 1)
    assert not_ready_yet(ref)
    assert q1.get(timeout=GET_TIMEOUT) == 0
    assert ray.get(ref, timeout=GET_TIMEOUT) == 1
    assert q1.get(timeout=GET_TIMEOUT) == 1


def test_many_producers_and_consumers(q1):
    producers = [put_into.remote(q1, i) for i in range(6)]
    consumers = [get_from.remote(q1) for _ in range(6)]
    assert sorted(ray.get(consumers, timeout=GET_TIMEOUT)) == list(range(6))
    assert sorted(ray.get(producers, timeout=GET_TIMEOUT)) == list(range(6))
    assert q1.empty()


def test_put_nowait_batch(ray_shared):
    q = Queue(maxsize=3)
    try:
        q.put_nowait_batch([1, 2])
        with pytest.raises(Full, match="Cannot add 2 items"):
            q.put_nowait_batch([3, 4])
        assert q.qsize() == 2  # all or nothing
        q.put_nowait_batch(x for x in [3])  # any iterable
        assert q.full()
        with pytest.raises(TypeError, match="Iterable"):
            q.put_nowait_batch(5)
        assert q.get_nowait_batch(3) == [1, 2, 3]
    finally:
        q.shutdown()


def test_get_nowait_batch(q):
    q.put_nowait_batch(range(100))  # unbounded: any number fits
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(3) == [0, 1, 2]
    with pytest.raises(Empty, match="Cannot get 98 items"):
        q.get_nowait_batch(98)
    assert q.qsize() == 97  # all or nothing
    with pytest.raises(TypeError, match="int"):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError, match="nonnegative"):
        q.get_nowait_batch(-1)
    assert q.get_nowait_batch(97) == list(range(3, 100))


async def test_async_put_and_get(q1):
    await q1.put_async("a")
    with pytest.raises(Full):
        await q1.put_async("b", block=False)
    with pytest.raises(Full):
        await q1.put_async("b", timeout=0.05)
    with pytest.raises(ValueError):
        await q1.put_async("b", timeout=-1)
    assert await q1.get_async() == "a"
    with pytest.raises(Empty):
        await q1.get_async(block=False)
    with pytest.raises(Empty):
        await q1.get_async(timeout=0.05)
    with pytest.raises(ValueError):
        await q1.get_async(timeout=-1)
    ref = get_from.remote(q1)
    await q1.put_async("c", timeout=GET_TIMEOUT)
    assert await ref == "c"


def test_actor_options_and_shutdown_release_resources(ray_shared):
    def cpus() -> float:
        return ray.available_resources().get("CPU", 0.0)

    wait_for_condition(lambda: cpus() == 4.0, message=lambda: f"CPU={cpus()}")
    q = Queue(actor_options={"num_cpus": 1})
    q.put(1)
    wait_for_condition(lambda: cpus() == 3.0, message=lambda: f"CPU={cpus()}")
    q.shutdown()
    wait_for_condition(lambda: cpus() == 4.0, message=lambda: f"CPU={cpus()}")


@pytest.mark.parametrize("force", [False, True])
def test_shutdown_kills_the_actor(ray_shared, force):
    q = Queue()
    handle = q.actor
    q.put(1)
    q.shutdown(force=force)
    assert q.actor is None
    q.shutdown()  # a second shutdown is a no-op
    with pytest.raises(RayActorError):
        ray.get(handle.qsize.remote(), timeout=GET_TIMEOUT)


def test_shutdown_with_blocked_call_ends_within_grace_period(ray_shared):
    q = Queue()
    handle = q.actor
    blocked = handle.get.remote(None)  # never gets an item
    assert not_ready_yet(blocked)
    q.shutdown(grace_period_s=0.5)
    with pytest.raises(RayActorError):
        ray.get(blocked, timeout=GET_TIMEOUT)

"""End-to-end tests of aioray.util.ActorPool: every method and every error, as in Ray.

Calls that must stay unfinished wait on a gate in one shared ``Gates`` actor; the test
opens the gate when it is done with them, so nothing is left running and no test sleeps.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

import aioray as ray
from aioray.exceptions import ActorDiedError
from aioray.util import ActorPool

RAY_SHARED_INIT_KWARGS = {"num_cpus": 4}
GET_TIMEOUT = 20


@ray.remote
class Gates:
    """Named one-shot events: calls wait on a gate until the test opens it."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}

    def _event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    async def wait(self, name: str) -> None:
        await self._event(name).wait()

    async def open(self, name: str) -> None:
        self._event(name).set()


@ray.remote
class Worker:
    async def double(self, v):
        return 2 * v

    async def gated(self, v, gates, name):
        await gates.wait.remote(name)
        return v

    async def fail(self, v):
        raise ValueError(f"bad {v}")

    @ray.method(num_returns=2)
    async def pair(self, v):
        return v, v + 1

    @ray.method(num_returns=2)
    async def gated_pair(self, v, gates, name):
        await gates.wait.remote(name)
        return v, v + 1


_names = itertools.count()


@pytest.fixture(scope="module")
def gates(ray_shared):
    return Gates.remote()


@pytest.fixture(scope="module")
def workers(ray_shared):
    return [Worker.remote() for _ in range(3)]


@pytest.fixture
def gate(gates):
    """A fresh gate name, opened when the test ends whatever happened."""
    name = f"gate-{next(_names)}"
    yield name
    ray.get(gates.open.remote(name), timeout=GET_TIMEOUT)


def double(actor, v):
    return actor.double.remote(v)


def test_importable_from_util_and_module(ray_shared):
    from aioray.util.actor_pool import ActorPool as Direct

    assert Direct is ActorPool


def test_submit_and_get_next_in_order(workers):
    pool = ActorPool(workers[:2])
    assert not pool.has_next()
    for i in range(5):
        pool.submit(double, i)
    assert pool.has_next()
    assert [pool.get_next() for _ in range(5)] == [0, 2, 4, 6, 8]
    assert not pool.has_next()


def test_get_next_with_timeout_returns_ready_result(workers):
    pool = ActorPool(workers[:1])
    pool.submit(double, 21)
    assert pool.get_next(timeout=GET_TIMEOUT) == 42


def test_get_next_raises_stop_iteration_when_nothing_pending(workers):
    pool = ActorPool(workers[:1])
    with pytest.raises(StopIteration, match="No more results"):
        pool.get_next()
    with pytest.raises(StopIteration, match="No more results"):
        pool.get_next_unordered()


def test_map_is_ordered_and_eager(workers):
    pool = ActorPool(workers)
    results = pool.map(double, range(7))
    assert pool.has_next()  # submitted before the iterator is consumed
    assert list(results) == [0, 2, 4, 6, 8, 10, 12]
    assert list(pool.map(double, [])) == []


def test_map_unordered_yields_in_completion_order(workers, gates, gate):
    pool = ActorPool(workers[:2])

    def fn(actor, v):
        return actor.gated.remote(v, gates, gate) if v == 0 else actor.double.remote(v)

    results = pool.map_unordered(fn, [0, 1])
    assert next(results) == 2  # value 1 finishes while value 0 waits at its gate
    ray.get(gates.open.remote(gate), timeout=GET_TIMEOUT)
    assert list(results) == [0]


@pytest.mark.parametrize("method", ["map", "map_unordered"])
def test_map_drops_earlier_unfinished_submissions(workers, gates, gate, method):
    pool = ActorPool(workers[:2])
    pool.submit(lambda a, v: a.gated.remote(v, gates, gate), -1)
    results = getattr(pool, method)(double, [1, 2, 3])
    assert sorted(results) == [2, 4, 6]  # the gated call is not waited for
    assert not pool.has_next()


def test_get_next_unordered_returns_first_finished(workers, gates, gate):
    pool = ActorPool(workers[:2])
    pool.submit(lambda a, v: a.gated.remote(v, gates, gate), "slow")
    pool.submit(double, 5)
    assert pool.get_next_unordered(timeout=GET_TIMEOUT) == 10
    ray.get(gates.open.remote(gate), timeout=GET_TIMEOUT)
    assert pool.get_next_unordered() == "slow"
    assert not pool.has_next()


def test_get_next_after_get_next_unordered_is_value_error(workers, gates, gate):
    pool = ActorPool(workers[:2])
    pool.submit(lambda a, v: a.gated.remote(v, gates, gate), "slow")
    pool.submit(double, 5)
    assert pool.get_next_unordered() == 10
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    ray.get(gates.open.remote(gate), timeout=GET_TIMEOUT)
    assert pool.get_next_unordered() == "slow"


@pytest.mark.parametrize("method", ["get_next", "get_next_unordered"])
def test_timeout_keeps_the_call(workers, gates, gate, method):
    pool = ActorPool(workers[:1])
    pool.submit(lambda a, v: a.gated.remote(v, gates, gate), "late")
    with pytest.raises(TimeoutError, match="Timed out") as info:
        getattr(pool, method)(timeout=0.05)
    assert "ignored" not in str(info.value)
    assert pool.has_next() and not pool.has_free()
    ray.get(gates.open.remote(gate), timeout=GET_TIMEOUT)
    assert getattr(pool, method)(timeout=GET_TIMEOUT) == "late"


@pytest.mark.parametrize("method", ["get_next", "get_next_unordered"])
def test_timeout_with_ignore_drops_the_call(workers, gates, gate, method):
    pool = ActorPool(workers[:1])
    pool.submit(lambda a, v: a.gated.remote(v, gates, gate), "late")
    with pytest.raises(TimeoutError, match="has been ignored"):
        getattr(pool, method)(timeout=0, ignore_if_timedout=True)
    assert not pool.has_next()
    assert pool.has_free()  # the actor went back to the pool, as in Ray
    pool.submit(double, 4)
    assert getattr(pool, method)() == 8


def test_multiple_returns_come_back_as_a_list(workers, gates, gate):
    pool = ActorPool(workers[:2])
    for v in (1, 3):
        pool.submit(lambda a, v: a.pair.remote(v), v)
    assert pool.get_next(timeout=GET_TIMEOUT) == [1, 2]
    assert pool.get_next_unordered(timeout=GET_TIMEOUT) == [3, 4]
    pool.submit(lambda a, v: a.gated_pair.remote(v, gates, gate), 7)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.05)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    ray.get(gates.open.remote(gate), timeout=GET_TIMEOUT)
    assert pool.get_next_unordered(timeout=GET_TIMEOUT) == [7, 8]


def test_submits_beyond_idle_actors_queue_in_order(workers):
    pool = ActorPool(workers[:1])
    for i in range(4):
        pool.submit(double, i)
    assert not pool.has_free()  # busy, and three calls queued
    assert [pool.get_next() for _ in range(4)] == [0, 2, 4, 6]
    assert pool.has_free()


def test_task_error_is_raised_and_actor_returned(workers):
    pool = ActorPool(workers[:1])
    pool.submit(lambda a, v: a.fail.remote(v), 1)
    with pytest.raises(ValueError, match="bad 1"):
        pool.get_next()
    assert pool.has_free()
    pool.submit(double, 2)
    assert pool.get_next() == 4


def test_dead_actor_is_dropped_from_the_pool(ray_shared):
    actor = Worker.remote()
    ray.kill(actor)
    pool = ActorPool([actor])
    pool.submit(double, 1)
    with pytest.raises(ActorDiedError):
        pool.get_next(timeout=GET_TIMEOUT)
    assert not pool.has_free()
    assert pool.pop_idle() is None


def test_has_free_and_pop_idle(workers, gates, gate):
    a = workers[0]
    pool = ActorPool([a])
    assert pool.has_free()
    pool.submit(lambda a, v: a.gated.remote(v, gates, gate), 1)
    assert not pool.has_free()
    assert pool.pop_idle() is None
    ray.get(gates.open.remote(gate), timeout=GET_TIMEOUT)
    assert pool.get_next() == 1
    assert pool.has_free()
    assert pool.pop_idle() is a
    assert not pool.has_free()
    assert pool.pop_idle() is None


def test_submit_to_empty_pool_waits_for_push(workers):
    pool = ActorPool([])
    pool.submit(double, 3)
    assert not pool.has_next()  # queued, not running: nothing to get yet
    with pytest.raises(StopIteration):
        pool.get_next()
    pool.push(workers[0])
    assert pool.has_next()
    assert pool.get_next() == 6


def test_push(workers, gates, gate):
    a1, a2, a3 = workers
    pool = ActorPool([a1])
    pool.submit(lambda a, v: a.gated.remote(v, gates, gate), "first")
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)  # busy member
    pool.push(a2)
    assert pool.has_free()
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)  # idle member
    pool.submit(double, 1)  # runs on a2
    pool.submit(double, 2)  # queued
    assert not pool.has_free()
    pool.push(a3)  # takes the queued call at once
    assert not pool.has_free()
    ray.get(gates.open.remote(gate), timeout=GET_TIMEOUT)
    assert [pool.get_next() for _ in range(3)] == ["first", 2, 4]
    assert "idle=3" in repr(pool)

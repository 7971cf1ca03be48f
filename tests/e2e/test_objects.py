"""End-to-end tests of objects: put/get, wait, ObjectRef, async access, freeing, resources."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import time

import numpy as np
import psutil
import pytest
from conftest import shm_entries, wait_for_condition

import aioray as ray
from aioray.exceptions import GetTimeoutError, OwnerDiedError, RayError, RayTaskError

GET_TIMEOUT = 30
LARGE = 1024 * 1024  # well above the 100 KiB inline threshold


def _blocker():
    @ray.remote
    def wait_for(path, value="released"):
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        return value

    return wait_for


def _echo():
    @ray.remote
    def echo(x):
        return x

    return echo


echo = _echo()  # defined in a function so it is pickled by value


# ---------------------------------------------- tests that need a fresh cluster
# (first in the module: they kill workers, which must not disturb the shared cluster)


def test_get_after_owner_died_raises_owner_died(ray_start):
    """Objects owned by a worker become OwnerDiedError once it dies (never a hang)."""

    @ray.remote(max_retries=0)
    def owner():
        big = ray.put(np.ones(200_000))
        small = ray.put("owned by a worker")
        return [big, small], os.getpid()

    refs, pid = ray.get(owner.remote(), timeout=GET_TIMEOUT)
    proc = psutil.Process(pid)
    proc.kill()
    proc.wait(timeout=10)
    for ref in refs:
        with pytest.raises(OwnerDiedError):
            ray.get(ref, timeout=GET_TIMEOUT)
    assert isinstance(OwnerDiedError(), RayError)


# ------------------------------------------------------------------------- put/get


@pytest.mark.parametrize(
    "value",
    [0, -7, 3.5, "text", b"bytes", None, True, [1, 2], (1, "a"), {"k": [1, {"n": None}]}, {1, 2}],
    ids=lambda v: type(v).__name__,
)
def test_put_get_small_values(ray_shared, value):
    assert ray.get(ray.put(value), timeout=GET_TIMEOUT) == value


def test_put_get_large_values(ray_shared):
    blob = os.urandom(LARGE)
    assert ray.get(ray.put(blob), timeout=GET_TIMEOUT) == blob
    text = "x" * (2 * LARGE)
    assert ray.get(ray.put(text), timeout=GET_TIMEOUT) == text
    nested = {"array": np.arange(LARGE // 8), "meta": ["a", 1]}
    got = ray.get(ray.put(nested), timeout=GET_TIMEOUT)
    assert got["meta"] == ["a", 1]
    assert np.array_equal(got["array"], nested["array"])


def test_task_returns_large_value(ray_shared):
    @ray.remote
    def make(n):
        return np.full(n, 7, dtype=np.int32), os.urandom(16)

    arr, tail = ray.get(make.remote(LARGE), timeout=GET_TIMEOUT)
    assert arr.dtype == np.int32
    assert arr.shape == (LARGE,)
    assert int(arr[0]) == int(arr[-1]) == 7
    assert len(tail) == 16


def test_put_copies_the_value(ray_shared):
    """Objects are immutable: mutating the original after put changes nothing."""
    arr = np.zeros(LARGE // 8)
    ref = ray.put(arr)
    arr[0] = -1.0
    assert ray.get(ref, timeout=GET_TIMEOUT)[0] == 0.0
    small = [1, 2]
    small_ref = ray.put(small)
    small.append(3)
    assert ray.get(small_ref, timeout=GET_TIMEOUT) == [1, 2]


def test_numpy_large_array_is_readonly_zero_copy_view(ray_shared):
    arr = np.arange(1_000_000, dtype=np.float64)
    out = ray.get(ray.put(arr), timeout=GET_TIMEOUT)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    assert np.array_equal(out, arr)
    assert out.flags.writeable is False
    with pytest.raises(ValueError):
        out[0] = 1.0


def test_numpy_array_argument_is_readonly_in_task(ray_shared):
    @ray.remote
    def inspect(a):
        return a.flags.writeable, float(a.sum()), a.dtype.str

    arr = np.ones((500, 500), dtype=np.float32)
    writeable, total, dtype = ray.get(inspect.remote(ray.put(arr)), timeout=GET_TIMEOUT)
    assert writeable is False
    assert total == 250_000.0
    assert dtype == arr.dtype.str

    @ray.remote
    def produce():
        return np.ones((400, 400))

    out = ray.get(produce.remote(), timeout=GET_TIMEOUT)
    assert out.flags.writeable is False
    assert out.shape == (400, 400)


def test_small_numpy_roundtrip(ray_shared):
    arr = np.array([[1, 2], [3, 4]], dtype=np.int16)
    out = ray.get(ray.put(arr), timeout=GET_TIMEOUT)
    assert out.dtype == np.int16
    assert np.array_equal(out, arr)


def test_get_list(ray_shared):
    refs = [ray.put(i) for i in range(10)] + [echo.remote(i) for i in range(10, 20)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == list(range(20))
    assert ray.get([], timeout=GET_TIMEOUT) == []
    same = ray.put("same")
    assert ray.get([same, same], timeout=GET_TIMEOUT) == ["same", "same"]


def test_get_timeout(ray_shared, tmp_path):
    release = str(tmp_path / "release")
    ref = _blocker().remote(release)
    t0 = time.monotonic()
    with pytest.raises(GetTimeoutError) as info:
        ray.get(ref, timeout=0.5)
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 5, f"get(timeout=0.5) returned after {elapsed:.2f}s"
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, RayError)

    with pytest.raises(TimeoutError):
        ray.get([ray.put(1), ref], timeout=0.1)
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=0)

    open(release, "w").close()
    assert ray.get(ref, timeout=GET_TIMEOUT) == "released"


# ---------------------------------------------------------------------------- wait


def test_wait_num_returns_and_timeout(ray_shared, tmp_path):
    release = str(tmp_path / "release")
    fast = [echo.remote(i) for i in range(3)]
    slow = _blocker().remote(release)
    refs = [*fast, slow]

    ready, not_ready = ray.wait(refs, num_returns=3, timeout=GET_TIMEOUT)
    assert ready == fast, "ready refs keep the order of the input list"
    assert not_ready == [slow]

    t0 = time.monotonic()
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert ready == fast
    assert not_ready == [slow]

    ready, not_ready = ray.wait(refs)
    assert len(ready) == 1
    assert ready[0] in fast
    assert len(not_ready) == 3

    ready, not_ready = ray.wait(refs, num_returns=3, timeout=GET_TIMEOUT, fetch_local=False)
    assert ready == fast

    ready, not_ready = ray.wait([slow], timeout=0)
    assert (ready, not_ready) == ([], [slow])

    open(release, "w").close()
    ready, not_ready = ray.wait([slow], timeout=GET_TIMEOUT)
    assert (ready, not_ready) == ([slow], [])


def test_a_timed_out_wait_leaves_a_concurrent_get_of_a_borrowed_ref_alone(ray_shared, tmp_path):
    # wait and get of a borrowed ref share one fetch from the owner: a wait that times
    # out must stop waiting, not cancel the fetch another caller still awaits.
    release = str(tmp_path / "release")
    blocker = _blocker()

    @ray.remote
    class Owner:
        def make(self, path):
            return [blocker.remote(path, "owned elsewhere")]

    owner = Owner.remote()
    [ref] = ray.get(owner.make.remote(release), timeout=GET_TIMEOUT)
    pending = ref.future()
    assert ray.wait([ref], timeout=0.2) == ([], [ref])
    open(release, "w").close()
    assert pending.result(timeout=GET_TIMEOUT) == "owned elsewhere"
    ray.kill(owner)


def test_wait_for_all_of_many_refs(ray_shared):
    refs = [echo.remote(i) for i in range(3000)]
    ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=GET_TIMEOUT)
    assert ready == refs and not not_ready


def test_wait_with_large_objects(ray_shared):
    @ray.remote
    def big(i):
        return np.full(LARGE // 8, i, dtype=np.float64)

    refs = [big.remote(i) for i in range(4)]
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=GET_TIMEOUT, fetch_local=True)
    assert len(ready) == 4 and not not_ready
    assert [float(a[0]) for a in ray.get(ready)] == [0.0, 1.0, 2.0, 3.0]


def test_wait_rejects_too_many_returns(ray_shared):
    ref = ray.put(1)
    with pytest.raises(ValueError):
        ray.wait([ref], num_returns=2)


# ----------------------------------------------------------------------- ObjectRef


def test_object_ref_identity(ray_shared):
    ref = ray.put("value")
    other = ray.put("value")
    h = ref.hex()
    assert isinstance(h, str)
    int(h, 16)  # hex digits only
    assert h != other.hex()

    copy = ray.get(ray.put([ref]), timeout=GET_TIMEOUT)[0]
    assert isinstance(copy, ray.ObjectRef)
    assert copy == ref
    assert hash(copy) == hash(ref)
    assert copy.hex() == h
    assert ref != other
    assert ref != h
    assert {ref: "found"}[copy] == "found"
    assert len({ref, copy, other}) == 2

    text = repr(ref)
    assert "ObjectRef" in text
    assert h in text


def test_await_ref_in_asyncio(ray_shared, tmp_path):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    def fail():
        raise ValueError("async failure")

    release = str(tmp_path / "release")
    blocker = _blocker()

    async def main():
        one = await square.remote(3)
        many = await asyncio.gather(*[square.remote(i) for i in range(5)])
        bounded = await asyncio.wait_for(square.remote(4), timeout=GET_TIMEOUT)
        put_value = await ray.put("put")
        with pytest.raises(ValueError, match="async failure"):
            await fail.remote()
        slow = blocker.remote(release)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow, timeout=0.2)
        open(release, "w").close()
        after_timeout = await asyncio.wait_for(slow, timeout=GET_TIMEOUT)
        return one, many, bounded, put_value, after_timeout

    assert asyncio.run(main()) == (9, [0, 1, 4, 9, 16], 16, "put", "released")


def test_ref_future(ray_shared):
    @ray.remote
    def slow_add(a, b):
        return a + b

    @ray.remote
    def fail():
        raise KeyError("future failure")

    fut = slow_add.remote(1, 2).future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=GET_TIMEOUT) == 3

    err = fail.remote().future().exception(timeout=GET_TIMEOUT)
    assert isinstance(err, KeyError)
    assert isinstance(err, RayTaskError)


# -------------------------------------------------------------------------- freeing


def test_large_put_freed_when_last_ref_dropped(ray_shared):
    before = shm_entries()
    ref = ray.put(np.zeros(2_000_000))
    created = wait_for_condition(
        lambda: shm_entries() - before,
        message="a large put created no /dev/shm/aioray_* segment",
    )
    arr = ray.get(ref, timeout=GET_TIMEOUT)
    assert arr.shape == (2_000_000,)
    del arr, ref
    gc.collect()
    wait_for_condition(
        lambda: not (shm_entries() & created),
        message=lambda: f"segments not freed: {sorted(shm_entries() & created)}",
    )


def test_large_task_result_freed_when_last_ref_dropped(ray_shared):
    @ray.remote
    def make():
        return np.ones(2_000_000)

    before = shm_entries()
    ref = make.remote()
    assert float(ray.get(ref, timeout=GET_TIMEOUT).sum()) == 2_000_000.0
    created = shm_entries() - before
    assert created, "a large task result created no /dev/shm/aioray_* segment"
    del ref
    gc.collect()
    wait_for_condition(
        lambda: not (shm_entries() & created),
        message=lambda: f"segments not freed: {sorted(shm_entries() & created)}",
    )


# -------------------------------------------------------------- cluster resources


def test_cluster_resources_and_nodes(ray_shared):
    total = ray.cluster_resources()
    assert isinstance(total, dict)
    assert total["CPU"] == 2
    assert all(isinstance(v, int | float) for v in total.values())

    wait_for_condition(
        lambda: ray.available_resources().get("CPU") == 2,
        message=lambda: f"idle cluster should have 2 CPUs free: {ray.available_resources()}",
    )

    nodes = ray.nodes()
    assert isinstance(nodes, list)
    assert len(nodes) == 1
    node = nodes[0]
    assert node["NodeID"] == ray_shared.address_info["node_id"]
    assert node["Alive"] is True
    assert node["Resources"]["CPU"] == 2


def test_available_resources_track_running_tasks(ray_shared, tmp_path):
    release = str(tmp_path / "release")
    holder = _blocker().options(num_cpus=1).remote(release)
    wait_for_condition(
        lambda: ray.available_resources().get("CPU") == 1,
        message=lambda: f"a running 1-CPU task should leave 1 CPU: {ray.available_resources()}",
    )
    assert ray.cluster_resources()["CPU"] == 2
    open(release, "w").close()
    assert ray.get(holder, timeout=GET_TIMEOUT) == "released"
    wait_for_condition(
        lambda: ray.available_resources().get("CPU") == 2,
        message=lambda: f"CPU not returned: {ray.available_resources()}",
    )


# ---------------------------------------------------------------------- many refs


def test_get_object_containing_1000_refs(ray_shared):
    refs = [ray.put(i) for i in range(1000)]
    outer = ray.put(refs)
    inner = ray.get(outer, timeout=GET_TIMEOUT)
    assert len(inner) == 1000
    assert all(isinstance(r, ray.ObjectRef) for r in inner)
    assert [r.hex() for r in inner] == [r.hex() for r in refs]
    assert ray.get(inner, timeout=GET_TIMEOUT) == list(range(1000))


def test_task_receives_1000_nested_refs(ray_shared):
    @ray.remote
    def total(refs):
        return sum(ray.get(refs))

    refs = [ray.put(i) for i in range(1000)]
    assert ray.get(total.remote(refs), timeout=GET_TIMEOUT) == sum(range(1000))


def test_large_arguments_by_value(ray_shared):
    """A large value passed straight to .remote() (no put) reaches the task intact."""

    @ray.remote
    def total(arr):
        return float(arr.sum()), arr.flags.writeable

    @ray.remote
    def make():
        return np.ones(LARGE // 8)

    arr = np.ones(LARGE // 4)
    assert ray.get(total.remote(arr), timeout=GET_TIMEOUT) == (float(LARGE // 4), False)
    # a large task result feeds another task without passing through the driver
    assert ray.get(total.remote(make.remote()), timeout=GET_TIMEOUT) == (float(LARGE // 8), False)


def test_api_is_thread_safe(ray_shared):
    """put/get/remote from several driver threads at once, as Ray allows."""

    @ray.remote
    def double(x):
        return 2 * x

    def work(seed: int) -> bool:
        for i in range(20):
            value = seed * 1000 + i
            if ray.get(double.remote(ray.put(value)), timeout=GET_TIMEOUT) != 2 * value:
                return False
        return True

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))


def test_many_small_tasks(ray_shared):
    @ray.remote
    def inc(x):
        return x + 1

    refs = [inc.remote(i) for i in range(1000)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == list(range(1, 1001))


# ------------------------------------------------- get of results not stored yet


def _fetch_many(cw, refs):
    """Start object_waits.fetch_many on the core loop; return its concurrent future once
    every pending one of ``refs`` waits in the store."""
    import asyncio

    from aioray._private.owner import object_waits

    fut = asyncio.run_coroutine_threadsafe(object_waits.fetch_many(cw, refs), cw.loop)
    waiting = [r.binary() for r in refs if cw.memory_store.get(r.binary()) is None]
    wait_for_condition(
        lambda: all(cw.memory_store.has_waiters(oid) for oid in waiting), GET_TIMEOUT
    )
    return fut


def test_a_get_of_pending_results_returns_once_the_last_is_stored(ray_shared):
    from conftest import pending_owned_refs, store_on_core_loop

    from aioray import api

    cw = api.ensure_connected()
    a, b, c = pending_owned_refs(cw, 3)
    here = ray.put("here")
    fut = _fetch_many(cw, [a, here, b, a, c])  # (a twice)
    store_on_core_loop(cw, [a.binary(), b.binary()])
    assert not fut.done()
    store_on_core_loop(cw, [c.binary()])
    found = fut.result(GET_TIMEOUT)
    assert set(found) == {r.binary() for r in (a, b, c, here)}
    assert ray.get([a, here, c, a], timeout=GET_TIMEOUT) == [
        ("value of", a.binary()),
        "here",
        ("value of", c.binary()),
        ("value of", a.binary()),
    ]


def test_a_get_of_pending_results_raises_the_first_error_that_ends_a_wait(ray_shared):
    import asyncio

    from conftest import pending_owned_refs, store_on_core_loop

    from aioray import api
    from aioray.exceptions import ObjectLostError

    cw = api.ensure_connected()
    lost, later = pending_owned_refs(cw, 2)
    fut = _fetch_many(cw, [lost, later])
    error = ObjectLostError(lost.hex(), "lost for the test")

    async def fail() -> None:
        cw.memory_store.fail_waiters(lost.binary(), error)

    asyncio.run_coroutine_threadsafe(fail(), cw.loop).result(GET_TIMEOUT)
    with pytest.raises(ObjectLostError, match="lost for the test"):
        fut.result(GET_TIMEOUT)
    store_on_core_loop(cw, [later.binary()])  # its wait, given up, ignores it
    assert ray.get(later, timeout=GET_TIMEOUT) == ("value of", later.binary())


def test_a_timed_out_get_of_pending_results_leaves_them_gettable(ray_shared):
    from conftest import pending_owned_refs, store_on_core_loop

    from aioray import api

    cw = api.ensure_connected()
    refs = pending_owned_refs(cw, 3)
    with pytest.raises(GetTimeoutError):
        ray.get(refs, timeout=0.05)
    store_on_core_loop(cw, [r.binary() for r in refs])
    assert ray.get(refs, timeout=GET_TIMEOUT) == [("value of", r.binary()) for r in refs]

"""Borrowed references: objects live while any process holds a ref, and no longer.

A large object (above the 100 KiB inline threshold) has one /dev/shm segment while
it lives; each test watches that segment to see when the owner frees it.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import numpy as np
import pytest
from conftest import local_segment, wait_for_condition

import aioray as ray
from aioray._private.owner import worker_context
from aioray.exceptions import ObjectFreedError, ObjectLostError

GET_TIMEOUT = 30
N = 50_000  # float64: 400 KB, kept in shared memory


def segment_exists(oid: bytes) -> bool:
    return os.path.exists(local_segment(oid))


def wait_freed(oid: bytes) -> None:
    gc.collect()
    wait_for_condition(
        lambda: not segment_exists(oid), message=f"object {oid.hex()} was never freed"
    )


def assert_alive(oid: bytes) -> None:
    gc.collect()
    assert segment_exists(oid), f"object {oid.hex()} was freed while still referenced"


@ray.remote
def make_inner() -> list[Any]:
    # The worker owns the inner object; only the ref inside the return value survives.
    return [ray.put(np.full(N, 7.0))]


@ray.remote
def total(wrapped: list[Any]) -> float:
    return float(ray.get(wrapped[0]).sum())


@ray.remote
def forward(wrapped: list[Any], hops: int, holder: Any) -> Any:
    if hops > 1:
        return ray.get(forward.remote(wrapped, hops - 1, holder))
    return ray.get(holder.keep.remote(wrapped))


@ray.remote
class Holder:
    def __init__(self) -> None:
        self.kept: list[Any] = []

    def keep(self, wrapped: list[Any]) -> bool:
        self.kept.append(wrapped[0])
        return True

    def total(self) -> float:
        return float(sum(ray.get(r).sum() for r in self.kept))

    def drop(self) -> bool:
        self.kept.clear()
        return True


def test_task_returns_a_ref_it_created(ray_shared: Any) -> None:
    outer = make_inner.remote()
    [inner] = ray.get(outer, timeout=GET_TIMEOUT)
    oid = inner.binary()
    assert ray.get(inner, timeout=GET_TIMEOUT).sum() == 7.0 * N
    del outer  # the driver's copy of the list is the last holder now
    assert_alive(oid)
    assert ray.get(total.remote([inner]), timeout=GET_TIMEOUT) == 7.0 * N
    del inner
    wait_freed(oid)


def test_actor_keeps_a_ref_for_later(ray_shared: Any) -> None:
    holder = Holder.remote()
    ref = ray.put(np.full(N, 2.0))
    oid = ref.binary()
    assert ray.get(holder.keep.remote([ref]), timeout=GET_TIMEOUT)
    del ref
    assert_alive(oid)
    assert ray.get(holder.total.remote(), timeout=GET_TIMEOUT) == 2.0 * N
    assert ray.get(holder.drop.remote(), timeout=GET_TIMEOUT)
    wait_freed(oid)
    ray.kill(holder)


def test_ref_inside_a_ref(ray_shared: Any) -> None:
    outer = ray.put([ray.put(np.full(N, 3.0))])  # the inner ref's only instance dies here
    [inner] = ray.get(outer, timeout=GET_TIMEOUT)
    oid = inner.binary()
    del inner
    assert_alive(oid)  # held by the outer object's value
    [inner] = ray.get(outer, timeout=GET_TIMEOUT)
    assert ray.get(inner, timeout=GET_TIMEOUT).sum() == 3.0 * N
    del inner, outer
    wait_freed(oid)


def test_ref_passed_through_three_hops(ray_shared: Any) -> None:
    holder = Holder.remote()
    ref = ray.put(np.full(N, 5.0))
    oid = ref.binary()
    assert ray.get(forward.remote([ref], 3, holder), timeout=GET_TIMEOUT)
    del ref
    assert_alive(oid)
    assert ray.get(holder.total.remote(), timeout=GET_TIMEOUT) == 5.0 * N
    assert ray.get(holder.drop.remote(), timeout=GET_TIMEOUT)
    wait_freed(oid)
    ray.kill(holder)


def test_a_dead_borrowers_holds_are_dropped(ray_shared: Any) -> None:
    holder = Holder.remote()
    ref = ray.put(np.full(N, 6.0))
    oid = ref.binary()
    assert ray.get(holder.keep.remote([ref]), timeout=GET_TIMEOUT)
    del ref
    assert_alive(oid)  # the actor holds it
    ray.kill(holder)  # it dies holding the ref: its connection closes, its hold goes
    wait_freed(oid)


def test_nested_argument_freed_after_the_task(ray_shared: Any) -> None:
    ref = ray.put(np.full(N, 1.0))
    oid = ref.binary()
    assert ray.get(total.remote([ref]), timeout=GET_TIMEOUT) == 1.0 * N
    del ref
    wait_freed(oid)  # the worker returned its borrow when the task ended


def test_ref_in_a_worker_put_value_returned_to_the_driver(ray_shared: Any) -> None:
    @ray.remote
    def wrap(wrapped: list[Any]) -> Any:
        return ray.put(wrapped)  # a worker-owned object whose value holds our ref

    ref = ray.put(np.full(N, 4.0))
    oid = ref.binary()
    outer_outer = ray.get(wrap.remote([ref]), timeout=GET_TIMEOUT)
    del ref
    assert_alive(oid)
    [inner] = ray.get(outer_outer, timeout=GET_TIMEOUT)
    assert ray.get(inner, timeout=GET_TIMEOUT).sum() == 4.0 * N
    del inner, outer_outer
    wait_freed(oid)


def test_getting_a_freed_object_rebuilt_from_its_id_raises(ray_shared: Any) -> None:
    ref = ray.put(np.full(N, 1.0))
    hex_id, owner = ref.hex(), ref.owner_address
    del ref
    wait_freed(bytes.fromhex(hex_id))
    oid = bytes.fromhex(hex_id)
    for rebuilt in (ray.ObjectRef(oid), ray.ObjectRef(oid, owner)):
        with pytest.raises((ObjectFreedError, ObjectLostError)):
            ray.get(rebuilt, timeout=GET_TIMEOUT)


def test_many_put_and_drop_cycles_leave_no_holds(ray_shared: Any) -> None:
    cw = worker_context.core_worker
    assert cw is not None
    gc.collect()
    before = cw.refs.num_tracked()
    for _ in range(200):
        inner = ray.put(np.zeros(N))
        outer = ray.put([inner])
        assert ray.get(total.remote(ray.get(outer)), timeout=GET_TIMEOUT) == 0.0
        del inner, outer
    gc.collect()
    wait_for_condition(
        lambda: cw.refs.num_tracked() <= before,
        message=lambda: f"holds left: {cw.refs!r}",
    )

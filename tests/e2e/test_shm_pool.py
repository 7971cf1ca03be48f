"""End-to-end: the node's pool of pre-faulted segments (issue 21), with real daemons.

A freed object's segment goes back to the pool only once no reader maps it (a reader
holds a shared lock on it while mapped; the raylet reuses it only when it can lock it
exclusively). Each test starts its own 1-CPU node with a 200 MiB store and looks at
the pool's files and its counters (``raylet_state()["object_store"]``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from conftest import local_segment, wait_for_condition

import aioray as ray
from aioray._private.node.memory_tables import raylet_state
from aioray._private.owner import worker_context
from aioray._private.wire import shm_pool

MiB = 1 << 20
STORE = 200 * MiB
NODE = {"num_cpus": 1, "object_store_memory": STORE}
N20 = 20 * MiB  # uint8 elements in 20 MiB


def stats() -> dict[str, Any]:
    return dict(raylet_state()["object_store"])


def free_inodes() -> set[int]:
    """Inodes of the free segments in this node's pool (every class)."""
    cw = worker_context.core_worker
    assert cw is not None
    pool = shm_pool.pool_dir(cw.session_id, cw.node_id)
    return {int(n) for d in os.listdir(pool) if d.isdigit() for n in os.listdir(f"{pool}/{d}")}


def inode_of(ref: Any) -> int:
    return os.stat(local_segment(ref.binary())).st_ino


def filled(value: int, n: int = N20) -> np.ndarray:
    return np.full(n, value, dtype=np.uint8)


def put_and_check(value: int) -> int:
    """Put an array of ``value``s, read it back, drop it; the segment's inode."""
    ref = ray.put(filled(value))
    ino = inode_of(ref)
    got = ray.get(ref)
    assert got.min() == got.max() == value
    return ino


@pytest.mark.parametrize("ray_start", [NODE], indirect=True)
def test_a_freed_segment_is_reused_by_the_next_put(ray_start: Any) -> None:
    first = put_and_check(1)  # a fresh file: the pool had nothing of its class yet
    wait_for_condition(lambda: first in free_inodes(), message=lambda: str(stats()))
    seen = {first}
    for value in range(2, 10):
        wait_for_condition(free_inodes, message=lambda: str(stats()))
        claimed = stats()["pool_claimed_total"]
        ino = put_and_check(value)  # into a claimed pooled segment, then freed
        wait_for_condition(
            lambda c=claimed: stats()["pool_claimed_total"] > c, message=lambda: str(stats())
        )
        wait_for_condition(lambda i=ino: i in free_inodes(), message=lambda: str(stats()))
        seen.add(ino)
    # Only pool segments were written: the ones it grew, and the first put's file.
    assert len(seen) <= stats()["pool_grown_total"] + 1 < 8, (seen, stats())
    assert stats()["pool_reused_total"] >= 8
    wait_for_condition(lambda: stats()["used"] == 0, message=lambda: str(stats()))


@pytest.mark.parametrize("ray_start", [NODE], indirect=True)
def test_an_old_reader_keeps_its_bytes_while_it_holds_the_segment(ray_start: Any) -> None:
    ref = ray.put(filled(1))
    ino = inode_of(ref)
    view = ray.get(ref)  # zero-copy: a view of the segment
    assert not view.flags.writeable
    busy = stats()["pool_busy_total"]
    del ref  # freed: the segment is parked, but the view still maps it
    wait_for_condition(lambda: stats()["pool_busy_total"] > busy, message=lambda: str(stats()))
    assert ino not in free_inodes()
    for value in range(2, 10):  # puts of the same class reuse other segments, never it
        assert put_and_check(value) != ino
    assert view.min() == view.max() == 1
    del view  # unmapped: the raylet reuses it
    wait_for_condition(lambda: ino in free_inodes(), message=lambda: str(stats()))
    assert stats()["pool_held"] == 0


@ray.remote
class Keeper:
    """Maps an object and keeps the view: a reader in another process."""

    def keep(self, arrays: list[Any]) -> int:
        self.view = ray.get(arrays[0])
        return int(self.view[0])


@pytest.mark.parametrize("ray_start", [NODE], indirect=True)
def test_a_reader_that_dies_releases_its_hold(ray_start: Any) -> None:
    ref = ray.put(filled(7))
    ino = inode_of(ref)
    keeper = Keeper.remote()  # type: ignore[attr-defined]
    assert ray.get(keeper.keep.remote([ref])) == 7
    busy = stats()["pool_busy_total"]
    del ref
    wait_for_condition(lambda: stats()["pool_busy_total"] > busy, message=lambda: str(stats()))
    assert ino not in free_inodes()  # the actor maps it
    ray.kill(keeper)
    wait_for_condition(lambda: ino in free_inodes(), message=lambda: str(stats()))


@pytest.mark.parametrize("ray_start", [NODE], indirect=True)
def test_the_pool_gives_way_to_objects_and_spilling_works_as_before(ray_start: Any) -> None:
    for value in range(4):  # the 40 MiB class is wanted: the pool grows spare segments
        ray.get(ray.put(filled(value, 40 * MiB)))
    wait_for_condition(lambda: stats()["pool_bytes"] >= 80 * MiB, message=lambda: str(stats()))
    kept = [ray.put(filled(value, 45 * MiB)) for value in range(4)]  # 180 MiB of objects
    wait_for_condition(
        lambda: stats()["used"] + stats()["pool_bytes"] <= STORE, message=lambda: str(stats())
    )
    assert stats()["spilled_total"] == 0  # the pool made the room, no object was spilled
    kept += [ray.put(filled(value, 45 * MiB)) for value in range(4, 6)]  # beyond the store
    wait_for_condition(lambda: stats()["spilled_total"] >= 2, message=lambda: str(stats()))
    for value, ref in enumerate(kept):
        got = ray.get(ref)
        assert got[0] == got[-1] == value
        del got
    s = stats()
    assert s["used"] <= STORE and s["used"] + s["pool_bytes"] <= STORE + 45 * MiB, s


@pytest.mark.parametrize("ray_start", [NODE], indirect=True)
def test_small_objects_never_touch_the_pool(ray_start: Any) -> None:
    for size in (10 * 1024, 200 * 1024, 900 * 1024):  # inline, then shm below the pool's sizes
        for value in range(3):
            ref = ray.put(filled(value, size))
            assert ray.get(ref)[-1] == value
            del ref
    s = stats()
    assert s["pool_claimed_total"] == 0 and s["pool_bytes"] == 0 and not free_inodes(), s

"""End-to-end: the object store's capacity, spilling to disk, restore on get, errors.

Each test starts its own cluster with a 200 MiB store and a spill directory under
``tmp_path``, so it can look at the files.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import local_segment, wait_for_condition

import aioray as ray
from aioray._private.node.memory_tables import raylet_state
from aioray._private.owner import worker_context
from aioray.exceptions import ObjectLostError, ObjectStoreFullError, OutOfDiskError

MiB = 1 << 20
STORE = 200 * MiB
N50 = 50 * MiB // 8  # int64 elements in 50 MiB


def store_stats() -> dict[str, Any]:
    return dict(raylet_state()["object_store"])


def shm_files() -> list[str]:
    """The session's object segments (the node's segment pool keeps freed memory for
    reuse, in a directory of its own, so it is not one of them)."""
    sid = worker_context.core_worker.session_id  # type: ignore[union-attr]
    prefix = f"aioray_{sid}_"
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix) and not n.endswith("_pool")]


def spill_files(root: str) -> list[str]:
    found = []
    for dirpath, _, names in os.walk(root):
        found += [os.path.join(dirpath, n) for n in names]
    return found


@pytest.fixture
def spill_dir(tmp_path: Any) -> str:
    return str(tmp_path / "spill")


@pytest.fixture
def store(spill_dir: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A cluster with a 200 MiB store spilling into ``spill_dir``."""
    extra = getattr(request, "param", None) or {}
    ray.init(num_cpus=2, object_store_memory=STORE, object_spilling_directory=spill_dir, **extra)
    try:
        yield spill_dir
    finally:
        ray.shutdown()


def assert_store_empty(spill_dir: str) -> None:
    wait_for_condition(lambda: not shm_files(), message=lambda: f"segments left: {shm_files()}")
    wait_for_condition(
        lambda: not spill_files(spill_dir),
        message=lambda: f"spill files left: {spill_files(spill_dir)}",
    )
    wait_for_condition(lambda: store_stats()["used"] == 0, message=lambda: str(store_stats()))


def test_put_and_drop_50mib_200_times(store: str) -> None:
    value = np.zeros(N50, dtype=np.int64)
    for i in range(200):
        value[0] = value[-1] = i
        ref = ray.put(value)
        a = ray.get(ref)
        assert a[0] == i and a[-1] == i
        del a, ref
    assert_store_empty(store)
    assert store_stats()["objects"] == 0


def test_three_times_capacity_alive_spills_and_restores(store: str) -> None:
    refs = [ray.put(np.full(N50, i, dtype=np.int64)) for i in range(12)]
    stats = store_stats()
    assert stats["used"] <= STORE
    assert stats["spilled_bytes"] >= 8 * 50 * MiB
    assert len(spill_files(store)) >= 8
    # Restoring the later ones drops restored earlier ones again (their files stay).
    for i, ref in enumerate(refs):
        a = ray.get(ref)
        assert a.shape == (N50,) and a[0] == i and a[-1] == i and a[N50 // 2] == i
        del a
    stats = store_stats()
    assert stats["restored_total"] >= 8 and stats["used"] <= STORE
    del refs, ref
    assert_store_empty(store)


def test_task_returns_overflowing_the_store_spill(store: str) -> None:
    @ray.remote
    def make(i: int) -> Any:
        return np.full(N50, i, dtype=np.int64)

    @ray.remote
    def total(a: Any) -> int:
        return int(a[0]) + int(a[-1])

    refs = [make.remote(i) for i in range(10)]
    ray.wait(refs, num_returns=len(refs), timeout=60)
    assert store_stats()["spilled_total"] >= 6
    # Spilled objects are restored for task arguments too.
    assert ray.get([total.remote(r) for r in refs], timeout=60) == [2 * i for i in range(10)]
    for i, r in enumerate(refs):
        assert ray.get(r, timeout=60)[5] == i
    del refs, r
    assert_store_empty(store)


def test_get_future_and_await_restore_spilled_objects(store: str) -> None:
    refs = [ray.put(np.full(N50, i, dtype=np.int64)) for i in range(6)]
    assert spill_files(store)
    assert refs[0].future().result(30)[7] == 0

    async def main(first: list[Any]) -> list[int]:
        return [int((await r)[3]) for r in first]

    assert asyncio.run(main(refs[:3])) == [0, 1, 2]

    async def batch(some: list[Any]) -> list[int]:
        return [int(a[4]) for a in await ray.get_async(some)]

    assert asyncio.run(batch(refs[3:] + refs[:2])) == [3, 4, 5, 0, 1]
    del refs
    assert_store_empty(store)


def test_deleted_spill_file_raises_object_lost(store: str) -> None:
    first = ray.put(np.full(120 * MiB // 8, 1, dtype=np.int64))
    second = ray.put(np.full(120 * MiB // 8, 2, dtype=np.int64))  # spills the first
    (path,) = spill_files(store)
    assert path.endswith(first.hex())
    os.unlink(path)
    with pytest.raises(ObjectLostError) as info:
        ray.get(first)
    msg = str(info.value)
    assert first.hex() in msg and "spill file" in msg and path in msg
    with pytest.raises(ObjectLostError, match="spill file"):
        ray.get(first)  # the reason is remembered
    assert ray.get(second)[0] == 2  # nothing else is lost
    del first, second
    assert_store_empty(store)


def test_put_larger_than_capacity_goes_to_disk(store: str) -> None:
    """Ray's fallback allocation: an object larger than the whole store is a file on
    the spill disk, not an ObjectStoreFullError; read zero-copy like any other object,
    not counted against the store's capacity, deleted when freed."""
    kept = ray.put(np.full(N50, 7, dtype=np.int64))
    big = np.arange(250 * MiB // 8, dtype=np.int64)
    ref = ray.put(big)
    (on_disk,) = [p for p in spill_files(store) if p.endswith(".fallback")]
    link = local_segment(ref.binary())
    assert os.path.islink(link) and os.path.realpath(link) == os.path.realpath(on_disk)
    stats = store_stats()
    assert stats["fallback_bytes"] >= big.nbytes
    assert 50 * MiB <= stats["used"] < 51 * MiB  # only the 50 MiB object is in memory
    got = ray.get(ref)
    assert np.array_equal(got, big)
    assert not got.flags.writeable  # a view of the mapped file, not a copy

    @ray.remote
    def last(a: Any) -> int:
        return int(a[-1])

    assert ray.get(last.remote(ref), timeout=60) == big[-1]
    assert ray.get(kept)[0] == 7  # nothing else was spilled or lost for it
    del got, ref
    wait_for_condition(lambda: not os.path.exists(on_disk), message=f"{on_disk} left")
    wait_for_condition(lambda: not os.path.lexists(link), message=f"{link} left")
    assert store_stats()["fallback_bytes"] == 0
    del kept, big
    assert_store_empty(store)


def test_task_return_larger_than_capacity_goes_to_disk(store: str) -> None:
    @ray.remote
    def huge() -> Any:
        return np.full(250 * MiB // 8, 5, dtype=np.int64)

    ref = huge.remote()
    got = ray.get(ref, timeout=60)
    assert got.shape == (250 * MiB // 8,) and got[0] == 5 and got[-1] == 5
    assert store_stats()["fallback_bytes"] >= got.nbytes
    del got, ref
    assert_store_empty(store)


@pytest.mark.parametrize(
    "store", [{"_system_config": {"local_fs_capacity_threshold": 0.0}}], indirect=True
)
def test_put_larger_than_capacity_on_a_full_disk_is_out_of_disk(store: str) -> None:
    with pytest.raises(OutOfDiskError, match="local_fs_capacity_threshold"):
        ray.put(np.zeros(250 * MiB // 8, dtype=np.int64))
    assert ray.get(ray.put(np.full(N50, 3, dtype=np.int64)))[0] == 3
    assert_store_empty(store)


@pytest.mark.parametrize(
    "store", [{"_system_config": {"local_fs_capacity_threshold": 0.0}}], indirect=True
)
def test_out_of_disk_when_spill_disk_over_threshold(store: str) -> None:
    first = ray.put(np.full(120 * MiB // 8, 1, dtype=np.int64))
    with pytest.raises(OutOfDiskError) as info:
        ray.put(np.full(120 * MiB // 8, 2, dtype=np.int64))
    assert "local_fs_capacity_threshold" in str(info.value)
    assert not spill_files(store)
    assert ray.get(first)[0] == 1
    del first
    assert_store_empty(store)


@pytest.mark.parametrize(
    "store", [{"_system_config": {"automatic_object_spilling_enabled": False}}], indirect=True
)
def test_full_store_without_spilling_raises_object_store_full(store: str) -> None:
    first = ray.put(np.full(120 * MiB // 8, 1, dtype=np.int64))
    with pytest.raises(ObjectStoreFullError, match="spilling is disabled"):
        ray.put(np.full(120 * MiB // 8, 2, dtype=np.int64))
    assert ray.get(first)[0] == 1
    del first
    # Room comes back once the object is freed.
    assert ray.get(ray.put(np.full(120 * MiB // 8, 3, dtype=np.int64)))[0] == 3


def test_available_object_store_memory_reflects_usage(store: str) -> None:
    def avail() -> float:
        return ray.available_resources().get("object_store_memory", -1)

    wait_for_condition(lambda: avail() == STORE)
    ref = ray.put(np.zeros(100 * MiB // 8, dtype=np.int64))
    wait_for_condition(lambda: STORE - 101 * MiB < avail() < STORE - 99 * MiB, message=str(avail))
    del ref
    wait_for_condition(lambda: avail() == STORE, message=lambda: str(avail()))


def test_ray_object_spilling_config_spelling(tmp_path: Any) -> None:
    spill = str(tmp_path / "raystyle")
    conf = json.dumps({"type": "filesystem", "params": {"directory_path": spill}})
    ray.init(
        num_cpus=1,
        object_store_memory=100 * MiB,
        _system_config={"object_spilling_config": conf},
    )
    try:
        refs = [ray.put(np.full(N50, i, dtype=np.int64)) for i in range(3)]
        assert spill_files(spill)
        assert [int(ray.get(r)[0]) for r in refs] == [0, 1, 2]
    finally:
        ray.shutdown()
    assert not spill_files(spill)


def test_bad_store_options_are_refused() -> None:
    with pytest.raises(ValueError, match="minimum allowed is 78643200 bytes"):
        ray.init(object_store_memory=10 * MiB)
    with pytest.raises(TypeError, match="object_store_memory must be an int"):
        ray.init(object_store_memory="lots")
    with pytest.raises(TypeError, match="object_spilling_directory must be a str"):
        ray.init(object_spilling_directory=3)
    assert not ray.is_initialized()


def test_cli_start_takes_store_options(tmp_path: Any) -> None:
    from test_cluster_lifecycle import _cli, _free_port

    port = _free_port()
    spill = str(tmp_path / "cli-spill")
    started = _cli(
        "start",
        "--head",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(100 * MiB),
        "--object-spilling-directory",
        spill,
        "--system-config",
        json.dumps({"local_fs_capacity_threshold": 0.99}),
        tmp_path=tmp_path,
        name="start",
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        ray.init(address=f"127.0.0.1:{port}")
        try:
            assert ray.cluster_resources()["object_store_memory"] == 100 * MiB
            refs = [ray.put(np.full(N50, i, dtype=np.int64)) for i in range(3)]
            assert spill_files(spill)
            assert [int(ray.get(r)[9]) for r in refs] == [0, 1, 2]
            del refs
            wait_for_condition(lambda: not spill_files(spill))
        finally:
            ray.shutdown()
    finally:
        stopped = _cli("stop", tmp_path=tmp_path, name="stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for_condition(lambda: not os.path.exists(spill) or not os.listdir(spill))


def test_workers_putting_and_reading_at_once_share_the_store(store: str) -> None:
    @ray.remote
    def churn(seed: int) -> list[int]:
        # 210 MiB per task: each one alone overflows the 200 MiB store.
        refs = [ray.put(np.full(30 * MiB // 8, seed * 10 + k, dtype=np.int64)) for k in range(7)]
        return [int(ray.get(r)[-1]) for r in refs]

    results = ray.get([churn.remote(s) for s in range(2)], timeout=120)
    assert results == [[s * 10 + k for k in range(7)] for s in range(2)]
    assert store_stats()["spilled_total"] >= 1
    assert_store_empty(store)


def test_default_spill_directory_is_in_the_session_dir_and_removed() -> None:
    ray.init(num_cpus=1, object_store_memory=100 * MiB)
    try:
        spill_dir = store_stats()["spill_dir"]
        assert spill_dir.startswith(ray.api._local_node.session_dir)  # type: ignore[union-attr]
        refs = [ray.put(np.full(N50, i, dtype=np.int64)) for i in range(3)]
        assert spill_files(spill_dir)
        assert int(ray.get(refs[0])[1]) == 0
    finally:
        ray.shutdown()
    assert not os.path.exists(spill_dir)

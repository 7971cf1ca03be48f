"""The segment pool's file steps (aioray/_private/wire/shm_pool.py) and the readers'
side of them (object_store.map_segment), on real files in a temporary directory: a
claim, a park, a reuse that waits for every reader, and the seal that keeps an old
reader from ever seeing a reused segment's new bytes."""

from __future__ import annotations

import gc
import os
from typing import Any

import numpy as np
import pytest

from aioray._private.wire import config, object_store, shm_pool

MB = 1 << 20
NODE = b"\x02" * 16


@pytest.fixture
def pool(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(config, "SHM_DIR", str(tmp_path))
    path = shm_pool.pool_dir("sess", NODE)
    os.makedirs(path)
    return path


def oid(i: int) -> bytes:
    return bytes([i]) * 20


def segment(i: int) -> str:
    return object_store.segment_path("sess", oid(i), NODE)


def array(i: int, nbytes: int = 3 * MB) -> np.ndarray:
    return np.full(nbytes, i, dtype=np.uint8)


def write(pool: str, i: int, maps: shm_pool.SegmentMaps | None = None) -> int:
    """Put object ``i`` into a claimed pooled segment as a writer does; its inode."""
    data = array(i)
    cls = shm_pool.class_of(data.nbytes + 4096)
    if maps is None:
        maps = shm_pool.SegmentMaps(1 << 30)
    ino = shm_pool.claim(pool, cls, segment(i), maps.prefer(cls))
    assert ino, "no free segment to claim"
    fd = os.open(segment(i), os.O_RDWR)
    try:
        maps.write(segment(i), fd, ino, cls, oid(i), b"head", [memoryview(data)])
    finally:
        os.close(fd)
    return ino


def read(i: int) -> np.ndarray:
    _, bufs = object_store.read_segment(segment(i), oid(i))
    return np.frombuffer(bufs[0], dtype=np.uint8)


def grow(pool: str, cls: int, name: str) -> int:
    """The raylet's side of growing the pool by one free segment; its inode."""
    path = os.path.join(pool, name)
    ino = shm_pool.grow(path, cls)
    shm_pool.add_free(pool, path, cls, ino)
    return ino


def reuse(pool: str, ino: int, cls: int) -> bool:
    """The raylet's side of returning a parked segment to the free list."""
    if not shm_pool.reuse(pool, ino, cls):
        return False
    shm_pool.add_free(pool, shm_pool.held_path(pool, ino), cls, ino)
    return True


def free(pool: str, i: int, ino: int) -> bool:
    """The raylet's side of freeing object ``i``: park, then try to reuse."""
    assert shm_pool.park(segment(i), pool, ino)
    return reuse(pool, ino, shm_pool.class_of(3 * MB + 4096))


def test_size_classes_fit_their_objects_closely() -> None:
    assert shm_pool.class_of(shm_pool.MIN_BYTES - 1) == 0
    assert shm_pool.class_of(100 * MB + 512) == 100 * MB + 64 * 1024  # a 100 MiB array
    sizes = [shm_pool.MIN_BYTES + k * 37_123 for k in range(3000)] + [2**30 + 5]
    for size in sizes:
        cls = shm_pool.class_of(size)
        assert size <= cls <= size * 17 // 16 + 64 * 1024
        assert shm_pool.class_of(cls) == cls  # a class is its own class
    assert sorted(shm_pool.class_of(s) for s in sizes) == [shm_pool.class_of(s) for s in sizes]


def test_a_claim_takes_one_free_segment_once(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    assert os.path.getsize(shm_pool.free_path(pool, cls, ino)) == cls
    assert shm_pool.claim(pool, cls, segment(1)) == ino
    assert os.stat(segment(1)).st_ino == ino
    assert shm_pool.claim(pool, cls, segment(2)) == 0  # taken
    assert shm_pool.claim(pool, shm_pool.class_of(50 * MB), segment(2)) == 0  # no such class


def test_a_reused_segment_holds_the_next_object(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    assert write(pool, 1) == ino
    assert read(1)[0] == 1
    assert free(pool, 1, ino)  # nobody maps it
    assert os.path.getsize(shm_pool.free_path(pool, cls, ino)) == cls  # grown back
    assert write(pool, 2) == ino
    assert read(2)[-1] == 2
    with pytest.raises(FileNotFoundError):
        read(1)  # freed


def test_a_reader_holding_a_view_blocks_reuse_and_keeps_its_bytes(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    write(pool, 1)
    held = read(1)
    assert shm_pool.park(segment(1), pool, ino)
    assert not reuse(pool, ino, cls)  # mapped: stays parked
    assert shm_pool.claim(pool, cls, segment(2)) == 0  # so no writer can take it
    assert held.min() == held.max() == 1
    del held
    gc.collect()
    assert reuse(pool, ino, cls)  # the last view went: reusable
    assert write(pool, 2) == ino


def test_an_old_reader_that_opened_before_the_reuse_finds_the_object_gone(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    write(pool, 1)
    late = os.open(segment(1), os.O_RDONLY)  # opened, not yet locked and mapped
    try:
        assert free(pool, 1, ino)
        with pytest.raises(FileNotFoundError):  # freed, the seal zeroed
            object_store.map_open(late, segment(1), oid(1))
        assert write(pool, 2) == ino  # the same file holds object 2 now
        with pytest.raises(FileNotFoundError):  # never object 2's bytes as object 1
            object_store.map_open(late, segment(1), oid(1))
    finally:
        os.close(late)


def test_a_write_that_fails_midway_leaves_no_seal(
    pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seal comes last, on both ways of writing: through pwritev, and into a kept
    mapping (numpy copies)."""
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    maps = shm_pool.SegmentMaps(1 << 30)

    pwrite = os.pwrite

    def part_written(fd: int, parts: list[Any], offset: int) -> None:
        pwrite(fd, bytes(parts[0]), offset)
        raise OSError(28, "No space left on device")

    def broken(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    for _ in range(2):  # the first write goes through pwritev, the second maps
        with monkeypatch.context() as m:
            m.setattr(os, "pwritev", part_written)
            m.setattr(np, "copyto", broken)
            with pytest.raises(OSError):
                write(pool, 1, maps)
        with pytest.raises(FileNotFoundError):
            read(1)
        assert free(pool, 1, ino)
    assert len(maps) == 1


def test_a_segment_being_written_reads_as_missing_until_its_seal(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    assert shm_pool.claim(pool, cls, segment(1)) == ino
    fd = os.open(segment(1), os.O_RDWR)
    try:
        parts = object_store.body_parts(b"head", [memoryview(array(1))])
        os.pwritev(fd, parts, object_store.SEAL_BYTES)  # the body, no seal yet
        with pytest.raises(FileNotFoundError):
            read(1)
        os.pwrite(fd, object_store.seal_of(oid(1)), 0)
        assert read(1)[0] == 1
    finally:
        os.close(fd)


def test_park_leaves_a_newer_copy_of_the_object_alone(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    grow(pool, cls, "g1")
    grow(pool, cls, "g2")
    old = write(pool, 1)
    newer = write(pool, 1)  # a rerun of its task: renamed over the old copy
    assert newer != old
    assert not shm_pool.park(segment(1), pool, old)
    assert read(1)[0] == 1 and os.stat(segment(1)).st_ino == newer


def test_writer_maps_map_on_the_second_claim_and_write_the_same_bytes(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    maps = shm_pool.SegmentMaps(1 << 30)
    write(pool, 1, maps)
    assert len(maps) == 0  # a one-off write goes through pwritev
    free(pool, 1, ino)
    assert write(pool, 2, maps) == ino
    assert len(maps) == 1 and maps.prefer(cls) == [ino]
    assert read(2).min() == read(2).max() == 2
    free(pool, 2, ino)
    assert write(pool, 3, maps) == ino  # through the kept mapping
    assert read(3).min() == read(3).max() == 3


def test_writer_maps_let_go_of_segments_unlinked_since(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    ino = grow(pool, cls, "g1")
    maps = shm_pool.SegmentMaps(1 << 30)
    write(pool, 1, maps)
    free(pool, 1, ino)
    write(pool, 2, maps)
    maps.drop_stale()
    assert len(maps) == 1  # still linked (the object's segment)
    os.unlink(segment(2))
    maps.drop_stale()
    assert len(maps) == 0


def test_writer_maps_stay_within_their_bytes_and_keep_what_they_have(pool: str) -> None:
    cls = shm_pool.class_of(3 * MB + 4096)
    inos = [grow(pool, cls, f"g{i}") for i in range(3)]
    maps = shm_pool.SegmentMaps(2 * cls)
    for ino in inos:
        maps._seen[ino] = None  # each claimed once before
    written = [write(pool, i, maps) for i in range(1, 4)]
    assert len(maps) == 2
    assert sorted(maps.prefer(cls)) == sorted(written[:2])  # the third went by pwritev
    assert read(3).min() == read(3).max() == 3
    os.unlink(segment(1))  # the raylet let one go: its room is free again
    maps.drop_stale()
    free(pool, 3, written[2])
    assert write(pool, 4, maps) == written[2]
    assert len(maps) == 2 and written[2] in maps.prefer(cls)

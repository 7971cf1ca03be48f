"""The raylet's store service on real files, without daemons: spill, restore, free,
and a creator that dies before sealing."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from aioray.daemons.raylet.store_service import SpillConfig, StoreService, spill_config_from
from fakes import FakeConnection

from aioray._private.wire import config, object_store

MB = 1 << 20


@pytest.fixture
def service(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(config, "SHM_DIR", str(shm))
    svc = StoreService(10 * MB, SpillConfig(directory=str(tmp_path / "spill")))
    svc.start("sess", str(tmp_path), NODE)
    yield svc
    svc.stop()


NODE = b"\x01" * 16


def oid(i: int) -> bytes:
    return bytes([i]) * 20


def object_segments() -> list[str]:
    """The session's object segments (not the node's segment-pool directory)."""
    return [p for p in object_store.list_segments("sess") if not p.endswith("_pool")]


async def put(svc: StoreService, conn: FakeConnection, i: int, size: int) -> None:
    reply = svc.create_object(conn, [oid(i), size])  # type: ignore[arg-type]
    if isinstance(reply, asyncio.Future):
        reply = await asyncio.wait_for(reply, 10)
    assert isinstance(reply, int)  # granted: the bytes still free
    with open(object_store.segment_path("sess", oid(i), NODE), "wb") as f:
        f.write(bytes([i]) * size)
    svc.object_sealed(conn, [oid(i), size, b""])  # type: ignore[arg-type]


async def test_spill_restore_and_free_move_real_files(service: StoreService) -> None:
    conn = FakeConnection()
    for i in range(1, 4):
        await put(service, conn, i, 4 * MB)  # the third spills the first
    seg1 = object_store.segment_path("sess", oid(1), NODE)
    spilled = os.path.join(service.spill_dir, oid(1).hex())
    assert not os.path.exists(seg1) and os.path.getsize(spilled) == 4 * MB
    await put(service, conn, 4, 4 * MB)  # spills the second
    service.free_objects([oid(3)])
    reply = service.restore_object(oid(1))
    assert await asyncio.wait_for(reply, 10) is None
    with open(seg1, "rb") as f:
        assert f.read() == b"\x01" * 4 * MB
    assert service.manager.entries[oid(1)].state == "IN_SHM"
    service.free_objects([oid(1), oid(2), oid(4)])
    assert os.listdir(service.spill_dir) == []
    assert object_segments() == []
    assert service.manager.used == 0


async def test_restore_of_a_deleted_spill_file_names_it(service: StoreService) -> None:
    conn = FakeConnection()
    for i in range(1, 4):
        await put(service, conn, i, 4 * MB)
    spilled = os.path.join(service.spill_dir, oid(1).hex())
    os.unlink(spilled)
    service.free_objects([oid(3)])
    kind, reason = await asyncio.wait_for(service.restore_object(oid(1)), 10)
    assert kind == "ObjectLostError" and spilled in reason
    assert service.restore_object(oid(1)) == ["ObjectLostError", reason]


async def test_creator_that_dies_before_sealing_gives_room_back(service: StoreService) -> None:
    conn = FakeConnection()
    assert service.create_object(conn, [oid(1), 6 * MB]) == 4 * MB  # type: ignore[arg-type]
    path = object_store.segment_path("sess", oid(1), NODE)
    with open(path, "wb") as f:
        f.write(b"half")
    assert service.manager.used == 6 * MB
    conn.close()
    assert service.manager.used == 0 and not os.path.exists(path)


async def test_sealed_objects_leave_the_creators_pending_set(service: StoreService) -> None:
    conn = FakeConnection()
    await put(service, conn, 1, MB)
    assert conn.state["creating"] == {}
    conn.close()
    assert service.manager.used == MB  # a sealed object belongs to its owner, not its writer


async def test_a_task_run_again_replaces_its_earlier_copy(service: StoreService) -> None:
    """A retried task (its worker was killed after sealing, or while writing) creates
    the same object again: the old copy's room is given back, not counted twice, and
    the dead creator's close does not free the newer copy."""
    dead, retry = FakeConnection(), FakeConnection()
    await put(service, dead, 1, 2 * MB)  # sealed, then the worker died before replying
    await put(service, retry, 1, 2 * MB)
    assert service.manager.used == 2 * MB and len(service.manager.entries) == 1
    assert service.create_object(dead, [oid(2), 3 * MB]) == 5 * MB  # type: ignore[arg-type]
    await put(service, retry, 2, 3 * MB)  # the retry, before the raylet saw the death
    dead.close()
    assert service.manager.used == 5 * MB
    assert os.path.exists(object_store.segment_path("sess", oid(2), NODE))
    service.free_objects([oid(1), oid(2)])
    assert service.manager.used == 0 and service.manager.entries == {}


def test_spill_config_accepts_ray_spellings() -> None:
    cfg = spill_config_from(
        None,
        {
            "object_spilling_config": '{"type": "filesystem", "params": {"directory_path": "/x"}}',
            "automatic_object_spilling_enabled": False,
            "local_fs_capacity_threshold": 0.5,
        },
    )
    assert (cfg.directory, cfg.enabled, cfg.local_fs_capacity_threshold) == ("/x", False, 0.5)
    assert spill_config_from("/y", {}).directory == "/y"
    with pytest.raises(ValueError, match="only 'filesystem'"):
        spill_config_from(None, {"object_spilling_config": '{"type": "smart_open"}'})


async def test_a_seal_before_the_grant_takes_the_object_as_is(service: StoreService) -> None:
    conn = FakeConnection()
    await put(service, conn, 1, 8 * MB)
    waiting = service.create_object(conn, [oid(2), 4 * MB])  # type: ignore[arg-type]
    assert isinstance(waiting, asyncio.Future)  # the first must be spilled first
    with open(object_store.segment_path("sess", oid(2), NODE), "wb") as f:
        f.write(b"\x02" * 4 * MB)
    service.object_sealed(conn, [oid(2), 4 * MB, b""])  # type: ignore[arg-type]
    assert waiting.done() and not service.manager.queue
    assert service.manager.entries[oid(2)].state == "IN_SHM"
    await asyncio.wait_for(_until(lambda: service.manager.used <= 10 * MB), 10)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def _pulled(svc: StoreService, i: int, size: int, source: bytes) -> None:
    """A secondary copy of object ``i`` pulled from node ``source``, as object transfer
    writes one."""
    assert await svc.reserve_secondary(oid(i), size, source) is None
    with open(object_store.segment_path("sess", oid(i), NODE), "wb") as f:
        f.write(bytes([i]) * size)
    svc.add_secondary(oid(i), size)


async def test_free_copies_frees_only_the_copies_pulled_from_that_node(
    service: StoreService,
) -> None:
    """A lost object is rebuilt under the same id: the free of the copies pulled from
    its dead node must leave a rebuilt primary, and copies from elsewhere, alone."""
    dead, alive = b"\x0d" * 16, b"\x0a" * 16
    await _pulled(service, 1, MB, dead)
    await _pulled(service, 2, MB, alive)
    await put(service, FakeConnection(), 3, MB)  # rebuilt here: the primary copy
    service.free_copies(dead, [oid(1), oid(2), oid(3)])
    assert set(service.manager.entries) == {oid(2), oid(3)}
    assert not os.path.exists(object_store.segment_path("sess", oid(1), NODE))
    assert os.path.exists(object_store.segment_path("sess", oid(3), NODE))
    service.free_copies(alive, [oid(2), oid(3)])
    assert set(service.manager.entries) == {oid(3)}


def _write_segment(i: int, size: int) -> None:
    with open(object_store.segment_path("sess", oid(i), NODE), "wb") as f:
        f.write(bytes([i]) * size)


async def test_a_free_that_overtakes_the_create_leaves_no_entry(service: StoreService) -> None:
    """The creator writes without waiting for room and replies to the owner, which
    frees the object: its free (owner's link) can reach the raylet before the
    creator's create_object and seal (creator's link). The entry the late create
    made must not outlive the object (issue 14, item 9)."""
    conn = FakeConnection()
    _write_segment(1, MB)
    service.free_objects([oid(1)])  # nothing here yet: it only deletes the segment
    assert isinstance(service.create_object(conn, [oid(1), MB]), int)  # type: ignore[arg-type]
    assert service.object_sealed(conn, [oid(1), MB, b""]) is False  # type: ignore[arg-type]
    assert oid(1) not in service.manager.entries
    assert service.manager.used == 0 and service.manager.in_flight == 0
    assert object_segments() == []


async def test_a_free_that_overtakes_a_queued_create_drops_the_request(
    service: StoreService,
) -> None:
    conn = FakeConnection()
    await put(service, conn, 1, 8 * MB)
    _write_segment(2, 4 * MB)
    service.free_objects([oid(2)])
    waiting = service.create_object(conn, [oid(2), 4 * MB])  # type: ignore[arg-type]
    assert isinstance(waiting, asyncio.Future)  # no room until the first spills
    assert service.object_sealed(conn, [oid(2), 4 * MB, b""]) is False  # type: ignore[arg-type]
    assert waiting.done() and not service.manager.queue
    assert oid(2) not in service.manager.entries

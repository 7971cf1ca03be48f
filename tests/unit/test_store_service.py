"""The raylet's store service on real files, without daemons: spill, restore, free,
and a creator that dies before sealing."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from aioray.daemons.raylet.store_service import SpillConfig, StoreService, spill_config_from

from aioray._private.wire import config, object_store

MB = 1 << 20


class FakeConn:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.on_close: list[Any] = []
        self.is_closed = False

    def close(self) -> None:
        self.is_closed = True
        for cb in self.on_close:
            cb(self)


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


async def put(svc: StoreService, conn: FakeConn, i: int, size: int) -> None:
    reply = svc.create_object(conn, [oid(i), size])  # type: ignore[arg-type]
    if isinstance(reply, asyncio.Future):
        reply = await asyncio.wait_for(reply, 10)
    assert isinstance(reply, int)  # granted: the bytes still free
    with open(object_store.segment_path("sess", oid(i), NODE), "wb") as f:
        f.write(bytes([i]) * size)
    svc.object_sealed(conn, [oid(i), size, b""])  # type: ignore[arg-type]


async def test_spill_restore_and_free_move_real_files(service: StoreService) -> None:
    conn = FakeConn()
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
    assert object_store.list_segments("sess") == []
    assert service.manager.used == 0


async def test_restore_of_a_deleted_spill_file_names_it(service: StoreService) -> None:
    conn = FakeConn()
    for i in range(1, 4):
        await put(service, conn, i, 4 * MB)
    spilled = os.path.join(service.spill_dir, oid(1).hex())
    os.unlink(spilled)
    service.free_objects([oid(3)])
    kind, reason = await asyncio.wait_for(service.restore_object(oid(1)), 10)
    assert kind == "ObjectLostError" and spilled in reason
    assert service.restore_object(oid(1)) == ["ObjectLostError", reason]


async def test_creator_that_dies_before_sealing_gives_room_back(service: StoreService) -> None:
    conn = FakeConn()
    assert service.create_object(conn, [oid(1), 6 * MB]) == 4 * MB  # type: ignore[arg-type]
    path = object_store.segment_path("sess", oid(1), NODE)
    with open(path, "wb") as f:
        f.write(b"half")
    assert service.manager.used == 6 * MB
    conn.close()
    assert service.manager.used == 0 and not os.path.exists(path)


async def test_sealed_objects_leave_the_creators_pending_set(service: StoreService) -> None:
    conn = FakeConn()
    await put(service, conn, 1, MB)
    assert conn.state["creating"] == set()
    conn.close()
    assert service.manager.used == MB  # a sealed object belongs to its owner, not its writer


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
    conn = FakeConn()
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

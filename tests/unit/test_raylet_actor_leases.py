"""An actor's lease at the raylet is the GCS's, held on the raylet's link to it: the
GCS going away (a restart) must not end it, however early on that link it was asked
for. A real Raylet, never started, with a fake worker and a fake GCS link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aioray.daemons.raylet import worker_pool
from aioray.daemons.raylet.gcs_link import GCS_LINK
from aioray.daemons.raylet.server import Raylet
from aioray.daemons.raylet.worker_pool import WorkerHandle, WorkerPool
from fakes import FakeConnection, settle

ACTOR = b"\xaa" * 16


def a_raylet_with_one_idle_worker(session_dir: Path) -> tuple[Raylet, FakeConnection]:
    raylet = Raylet(
        node_ip="127.0.0.1",
        gcs_address=("127.0.0.1", 1),
        resources={"CPU": 1.0},
        object_store_memory=10**8,
        session_dir=str(session_dir),
        head=True,
        labels={},
        prestart=0,
    )
    raylet.pool = WorkerPool({}, str(session_dir))
    w = WorkerHandle(b"\x01" * 16, "", 2**30)
    raylet.pool.workers[w.worker_id] = w
    worker = FakeConnection("worker")
    raylet.pool.register(w.worker_id, 5555, worker)  # type: ignore[arg-type]
    return raylet, worker


async def test_an_actor_lease_asked_before_the_registration_is_answered_survives_the_gcs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted GCS schedules the actors it had pending as the raylet registers again,
    before the raylet has read the answer and taken the link as its ``gcs``: the link was
    then watched as an owner's, and when it closed (the next GCS restart) the raylet told
    every actor worker whose lease it held to exit, telling nobody."""
    kills: list[int] = []
    monkeypatch.setattr(worker_pool, "_kill", kills.append)
    raylet, worker = a_raylet_with_one_idle_worker(tmp_path)
    link = FakeConnection("gcs link")
    link.state[GCS_LINK] = True  # marked as it opens; raylet.gcs is still None here
    body: Any = {"res": {"CPU": 1.0}, "hold": {"CPU": 1.0}, "env": None, "actor": ACTOR}
    grant = await raylet.handle_request_lease(link, body, [])  # type: ignore[arg-type]
    assert grant["wid"] == b"\x01" * 16
    link.drop()  # the GCS is gone (to be restarted): the raylet keeps the actor serving
    assert worker.methods() == [] and kills == []
    [lease] = raylet.leases.values()
    assert lease.actor == ACTOR


async def test_an_owners_task_lease_still_returns_when_its_owner_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The other side of it) an owner's connection closing returns its leases: the
    worker, asked, runs none of its tasks, and goes back to the pool."""
    monkeypatch.setattr(worker_pool, "_kill", lambda pid: None)
    raylet, worker = a_raylet_with_one_idle_worker(tmp_path)
    owner = FakeConnection("owner")
    body: Any = {"res": {"CPU": 1.0}, "env": None}
    await raylet.handle_request_lease(owner, body, [])  # type: ignore[arg-type]
    assert raylet.leases
    owner.drop()
    assert not raylet.leases and raylet.resources.available["CPU"] == 1.0
    await settle()
    [asked] = worker.pending("is_busy")
    worker.reply(asked, False)
    await settle()
    assert raylet.pool is not None and raylet.pool.idle[""]
    assert worker.methods() == ["is_busy"]  # reused, not ended


async def test_a_worker_still_running_a_dead_owners_task_is_ended_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner dies while its task runs on its leased worker: nobody will read the
    result, so the worker is ended (Ray's raylet kills a dead owner's leased workers), not
    put back as idle, where the next lease would queue behind that task; the CPU comes
    back at once."""
    monkeypatch.setattr(worker_pool, "_kill", lambda pid: None)
    raylet, worker = a_raylet_with_one_idle_worker(tmp_path)
    owner = FakeConnection("owner")
    body: Any = {"res": {"CPU": 1.0}, "env": None}
    await raylet.handle_request_lease(owner, body, [])  # type: ignore[arg-type]
    owner.drop()
    assert not raylet.leases and raylet.resources.available["CPU"] == 1.0
    await settle()
    [asked] = worker.pending("is_busy")
    worker.reply(asked, True)
    await settle()
    assert raylet.pool is not None and not raylet.pool.idle.get("")
    assert worker.methods() == ["is_busy", "exit_worker"]


async def test_only_the_gcs_may_end_an_actors_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kill_actor_worker`` from any peer but the GCS (a driver, a worker, a fuzzer with the
    token) is refused with a PermissionError, and the actor's worker keeps serving; the
    GCS's own still ends it."""
    kills: list[int] = []
    monkeypatch.setattr(worker_pool, "_kill", kills.append)
    raylet, worker = a_raylet_with_one_idle_worker(tmp_path)
    link = FakeConnection("gcs link")
    link.state[GCS_LINK] = True
    body: Any = {"res": {"CPU": 1.0}, "hold": {"CPU": 1.0}, "env": None, "actor": ACTOR}
    await raylet.handle_request_lease(link, body, [])  # type: ignore[arg-type]
    stranger = FakeConnection("a driver")
    with pytest.raises(PermissionError, match="kill_actor_worker is for the GCS to send"):
        raylet.clients.handle_kill_actor_worker(stranger, ACTOR, [])  # type: ignore[arg-type]
    assert worker.methods() == [] and kills == [] and len(raylet.leases) == 1
    raylet.clients.handle_kill_actor_worker(link, ACTOR, [])  # type: ignore[arg-type]
    assert worker.methods() == ["exit_worker"]


async def test_a_registered_worker_cannot_be_registered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``register_worker`` with the id of a worker already registered (a peer that learned
    it) is refused with a PermissionError: the peer does not take the worker's place (its
    tasks sent to that peer's port, its death reported when that peer leaves)."""
    kills: list[int] = []
    monkeypatch.setattr(worker_pool, "_kill", kills.append)
    raylet, worker = a_raylet_with_one_idle_worker(tmp_path)
    assert raylet.pool is not None
    [w] = raylet.pool.workers.values()
    stranger = FakeConnection("a driver")
    body: Any = {"worker_id": w.worker_id, "port": 6666}
    with pytest.raises(PermissionError, match="register_worker: that worker is registered"):
        raylet.clients.handle_register_worker(stranger, body, [])  # type: ignore[arg-type]
    assert (w.port, w.conn) == (5555, worker) and stranger.on_close == []
    assert raylet.pool.idle[""] == [w]


async def test_only_the_gcs_may_send_the_cluster_view(tmp_path: Path) -> None:
    """``cluster_view`` from any peer but the GCS is refused (PermissionError): a forged
    one would declare a live node dead here, and tell the owners here so."""
    raylet, _ = a_raylet_with_one_idle_worker(tmp_path)
    entry = [b"\x02" * 16, "127.0.0.2", 7, {"CPU": 1.0}, {"CPU": 1.0}, True, {}]
    with pytest.raises(PermissionError, match="cluster_view is for the GCS to send"):
        raylet.handle_cluster_view(FakeConnection("a driver"), [entry], [])  # type: ignore[arg-type]
    assert b"\x02" * 16 not in raylet.spillback.view.nodes
    link = FakeConnection("gcs link")
    link.state[GCS_LINK] = True
    raylet.handle_cluster_view(link, [entry], [])  # type: ignore[arg-type]
    assert b"\x02" * 16 in raylet.spillback.view.nodes

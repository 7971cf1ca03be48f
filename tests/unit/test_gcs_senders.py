"""What only a node's raylet may tell the GCS of that node (it stops, its resources, its
heartbeat, the deaths and exits of the actors' workers it hosts) is refused from any other
authenticated peer, and the GCS keeps serving; its own raylet's still counts. Without
sockets: a real GcsServer, never started, with fake connections."""

from __future__ import annotations

from typing import Any

import pytest
from aioray.daemons.gcs.actor_manager import ALIVE, DEAD, ActorRecord
from aioray.daemons.gcs.server import GcsServer
from fakes import FakeConnection

NODE, OTHER = b"n" * 16, b"o" * 16
AID, WID = b"a" * 16, b"w" * 16


def register(gcs: GcsServer, nid: bytes, conn: FakeConnection | None = None) -> FakeConnection:
    conn = conn or FakeConnection(f"raylet {nid[:1]!r}")
    body = {"node_id": nid, "ip": "127.0.0.1", "port": 1, "resources": {"CPU": 1.0}}
    gcs.handle_register_node(conn, body, [])  # type: ignore[arg-type]
    return conn


def an_alive_actor(gcs: GcsServer) -> ActorRecord:
    body: Any = {"aid": AID, "spec": {"tid": b"t" * 16}, "meta": {}, "max_restarts": 5}
    rec = ActorRecord(body, [], None)
    rec.state, rec.node_id, rec.worker_id = ALIVE, NODE, WID
    gcs.actors.actors[AID] = rec
    return rec


async def test_only_its_raylet_may_say_a_node_stops() -> None:
    gcs = GcsServer("", "s")
    raylet, driver = register(gcs, NODE), FakeConnection("a driver")
    other_raylet = register(gcs, OTHER)
    for stranger in (driver, other_raylet):
        with pytest.raises(PermissionError, match="node_stopping is for that node's own raylet"):
            gcs.handle_node_stopping(stranger, [NODE, "forged"], [])  # type: ignore[arg-type]
    assert gcs.nodes[NODE]["Alive"] is True
    gcs.handle_node_stopping(raylet, [NODE, "stopped"], [])  # type: ignore[arg-type]
    assert gcs.nodes[NODE]["Alive"] is False
    gcs.health.stop()


async def test_only_its_raylet_may_report_a_live_nodes_resources_and_heartbeat() -> None:
    gcs = GcsServer("", "s")
    raylet, driver = register(gcs, NODE), FakeConnection("a driver")
    with pytest.raises(PermissionError, match="report_resources is for that node's own"):
        gcs.handle_report_resources(driver, [NODE, {"CPU": 0.0}, {"CPU": 99.0}], [])  # type: ignore[arg-type]
    with pytest.raises(PermissionError, match="heartbeat is for that node's own raylet"):
        gcs.handle_heartbeat(driver, NODE, [])  # type: ignore[arg-type]
    assert gcs.nodes[NODE]["Resources"] == {"CPU": 1.0}
    gcs.handle_report_resources(raylet, [NODE, {"CPU": 0.5}], [])  # type: ignore[arg-type]
    gcs.handle_heartbeat(raylet, NODE, [])  # type: ignore[arg-type]
    assert gcs.nodes[NODE]["Available"] == {"CPU": 0.5}
    gcs.health.stop()


@pytest.mark.parametrize("method", ["actor_worker_died", "actor_exiting"])
async def test_only_the_actors_raylet_may_report_its_worker_dead_or_exiting(method: str) -> None:
    gcs = GcsServer("", "s")
    raylet, other_raylet = register(gcs, NODE), register(gcs, OTHER)
    rec = an_alive_actor(gcs)
    handler = gcs.actors.handlers()[method]
    body = [AID, WID, "forged"] if method == "actor_worker_died" else [AID, WID]
    with pytest.raises(PermissionError, match=f"{method} is for the actor's own raylet"):
        handler(other_raylet, body, [])  # type: ignore[arg-type]
    assert rec.state == ALIVE and not rec.no_restart
    handler(raylet, body, [])  # type: ignore[arg-type]
    assert rec.state != ALIVE if method == "actor_worker_died" else rec.no_restart
    gcs.health.stop()


async def test_a_peer_that_never_registers_a_node_cannot_end_an_actor() -> None:
    """A connection that registered no node is kept waiting (a raylet back after a GCS
    restart sends what waited before it registers), never applied, and refused past the
    bound; the same notices from a raylet that then registers are applied first."""
    gcs = GcsServer("", "s")
    register(gcs, NODE)
    rec = an_alive_actor(gcs)
    driver = FakeConnection("a driver")
    with pytest.raises(PermissionError, match="actor_worker_died is for a registered raylet"):
        for _ in range(2000):
            gcs.actors.handle_actor_worker_died(driver, [AID, WID, "forged"], [])  # type: ignore[arg-type]
    assert rec.state == ALIVE
    gcs.health.stop()


async def test_what_a_raylet_sent_before_registering_again_lands_before_its_actors_settle() -> None:
    """After a GCS restart the raylet sends what waited (an actor's exit) before it
    registers again: applied when it registers, before the actors it no longer hosts are
    settled, so the actor that exited on purpose is not restarted."""
    gcs = GcsServer("", "s")
    rec = an_alive_actor(gcs)  # restored, its node not back yet
    back = FakeConnection("the raylet, back")
    gcs.actors.handle_actor_exiting(back, [AID, WID], [])  # type: ignore[arg-type]
    assert not rec.no_restart  # not applied yet: the connection speaks for no node
    body = {"node_id": NODE, "ip": "127.0.0.1", "port": 1, "resources": {"CPU": 1.0}}
    gcs.handle_register_node(back, {**body, "actors": []}, [])  # type: ignore[arg-type]
    assert rec.state == DEAD and "exited intentionally" in rec.death
    gcs.health.stop()

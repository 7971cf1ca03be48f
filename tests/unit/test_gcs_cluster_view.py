"""The GCS's node table, cluster view broadcast and failure detection, without sockets."""

from __future__ import annotations

from typing import Any

from aioray.daemons.gcs.server import GcsServer
from fakes import FakeConnection


class FakeRaylet(FakeConnection):
    """A raylet's connection as the GCS sees it: what the GCS sent it."""

    def views(self) -> list[list[Any]]:
        return [entry for s in self.sent if s.method == "cluster_view" for entry in s.body]


def register(gcs: GcsServer, nid: bytes, ip: str, cpus: float) -> FakeRaylet:
    conn = FakeRaylet()
    body = {"node_id": nid, "ip": ip, "port": 1, "resources": {"CPU": cpus}}
    gcs.handle_register_node(conn, body, [])  # type: ignore[arg-type]
    return conn


def settle(gcs: GcsServer) -> None:
    gcs.view.flush()  # what the batched broadcast timer does


async def test_joins_resources_and_totals_reach_every_raylet() -> None:
    gcs = GcsServer("", "s")
    a = register(gcs, b"a" * 16, "127.0.0.1", 1)
    b = register(gcs, b"b" * 16, "127.0.0.2", 2)
    settle(gcs)
    assert {e[0] for e in a.views()} == {b"a" * 16, b"b" * 16}  # a hears of b's join
    gcs.handle_report_resources(b, [b"b" * 16, {"CPU": 0.5}], [])  # type: ignore[arg-type]
    # Totals travel only when they change (placement-group bundles committed there).
    bundle = {"CPU": 2.0, "CPU_group_ab": 1.0}
    gcs.handle_report_resources(b, [b"b" * 16, {"CPU": 0.5}, bundle], [])  # type: ignore[arg-type]
    settle(gcs)
    latest = [e for e in a.views() if e[0] == b"b" * 16][-1]
    assert latest[3] == bundle and latest[4] == {"CPU": 0.5}
    assert gcs.nodes[b"b" * 16]["Resources"] == bundle
    gcs.health.stop()


async def test_a_silent_node_is_declared_dead_and_its_connection_closed() -> None:
    gcs = GcsServer("", "s")
    gcs.health.period, gcs.health.timeout = 3600.0, 1.0  # the test runs the checks itself
    quiet = register(gcs, b"q" * 16, "127.0.0.3", 1)
    chatty = register(gcs, b"c" * 16, "127.0.0.4", 1)
    gcs.health.last_seen[b"q" * 16] -= 5.0  # silent for 5 s (no clock to wait on)
    gcs.health.last_seen[b"c" * 16] -= 5.0
    gcs.handle_heartbeat(chatty, b"c" * 16, [])  # type: ignore[arg-type]
    gcs.health.check()
    assert quiet.is_closed and not chatty.is_closed
    dead = gcs.nodes[b"q" * 16]
    assert dead["Alive"] is False and "missing too many heartbeats" in dead["DeathReasonMessage"]
    assert gcs.nodes[b"c" * 16]["Alive"] is True
    settle(gcs)
    assert [e[5] for e in chatty.views() if e[0] == b"q" * 16][-1] is False  # told: dead
    gcs.health.stop()


async def test_a_node_declared_dead_cannot_register_again() -> None:
    gcs = GcsServer("", "s")
    conn = register(gcs, b"d" * 16, "127.0.0.5", 1)
    conn.close()
    assert gcs.nodes[b"d" * 16]["Alive"] is False
    again = FakeRaylet()
    body = {"node_id": b"d" * 16, "ip": "127.0.0.5", "port": 1, "resources": {"CPU": 1}}
    reply = gcs.handle_register_node(again, body, [])  # type: ignore[arg-type]
    assert "declared dead" in reply["refused"]  # the raylet stops on this answer
    assert gcs.nodes[b"d" * 16]["Alive"] is False
    gcs.health.stop()

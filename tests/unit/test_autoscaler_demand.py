"""Demand for the autoscaler: the raylet's counted report, the GCS's snapshot of it
(with pending placement groups and request_resources), and the autoscaler's state."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aioray.daemons.gcs.server import GcsServer
from aioray.daemons.raylet.demand_report import DemandReporter
from test_gcs_cluster_view import FakeRaylet, register


class FakeRayletForDemand:
    """What the demand reporter reads of a raylet."""

    def __init__(self) -> None:
        self.node_id = b"n" * 16
        self.requests: list[Any] = []
        self.leases: dict[int, Any] = {}
        self.primaries = False
        self.stopping = False
        self.store = SimpleNamespace(holds_primaries=lambda: self.primaries)
        self.resources = SimpleNamespace(total={"CPU": 2.0}, available={"CPU": 2.0})
        self.sent: list[Any] = []
        self.gcs_link = SimpleNamespace(notify=lambda m, b: self.sent.append((m, b)))

    def queue(self, res: dict[str, float]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.requests.append(SimpleNamespace(res=res, fut=fut))


async def test_raylet_reports_counts_per_shape_once_per_change() -> None:
    r = FakeRayletForDemand()
    d = DemandReporter(r)  # type: ignore[arg-type]
    d.start()
    assert r.sent == [("report_demand", [r.node_id, [], True])]
    for _ in range(500):
        r.queue({"CPU": 1.0})
        d.changed()
    r.queue({"CPU": 2.0, "GPU": 1.0})
    r.queue({"CPU_group_0_abc": 1.0})  # a bundle's request: the GCS counts the group itself
    d.changed()
    d._report()  # what the timer does
    assert r.sent[-1] == (
        "report_demand",
        [r.node_id, [[{"CPU": 1.0}, 500], [{"CPU": 2.0, "GPU": 1.0}, 1]], False],
    )
    d._report()  # nothing changed: nothing sent
    assert len(r.sent) == 2
    r.requests.clear()
    r.primaries = True  # the only copy of an object lives here: not idle
    d._report()
    assert r.sent[-1] == ("report_demand", [r.node_id, [], False])
    r.primaries = False
    r.resources.available = {"CPU": 0.0, "CPU_group_0_abc": 2.0}  # a bundle holds the CPUs
    d._report()
    assert r.sent[-1] == ("report_demand", [r.node_id, [], False])
    r.resources.available = {"CPU": 2.0}
    d._report()
    assert r.sent[-1] == ("report_demand", [r.node_id, [], True])
    d.stop()


async def test_gcs_snapshot_sums_shapes_over_nodes_with_groups_and_requests() -> None:
    gcs = GcsServer("", "s")
    a, b = b"a" * 16, b"b" * 16
    conn_a = register(gcs, a, "127.0.0.1", 0)
    register(gcs, b, "127.0.0.2", 2)
    gcs.demand.handle_report_demand(conn_a, [a, [[{"CPU": 1.0}, 4]], False], None)  # type: ignore[arg-type]
    gcs.demand.handle_report_demand(conn_a, [b, [[{"CPU": 1.0}, 2], [{"GPU": 1.0}, 1]], True], None)  # type: ignore[arg-type]
    body = {"id": b"p" * 18, "bundles": [{"CPU": 1}] * 2, "strategy": "STRICT_SPREAD"}
    gcs.placement_groups.handle_create_placement_group(conn_a, body, None)  # type: ignore[arg-type]
    reply = gcs.demand.handle_request_resources(conn_a, [{"CPU": 2}] * 2, None)  # type: ignore[arg-type]
    assert reply == {"ok": True}
    snap = gcs.demand.snapshot()
    assert sorted(map(str, snap["shapes"])) == ["[{'CPU': 1.0}, 6]", "[{'GPU': 1.0}, 1]"]
    assert [n["idle"] for n in snap["nodes"]] == [False, True]
    assert snap["requests"] == [{"CPU": 2.0}] * 2
    assert snap["placement_groups"] == [[[{"CPU": 1.0}] * 2, "STRICT_SPREAD"]]
    gcs.node_dead(b, "gone")  # a dead node's queue is no demand, and is forgotten
    assert gcs.demand.snapshot()["shapes"] == [[{"CPU": 1.0}, 4]]
    assert b not in gcs.demand.by_node


async def test_request_resources_replaces_and_checks_its_bundles() -> None:
    gcs = GcsServer("", "s")
    conn = FakeRaylet()
    gcs.demand.handle_request_resources(conn, [{"CPU": 2}] * 2, None)  # type: ignore[arg-type]
    gcs.demand.handle_request_resources(conn, [{"CPU": 1}], None)  # type: ignore[arg-type]
    assert gcs.demand.snapshot()["requests"] == [{"CPU": 1.0}]
    bad = gcs.demand.handle_request_resources(conn, [{"CPU": -1}], None)  # type: ignore[arg-type]
    assert "'CPU': -1 is not a non-negative number" in bad["error"]
    assert gcs.demand.snapshot()["requests"] == [{"CPU": 1.0}]


async def test_autoscaler_state_is_kept_for_status() -> None:
    gcs = GcsServer("", "s")
    conn = FakeRaylet()
    state = {"pending": [["cpu2", "launching", 2]], "failures": [], "infeasible": []}
    gcs.demand.handle_report_autoscaler_state(conn, state, None)  # type: ignore[arg-type]
    status = gcs.demand.handle_get_autoscaler_status(conn, None, None)  # type: ignore[arg-type]
    assert status["autoscaler"]["pending"] == [["cpu2", "launching", 2]]
    assert "nodes" in status and "shapes" in status


async def test_the_watching_autoscaler_hears_of_changed_demand_once_per_burst() -> None:
    gcs = GcsServer("", "s")
    a = b"a" * 16
    conn = register(gcs, a, "127.0.0.1", 0)
    autoscaler = FakeRaylet()
    assert gcs.demand.handle_watch_demand(autoscaler, None, None) is True  # type: ignore[arg-type]
    for n in (1, 2, 3):
        gcs.demand.handle_report_demand(conn, [a, [[{"CPU": 1.0}, n]], False], None)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert [(s.method, s.body) for s in autoscaler.sent] == [("demand_changed", None)]
    gcs.demand.handle_report_demand(conn, [a, [[{"CPU": 1.0}, 3]], True], None)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert len(autoscaler.sent) == 1  # same queue: no news
    autoscaler.close()
    assert gcs.demand.watchers == []

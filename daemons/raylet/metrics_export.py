"""The node's Prometheus exporter, served by the raylet on ``--metrics-export-port``.

The raylet knows its workers, leases and store, so it exports the node: user metrics
its processes report (``report_metrics``, aggregated here: counters and histograms
summed, a gauge's latest value kept), ``ray_tasks`` from its executors' counts, and
the node's resources, object store, CPU and memory. The head's raylet adds the
cluster's view from the GCS (actors, active nodes, running jobs, the GCS's memory).
A scrape copies the figures on the loop (``snapshot``, ~0.1 ms) and formats the text
in a thread; what costs more (USS of each process, read from /proc) is sampled in a
thread at most every ``SAMPLE_S``, once someone scrapes, and served from the cache.
So the raylet keeps granting leases during a scrape (benchmarks/metrics_benchmark.py).
Names and labels are Ray's, so Ray's Grafana boards work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import psutil
from aioray.daemons.raylet.user_metrics import PREFIX, UserMetrics

from aioray._private.rpc import rpc
from aioray._private.wire.prometheus import CONTENT_TYPE, Exposition, Labels
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import MetricsReport

if TYPE_CHECKING:
    from aiohttp import web
    from aioray.daemons.raylet.server import Raylet

logger = logging.getLogger(__name__)

SAMPLE_S = 2.0  # the oldest the process memory figures in a scrape may be
GCS_TIMEOUT_S = 2.0  # a scrape does not wait longer than this for the GCS's figures
# (state, name, job id hex, source) -> tasks: what ray_tasks shows (see set_task_source)
TaskSource = Callable[[], Iterable[tuple[tuple[str, str, str, str], float]]]


class NodeMetrics:
    """What this node exports, and the ``/metrics`` route that renders it."""

    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self.user = UserMetrics([])  # its labels are known once the raylet joined: snapshot
        self.task_counts: dict[int, dict[tuple[str, str, str], int]] = {}  # per connection
        self.departed: dict[tuple[str, str, str], int] = {}  # FINISHED/FAILED of gone workers
        self.task_source: TaskSource = self._executor_task_counts
        self.cluster: dict[str, Any] = {}  # the GCS's figures (head only)
        self.system: dict[str, Any] = {}
        self._sampled_at = 0.0
        self._sampling: asyncio.Future[None] | None = None
        self.last_render_s = 0.0
        psutil.cpu_percent(interval=None)  # the first call starts the measured interval

    def __repr__(self) -> str:
        return f"<NodeMetrics {self.user!r} workers={len(self.task_counts)}>"

    def stats(self) -> dict[str, Any]:
        """For ``get_state``: what is held, and what the last scrape cost the loop."""
        return {
            "families": len(self.user.families),
            "series": self.user.series_count(),
            "render_s": self.last_render_s,
        }

    def routes(self) -> list[web.RouteDef]:
        """This feature's route table (added to the raylet's ``HttpService``)."""
        from aiohttp import web  # imported with the HTTP service, after start-up (server.py)

        return [web.get("/metrics", self.handle_metrics)]

    def set_task_source(self, source: TaskSource) -> None:
        """Where ``ray_tasks`` comes from (default: this node's executors' counts)."""
        self.task_source = source

    # -- reports from this node's processes ----------------------------------------------
    def handle_report_metrics(
        self, conn: rpc.Connection, body: MetricsReport, _: list[Buffer]
    ) -> None:
        """A process's news: its user metrics, and (a worker's) its executor's task counts."""
        self.user.apply(body)
        if "t" in body:
            if id(conn) not in self.task_counts:
                conn.on_close.append(self._worker_gone)
            self.task_counts[id(conn)] = {(s, n, j): c for s, n, j, c in body["t"]}

    def _worker_gone(self, conn: rpc.Connection) -> None:
        # Its finished tasks stay counted; its running ones are no longer running here.
        for (state, name, job), n in self.task_counts.pop(id(conn), {}).items():
            if state != "RUNNING":
                key = (state, name, job)
                self.departed[key] = self.departed.get(key, 0) + n

    def _executor_task_counts(self) -> Iterable[tuple[tuple[str, str, str, str], float]]:
        total: dict[tuple[str, str, str], int] = dict(self.departed)
        for counts in self.task_counts.values():
            for key, n in counts.items():
                total[key] = total.get(key, 0) + n
        return [((s, n, j, "executor"), c) for (s, n, j), c in total.items()]

    # -- the scrape ------------------------------------------------------------------------
    async def handle_metrics(self, request: web.Request) -> web.Response:
        """HTTP ``GET /metrics`` -> this node's metrics in the Prometheus text format (its
        own, its workers' user metrics, and the GCS's cluster-wide figures on the head)."""
        from aiohttp import web

        await self._refresh()
        start = time.perf_counter()
        snap = self.snapshot()
        self.last_render_s = time.perf_counter() - start  # the loop's share of a scrape
        # Formatting (~5 ms per 1,000 series) runs in a thread: the loop keeps serving.
        body = await asyncio.to_thread(render, snap, self.user)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def snapshot(self) -> dict[str, Any]:
        """(loop) Copies of what a scrape shows, for ``render`` in another thread."""
        r = self.raylet
        store = r.store.manager
        if not self.user.extra_labels:  # known once the raylet joined the cluster
            self.user.extra_labels = [("SessionName", r.session_id), ("NodeAddress", r.node_ip)]
        return {
            "session": ("SessionName", r.session_id),
            "ip": ("ip", r.node_ip),
            "tasks": list(self.task_source()),
            "total": dict(r.resources.total),
            "available": r.resources.snapshot(),
            "store": (store.used, store.spilled_bytes),
            "system": self.system,
            "cluster": self.cluster,
            "user": self.user.snapshot(),
        }

    async def _refresh(self) -> None:
        """Sample what is costly (first scrape: wait for it; later: in the background)."""
        if time.monotonic() - self._sampled_at > SAMPLE_S and self._sampling is None:
            self._sampling = asyncio.ensure_future(self._sample())
        if not self.system and self._sampling is not None:
            await asyncio.shield(self._sampling)
        if self.raylet.head:
            await self._fetch_cluster()

    async def _sample(self) -> None:
        try:
            pids = {"raylet": [os.getpid()]}
            if self.raylet.pool is not None:
                pids["core_worker"] = [w.pid for w in self.raylet.pool.workers.values()]
            self.system = await asyncio.to_thread(sample_system, pids)
            self._sampled_at = time.monotonic()
        finally:
            self._sampling = None

    async def _fetch_cluster(self) -> None:
        gcs = self.raylet.gcs
        if gcs is None or gcs.is_closed:
            return
        try:
            self.cluster = dict(await asyncio.wait_for(gcs.call("metrics_snapshot"), GCS_TIMEOUT_S))
        except (asyncio.TimeoutError, ConnectionError, rpc.RpcError) as e:
            logger.debug("no cluster figures from the GCS for this scrape: %s", e)


def render(snap: dict[str, Any], user: UserMetrics) -> bytes:
    """(any thread) The node's metrics in Prometheus text format."""
    out = Exposition()
    _render_node(out, snap)
    _render_system(out, snap)
    _render_cluster(out, snap)
    user.render(out, snap["user"])
    return out.text().encode()


def _render_node(out: Exposition, snap: dict[str, Any]) -> None:
    session, ip = snap["session"], snap["ip"]
    tasks = [
        ([("State", s), ("Name", n), ("Source", src), ("IsRetry", "0"), ("JobId", j), session], c)
        for (s, n, j, src), c in snap["tasks"]
    ]
    out.gauge(f"{PREFIX}tasks", "Current number of tasks currently in a particular state.", tasks)
    res: list[tuple[Labels, float]] = []
    for name, total in snap["total"].items():
        if not name.startswith("node:"):  # the node's own marker resources
            free = snap["available"].get(name, 0.0)
            res.append(([("Name", name), ("State", "USED"), session, ip], total - free))
            res.append(([("Name", name), ("State", "AVAILABLE"), session, ip], free))
    out.gauge(f"{PREFIX}resources", "Logical Ray resources broken per state {AVAILABLE, USED}", res)
    used, spilled = snap["store"]
    out.gauge(
        f"{PREFIX}object_store_memory",
        "Object store memory by various sub-kinds on this node",
        [
            ([("Location", "MMAP_SHM"), ("ObjectState", "SEALED"), session, ip], used),
            ([("Location", "SPILLED"), session, ip], spilled),
        ],
    )


def _render_system(out: Exposition, snap: dict[str, Any]) -> None:
    s, node = snap["system"], [snap["session"], snap["ip"]]
    if not s:
        return
    for name, key, text in (
        ("node_cpu_utilization", "cpu", "Total CPU usage (percent)"),
        ("node_cpu_count", "cpus", "Total CPUs available on this node"),
        ("node_mem_used", "mem_used", "Memory usage on this node (bytes)"),
        ("node_mem_total", "mem_total", "Total memory on this node (bytes)"),
    ):
        out.gauge(PREFIX + name, text, [(node, s[key])])
    uss = [([("Component", c), *node], v) for c, v in s["uss"].items()]
    if snap["cluster"].get("gcs_uss"):
        uss.append(([("Component", "gcs"), *node], snap["cluster"]["gcs_uss"]))
    out.gauge(f"{PREFIX}component_uss_bytes", "USS usage of all components on the node.", uss)


def _render_cluster(out: Exposition, snap: dict[str, Any]) -> None:
    c, session = snap["cluster"], snap["session"]
    if not c:
        return  # a worker node: the head exports the cluster's figures, once
    actors = [
        ([("State", s), ("Name", n), ("Source", "gcs"), ("JobId", j), session], k)
        for s, n, j, k in c["actors"]
    ]
    out.gauge(
        f"{PREFIX}actors", "Current number of actors currently in a particular state.", actors
    )
    out.gauge(
        f"{PREFIX}cluster_active_nodes",
        "Active nodes on the cluster",
        [([("node_type", t), session], n) for t, n in c["active_nodes"].items()],
    )
    out.gauge(
        f"{PREFIX}running_jobs",
        "Number of jobs currently running.",
        [([session], c["running_jobs"])],
    )


def sample_system(pids: dict[str, list[int]]) -> dict[str, Any]:
    """(thread) The node's CPU and memory, and each component's USS summed over its processes."""
    mem = psutil.virtual_memory()
    uss: dict[str, float] = {}
    for component, plist in pids.items():
        total = 0
        for pid in plist:
            try:
                total += psutil.Process(pid).memory_full_info().uss
            except (psutil.Error, OSError):
                continue  # gone since, or not ours to read
        uss[component] = float(total)
    return {
        "cpu": psutil.cpu_percent(interval=None),
        "cpus": float(psutil.cpu_count() or 1),
        "mem_used": float(mem.total - mem.available),
        "mem_total": float(mem.total),
        "uss": uss,
    }

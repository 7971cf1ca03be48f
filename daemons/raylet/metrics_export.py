"""The node's Prometheus exporter, served by the raylet on ``--metrics-export-port``.

The raylet knows its workers, leases and store, so it exports the node: user metrics
its processes report (``report_metrics``, aggregated here: counters and histograms
summed, a gauge's latest value kept), ``ray_tasks`` from its executors' counts, and
the node's resources, object store, CPU and memory. The head's raylet adds the
cluster's view from the GCS (actors, active nodes, running jobs, the GCS's memory).
A scrape renders from memory; what costs more (USS of each process, read from
/proc) is sampled in a thread at most every ``SAMPLE_S`` and served from the cache,
so a scrape never blocks the raylet's loop for long (measured: benchmarks/).
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
from aiohttp import web

from aioray import rpc
from aioray._http.prometheus import CONTENT_TYPE, Exposition, Labels

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet

logger = logging.getLogger(__name__)

PREFIX = "ray_"
SAMPLE_S = 2.0  # the oldest the process memory figures in a scrape may be
GCS_TIMEOUT_S = 2.0  # a scrape does not wait longer than this for the GCS's figures
# Ray exports a counter twice since 2.10: as a counter (``_total``) and, for
# compatibility with older boards, as a gauge; RAY_EXPORT_COUNTER_AS_GAUGE=0 turns it off.
EXPORT_COUNTER_AS_GAUGE = os.environ.get("RAY_EXPORT_COUNTER_AS_GAUGE", "1") != "0"
# (state, name, job id hex, source) -> tasks: what ray_tasks shows (see set_task_source)
TaskSource = Callable[[], Iterable[tuple[tuple[str, str, str, str], float]]]


class _Family:
    __slots__ = ("boundaries", "description", "kind", "series", "tag_keys")

    def __init__(self, kind: str, description: str, tag_keys: list[str], bounds: list[float]):
        self.kind = kind
        self.description = description
        self.tag_keys = tag_keys
        self.boundaries = bounds
        self.series: dict[tuple[str, ...], Any] = {}


class NodeMetrics:
    """What this node exports, and the ``/metrics`` route that renders it."""

    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self.families: dict[str, _Family] = {}
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
        return f"<NodeMetrics families={len(self.families)} workers={len(self.task_counts)}>"

    def routes(self) -> list[web.RouteDef]:
        """This feature's route table (added to the raylet's ``HttpService``)."""
        return [web.get("/metrics", self.handle_metrics)]

    def set_task_source(self, source: TaskSource) -> None:
        """Where ``ray_tasks`` comes from (default: this node's executors' counts)."""
        self.task_source = source

    # -- reports from this node's processes ----------------------------------------------
    def handle_report_metrics(self, conn: rpc.Connection, body: dict[str, Any], _: Any) -> None:
        for name, kind, description, tag_keys, bounds in body.get("d", ()):
            known = self.families.get(name)
            if known is None:
                self.families[name] = _Family(kind, description, tag_keys, bounds)
            elif known.kind != kind or known.tag_keys != tag_keys:
                logger.warning(
                    "metric %r redefined differently (%s); keeping the first", name, kind
                )
        for name, labels, delta in body.get("c", ()):
            f = self._family(name, "counter", labels)
            if f is not None:
                key = tuple(labels)
                f.series[key] = f.series.get(key, 0.0) + delta
        for name, labels, value in body.get("g", ()):
            f = self._family(name, "gauge", labels)
            if f is not None:
                f.series[tuple(labels)] = value
        for name, labels, buckets, total, count in body.get("h", ()):
            f = self._family(name, "histogram", labels)
            if f is not None and len(buckets) == len(f.boundaries) + 1:
                h = f.series.setdefault(tuple(labels), [[0] * len(buckets), 0.0, 0])
                h[0] = [a + b for a, b in zip(h[0], buckets, strict=True)]
                h[1] += total
                h[2] += count
        if "t" in body:
            if id(conn) not in self.task_counts:
                conn.on_close.append(self._worker_gone)
            self.task_counts[id(conn)] = {(s, n, j): c for s, n, j, c in body["t"]}

    def _family(self, name: str, kind: str, labels: list[str]) -> _Family | None:
        f = self.families.get(name)
        if f is None or f.kind != kind or len(labels) != len(f.tag_keys):
            return None  # another process's definition of that name won
        return f

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
        await self._refresh()
        start = time.perf_counter()
        text = self.render()
        self.last_render_s = time.perf_counter() - start
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

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

    def render(self) -> str:
        """The node's metrics in Prometheus text format (cheap: memory only)."""
        out = Exposition()
        session = ("SessionName", self.raylet.session_id)
        ip = ("ip", self.raylet.node_ip)
        self._render_system(out, session, ip)
        self._render_cluster(out, session)
        self._render_user(out, session)
        return out.text()

    def _render_system(
        self, out: Exposition, session: tuple[str, str], ip: tuple[str, str]
    ) -> None:
        tasks = [
            (
                [
                    ("State", s),
                    ("Name", n),
                    ("Source", src),
                    ("IsRetry", "0"),
                    ("JobId", j),
                    session,
                ],
                c,
            )
            for (s, n, j, src), c in self.task_source()
        ]
        out.gauge(
            f"{PREFIX}tasks", "Current number of tasks currently in a particular state.", tasks
        )
        r = self.raylet.resources
        avail = r.snapshot()
        res: list[tuple[Labels, float]] = []
        for name, total in r.total.items():
            if name.startswith("node:"):
                continue
            free = avail.get(name, 0.0)
            res.append(([("Name", name), ("State", "USED"), session, ip], total - free))
            res.append(([("Name", name), ("State", "AVAILABLE"), session, ip], free))
        out.gauge(
            f"{PREFIX}resources", "Logical Ray resources broken per state {AVAILABLE, USED}", res
        )
        store = self.raylet.store.manager
        out.gauge(
            f"{PREFIX}object_store_memory",
            "Object store memory by various sub-kinds on this node",
            [
                ([("Location", "MMAP_SHM"), ("ObjectState", "SEALED"), session, ip], store.used),
                ([("Location", "SPILLED"), session, ip], store.spilled_bytes),
            ],
        )
        s = self.system
        if s:
            node = [session, ip]
            out.gauge(
                f"{PREFIX}node_cpu_utilization", "Total CPU usage (percent)", [(node, s["cpu"])]
            )
            out.gauge(
                f"{PREFIX}node_cpu_count", "Total CPUs available on this node", [(node, s["cpus"])]
            )
            out.gauge(
                f"{PREFIX}node_mem_used",
                "Memory usage on this node (bytes)",
                [(node, s["mem_used"])],
            )
            out.gauge(
                f"{PREFIX}node_mem_total",
                "Total memory on this node (bytes)",
                [(node, s["mem_total"])],
            )
            uss = [([("Component", c), session, ip], v) for c, v in s["uss"].items()]
            if self.cluster.get("gcs_uss"):
                uss.append(([("Component", "gcs"), session, ip], self.cluster["gcs_uss"]))
            out.gauge(
                f"{PREFIX}component_uss_bytes", "USS usage of all components on the node.", uss
            )

    def _render_cluster(self, out: Exposition, session: tuple[str, str]) -> None:
        c = self.cluster
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

    def _render_user(self, out: Exposition, session: tuple[str, str]) -> None:
        extra = [session, ("NodeAddress", self.raylet.node_ip)]
        for name, f in self.families.items():
            if not f.series:
                continue
            mine = [(k, v) for k, v in extra if k not in f.tag_keys]
            full = PREFIX + name
            if f.kind == "histogram":
                out.family(full, "histogram", f.description)
                for values, (buckets, total, count) in f.series.items():
                    labels = [*zip(f.tag_keys, values, strict=True), *mine]
                    out.histogram(full, labels, f.boundaries, buckets, total, count)
                continue
            series = [
                ([*zip(f.tag_keys, values, strict=True), *mine], v)
                for values, v in f.series.items()
            ]
            if f.kind == "counter":
                out.family(f"{full}_total", "counter", f.description)
                for labels, v in series:
                    out.sample(f"{full}_total", labels, v)
                if not EXPORT_COUNTER_AS_GAUGE:
                    continue
            out.gauge(full, f.description, series)


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

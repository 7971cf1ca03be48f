"""Ray's State API routes (``/api/v0/...``) and cluster views, in Ray's response envelope.

Thin handlers over the GCS's tables as served today (nodes, actors, placement groups,
submitted jobs); filters ``(key, "="|"!=", value)`` compare case-insensitively and run
before the limit. Tasks, objects and workers need the State API's GCS task table (the
``state-api`` branch): until it is merged here those routes answer 501, saying so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

import aioray
from aioray.dashboard import rows
from aioray.dashboard.cluster_link import ClusterLink
from aioray.dashboard.job_manager import JobManager

MAX_LIMIT = 10_000
RAY_API_VERSION = "2.60.0"
SD_FILE = "prom_metrics_service_discovery.json"  # written by the GCS
Rows = Callable[[], Awaitable[list[dict[str, Any]]]]


def envelope(data: Any, msg: str = "") -> web.Response:
    return web.json_response({"result": True, "msg": msg, "data": data})


def error(status: int, msg: str) -> web.Response:
    return web.json_response({"result": False, "msg": msg, "data": {}}, status=status)


def parse_filters(query: Any) -> list[tuple[str, str, str]]:
    """Ray's ``filter_keys``/``filter_predicates``/``filter_values`` triples."""
    keys = query.getall("filter_keys", [])
    preds = query.getall("filter_predicates", [])
    values = query.getall("filter_values", [])
    if not len(keys) == len(preds) == len(values):
        raise ValueError("filter_keys, filter_predicates and filter_values must be given together")
    for p in preds:
        if p not in ("=", "!="):
            raise ValueError(f"Unsupported filter predicate {p!r}: use '=' or '!='")
    return list(zip(keys, preds, values, strict=True))


def apply(
    items: list[dict[str, Any]], filters: list[tuple[str, str, str]], limit: int
) -> dict[str, Any]:
    """Filter (before the limit, as Ray ought to), then truncate; Ray's list result."""
    columns = set(items[0]) if items else set()
    for key, _, _ in filters:
        if items and key not in columns:
            raise ValueError(
                f"Unknown filter key {key!r}; valid keys: {', '.join(sorted(columns))}"
            )
    kept = [r for r in items if all(_match(r.get(k), p, v) for k, p, v in filters)]
    return {
        "total": len(items),
        "num_after_truncation": min(len(kept), limit),
        "num_filtered": len(kept),
        "result": kept[:limit],
        "partial_failure_warning": "",
        "warnings": None,
    }


def _match(value: Any, predicate: str, wanted: str) -> bool:
    same = str(value).lower() == wanted.lower()
    return same if predicate == "=" else not same


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise ValueError("limit must be an integer") from None
    if not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def routes(
    link: ClusterLink, jobs: JobManager, session_dir: str, started: float
) -> list[web.RouteDef]:
    """The State API's and the cluster views' route table."""

    async def nodes() -> list[dict[str, Any]]:
        return [rows.node(n) for n in await link.gcs("get_nodes")]

    async def actors() -> list[dict[str, Any]]:
        return [rows.actor(a) for a in await link.gcs("list_actors")]

    async def groups() -> list[dict[str, Any]]:
        return [rows.placement_group(g) for g in await link.gcs("placement_group_table")]

    async def job_rows() -> list[dict[str, Any]]:
        return [j.to_json() for j in await jobs.list()]

    sources: dict[str, Rows] = {
        "nodes": nodes,
        "actors": actors,
        "placement_groups": groups,
        "jobs": job_rows,
    }

    def listing(source: Rows) -> Any:
        async def handler(request: web.Request) -> web.Response:
            try:
                filters = parse_filters(request.query)
                limit = _limit(request)
                result = apply(await source(), filters, limit)
            except ValueError as e:
                return error(400, str(e))
            return envelope({"result": result})

        return handler

    async def not_yet(request: web.Request) -> web.Response:
        return error(501, f"{request.path} needs the State API's task table (not merged yet)")

    async def summarize_actors(request: web.Request) -> web.Response:
        rows = await actors()
        summary: dict[str, dict[str, Any]] = {}
        for a in rows:
            entry = summary.setdefault(
                a["class_name"], {"class_name": a["class_name"], "state_counts": {}}
            )
            entry["state_counts"][a["state"]] = entry["state_counts"].get(a["state"], 0) + 1
        per_class = {"summary": summary, "total_actors": len(rows), "summary_by": "class"}
        return envelope(  # Ray's SummaryApiResponse
            {
                "result": {
                    "total": len(rows),
                    "num_after_truncation": len(rows),
                    "num_filtered": len(rows),
                    "result": {"node_id_to_summary": {"cluster": per_class}},
                    "partial_failure_warning": "",
                    "warnings": None,
                }
            }
        )

    async def version(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": "4",
                # Ray's clients refuse a cluster older than their minimum (1.9 for
                # jobs): report the Ray version whose API this serves.
                "ray_version": RAY_API_VERSION,
                "aioray_version": aioray.__version__,
                "ray_commit": "aioray",
                "session_name": "",
            }
        )

    async def cluster_status(request: web.Request) -> web.Response:
        ns = await nodes()
        alive = [n for n in ns if n["state"] == "ALIVE"]
        total: dict[str, float] = {}
        avail: dict[str, float] = {}
        for n in await link.gcs("get_nodes"):
            if n.get("Alive"):
                for k, v in n["Resources"].items():
                    total[k] = total.get(k, 0) + v
                for k, v in n.get("Available", {}).items():
                    avail[k] = avail.get(k, 0) + v
        usage = {k: [total[k] - avail.get(k, 0), total[k]] for k in total}
        return envelope(
            {
                "clusterStatus": {
                    "loadMetricsReport": {"usage": usage},
                    "autoscalerReport": {
                        "activeNodes": {"node": len(alive)},
                        "failedNodes": [n for n in ns if n["state"] != "ALIVE"],
                    },
                }
            }
        )

    async def nodes_summary(request: web.Request) -> web.Response:
        raw = await link.gcs("get_nodes")
        return envelope({"summary": [rows.node_summary(n) for n in raw]})

    async def logical_actors(request: web.Request) -> web.Response:
        return envelope({"actors": {a["actor_id"]: a for a in await actors()}})

    async def kill_actor(request: web.Request) -> web.Response:
        actor_id = request.query.get("actor_id") or request.match_info.get("actor_id", "")
        try:
            aid = bytes.fromhex(actor_id)
        except ValueError:
            return error(400, f"actor_id {actor_id!r} is not a hex actor id")
        force = request.query.get("force_kill", "true").lower() != "false"
        if not await link.gcs("kill_actor", [aid, force]):
            return error(404, f"Actor {actor_id} does not exist.")
        return envelope({}, msg=f"Killed actor with id {actor_id}")

    async def gcs_healthz(request: web.Request) -> web.Response:
        await link.gcs("get_nodes")
        return web.Response(text="success")

    async def prometheus_sd(request: web.Request) -> web.Response:
        # The GCS writes every node's metrics address there (Prometheus file_sd format).
        path = os.path.join(session_dir, SD_FILE)
        try:
            with open(path) as f:
                targets = json.load(f)
        except (OSError, ValueError):
            targets = []
        return web.json_response(targets)

    async def uptime(request: web.Request) -> web.Response:
        return envelope({"uptime_s": time.time() - started})

    table = [web.get(f"/api/v0/{name}", listing(src)) for name, src in sources.items()]
    table += [web.get(f"/api/v0/{name}", not_yet) for name in ("tasks", "objects", "workers")]
    table += [
        web.get("/api/v0/tasks/summarize", not_yet),
        web.get("/api/v0/objects/summarize", not_yet),
        web.get("/api/v0/tasks/timeline", not_yet),
        web.get("/api/v0/actors/summarize", summarize_actors),
        web.get("/api/version", version),
        web.get("/api/gcs_healthz", gcs_healthz),
        web.get("/api/cluster_status", cluster_status),
        web.get("/nodes", nodes_summary),
        web.get("/logical/actors", logical_actors),
        web.post("/api/actors/{actor_id}/kill", kill_actor),
        web.get("/api/dashboard/uptime", uptime),
        web.get("/api/prometheus/sd", prometheus_sd),
    ]
    return table

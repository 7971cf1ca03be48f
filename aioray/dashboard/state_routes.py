"""Ray's State API routes (``/api/v0/...``) and cluster views, in Ray's response envelope.

Each ``/api/v0`` route is one ``StateQuery`` (list, summarize, timeline) on a short
connection to the GCS, which filters at the source before the limit (workers and
objects: the raylets, filtered by the query); bad input is a 400 naming the choices.
Jobs are the GCS's too: its drivers and the submitted jobs' records, each job once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

import aioray
import aioray._private.core.state_schema as schema
from aioray._private.node import chrome_trace, node
from aioray._private.node.state_query import StateQuery
from aioray._private.wire import auth
from aioray.dashboard import rows
from aioray.dashboard.cluster_link import ClusterLink

RAY_API_VERSION = "2.60.0"
SD_FILE = "prom_metrics_service_discovery.json"  # written by the GCS
Handler = Callable[[web.Request], Awaitable[web.Response]]
T = TypeVar("T")


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
    return list(zip(keys, preds, values, strict=True))


def _limit(request: web.Request) -> int:
    try:
        return int(request.query.get("limit", str(schema.DEFAULT_LIMIT)))
    except ValueError:
        raise ValueError("limit must be an integer") from None


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in ("1", "true", "yes")


def summary_envelope(summary: dict[str, Any]) -> web.Response:
    """Ray's SummaryApiResponse around one cluster-wide summary."""
    total = summary.get("total_tasks", summary.get("total_actors", summary.get("total_objects")))
    return envelope(
        {
            "result": {
                "total": total,
                "num_after_truncation": total,
                "num_filtered": total,
                "result": {"node_id_to_summary": {"cluster": summary}},
                "partial_failure_warning": summary.pop("partial_failure_warning", ""),
                "warnings": None,
            }
        }
    )


def routes(link: ClusterLink, session_dir: str, started: float) -> list[web.RouteDef]:
    """The State API's and the cluster views' route table."""

    async def query(fn: Callable[[StateQuery], Awaitable[T]], timeout: float = 30) -> T:
        token = node.token_for(link.gcs_address) if auth.enabled() else None
        async with StateQuery(link.gcs_address, token, timeout) as q:
            return await asyncio.wait_for(fn(q), timeout)

    def answer(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
        """Bad input (ValueError from the schema's checks) is a 400 with its message."""

        async def wrapped(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except ValueError as e:
                return error(400, str(e))
            except asyncio.TimeoutError:
                return error(504, f"{request.path}: the cluster did not answer in time")

        return wrapped

    def listing(resource: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            filters, limit = parse_filters(request.query), _limit(request)
            detail = _flag(request, "detail")
            result = await query(lambda q: q.list_resource(resource, filters, limit, detail))
            result.setdefault("partial_failure_warning", "")
            result.setdefault("warnings", None)
            return envelope({"result": result})

        return answer(handler)

    def summarize(resource: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return summary_envelope(await query(lambda q: q.summarize(resource)))

        return answer(handler)

    async def timeline(request: web.Request) -> web.Response:
        # Ray's route: the Chrome trace events as JSON, an attachment with download=1.
        events = chrome_trace.chrome_events(await query(lambda q: q.timeline_tasks()))
        headers = {}
        if request.query.get("download") == "1":
            name = f"timeline-{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return web.json_response(events, headers=headers)

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
        ns = await link.gcs("get_nodes")
        total: dict[str, float] = {}
        avail: dict[str, float] = {}
        for n in ns:
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
                        "activeNodes": {"node": sum(1 for n in ns if n.get("Alive"))},
                        "failedNodes": [rows.node(n) for n in ns if not n.get("Alive")],
                    },
                }
            }
        )

    async def nodes_summary(request: web.Request) -> web.Response:
        raw = await link.gcs("get_nodes")
        return envelope({"summary": [rows.node_summary(n) for n in raw]})

    async def logical_actors(request: web.Request) -> web.Response:
        actors = [rows.actor(a) for a in await link.gcs("list_actors")]
        return envelope({"actors": {a["actor_id"]: a for a in actors}})

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

    table = [web.get(f"/api/v0/{name}", listing(name)) for name in schema.RESOURCES]
    table += [web.get(f"/api/v0/{n}/summarize", summarize(n)) for n in schema.SUMMARY_RESOURCES]
    table += [
        web.get("/api/v0/tasks/timeline", answer(timeline)),
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

"""State API queries, async: the one place that asks the cluster (GCS, raylets).

The Python functions (``api.py``), the CLI and the dashboard's HTTP routes all call
``StateQuery``. The GCS answers for tasks, actors, nodes, jobs and placement groups,
filtering at the source before the limit; workers, objects and logs come from each
alive node's raylet, filtered here. Answers keep Ray's list envelope: ``total``,
``num_after_truncation``, ``num_filtered``, ``result``, ``partial_failure_warning``.
"""

from __future__ import annotations

import asyncio
import fnmatch
from typing import Any

import aioray._private.core.state_schema as schema
from aioray._private.node import node
from aioray._private.rpc import rpc

GCS_RESOURCES = ("tasks", "actors", "nodes", "jobs", "placement_groups")


class StateQuery:
    """A connection to one cluster's GCS for State API queries (``async with``)."""

    def __init__(self, gcs_address: str, token: str | None = None, timeout: float = 30) -> None:
        self.gcs_address = gcs_address
        self.token = token
        self.timeout = timeout
        self.gcs: rpc.Connection | None = None
        self._raylets: dict[tuple[str, int], rpc.Connection] = {}

    async def __aenter__(self) -> StateQuery:
        host, port = node.split_address(self.gcs_address)
        self.gcs, _ = await rpc.connect(
            host, port, hello={"role": "client"}, timeout=self.timeout, token=self.token
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for conn in [self.gcs, *self._raylets.values()]:
            if conn is not None:
                conn.close()

    async def _call(self, method: str, body: Any = None) -> Any:
        assert self.gcs is not None, "use StateQuery in 'async with'"
        return await self.gcs.call(method, body)

    # -- raylets ------------------------------------------------------------------------
    async def nodes(self) -> list[dict[str, Any]]:
        return list(await self._call("get_nodes"))

    async def _raylet(self, n: dict[str, Any]) -> rpc.Connection:
        key = (n["NodeManagerAddress"], int(n["NodeManagerPort"]))
        conn = self._raylets.get(key)
        if conn is None or conn.is_closed:
            conn, _ = await rpc.connect(
                *key, hello={"role": "client"}, timeout=self.timeout, token=self.token
            )
            self._raylets[key] = conn
        return conn

    async def ask_raylets(
        self, method: str, body: Any = None, node_id: str | None = None
    ) -> tuple[list[tuple[dict[str, Any], Any]], list[str]]:
        """(node, answer) of every alive node (or ``node_id``'s), and the nodes that failed."""
        nodes = [
            n
            for n in await self.nodes()
            if n["Alive"] and (node_id is None or n["NodeID"] == node_id)
        ]

        async def ask(n: dict[str, Any]) -> Any:
            return await (await self._raylet(n)).call(method, body)

        answers = await asyncio.gather(*[ask(n) for n in nodes], return_exceptions=True)
        ok = [(n, a) for n, a in zip(nodes, answers, strict=True) if not isinstance(a, Exception)]
        failed = [
            f"node {n['NodeID']} ({n['NodeManagerAddress']}): {a}"
            for n, a in zip(nodes, answers, strict=True)
            if isinstance(a, Exception)
        ]
        return ok, failed

    # -- list, get, summarize -------------------------------------------------------------
    async def list_resource(
        self, resource: str, filters: Any = None, limit: int = 100, detail: bool = False
    ) -> dict[str, Any]:
        """Ray's ListApiResponse as a dict (bad input: ValueError naming the choices)."""
        resource = schema.check_resource(resource)
        checked = schema.check_query(resource, filters, limit)
        if resource in GCS_RESOURCES:
            wire = [list(f) for f in filters or ()]
            answer: dict[str, Any] = await self._call("state_list", [resource, wire, limit, detail])
            missing = answer.get("num_tasks_evicted", 0) + answer.get(
                "num_status_task_events_dropped", 0
            )
            answer["total"] += missing  # Ray counts what was dropped as truncated
            return answer
        rows, failed = await self._raylet_rows(resource)
        answer = schema.filter_rows(rows, resource, checked, limit, detail)
        answer["partial_failure_warning"] = "; ".join(failed)
        return answer

    async def _raylet_rows(self, resource: str) -> tuple[list[dict[str, Any]], list[str]]:
        if resource == "workers":
            answers, failed = await self.ask_raylets("state_workers")
            return [row for _, rows in answers for row in rows], failed
        answers, failed = await self.ask_raylets("memory_summary")
        return [row for _, summary in answers for row in object_rows(summary)], failed

    async def get(self, resource: str, ident: str) -> list[dict[str, Any]]:
        """The rows whose id is ``ident`` (every attempt of a task), detailed."""
        resource = schema.check_resource(resource)
        if resource == "tasks":
            answer = await self._call("state_get_task", ident)
            return list(answer["result"])
        column = schema.ID_COLUMN[resource]
        answer = await self.list_resource(resource, [(column, "=", ident)], schema.MAX_LIMIT, True)
        return list(answer["result"])

    async def summarize(self, resource: str) -> dict[str, Any]:
        """Ray's summaries: tasks by function, actors by class, objects by call site."""
        resource = schema.check_resource(resource, schema.SUMMARY_RESOURCES)
        if resource in ("tasks", "actors"):
            return dict(await self._call("state_summary", resource))
        rows, failed = await self._raylet_rows("objects")
        summary = object_summary(rows)
        summary["partial_failure_warning"] = "; ".join(failed)
        return summary

    async def timeline_tasks(self) -> list[list[Any]]:
        """Every task record the GCS keeps, detailed (no 10,000 cap)."""
        answer = await self._call("state_list_all_tasks")
        return list(answer)

    # -- logs -----------------------------------------------------------------------------
    async def list_logs(
        self, node_id: str | None = None, glob_filter: str | None = None
    ) -> dict[str, list[str]]:
        """Log file names per node id (those matching ``glob_filter``)."""
        answers, _ = await self.ask_raylets("list_logs", None, node_id)
        return {
            n["NodeID"]: [f for f in names if not glob_filter or fnmatch.fnmatch(f, glob_filter)]
            for n, names in answers
        }

    async def read_log(
        self, node_id: str, filename: str, tail: int, offset: int | None = None
    ) -> dict[str, Any]:
        answers, failed = await self.ask_raylets("read_log", [filename, tail, offset], node_id)
        if not answers:
            raise ValueError(
                f"cannot read {filename!r} on node {node_id}: {'; '.join(failed) or 'no such node'}"
            )
        return dict(answers[0][1])


def object_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray's ObjectState rows from one raylet's ``memory_summary`` (memory_report.py)."""
    store = summary.get("store") or {}
    rows = []
    for p in summary.get("processes", []):
        for oid, size, kind, _owned, _borrowers, _where in p["rows"]:
            if size < 0 and oid in store:
                size = store[oid][0]
            rows.append(
                {
                    "object_id": oid.hex(),
                    "object_size": size if size >= 0 else None,
                    "task_status": "FINISHED" if size >= 0 else "PENDING",
                    "reference_type": kind,
                    "call_site": "disabled",
                    "type": str(p["mode"]).upper(),
                    "pid": p["pid"],
                    "ip": p["ip"],
                }
            )
    return rows


def object_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray's ObjectSummaries, by call site (call sites are not recorded: one group)."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        g = groups.setdefault(
            row["call_site"],
            {
                "total_objects": 0,
                "total_size_mb": 0.0,
                "total_num_workers": 0,
                "total_num_nodes": 0,
                "task_state_counts": {},
                "ref_type_counts": {},
                "_pids": set(),
                "_ips": set(),
            },
        )
        g["total_objects"] += 1
        g["total_size_mb"] += (row["object_size"] or 0) / 1024**2
        g["_pids"].add(row["pid"])
        g["_ips"].add(row["ip"])
        for key, value in (
            ("task_state_counts", "task_status"),
            ("ref_type_counts", "reference_type"),
        ):
            g[key][row[value]] = g[key].get(row[value], 0) + 1
    for g in groups.values():
        g["total_num_workers"] = len(g.pop("_pids"))
        g["total_num_nodes"] = len(g.pop("_ips"))
    return {
        "summary": groups,
        "total_objects": sum(g["total_objects"] for g in groups.values()),
        "total_size_mb": sum(g["total_size_mb"] for g in groups.values()),
        "callsite_enabled": False,
        "summary_by": "callsite",
    }

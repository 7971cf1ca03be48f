"""The GCS's State API handlers: its tables as Ray's state rows, filtered before the limit.

``state_list [resource, filters, limit, detail]`` answers for tasks (the task table,
``task_events.py``), actors, nodes, jobs (``job_rows.py``) and placement groups;
``state_get_task``, ``state_summary`` and ``state_list_all_jobs`` (every job row
whole, for the Jobs API's ``GET /api/jobs/``) too. Filters are applied here, at the source,
to every row, and the answer says how many rows there were, how many matched and how
many came back, so a client can tell a truncated answer from a complete one. Workers
and objects live on the raylets; the client asks them (aioray/util/state/query.py).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgpack
from aioray.daemons.gcs.job_rows import job_rows
from aioray.daemons.gcs.task_events import TaskTable

import aioray._private.core.state_schema as schema
from aioray._private.owner.task_events import FAILED, FINISHED
from aioray._private.rpc import rpc
from aioray._private.wire import config, job_records
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import StateList, StateListReply, TaskEventsHeader

if TYPE_CHECKING:
    from aioray.daemons.gcs.actor_manager import ActorRecord
    from aioray.daemons.gcs.server import GcsServer


def _hex(b: Any) -> str | None:
    return b.hex() if isinstance(b, (bytes, bytearray)) and b else None


def _ms(t: float | None) -> int | None:
    return int(t * 1000) if t else None


def actor_row(rec: ActorRecord) -> dict[str, Any]:
    """Ray's ActorState of one actor record."""
    state = rec.state
    if state == "DEAD" and rec.death:
        cause: dict[str, Any] | None = {"error_message": rec.death}
    else:
        cause = None
    pg = rec.spec.get("pg")
    return {
        "actor_id": rec.aid.hex(),
        "class_name": rec.meta.get("cls", ""),
        "state": state,
        "job_id": _hex(rec.spec.get("job")),
        "name": rec.name or "",
        "node_id": _hex(rec.node_id),
        "pid": rec.pid or None,
        "ray_namespace": rec.namespace,
        "serialized_runtime_env": None,
        "required_resources": rec.hold,
        "death_cause": cause,
        "is_detached": rec.detached,
        "placement_group_id": _hex(pg[0]) if pg else None,
        "repr_name": "",
        "num_restarts": rec.num_restarts,
        "num_restarts_due_to_lineage_reconstruction": 0,
    }


def node_row(node: dict[str, Any]) -> dict[str, Any]:
    alive = node["Alive"]
    return {
        "node_id": node["NodeID"],
        "node_ip": node["NodeManagerAddress"],
        "is_head_node": bool(node.get("IsHead")),
        "state": "ALIVE" if alive else "DEAD",
        "state_message": None if alive else node.get("DeathReasonMessage"),
        "node_name": node.get("NodeName", ""),
        "resources_total": node.get("Resources", {}),
        "resources_available": node.get("Available", {}) if alive else {},
        "labels": node.get("Labels", {}),
        "start_time_ms": _ms(node.get("StartTime")),
        "end_time_ms": _ms(node.get("EndTime")),
    }


def placement_group_row(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "placement_group_id": rec["id"].hex(),
        "name": rec.get("name", ""),
        "creator_job_id": _hex(rec.get("job")),
        "state": rec["state"],
        "bundles": [
            {
                "bundle_id": {"placement_group_id": rec["id"].hex(), "bundle_index": i},
                "unit_resources": b,
                "node_id": _hex(n),
            }
            for i, (b, n) in enumerate(zip(rec["bundles"], rec["nodes"], strict=False))
        ],
        "is_detached": rec.get("detached", False),
        "stats": {"scheduling_state": rec["state"], "strategy": rec.get("strategy")},
    }


def _timeline_row(r: Any) -> list[Any]:
    return [
        r.task_id.hex(),
        r.attempt_number,
        r.name,
        r.type,
        r.node_id,
        r.worker_pid,
        r.state,
        r.pairs(),
    ]


class StateService:
    """The State API over the GCS's tables (one per GCS)."""

    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.tasks = TaskTable(config.TASK_EVENTS_MAX_NUM_TASK_IN_GCS)
        self.jobs: collections.OrderedDict[bytes, dict[str, Any]] = collections.OrderedDict()
        self._merging: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<StateService {self.tasks!r} jobs={len(self.jobs)}>"

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "add_task_events": self.handle_add_task_events,
            "state_list": self.handle_state_list,
            "state_get_task": self.handle_state_get_task,
            "state_summary": self.handle_state_summary,
            "state_list_all_tasks": self.handle_state_list_all_tasks,
            "state_list_all_jobs": self.handle_state_list_all_jobs,
        }

    def job_started(self, job_id: bytes, conn: rpc.Connection, info: dict[str, Any]) -> None:
        self.jobs[job_id] = info
        conn.on_close.append(lambda _: info.setdefault("end", time.time()))

    def handle_add_task_events(
        self, conn: rpc.Connection, header: TaskEventsHeader, bufs: list[Buffer]
    ) -> None:
        """Notice from an owner or executor: header = counts (sent, dropped) and new
        task descriptions, buffer 0 = a msgpack blob of the rows with errors, buffer 1
        the transition rows (task_events.ROW), buffer 2 the first rows (INFO), merged
        later (on a query or past 16 MiB)."""
        if not bufs:
            return
        rows = bytes(bufs[1]) if len(bufs) > 1 else b""
        infos = bytes(bufs[2]) if len(bufs) > 2 else b""
        if self.tasks.receive(header, bytes(bufs[0]), rows, infos) and self._merging is None:
            self._merging = asyncio.ensure_future(self._merge())  # too much unmerged

    def creation_ended(self, spec: dict[str, Any], error: tuple[str, str] | None) -> None:
        """An actor's creation task ended: FINISHED when the actor first became ALIVE, or
        FAILED (Ray's error type, message) if it died before. The GCS drives creation,
        so it records the outcome, as Ray's owner does on the GCS's reply; the worker
        that ran ``__init__`` may be killed before its own events leave it."""
        if spec.get("noev") or config.TASK_EVENTS_REPORT_INTERVAL_MS <= 0:
            return
        row = (spec["tid"], spec.get("at", 0), FINISHED if error is None else FAILED, time.time())
        blob = msgpack.packb([row + error if error else row], use_bin_type=True)
        self.tasks.receive({"n": 1}, blob)

    async def merged(self) -> TaskTable:
        """The task table with every batch received merged, a few thousand rows at a
        time between other requests (one merge at a time; later callers join it)."""
        if self._merging is None:
            self._merging = asyncio.ensure_future(self._merge())
        await asyncio.shield(self._merging)
        return self.tasks

    async def _merge(self) -> None:
        try:
            for _ in self.tasks.merge_steps():
                await asyncio.sleep(0)
        finally:
            self._merging = None

    def _rows(self, resource: str) -> Iterable[dict[str, Any]]:
        gcs = self.gcs
        if resource == "actors":
            return (actor_row(r) for r in gcs.actors.actors.values())
        if resource == "nodes":
            return (node_row(n) for n in gcs.nodes.values())
        if resource == "placement_groups":
            return (placement_group_row(r) for r in gcs.placement_groups.groups.values())
        if resource == "jobs":
            return job_rows(self.jobs, gcs.kv.get(job_records.NAMESPACE, {}))
        raise ValueError(f"the GCS does not hold {resource}; ask the raylets")

    async def handle_state_list(
        self, conn: rpc.Connection, body: StateList, _: list[Buffer]
    ) -> StateListReply:
        """body = [resource, filters, limit, detail]; reply: the matching rows (filters
        applied before the limit) with total, filtered and truncation counts."""
        resource, filters, limit, detail = body
        resource = schema.check_resource(resource)
        checked = schema.check_query(resource, [tuple(f) for f in filters], limit)
        if resource == "tasks":
            return (await self.merged()).list(checked, limit, detail)  # the table filters faster
        return schema.filter_rows(self._rows(resource), resource, checked, limit, detail)

    async def handle_state_get_task(
        self, conn: rpc.Connection, task_id: str, _: list[Buffer]
    ) -> dict[str, object]:
        """body = a task id (hex); reply: its rows (one per attempt) and the table stats."""
        await self.merged()
        return {"result": self.tasks.get(task_id), **self.tasks.stats()}

    async def handle_state_list_all_tasks(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> list[list[object]]:
        """Every task record that ran, for the timeline (no cap but the table's own):
        [task id, attempt, name, type, node id, worker pid, state, [(state, time s)]]."""
        await self.merged()
        return [_timeline_row(r) for r in self.tasks.records.values() if r.worker_pid]

    def handle_state_list_all_jobs(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> list[dict[str, Any]]:
        """Every job, driver and submitted, each once and with all its fields (Ray's
        JobDetails): what the Jobs API lists, with no limit and no column projection."""
        return list(self._rows("jobs"))

    async def handle_state_summary(
        self, conn: rpc.Connection, resource: str, _: list[Buffer]
    ) -> dict[str, object]:
        """body = "tasks", "actors" or "objects"; reply: the summary Ray's summarize_* gives."""
        if resource == "tasks":
            return (await self.merged()).summary()
        if resource == "actors":
            return actor_summary(actor_row(r) for r in self.gcs.actors.actors.values())
        raise ValueError(f"no summary of {resource!r} at the GCS")


def actor_summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Ray's ActorSummaries: state counts per class."""
    summary: dict[str, Any] = {}
    total = 0
    for row in rows:
        total += 1
        entry = summary.setdefault(
            row["class_name"], {"class_name": row["class_name"], "state_counts": {}}
        )
        counts = entry["state_counts"]
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {"summary": summary, "total_actors": total, "summary_by": "class"}

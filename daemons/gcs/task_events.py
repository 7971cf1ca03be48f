"""The GCS task table: task events from owners and executors merged per (task, attempt).

Pure bookkeeping (no I/O), fed by ``add_task_events`` batches (aioray/task_events.py
has the row format). Both sides report the same attempt: the owner its creation,
scheduling and final outcome, the executor where it ran (node, worker, pid), when it
started and ended, and its error. Rows arrive in any order, so a record's state is the
furthest one reported (FAILED beats FINISHED), each state keeps its first timestamp,
and a field once known is never blanked.

At most ``task_events_max_num_task_in_gcs`` records are kept: the oldest go first,
counted in ``evicted``; events the processes dropped from full buffers arrive as
counts in ``dropped``. Both are reported with every answer. Per (function, type)
state counts are kept up to date on every change, so a summary costs the number of
functions, never the number of tasks.
"""

from __future__ import annotations

import builtins
import collections
from typing import Any

from aioray.task_events import EXEC, FAILED, FINISHED, RUNNING, STATE_NAMES
from aioray.util.state import schema


class TaskRecord:
    """One attempt of one task, with Ray's TaskState column names."""

    __slots__ = (
        "actor_id",
        "attempt_number",
        "error_message",
        "error_type",
        "events",
        "func_or_class_name",
        "job_id",
        "name",
        "node_id",
        "parent_task_id",
        "placement_group_id",
        "rank",
        "required_resources",
        "task_id",
        "type",
        "worker_id",
        "worker_pid",
    )

    def __init__(self, task_id: str, attempt: int) -> None:
        self.task_id = task_id
        self.attempt_number = attempt
        self.rank = -1  # index in STATE_NAMES of the furthest state reported
        self.name = self.func_or_class_name = self.type = ""
        self.job_id = self.actor_id = self.parent_task_id = self.placement_group_id = ""
        self.node_id = self.worker_id = ""
        self.worker_pid: int | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.required_resources: dict[str, float] | None = None
        self.events: list[tuple[int, float]] = []  # (state index, unix time s)

    @property
    def state(self) -> str:
        return STATE_NAMES[self.rank] if self.rank >= 0 else "NIL"

    @property
    def language(self) -> str:
        return "PYTHON"

    def time_of(self, rank: int) -> float | None:
        return next((t for r, t in self.events if r == rank), None)

    def row(self, detail: bool) -> dict[str, Any]:
        """The TaskState dict (detail columns too with ``detail``)."""
        out = {name: getattr(self, name, None) for name in schema.columns("tasks", False)}
        if detail:
            created = min((t for _, t in self.events), default=None)
            start = self.time_of(RUNNING)
            end = self.time_of(FAILED) or self.time_of(FINISHED)
            out.update(
                language="PYTHON",
                required_resources=self.required_resources,
                runtime_env_info=None,
                placement_group_id=self.placement_group_id or None,
                events=[
                    {"state": STATE_NAMES[r], "created_ms": int(t * 1000)}
                    for r, t in sorted(self.events)
                ],
                profiling_data=None,
                creation_time_ms=_ms(created),
                start_time_ms=_ms(start),
                end_time_ms=_ms(end),
                task_log_info=None,
                error_message=self.error_message,
                is_debugger_paused=None,
            )
        return out


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def _hex(b: Any) -> str:
    return b.hex() if isinstance(b, (bytes, bytearray)) else str(b or "")


class TaskTable:
    """Every task attempt the GCS knows, oldest first, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.records: collections.OrderedDict[tuple[bytes, int], TaskRecord] = (
            collections.OrderedDict()
        )
        self.evicted = 0  # records dropped to stay within capacity
        self.dropped = 0  # events the processes dropped (their buffers were full)
        # (func_or_class_name, type) -> state -> count, kept current on every change
        self.counts: dict[tuple[str, str], collections.Counter[str]] = {}

    def __repr__(self) -> str:
        return (
            f"<TaskTable tasks={len(self.records)} evicted={self.evicted} dropped={self.dropped}>"
        )

    # -- merging ---------------------------------------------------------------------------
    def add_batch(self, batch: dict[str, Any]) -> None:
        """Merge one process's batch (``add_task_events``)."""
        self.dropped += int(batch.get("dropped") or 0)
        where = (_hex(batch.get("node")), _hex(batch.get("worker")), batch.get("pid"))
        for row in batch.get("rows") or ():
            self.add(row, where)
        self.evict()

    def add(self, row: list[Any], where: tuple[str, str, int | None]) -> TaskRecord:
        """Merge one row [task_id, attempt, code, time, extra]; ``where`` the sender's
        (node id, worker id, pid), which are the task's for the executor's rows."""
        tid, attempt, code, ts, extra = row
        key = (tid, attempt)
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = TaskRecord(_hex(tid), attempt)
        else:
            self._count(rec, -1)
        executor = code >= EXEC
        rank = code - EXEC if executor else code
        if executor:
            rec.node_id, rec.worker_id, rec.worker_pid = where
        if not any(r == rank for r, _ in rec.events):
            rec.events.append((rank, ts))
        if rank > rec.rank:
            rec.rank = rank
        if extra is not None:
            if rank == FAILED:
                rec.error_type, rec.error_message = extra[0], extra[1]
            else:
                self._describe(rec, extra)
        self._count(rec, +1)
        return rec

    @staticmethod
    def _describe(rec: TaskRecord, info: list[Any]) -> None:
        name, kind, job, actor, parent, resources, pg = info
        rec.name = rec.func_or_class_name = name or rec.name
        rec.type = kind or rec.type
        rec.job_id = _hex(job) or rec.job_id
        rec.actor_id = _hex(actor) or rec.actor_id
        rec.parent_task_id = _hex(parent) or rec.parent_task_id
        rec.required_resources = resources or rec.required_resources
        rec.placement_group_id = _hex(pg) or rec.placement_group_id

    def _count(self, rec: TaskRecord, delta: int) -> None:
        key = (rec.func_or_class_name, rec.type)
        counter = self.counts.get(key)
        if counter is None:
            counter = self.counts[key] = collections.Counter()
        counter[rec.state] += delta
        if delta < 0 and counter[rec.state] <= 0:
            del counter[rec.state]
            if not counter:
                del self.counts[key]

    def evict(self) -> None:
        records = self.records
        while len(records) > self.capacity:
            _, rec = records.popitem(last=False)
            self._count(rec, -1)
            self.evicted += 1

    # -- queries ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {"num_tasks_evicted": self.evicted, "num_status_task_events_dropped": self.dropped}

    def list(self, filters: list[schema.Filter], limit: int, detail: bool) -> dict[str, Any]:
        """Rows passing ``filters`` (applied to every record, before the limit), newest first."""
        match = schema.matcher(filters, lambda rec, key: getattr(rec, key, None))
        result = []
        matched = 0
        for rec in reversed(self.records.values()):
            if match(rec):
                matched += 1
                if matched <= limit:
                    result.append(rec.row(detail))
        return {
            "total": len(self.records),
            "num_after_truncation": len(self.records),
            "num_filtered": matched,
            "result": result,
            **self.stats(),
        }

    def get(self, task_id: str) -> builtins.list[dict[str, Any]]:
        """Every attempt of one task (hex id), detailed."""
        try:
            tid = bytes.fromhex(task_id)
        except ValueError:
            return []
        found = []
        attempt = 0
        while (tid, attempt) in self.records:
            found.append(self.records[(tid, attempt)].row(True))
            attempt += 1
        return found

    def summary(self) -> dict[str, Any]:
        """Ray's TaskSummaries by function name, from the running counts."""
        summary: dict[str, Any] = {}
        totals = {"NORMAL_TASK": 0, "ACTOR_TASK": 0, "ACTOR_CREATION_TASK": 0}
        for (name, kind), counter in self.counts.items():
            entry = summary.setdefault(
                name, {"func_or_class_name": name, "type": kind, "state_counts": {}}
            )
            for state, n in counter.items():
                entry["state_counts"][state] = entry["state_counts"].get(state, 0) + n
                if kind in totals:
                    totals[kind] += n
        return {
            "summary": summary,
            "total_tasks": totals["NORMAL_TASK"],
            "total_actor_tasks": totals["ACTOR_TASK"],
            "total_actor_scheduled": totals["ACTOR_CREATION_TASK"],
            "summary_by": "func_name",
            **self.stats(),
        }

"""The GCS task table: task events from owners and executors merged per (task, attempt).

Pure bookkeeping (no I/O), fed by ``add_task_events`` batches (aioray/task_events.py
has the row format). A batch is kept packed as it arrived and merged only when a
query needs the table (or the unmerged batches pass MAX_PENDING_BYTES): the GCS does
no per-task work while tasks run, and batches that would only be evicted again are
never merged. Both sides report the same attempt: the owner its creation,
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

import msgpack

import aioray.util.state.schema as schema
from aioray.task_events import EXEC, FAILED, FINISHED, PENDING_ARGS_AVAIL, RUNNING, STATE_NAMES

# Evicted keys remembered at least (a small table churns through many).
MIN_GONE_KEYS = 10_000
# Batches kept unmerged at most (then merged even if nobody asks).
MAX_PENDING_BYTES = 64 * 1024 * 1024


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
        # Batches received and not merged yet: (sender, new tasks, msgpack rows).
        self.pending: list[tuple[tuple[str, str, int | None], int, bytes]] = []
        self.pending_bytes = 0
        self.max_pending_bytes = MAX_PENDING_BYTES
        self.evicted = 0  # records dropped to stay within capacity
        # The last evicted (task, attempt) keys: their late rows are ignored.
        self.gone_capacity = max(self.capacity, MIN_GONE_KEYS)
        self.gone: collections.OrderedDict[tuple[bytes, int], None] = collections.OrderedDict()
        self.dropped = 0  # events the processes dropped (their buffers were full)
        # (func_or_class_name, type, state index) -> tasks, kept current on every change
        self.counts: dict[tuple[str, str, int], int] = {}

    def __repr__(self) -> str:
        return (
            f"<TaskTable tasks={len(self.records)} evicted={self.evicted} dropped={self.dropped}>"
        )

    # -- receiving and merging -----------------------------------------------------------
    def receive(self, header: dict[str, Any], blob: bytes) -> None:
        """Keep one process's batch (``add_task_events``) as it came: merged when asked."""
        self.dropped += int(header.get("dropped") or 0)
        where = (_hex(header.get("node")), _hex(header.get("worker")), header.get("pid"))
        self.pending.append((where, int(header.get("new") or 0), blob))
        self.pending_bytes += len(blob)
        if self.pending_bytes > self.max_pending_bytes:
            self.merge()

    def merge(self) -> None:
        """Merge the batches received since the last query, oldest first.

        Batches older than those that bring ``capacity`` new tasks would be evicted
        by them: their tasks are counted as evicted without being merged."""
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        newer = 0
        first = 0
        for i in range(len(pending) - 1, -1, -1):
            newer += pending[i][1]
            if newer >= self.capacity:
                first = i
                break
        gone = self.gone
        for _, _, blob in pending[:first]:  # only their keys: late rows must not revive them
            for row in msgpack.unpackb(blob, use_list=False):
                if row[2] == PENDING_ARGS_AVAIL and (row[0], row[1]) not in self.records:
                    gone[(row[0], row[1])] = None
                    self.evicted += 1
        while len(gone) > self.gone_capacity:
            gone.popitem(last=False)
        for where, _, blob in pending[first:]:
            for row in msgpack.unpackb(blob, use_list=False):
                self.add(row, where)
        self.evict()

    def add_batch(self, rows: Any, where: tuple[str, str, int | None] = ("", "", None)) -> None:
        """Merge rows at once (tests, benchmarks)."""
        for row in rows:
            self.add(row, where)
        self.evict()

    def add(self, row: Any, where: tuple[str, str, int | None]) -> TaskRecord | None:
        """Merge one row ``(task_id, attempt, code, time, *extra)``; ``where`` is the
        sender's (node id, worker id, pid): the task's, for executor codes."""
        key = (row[0], row[1])
        rec = self.records.get(key)
        if rec is None:
            if key in self.gone:  # late rows of an evicted task must not bring it back
                return None
            rec = self.records[key] = TaskRecord(row[0].hex(), row[1])
        before = (rec.func_or_class_name, rec.type, rec.rank)
        code = row[2]
        if code >= EXEC:
            code -= EXEC
            rec.node_id, rec.worker_id, rec.worker_pid = where
        if len(row) > 4:
            if code == FAILED:
                rec.error_type = row[4] or rec.error_type  # (never blanked)
                rec.error_message = row[5] or rec.error_message
            else:
                self._describe(rec, row)
        events = rec.events
        if code > rec.rank:
            rec.rank = code
            events.append((code, row[3]))
        elif all(r != code for r, _ in events):  # each state keeps its first time
            events.append((code, row[3]))
        after = (rec.func_or_class_name, rec.type, rec.rank)
        if after != before:
            counts = self.counts
            if before[2] >= 0:
                counts[before] -= 1
            counts[after] = counts.get(after, 0) + 1
        return rec

    @staticmethod
    def _describe(rec: TaskRecord, row: Any) -> None:
        name, kind, job, actor, parent, resources, pg = row[4:11]
        rec.name = rec.func_or_class_name = name or rec.name
        rec.type = kind or rec.type
        rec.job_id = _hex(job) or rec.job_id
        rec.actor_id = _hex(actor) or rec.actor_id
        rec.parent_task_id = _hex(parent) or rec.parent_task_id
        rec.required_resources = resources or rec.required_resources
        rec.placement_group_id = _hex(pg) or rec.placement_group_id

    def evict(self) -> None:
        records = self.records
        while len(records) > self.capacity:
            key, rec = records.popitem(last=False)
            self.gone[key] = None
            if len(self.gone) > self.gone_capacity:
                self.gone.popitem(last=False)
            if rec.rank >= 0:
                self.counts[(rec.func_or_class_name, rec.type, rec.rank)] -= 1
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
        for (name, kind, rank), n in self.counts.items():
            if n <= 0:
                continue
            entry = summary.setdefault(
                name, {"func_or_class_name": name, "type": kind, "state_counts": {}}
            )
            state = STATE_NAMES[rank]
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

"""The GCS task table: task events from owners and executors merged per (task, attempt).

Pure bookkeeping (no I/O), fed by ``add_task_events`` batches (aioray/task_events.py
has the row format). A batch is kept packed as it arrived and merged only when a
query needs the table (or the unmerged batches pass MAX_PENDING_BYTES): the GCS does
no per-task work while tasks run, and batches that would only be evicted again are
never merged. Both sides report the same attempt: the owner its creation,
scheduling and final outcome, the executor where it ran (node, worker, pid), when it
started and ended, and its error. Rows arrive in any order, so a record's state is the
furthest one reported (FAILED beats FINISHED), each state keeps its first timestamp,
and a field once known is never blanked. The executor's transient states (blocked in
ray.get or ray.wait) are the exception: they come in order from the one thread that
runs the task, and are shown instead of RUNNING until its next RUNNING row.

At most ``task_events_max_num_task_in_gcs`` records are kept: the oldest go first,
counted in ``evicted``; events the processes dropped from full buffers arrive as
counts in ``dropped``. Both are reported with every answer. Per (function, type)
state counts are kept up to date on every change, so a summary costs the number of
functions, never the number of tasks.
"""

from __future__ import annotations

import builtins
import collections
import itertools
import operator
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

import aioray._private.core.state_schema as schema
from aioray._private.owner.task_events import (
    EXEC,
    FAILED,
    FINISHED,
    INFO,
    NO_PARENT,
    PENDING_ARGS_AVAIL,
    ROW,
    RUNNING,
    RUNNING_IN_RAY_GET,
    STATE_NAMES,
)
from aioray._private.wire.schema import TaskEventsHeader

# Evicted keys remembered at least (a small table churns through many).
MIN_GONE_KEYS = 10_000
# Batches kept unmerged at most (then merged even if nobody asks).
MAX_PENDING_BYTES = 16 * 1024 * 1024
# Senders whose task descriptions are kept (the least recently heard from go first).
MAX_SENDERS = 10_000
# A first row whose description never arrived (its sender's batch was lost).
UNKNOWN: tuple[Any, ...] = ("<unknown>", "NORMAL_TASK", b"", None, None, None)


class TaskRecord:
    """One attempt of one task. Ids are kept as bytes (hex only in answers); the
    events are a flat list ``[state index, unix time s, ...]``."""

    __slots__ = (
        "actor_id",
        "attempt_number",
        "blocked",
        "error_message",
        "error_type",
        "events",
        "job_id",
        "name",
        "node_id",
        "parent_task_id",
        "placement_group_id",
        "rank",
        "required_resources",
        "shown",
        "task_id",
        "type",
        "worker_id",
        "worker_pid",
    )

    def __init__(self, task_id: bytes, attempt: int) -> None:
        self.task_id = task_id
        self.attempt_number = attempt
        self.rank = -1  # index in STATE_NAMES of the furthest state reported
        self.blocked = 0  # a transient state reported since the last RUNNING row, or 0
        self.shown = -1  # the state shown (and counted, filtered): rank, or blocked
        self.name = self.type = ""
        self.job_id = self.actor_id = self.parent_task_id = self.placement_group_id = None
        self.node_id = self.worker_id = ""
        self.worker_pid: int | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.required_resources: dict[str, float] | None = None
        self.events: list[Any] = []

    @property
    def state(self) -> str:
        return STATE_NAMES[self.shown] if self.shown >= 0 else "NIL"

    def time_of(self, rank: int) -> float | None:
        events = self.events
        for i in range(0, len(events), 2):
            if events[i] == rank:
                return float(events[i + 1])
        return None

    def pairs(self) -> list[tuple[int, float]]:
        """(state index, time) of each state reported, in time order."""
        e = self.events
        return sorted(zip(e[::2], e[1::2], strict=True), key=lambda p: p[1])

    def row(self, detail: bool) -> dict[str, Any]:
        """The TaskState dict (detail columns too with ``detail``)."""
        out = {
            "task_id": self.task_id.hex(),
            "attempt_number": self.attempt_number,
            "name": self.name,
            "state": self.state,
            "job_id": _hex(self.job_id),
            "actor_id": _hex(self.actor_id),
            "type": self.type,
            "func_or_class_name": self.name,
            "parent_task_id": _hex(self.parent_task_id),
            "node_id": self.node_id,
            "worker_id": self.worker_id,
            "worker_pid": self.worker_pid,
            "error_type": self.error_type,
        }
        if detail:
            pairs = self.pairs()
            end = self.time_of(FAILED) or self.time_of(FINISHED)
            out.update(
                language="PYTHON",
                required_resources=self.required_resources,
                runtime_env_info=None,
                placement_group_id=_hex(self.placement_group_id) or None,
                events=[{"state": STATE_NAMES[r], "created_ms": int(t * 1000)} for r, t in pairs],
                profiling_data=None,
                creation_time_ms=_ms(pairs[0][1] if pairs else None),
                start_time_ms=_ms(self.time_of(RUNNING)),
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


# Columns kept as bytes: a filter compares the bytes its hex value names.
BYTE_COLUMNS = ("task_id", "job_id", "actor_id", "parent_task_id", "placement_group_id")


def record_predicate(filters: list[schema.Filter]) -> Callable[[TaskRecord], bool] | None:
    """A fast test of a record against ``filters`` (None: every record passes)."""
    tests: list[Callable[[TaskRecord], bool]] = []
    for key, predicate, value in filters:
        tests.append(_column_test(key, value, predicate == "="))
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda rec: all(t(rec) for t in tests)


def _column_test(key: str, value: str, equal: bool) -> Callable[[TaskRecord], bool]:
    if key == "state":
        rank = STATE_NAMES.index(value.upper()) if value.upper() in STATE_NAMES else -2
        return (lambda r: r.shown == rank) if equal else (lambda r: r.shown != rank)
    if key in BYTE_COLUMNS:
        try:
            raw: bytes | None = bytes.fromhex(value) if value else None
        except ValueError:
            raw = b"\xff" * 64  # matches nothing
        get = operator.attrgetter(key)
        return (lambda r: (get(r) or None) == raw) if equal else (lambda r: (get(r) or None) != raw)
    attr = {"func_or_class_name": "name"}.get(key, key)

    def text_of(r: TaskRecord) -> str:
        return schema.text(getattr(r, attr, "PYTHON" if key == "language" else None))

    return (lambda r: text_of(r) == value) if equal else (lambda r: text_of(r) != value)


class Batch:
    """One process's ``add_task_events`` batch, kept as it came until merged."""

    __slots__ = ("blob", "descriptions", "infos", "new", "rows", "where")

    def __init__(
        self,
        where: tuple[str, str, int | None],
        new: int,
        blob: bytes,
        rows: bytes,
        infos: bytes,
        descriptions: dict[int, tuple[Any, ...]],
    ) -> None:
        self.where, self.new, self.blob = where, new, blob
        self.rows, self.infos, self.descriptions = rows, infos, descriptions

    def rows_in_order(self) -> Iterator[tuple[Any, ...]]:
        """Every row as ``(task_id, attempt, code, time, *extra)``: first rows (with
        their description looked up), then transitions, then rows with errors."""
        descriptions = self.descriptions
        for task_id, t, parent, number in INFO.iter_unpack(self.infos):
            name, kind, job, actor, shape, pg = descriptions.get(number, UNKNOWN)
            parent_id = None if parent == NO_PARENT else parent
            yield (task_id, 0, PENDING_ARGS_AVAIL, t, name, kind, job, actor, parent_id, shape, pg)
        for task_id, code, attempt, t in ROW.iter_unpack(self.rows):
            yield (task_id, attempt, code, t)
        if self.blob:
            yield from msgpack.unpackb(self.blob, use_list=False)


class TaskTable:
    """Every task attempt the GCS knows, oldest first, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.records: collections.OrderedDict[tuple[bytes, int], TaskRecord] = (
            collections.OrderedDict()
        )
        # Batches received and not merged yet: (sender, new tasks, msgpack rows with
        # errors, transition rows, first rows, the sender's descriptions).
        self.pending: list[Batch] = []
        # Each sender's task descriptions by index (first rows name them), newest last.
        self.descriptions: collections.OrderedDict[str, dict[int, tuple[Any, ...]]] = (
            collections.OrderedDict()
        )
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
    def receive(
        self, header: TaskEventsHeader, blob: bytes, rows: bytes = b"", infos: bytes = b""
    ) -> bool:
        """Keep one process's batch (``add_task_events``: new task descriptions in the
        header, the msgpack blob of rows with errors, the transition and first rows) as
        it came, to merge when asked; True when the unmerged batches have grown past
        MAX_PENDING_BYTES."""
        for data, layout, what in ((rows, ROW, "rows"), (infos, INFO, "first rows")):
            if len(data) % layout.size:
                raise ValueError(
                    f"task event {what} of {len(data)} bytes: not whole {layout.size}-byte rows"
                )
        self.dropped += int(header.get("dropped") or 0)
        where = (_hex(header.get("node")), _hex(header.get("worker")), header.get("pid"))
        known = self.descriptions.get(where[1])
        if known is None:
            known = self.descriptions[where[1]] = {}
            while len(self.descriptions) > MAX_SENDERS:
                self.descriptions.popitem(last=False)
        else:
            self.descriptions.move_to_end(where[1])
        for number, *description in header.get("descs") or ():
            known[int(number)] = tuple(description)
        self.pending.append(Batch(where, int(header.get("new") or 0), blob, rows, infos, known))
        self.pending_bytes += len(blob) + len(rows) + len(infos)
        return self.pending_bytes > self.max_pending_bytes

    def merge(self) -> None:
        """Merge every batch received so far (at once)."""
        for _ in self.merge_steps():
            pass

    def merge_steps(self, rows_per_step: int = 2000) -> Iterator[None]:
        """Merge the batches received so far, oldest first, pausing (yielding) after
        about ``rows_per_step`` rows so the caller's loop can serve others meanwhile.

        Batches older than those that bring ``capacity`` new tasks would be evicted
        by them: their tasks are counted as evicted without being merged."""
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        newer = 0
        first = 0
        for i in range(len(pending) - 1, -1, -1):
            newer += pending[i].new
            if newer >= self.capacity:
                first = i
                break
        gone = self.gone
        for batch in pending[:first]:  # only their keys: late rows must not revive them
            for task_id, *_ in INFO.iter_unpack(batch.infos):
                if (task_id, 0) not in self.records:
                    gone[(task_id, 0)] = None
                    self.evicted += 1
            yield
        while len(gone) > self.gone_capacity:
            gone.popitem(last=False)
        add = self.add
        for batch in pending[first:]:
            for n, row in enumerate(batch.rows_in_order(), 1):
                add(row, batch.where)
                if not n % rows_per_step:
                    self.evict()
                    yield
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
            rec = self.records[key] = TaskRecord(row[0], row[1])
        old_shown, old_name, old_type = rec.shown, rec.name, rec.type
        code = row[2]
        if code >= EXEC:
            code -= EXEC
            rec.node_id, rec.worker_id, rec.worker_pid = where
        if len(row) > 4:
            if code == FAILED:
                rec.error_type = row[4] or rec.error_type  # (never blanked)
                rec.error_message = row[5] or rec.error_message
            else:
                rec.name, rec.type, rec.job_id, rec.actor_id = row[4:8]
                rec.parent_task_id, shape, rec.placement_group_id = row[8:11]
                rec.required_resources = dict(shape) if shape else None
        events = rec.events
        if code >= RUNNING_IN_RAY_GET:  # transient: until the next RUNNING
            rec.blocked = code
        elif code == RUNNING:
            rec.blocked = 0
        if RUNNING_IN_RAY_GET > code > rec.rank:
            rec.rank = code
            events += (code, row[3])
        elif code not in events[::2]:  # each state keeps its first time
            events += (code, row[3])
        rec.shown = rec.blocked if rec.blocked and rec.rank == RUNNING else rec.rank
        if rec.shown != old_shown or rec.name != old_name or rec.type != old_type:
            counts = self.counts
            if old_shown >= 0:
                counts[(old_name, old_type, old_shown)] -= 1
            new = (rec.name, rec.type, rec.shown)
            counts[new] = counts.get(new, 0) + 1
        return rec

    def evict(self) -> None:
        records = self.records
        while len(records) > self.capacity:
            key, rec = records.popitem(last=False)
            self.gone[key] = None
            if len(self.gone) > self.gone_capacity:
                self.gone.popitem(last=False)
            if rec.shown >= 0:
                self.counts[(rec.name, rec.type, rec.shown)] -= 1
            self.evicted += 1

    # -- queries ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {"num_tasks_evicted": self.evicted, "num_status_task_events_dropped": self.dropped}

    def list(self, filters: list[schema.Filter], limit: int, detail: bool) -> dict[str, Any]:
        """Rows passing ``filters`` (applied to every record, before the limit), newest first."""
        test = record_predicate(filters)
        newest = reversed(self.records.values())
        if test is None:
            matched = len(self.records)
            chosen = list(itertools.islice(newest, limit))
        else:
            passing = [rec for rec in newest if test(rec)]
            matched, chosen = len(passing), passing[:limit]
        return {
            "total": len(self.records),
            "num_after_truncation": len(self.records),
            "num_filtered": matched,
            "result": [rec.row(detail) for rec in chosen],
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

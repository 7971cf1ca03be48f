"""Task events, process side: state transitions recorded cheaply, sent to the GCS in batches.

Owners (where a task is submitted) and executors (where it runs) record each
transition as one tuple appended to a deque (``CoreWorker.task_events``; ``None``
when events are off): ``(spec, code, time)`` plus, for some codes, one extra
value. Nothing else happens on the task path. Every ``task_events_report_interval_ms``
the loop drains the deque, turns the tuples into compact rows and sends them to the
GCS in one notification (``add_task_events``), with the count of events dropped
because the buffer was full (it holds at most ``task_events_max_buffer_size``).

A row is ``[task_id, attempt, code, time_s, extra]``: codes below EXEC are the
owner's, EXEC + state the executor's (the GCS adds the executor's node, worker id
and pid, sent once per batch). ``extra`` is the task's description on the first
row of each side (INFO), or the error type and message of a failure.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import TYPE_CHECKING, Any

from aioray.config import TASK_EVENTS_MAX_BUFFER_SIZE, TASK_EVENTS_REPORT_INTERVAL_MS

if TYPE_CHECKING:
    from aioray.core_worker import CoreWorker

logger = logging.getLogger(__name__)

# State codes: Ray's TaskStatus names, in the order a task goes through them.
PENDING_ARGS_AVAIL = 0
PENDING_NODE_ASSIGNMENT = 1
SUBMITTED_TO_WORKER = 2
RUNNING = 3
FINISHED = 4
FAILED = 5
STATE_NAMES = (
    "PENDING_ARGS_AVAIL",
    "PENDING_NODE_ASSIGNMENT",
    "SUBMITTED_TO_WORKER",
    "RUNNING",
    "FINISHED",
    "FAILED",
)
EXEC = 10  # executor's codes: EXEC + RUNNING, and EXEC_END / EXEC_ERROR below
OWNER_END = 20  # the owner stored the task's results: extra = the exception, or is_error
EXEC_END = 21  # the executor answered: extra = the reply body
EXEC_ERROR = 22  # the task raised: extra = the traceback text

# Ray's ErrorType names for the exceptions an owner stores as a task's failure.
ERROR_TYPES = {
    "WorkerCrashedError": "WORKER_DIED",
    "TaskCancelledError": "TASK_CANCELLED",
    "ActorDiedError": "ACTOR_DIED",
    "ActorUnavailableError": "ACTOR_UNAVAILABLE",
    "ActorUnschedulableError": "ACTOR_UNSCHEDULABLE_ERROR",
    "OutOfMemoryError": "OUT_OF_MEMORY",
    "TaskUnschedulableError": "TASK_UNSCHEDULABLE_ERROR",
    "TaskPlacementGroupRemoved": "TASK_PLACEMENT_GROUP_REMOVED",
    "OwnerDiedError": "OWNER_DIED",
    "ObjectLostError": "OBJECT_LOST",
    "RayTaskError": "TASK_EXECUTION_EXCEPTION",
    "RaySystemError": "WORKER_DIED",
}


def task_type(spec: dict[str, Any]) -> str:
    if spec.get("create"):
        return "ACTOR_CREATION_TASK"
    return "ACTOR_TASK" if "aid" in spec else "NORMAL_TASK"


def info_of(spec: dict[str, Any], resources: Any = None, parent: bytes | None = None) -> list[Any]:
    """[name, type, job id, actor id, parent task id, resources, placement group id]."""
    pg = spec.get("pg")
    return [
        spec.get("name") or "",
        task_type(spec),
        spec.get("job") or b"",
        spec.get("aid") or b"",
        parent or b"",
        resources or None,
        pg[0] if pg else b"",
    ]


def _reply_failed(body: dict[str, Any]) -> bool:
    if body.get("x") or body.get("error"):
        return True
    rets: list[Any] = body.get("r") or []
    return bool(rets) and rets[0][0] == 0 and rets[0][2] is True  # RET_INLINE, is_error


def to_row(ev: tuple[Any, ...]) -> list[Any] | None:
    """The wire row of one recorded event (None: the task opted out of events)."""
    spec = ev[0]
    if "noev" in spec:
        return None
    code = ev[1]
    extra: Any = None
    if code == PENDING_ARGS_AVAIL:
        extra = info_of(spec, ev[3], ev[4])
    elif code == EXEC + RUNNING:
        extra = info_of(spec)
    elif code == OWNER_END:
        err = ev[3]
        if isinstance(err, BaseException):
            code = FAILED
            name = type(err).__name__
            extra = [ERROR_TYPES.get(name, name), f"{name}: {err}"]
        else:
            code = FAILED if err else FINISHED
    elif code == EXEC_END:
        code = EXEC + (FAILED if _reply_failed(ev[3]) else FINISHED)
    elif code == EXEC_ERROR:
        code = EXEC + FAILED
        extra = ["TASK_EXECUTION_EXCEPTION", ev[3]]
    return [spec["tid"], spec.get("at", 0), code, ev[2], extra]


class TaskEventBuffer:
    """The recorded events of one process, and the loop that sends them to the GCS."""

    def __init__(self, cw: CoreWorker, interval_ms: float | None = None) -> None:
        self.cw = cw
        self.interval_s = (
            TASK_EVENTS_REPORT_INTERVAL_MS if interval_ms is None else interval_ms
        ) / 1000.0
        self.capacity = TASK_EVENTS_MAX_BUFFER_SIZE
        self.events: collections.deque[tuple[Any, ...]] | None = (
            collections.deque() if self.interval_s > 0 else None
        )
        self.dropped = 0  # since the last batch that reached the GCS
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        pending = len(self.events) if self.events is not None else "off"
        return f"<TaskEventBuffer pending={pending} sent={self.sent} dropped={self.dropped}>"

    def set_interval(self, interval_ms: float) -> None:
        """(before start) The cluster's setting, which the GCS tells a driver."""
        self.interval_s = interval_ms / 1000.0
        if self.interval_s <= 0:
            self.events = None
        elif self.events is None:
            self.events = collections.deque()

    def start(self) -> None:
        if self.events is not None and self._task is None:
            self._task = self.cw.loop.create_task(self._run())

    def stop(self) -> None:
        """Send what is left (best effort: only over an open GCS connection)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        gcs = self.cw.gcs
        if self.events and gcs is not None and not gcs.is_closed:
            self._send(gcs)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.events and not self.dropped:
                continue
            try:
                gcs = await self.cw.gcs_connection()
            except (ConnectionError, OSError) as e:
                logger.debug("task events wait: no GCS connection (%s)", e)
                self._trim()
                continue
            self._send(gcs)

    def _trim(self) -> None:
        events = self.events
        if events is not None and len(events) > self.capacity:
            excess = len(events) - self.capacity
            for _ in range(excess):
                events.popleft()
            self.dropped += excess

    def take_rows(self) -> list[list[Any]]:
        """Drain the buffer (oldest events dropped past its capacity) into wire rows."""
        self._trim()
        events = self.events
        if not events:
            return []
        rows = []
        popleft = events.popleft
        for _ in range(len(events)):  # (other threads may append meanwhile)
            row = to_row(popleft())
            if row is not None:
                rows.append(row)
        return rows

    def _send(self, gcs: Any) -> None:
        rows = self.take_rows()
        cw = self.cw
        batch = {
            "rows": rows,
            "dropped": self.dropped,
            "node": cw.node_id,
            "worker": cw.worker_id,
            "pid": os.getpid(),
        }
        try:
            gcs.notify("add_task_events", batch)
        except ConnectionError:
            self.dropped += len(rows)
            return
        self.sent += len(rows)
        self.dropped = 0

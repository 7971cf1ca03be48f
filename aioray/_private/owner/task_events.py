"""Task events, process side: state transitions recorded cheaply, sent to the GCS in batches.

Owners (where a task is submitted) and executors (where it runs) record each
transition as one tuple of plain values appended to a deque
(``CoreWorker.task_events``; ``None`` when events are off). Nothing else happens on
the task path: no dict, no lock, no object per event. Every
``task_events_report_interval_ms`` the loop swaps in a fresh deque and sends the one
swapped out an interval earlier (so a thread that read the old deque just before the
swap has long since appended to it) as one msgpack blob, packed in C, in a single
notification (``add_task_events``) with the count of events dropped because the
buffer held ``task_events_max_buffer_size`` already. The GCS unpacks and merges
blobs only when asked (daemons/gcs/task_events.py).

A row is ``(task_id, attempt, code, time_s, *extra)``. Codes below EXEC are the
owner's, EXEC + state the executor's (the GCS adds the executor's node, worker id
and pid, sent once per batch). The owner's first row (PENDING_ARGS_AVAIL) adds the
task's description (INFO_FIELDS); a FAILED row adds the error type and message.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import msgpack

from aioray._private.wire.config import TASK_EVENTS_MAX_BUFFER_SIZE, TASK_EVENTS_REPORT_INTERVAL_MS
from aioray._private.wire.schema import PushReply, TaskEventsHeader, TaskSpec

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import TaskEventsHost

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
EXEC = 10  # the executor's codes are EXEC + state

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


# What a PENDING_ARGS_AVAIL row carries after its first four values ("resources" as
# (name, amount) pairs: a row holds no dict, so the garbage collector soon ignores it).
INFO_FIELDS = ("name", "type", "job", "actor", "parent", "resources", "pg")
NORMAL_TASK, ACTOR_TASK, ACTOR_CREATION_TASK = "NORMAL_TASK", "ACTOR_TASK", "ACTOR_CREATION_TASK"


def error_of(err: BaseException) -> tuple[str, str]:
    """(Ray's ErrorType name, message) of an exception stored as a task's failure."""
    name = type(err).__name__
    return ERROR_TYPES.get(name, name), f"{name}: {err}"


def reply_failed(body: PushReply) -> bool:
    """Whether a push reply carries an error as the task's result."""
    if body.get("x") or body.get("error"):
        return True
    rets = body.get("r") or []
    return bool(rets) and rets[0][0] == 0 and rets[0][2] is True  # RET_INLINE, is_error


def record_end(cw: Any, spec: TaskSpec, body: PushReply) -> None:
    """(executor) The task's reply is ready: FINISHED, or FAILED if it carries an error."""
    events = cw.task_events
    if events is not None and "noev" not in spec:
        code = EXEC + (FAILED if reply_failed(body) else FINISHED)
        events.append((spec["tid"], spec.get("at", 0), code, time.time()))


class TaskEventBuffer:
    """The recorded events of one process, and the loop that sends them to the GCS."""

    def __init__(self, cw: TaskEventsHost, interval_ms: float | None = None) -> None:
        self.cw = cw
        self.interval_s = (
            TASK_EVENTS_REPORT_INTERVAL_MS if interval_ms is None else interval_ms
        ) / 1000.0
        self.capacity = TASK_EVENTS_MAX_BUFFER_SIZE
        self.events: collections.deque[tuple[Any, ...]] | None = (
            collections.deque() if self.interval_s > 0 else None
        )
        self._previous: collections.deque[tuple[Any, ...]] = collections.deque()
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
        if gcs is not None and not gcs.is_closed:
            ready = self._swap()
            ready.extend(self._swap())  # both buffers: no thread records any more
            self._send(gcs, ready)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            ready = self._swap()
            if not ready and not self.dropped:
                continue
            try:
                gcs = await self.cw.gcs_connection()
            except (ConnectionError, OSError) as e:
                logger.debug("task events wait: no GCS connection (%s)", e)
                self._previous.extendleft(reversed(ready))  # try again next time
                self._trim(self._previous)
                continue
            self._send(gcs, ready)

    def _swap(self) -> collections.deque[tuple[Any, ...]]:
        """Start a fresh deque; return the one swapped out the time before."""
        fresh: collections.deque[tuple[Any, ...]] = collections.deque()
        ready = self._previous
        self._previous = self.events if self.events is not None else collections.deque()
        self.events = self.cw.task_events = fresh
        return self._trim(ready)

    def _trim(self, events: collections.deque[tuple[Any, ...]]) -> collections.deque[Any]:
        excess = len(events) - self.capacity
        if excess > 0:  # the oldest go, counted
            for _ in range(excess):
                events.popleft()
            self.dropped += excess
        return events

    def _send(self, gcs: Any, events: collections.deque[tuple[Any, ...]]) -> None:
        cw = self.cw
        rows = list(events)
        header: TaskEventsHeader = {
            "n": len(rows),
            "new": sum(1 for r in rows if r[2] == PENDING_ARGS_AVAIL),
            "dropped": self.dropped,
            "node": cw.node_id,
            "worker": cw.worker_id,
            "pid": os.getpid(),
        }
        try:
            blob = msgpack.packb(rows, use_bin_type=True)
            gcs.notify("add_task_events", header, [blob])
        except (ConnectionError, TypeError, ValueError) as e:
            logger.warning("dropped %d task events: %s", len(rows), e)
            self.dropped += len(rows)
            return
        self.sent += len(rows)
        self.dropped = 0

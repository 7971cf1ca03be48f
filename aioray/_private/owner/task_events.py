"""Task events, process side: state transitions recorded cheaply, sent to the GCS in batches.

Owners (where a task is submitted) and executors (where it runs) record each
transition cheaply, in one of two buffers (both ``None`` when events are off):

- ``CoreWorker.task_events``, a bytearray of fixed-size rows (``ROW``: task id,
  code, attempt, time), for the plain transitions: one ``struct`` pack and one
  in-place append per event, a single C call each, so rows from several threads never
  interleave; no object stays alive, the garbage collector never sees them, and
  sending them costs one copy (no per-row packing: that was most of what events cost).
- ``CoreWorker.task_event_extras``, a deque of tuples ``(task_id, attempt, code,
  time_s, *extra)`` for the rows that carry more: the owner's first row
  (PENDING_ARGS_AVAIL, with the task's description, INFO_FIELDS) and FAILED rows with
  the error's type and message.

Codes below EXEC are the owner's, EXEC + state the executor's (the GCS adds the
executor's node, worker id and pid, sent once per batch). Every
``task_events_report_interval_ms`` the loop swaps in fresh buffers and sends those
swapped out an interval earlier (so a thread that read the old ones just before the
swap has long since appended to them) in a single notification (``add_task_events``:
the extras as one msgpack blob, the rows as they are) with the count of events
dropped because a buffer held ``task_events_max_buffer_size`` already. The GCS
unpacks and merges batches only when asked (daemons/gcs/task_events.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import struct
import time
from typing import TYPE_CHECKING, Any

import msgpack

from aioray._private.wire.config import TASK_EVENTS_MAX_BUFFER_SIZE, TASK_EVENTS_REPORT_INTERVAL_MS

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker

logger = logging.getLogger(__name__)

# A plain transition: task id (16 bytes), code, attempt, time (s). ``pack_row`` makes
# one, which the recorder appends with ``+=`` (one C call: atomic across threads).
ROW = struct.Struct("<16sBId")
pack_row = ROW.pack

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


def reply_failed(body: dict[str, Any]) -> bool:
    """Whether a push reply carries an error as the task's result."""
    if body.get("x") or body.get("error"):
        return True
    rets: list[Any] = body.get("r") or []
    return bool(rets) and rets[0][0] == 0 and rets[0][2] is True  # RET_INLINE, is_error


def record_end(cw: Any, spec: dict[str, Any], failed: bool) -> None:
    """(executor) The task's reply is ready: FINISHED, or FAILED if it carries an error."""
    events = cw.task_events
    if events is not None and "noev" not in spec:
        code = EXEC + (FAILED if failed else FINISHED)
        events += pack_row(spec["tid"], code, spec.get("at", 0), time.time())


class TaskEventBuffer:
    """The recorded events of one process, and the loop that sends them to the GCS."""

    def __init__(self, cw: CoreWorker, interval_ms: float | None = None) -> None:
        self.cw = cw
        self.interval_s = (
            TASK_EVENTS_REPORT_INTERVAL_MS if interval_ms is None else interval_ms
        ) / 1000.0
        self.capacity = TASK_EVENTS_MAX_BUFFER_SIZE
        on = self.interval_s > 0
        self.events: bytearray | None = bytearray() if on else None
        self.extras: collections.deque[tuple[Any, ...]] | None = collections.deque() if on else None
        self._previous: tuple[bytearray, collections.deque[tuple[Any, ...]]] = (
            bytearray(),
            collections.deque(),
        )
        self.dropped = 0  # since the last batch that reached the GCS
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        self._publish()

    def __repr__(self) -> str:
        pending = self.pending() if self.events is not None else "off"
        return f"<TaskEventBuffer pending={pending} sent={self.sent} dropped={self.dropped}>"

    def pending(self) -> int:
        """Events recorded and not yet swapped out for sending."""
        rows = len(self.events) // ROW.size if self.events is not None else 0
        return rows + (len(self.extras) if self.extras is not None else 0)

    def set_interval(self, interval_ms: float) -> None:
        """(before start) The cluster's setting, which the GCS tells a driver."""
        self.interval_s = interval_ms / 1000.0
        if self.interval_s <= 0:
            self.events = self.extras = None
        elif self.events is None:
            self.events, self.extras = bytearray(), collections.deque()
        self._publish()

    def _publish(self) -> None:
        """Point the CoreWorker's recorders at the current buffers."""
        self.cw.task_events = self.events
        self.cw.task_event_extras = self.extras

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
            rows, extras = self._swap()
            more_rows, more_extras = self._swap()  # both: no thread records any more
            rows += more_rows
            extras.extend(more_extras)
            self._send(gcs, rows, extras)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            rows, extras = self._swap()
            if not rows and not extras and not self.dropped:
                continue
            try:
                gcs = await self.cw.gcs_connection()
            except (ConnectionError, OSError) as e:
                logger.debug("task events wait: no GCS connection (%s)", e)
                old_rows, old_extras = self._previous  # try again next time, oldest first
                rows += old_rows
                extras.extend(old_extras)
                self._previous = self._trim(rows, extras)
                continue
            self._send(gcs, rows, extras)

    def _swap(self) -> tuple[bytearray, collections.deque[tuple[Any, ...]]]:
        """Start fresh buffers; return those swapped out the time before."""
        ready = self._previous
        if self.events is not None and self.extras is not None:
            self._previous = (self.events, self.extras)
        else:
            self._previous = (bytearray(), collections.deque())
        self.events, self.extras = bytearray(), collections.deque()
        self._publish()
        return self._trim(*ready)

    def _trim(
        self, rows: bytearray, extras: collections.deque[tuple[Any, ...]]
    ) -> tuple[bytearray, collections.deque[tuple[Any, ...]]]:
        excess = len(rows) // ROW.size - self.capacity
        if excess > 0:  # the oldest go, counted
            del rows[: excess * ROW.size]
            self.dropped += excess
        excess = len(extras) - self.capacity
        if excess > 0:
            for _ in range(excess):
                extras.popleft()
            self.dropped += excess
        return rows, extras

    def _send(self, gcs: Any, rows: bytearray, extras: collections.deque[tuple[Any, ...]]) -> None:
        cw = self.cw
        listed = list(extras)
        n = len(rows) // ROW.size + len(listed)
        header = {
            "n": n,
            "new": sum(1 for r in listed if r[2] == PENDING_ARGS_AVAIL),
            "dropped": self.dropped,
            "node": cw.node_id,
            "worker": cw.worker_id,
            "pid": os.getpid(),
        }
        try:
            blob = msgpack.packb(listed, use_bin_type=True)
            gcs.notify("add_task_events", header, [blob, rows])
        except (ConnectionError, TypeError, ValueError) as e:
            logger.warning("dropped %d task events: %s", n, e)
            self.dropped += n
            return
        self.sent += n
        self.dropped = 0

"""Task events, process side: state transitions recorded cheaply, sent to the GCS in batches.

Owners (where a task is submitted) and executors (where it runs) record each
transition cheaply, in one of three buffers (all ``None`` when events are off):

- ``CoreWorker.task_events``, a bytearray of fixed-size rows (``ROW``: task id, code,
  attempt, time) for the plain transitions: one ``struct`` pack and one in-place
  append per event, each a single C call, so rows from several threads never
  interleave; no object stays alive for the garbage collector to walk, and sending
  them costs one copy. (Packing a tuple per event with msgpack was most of what
  events cost on the task path.)
- ``CoreWorker.task_event_infos``, fixed-size first rows (``INFO``, the owner's
  PENDING_ARGS_AVAIL) that name the task's description (name, type, job, actor,
  resources, placement group) by its index in the process's table
  (``TaskEventBuffer.describe``); each description goes to the GCS once.
- ``CoreWorker.task_event_extras``, a deque of tuples ``(task_id, attempt, code,
  time_s, *error)``: FAILED rows with the error's type and message (rare).

Codes below EXEC are the owner's, EXEC + state the executor's (the GCS adds the
executor's node, worker id and pid, sent once per batch). Every
``task_events_report_interval_ms`` the loop swaps in fresh buffers and sends those
swapped out an interval earlier (so a thread that read the old ones just before the
swap has long since appended to them) in a single notification (``add_task_events``:
the new descriptions in its header; the extras as one msgpack blob, the rows as they
are) with the count of events dropped because a buffer held
``task_events_max_buffer_size`` already. The GCS unpacks and merges batches only when
asked (daemons/gcs/task_events.py).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import struct
import time
from typing import TYPE_CHECKING, Any

import msgpack

from aioray._private.wire.config import TASK_EVENTS_MAX_BUFFER_SIZE, TASK_EVENTS_REPORT_INTERVAL_MS
from aioray._private.wire.ids import TASK_ID_SIZE
from aioray._private.wire.schema import PushReply, TaskEventsHeader, TaskSpec

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import TaskEventsHost

logger = logging.getLogger(__name__)

# A process exiting on purpose waits at most this long for its last events to go out.
EXIT_SEND_TIMEOUT_S = 1.0

# A plain transition: task id (TASK_ID_SIZE bytes), code, attempt, time (s). ``pack_row`` makes
# one, which the recorder appends with ``+=`` (one C call: atomic across threads).
ROW = struct.Struct(f"<{TASK_ID_SIZE}sBId")
pack_row = ROW.pack
# A task's first row (PENDING_ARGS_AVAIL, attempt 0): task id, time, parent task id
# (zeros: none), and the index of its description (name, type, job, actor, resources,
# placement group) in the process's table (TaskEventBuffer.describe), sent once.
INFO = struct.Struct(f"<{TASK_ID_SIZE}sd{TASK_ID_SIZE}sI")
pack_info = INFO.pack
NO_PARENT = bytes(TASK_ID_SIZE)

# State codes: Ray's TaskStatus names, in the order a task goes through them.
PENDING_ARGS_AVAIL = 0
PENDING_NODE_ASSIGNMENT = 1
SUBMITTED_TO_WORKER = 2
RUNNING = 3
FINISHED = 4
FAILED = 5
# Transient states of a RUNNING task blocked in ray.get / ray.wait (the executor records
# them, and RUNNING again when the task resumes): shown instead of RUNNING while they last.
RUNNING_IN_RAY_GET = 6
RUNNING_IN_RAY_WAIT = 7
STATE_NAMES = (
    "PENDING_ARGS_AVAIL",
    "PENDING_NODE_ASSIGNMENT",
    "SUBMITTED_TO_WORKER",
    "RUNNING",
    "FINISHED",
    "FAILED",
    "RUNNING_IN_RAY_GET",
    "RUNNING_IN_RAY_WAIT",
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


def record_end(cw: Any, spec: TaskSpec, failed: bool) -> None:
    """(executor) The task's reply is ready: FINISHED, or FAILED if it carries an error."""
    events = cw.task_events
    if events is not None and "noev" not in spec:
        code = EXEC + (FAILED if failed else FINISHED)
        events += pack_row(spec["tid"], code, spec.get("at", 0), time.time())


class Batch:
    """One interval's events: transition rows, first rows, and rows with extras."""

    __slots__ = ("extras", "infos", "rows")

    def __init__(self) -> None:
        self.rows = bytearray()
        self.infos = bytearray()
        self.extras: collections.deque[tuple[Any, ...]] = collections.deque()

    def __len__(self) -> int:
        return len(self.rows) // ROW.size + len(self.infos) // INFO.size + len(self.extras)

    def extend(self, newer: Batch) -> None:
        self.rows += newer.rows
        self.infos += newer.infos
        self.extras.extend(newer.extras)


class TaskEventBuffer:
    """The recorded events of one process, and the loop that sends them to the GCS."""

    def __init__(self, cw: TaskEventsHost, interval_ms: float | None = None) -> None:
        self.cw = cw
        self.interval_s = (
            TASK_EVENTS_REPORT_INTERVAL_MS if interval_ms is None else interval_ms
        ) / 1000.0
        self.capacity = TASK_EVENTS_MAX_BUFFER_SIZE
        self.current: Batch | None = Batch() if self.interval_s > 0 else None
        self._previous = Batch()
        # Task descriptions by value -> index; those the GCS has not been sent yet.
        self.descriptions: dict[tuple[Any, ...], int] = {}
        self._numbers = itertools.count()
        self._unsent: list[tuple[int, tuple[Any, ...]]] = []
        self._sent_to: Any = None  # the GCS connection the descriptions went to
        self.dropped = 0  # since the last batch that reached the GCS
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        self._publish()

    def __repr__(self) -> str:
        pending = len(self.current) if self.current is not None else "off"
        return f"<TaskEventBuffer pending={pending} sent={self.sent} dropped={self.dropped}>"

    def describe(
        self,
        name: str,
        kind: str,
        job: bytes,
        actor: bytes | None,
        shape: tuple[tuple[str, float], ...] | None,
        pg: bytes | None,
    ) -> int:
        """(any thread) The index of a task description, for its first row (INFO)."""
        key = (name, kind, job, actor, shape, pg)
        number = self.descriptions.get(key)
        if number is None:  # (setdefault is atomic: a racing thread gets the same one)
            mine = next(self._numbers)
            number = self.descriptions.setdefault(key, mine)
            if number == mine:
                self._unsent.append((number, key))
        return number

    def set_interval(self, interval_ms: float) -> None:
        """(before start) The cluster's setting, which the GCS tells a driver."""
        self.interval_s = interval_ms / 1000.0
        if self.interval_s <= 0:
            self.current = None
        elif self.current is None:
            self.current = Batch()
        self._publish()

    def _publish(self) -> None:
        """Point the CoreWorker's recorders at the current buffers."""
        cur = self.current
        cw = self.cw
        cw.task_events = cur.rows if cur is not None else None
        cw.task_event_infos = cur.infos if cur is not None else None
        cw.task_event_extras = cur.extras if cur is not None else None

    def start(self) -> None:
        if self.current is not None and self._task is None:
            self._task = self.cw.loop.create_task(self._run())

    def stop(self) -> None:
        """Send what is left (best effort: only over an open GCS connection)."""
        gcs = self.cw.gcs
        ready = self._last_batch()
        if gcs is not None and not gcs.is_closed:
            self._send(gcs, ready)

    async def send_remaining(self, timeout: float) -> None:
        """(loop) Before this process exits on purpose (``exit_actor``, ``ray.kill``, an
        idle worker let go, a forced cancel): stop, and send every event recorded so far,
        as Ray's workers do before they exit, connecting to the GCS first if this worker
        never did; return once they are written out (the GCS connection closes
        gracefully) or after ``timeout`` seconds."""
        ready = self._last_batch()
        if not len(ready) and not self.dropped:
            return
        try:
            gcs = await asyncio.wait_for(self.cw.gcs_connection(), timeout)
            self._send(gcs, ready)
            gcs.close()  # (flushes first; ``closed`` once all is written)
            await asyncio.wait_for(asyncio.shield(gcs.closed), timeout)
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            logger.warning("%d task events not sent before exiting: %s", len(ready), e)

    def _last_batch(self) -> Batch:
        """Stop the loop; return everything recorded. The current buffers are copied into
        the older batch, which no recorder holds: one that read them just before the swap
        and appends now is lost, never sent half-written."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        ready = self._swap()
        ready.extend(self._swap())
        return ready

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            ready = self._swap()
            if not len(ready) and not self.dropped and not self._unsent:
                continue
            try:
                gcs = await self.cw.gcs_connection()
            except (ConnectionError, OSError) as e:
                logger.debug("task events wait: no GCS connection (%s)", e)
                ready.extend(self._previous)  # try again next time, oldest first
                self._previous = self._trim(ready)
                continue
            self._send(gcs, ready)

    def _swap(self) -> Batch:
        """Start fresh buffers; return those swapped out the time before."""
        ready = self._previous
        self._previous = self.current if self.current is not None else Batch()
        self.current = Batch()
        self._publish()
        return self._trim(ready)

    def _trim(self, batch: Batch) -> Batch:
        """Drop the oldest of each kind past ``capacity``, counted."""
        for buf, size in ((batch.rows, ROW.size), (batch.infos, INFO.size)):
            excess = len(buf) // size - self.capacity
            if excess > 0:
                del buf[: excess * size]
                self.dropped += excess
        excess = len(batch.extras) - self.capacity
        if excess > 0:
            for _ in range(excess):
                batch.extras.popleft()
            self.dropped += excess
        return batch

    def _send(self, gcs: Any, batch: Batch) -> None:
        cw = self.cw
        if gcs is not self._sent_to:  # a new GCS (or a restarted one): all descriptions
            self._sent_to = gcs
            self._unsent = []
            descriptions = [(n, key) for key, n in list(self.descriptions.items())]
        else:
            descriptions, self._unsent = self._unsent, []
        n = len(batch)
        header: TaskEventsHeader = {
            "n": n,
            "new": len(batch.infos) // INFO.size,
            "dropped": self.dropped,
            "node": cw.node_id,
            "worker": cw.worker_id,
            "pid": os.getpid(),
            "descs": [(number, *key) for number, key in descriptions],
        }
        try:
            blob = msgpack.packb(list(batch.extras), use_bin_type=True)
            gcs.notify("add_task_events", header, [blob, batch.rows, batch.infos])
        except (ConnectionError, TypeError, ValueError) as e:
            logger.warning("dropped %d task events: %s", n, e)
            self.dropped += n
            self._sent_to = None  # the descriptions go again, all of them

            return
        self.sent += n
        self.dropped = 0

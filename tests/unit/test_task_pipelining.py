"""How many tiny tasks the owner queues on one leased worker (task_submitter._dispatch).

No cluster: a TaskSubmitter whose pushes are counted instead of sent, with leases and
measured execution times set by the test. The depth is a time budget (PIPELINE_QUEUE_S
of work by the function's average), so a worker has enough queued to keep busy while
the owner's core loop waits a GIL switch interval for a busy caller thread.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from aioray._private.owner.task_submitter import Lease, SchedulingClass, TaskSubmitter
from aioray._private.wire import config

FID = b"f" * 16


class _CountingSubmitter(TaskSubmitter):
    """Counts pushes on the lease instead of sending them; asks for no lease."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(task_events=None))  # type: ignore[arg-type]

    def _push(self, task: Any, lease: Lease, tiny: bool) -> None:
        lease.inflight += 1
        lease.unknown += not tiny

    def _request_lease(self, cls: SchedulingClass) -> None:
        cls.pending_leases += 1


def _dispatch(avg_s: float | None, queued: int, workers: int = 1) -> list[int]:
    """Queue ``queued`` tasks of a function measured at ``avg_s``; return each worker's
    tasks in flight after one dispatch."""
    sub = _CountingSubmitter()
    if avg_s is not None:
        sub.exec_time[FID] = avg_s
    cls = SchedulingClass(("k",), {"CPU": 1.0}, None)
    cls.leases = [Lease(cls, i, bytes(16), None, None) for i in range(workers)]  # type: ignore[arg-type]
    cls.queue.extend(SimpleNamespace(spec={"fid": FID}) for _ in range(queued))  # type: ignore[misc]
    sub._dispatch(cls)
    return [lease.inflight for lease in cls.leases]


def test_a_tiny_function_queues_its_time_budget_on_a_worker() -> None:
    # 100 us tasks, 10 ms budget: 100 in flight (the old fixed cap of 16 ran dry in 1.6 ms).
    assert _dispatch(100e-6, queued=1000) == [int(config.PIPELINE_QUEUE_S / 100e-6)]


def test_the_depth_is_capped() -> None:
    assert _dispatch(1e-7, queued=2000) == [config.MAX_TASKS_IN_FLIGHT_PER_WORKER]


@pytest.mark.parametrize("avg_s", [None, config.PIPELINE_BELOW_S, 0.5])
def test_unmeasured_or_slow_functions_run_one_at_a_time(avg_s: float | None) -> None:
    assert _dispatch(avg_s, queued=100, workers=2) == [1, 1]


def test_a_short_queue_is_spread_not_pipelined() -> None:
    # Fewer than 4 queued per worker: no backlog, so no task waits behind another.
    assert _dispatch(100e-6, queued=7, workers=2) == [1, 1]


def test_a_function_just_under_the_threshold_still_pipelines_a_little() -> None:
    assert _dispatch(config.PIPELINE_BELOW_S * 0.99, queued=100) == [
        max(2, int(config.PIPELINE_QUEUE_S / (config.PIPELINE_BELOW_S * 0.99)))
    ]


def test_a_queue_with_no_room_is_not_dispatched_again_on_each_submit() -> None:
    # Every submission used to walk the leases again: 10,000 queued tasks, 10,000 walks
    # that found nothing. Past the lengths dispatch looks at, a submission only queues.
    sub = _CountingSubmitter()
    walks = []
    dispatch = sub._dispatch
    sub._dispatch = lambda cls: (walks.append(len(cls.queue)), dispatch(cls))  # type: ignore[method-assign]
    cls = sub.classes[("k",)] = SchedulingClass(("k",), {"CPU": 1.0}, None)
    busy = Lease(cls, 0, bytes(16), None, None)  # type: ignore[arg-type]
    busy.inflight = busy.unknown = 1  # running a task not known to be tiny: no room
    cls.leases = [busy]
    for _ in range(50):
        sub._enqueue(SimpleNamespace(sched_key=("k",), spec={"fid": FID}, state=""))  # type: ignore[arg-type]
    threshold = max(4, config.MAX_PENDING_LEASES_PER_CLASS)
    assert walks == list(range(1, threshold + 1))
    assert cls.pending_leases == config.MAX_PENDING_LEASES_PER_CLASS
    # The reply that frees the worker dispatches: the queue moves on.
    busy.inflight = busy.unknown = 0
    sub._dispatch(cls)
    assert busy.inflight == 1 and len(cls.queue) == 49


class _WatchedLease(Lease):
    """A busy lease that counts how often dispatch looks at it."""

    looked = 0

    @property  # type: ignore[override]
    def inflight(self) -> int:
        _WatchedLease.looked += 1
        return 1

    @inflight.setter
    def inflight(self, value: int) -> None:
        pass


def test_a_reply_offers_the_queue_to_its_own_lease_only() -> None:
    # A reply frees a slot on its own lease; the other leases had no room after the
    # last dispatch and still have none, so they are not walked again per reply.
    sub = _CountingSubmitter()
    sub.exec_time[FID] = 100e-6
    cls = SchedulingClass(("k",), {"CPU": 1.0}, None)
    busy = [_WatchedLease(cls, i, bytes(16), None, None) for i in range(8)]  # type: ignore[arg-type]
    replied = Lease(cls, 99, bytes(16), None, None)  # type: ignore[arg-type]
    cls.leases = [*busy, replied]
    cls.queue.extend(SimpleNamespace(spec={"fid": FID}) for _ in range(1000))  # type: ignore[misc]
    _WatchedLease.looked = 0
    sub._dispatch(cls, replied)
    assert _WatchedLease.looked == 0
    assert replied.inflight == int(config.PIPELINE_QUEUE_S / 100e-6)
    # A reply on a lease no longer held (its worker died) pushes nothing to it.
    gone = Lease(cls, 100, bytes(16), None, None)  # type: ignore[arg-type]
    before = len(cls.queue)
    sub._dispatch(cls, gone)
    assert gone.inflight == 0 and len(cls.queue) == before

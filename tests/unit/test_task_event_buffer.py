"""Unit tests of a process's task-event buffer (aioray/_private/owner/task_events.py):
fixed rows and extras, the swap that sends each buffer an interval late, trimming,
and what reaches the GCS table. No cluster, no loop."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from aioray.daemons.gcs.task_events import TaskTable
from fakes import FakeConnection

from aioray._private.owner import task_events as te


def make_buffer(capacity: int = 1000) -> tuple[Any, te.TaskEventBuffer]:
    cw = SimpleNamespace(gcs=None, node_id=b"n" * 16, worker_id=b"w" * 16, loop=None)
    buf = te.TaskEventBuffer(cw, interval_ms=1000)  # type: ignore[arg-type]
    buf.capacity = capacity
    return cw, buf


def record(cw: Any, tid: bytes, code: int, attempt: int = 0) -> None:
    events = cw.task_events
    events += te.pack_row(tid, code, attempt, time.time())


def test_rows_are_published_to_the_core_worker_and_off_means_none() -> None:
    cw, buf = make_buffer()
    assert isinstance(cw.task_events, bytearray) and cw.task_event_extras is not None
    buf.set_interval(0)
    assert cw.task_events is None and cw.task_event_extras is None
    buf.set_interval(500)
    assert cw.task_events == bytearray() and buf.interval_s == 0.5


def test_a_batch_goes_out_one_swap_late_and_reaches_the_table() -> None:
    cw, buf = make_buffer()
    tid = b"\x05" * 16
    cw.task_event_extras.append(
        (tid, 0, te.PENDING_ARGS_AVAIL, 1.0, "f", "NORMAL_TASK", b"\1\0\0\0", None, None, (), None)
    )
    record(cw, tid, te.SUBMITTED_TO_WORKER)
    rows, extras = buf._swap()
    assert not rows and not extras  # the first swap hands over what the one before held
    record(cw, tid, te.FINISHED)  # recorded after the swap: the next batch
    rows, extras = buf._swap()
    assert len(rows) == te.ROW.size and len(extras) == 1
    gcs = FakeConnection("gcs")
    buf._send(gcs, rows, extras)
    (sent,) = gcs.sent
    assert sent.method == "add_task_events"
    assert sent.body["n"] == 2 and sent.body["new"] == 1 and sent.body["dropped"] == 0
    table = TaskTable(100)
    table.receive(sent.body, bytes(sent.buffers[0]), bytes(sent.buffers[1]))
    table.merge()
    (task,) = table.get(tid.hex())
    assert task["state"] == "SUBMITTED_TO_WORKER" and task["name"] == "f"
    rows, extras = buf._swap()
    buf._send(gcs, rows, extras)
    table.receive(gcs.sent[-1].body, bytes(gcs.sent[-1].buffers[0]), bytes(gcs.sent[-1].buffers[1]))
    table.merge()
    assert table.get(tid.hex())[0]["state"] == "FINISHED"


def test_full_buffers_drop_the_oldest_and_count_them() -> None:
    cw, buf = make_buffer(capacity=3)
    for i in range(5):
        record(cw, bytes([i]) * 16, te.PENDING_NODE_ASSIGNMENT)
        cw.task_event_extras.append((bytes([i]) * 16, 0, te.FAILED, 1.0, "E", "E: x"))
    buf._swap()
    rows, extras = buf._swap()
    assert buf.dropped == 4  # two rows and two extras
    kept = [t for t, *_ in te.ROW.iter_unpack(rows)]
    assert kept == [bytes([i]) * 16 for i in (2, 3, 4)]
    assert [e[0][0] for e in extras] == [2, 3, 4]


def test_rows_from_many_threads_never_interleave() -> None:
    cw, buf = make_buffer(capacity=10**6)

    def work(k: int) -> None:
        for i in range(5000):
            record(cw, bytes([k]) * 16, te.RUNNING, attempt=i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    buf._swap()
    rows, _ = buf._swap()
    seen: dict[bytes, list[int]] = {}
    for tid, code, attempt, _ in te.ROW.iter_unpack(rows):
        assert code == te.RUNNING and tid[:1] * 16 == tid
        seen.setdefault(tid, []).append(attempt)
    assert all(attempts == list(range(5000)) for attempts in seen.values()) and len(seen) == 4


def test_the_gcs_refuses_rows_that_are_not_whole() -> None:
    table = TaskTable(10)
    with pytest.raises(ValueError, match="not whole 29-byte rows"):
        table.receive({"new": 0}, msgpack.packb([]), b"\0" * 30)
    assert not table.pending

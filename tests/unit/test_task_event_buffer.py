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


def first_row(cw: Any, buf: te.TaskEventBuffer, tid: bytes, name: str = "f") -> None:
    number = buf.describe(name, te.NORMAL_TASK, b"\1\0\0\0", None, (("CPU", 1.0),), None)
    infos = cw.task_event_infos
    infos += te.pack_info(tid, time.time(), te.NO_PARENT, number)


def deliver(gcs: FakeConnection, table: TaskTable) -> None:
    sent = gcs.sent[-1]
    table.receive(sent.body, *(bytes(b) for b in sent.buffers))
    table.merge()


def test_a_batch_goes_out_one_swap_late_and_reaches_the_table() -> None:
    cw, buf = make_buffer()
    tid = b"\x05" * 16
    first_row(cw, buf, tid)
    record(cw, tid, te.SUBMITTED_TO_WORKER)
    assert not len(buf._swap())  # the first swap hands over what the one before held
    record(cw, tid, te.FINISHED)  # recorded after the swap: the next batch
    ready = buf._swap()
    assert len(ready) == 2
    gcs, table = FakeConnection("gcs"), TaskTable(100)
    buf._send(gcs, ready)
    (sent,) = gcs.sent
    assert sent.method == "add_task_events"
    assert (sent.body["n"], sent.body["new"], sent.body["dropped"]) == (2, 1, 0)
    assert [d[1] for d in sent.body["descs"]] == ["f"]
    deliver(gcs, table)
    (task,) = table.get(tid.hex())
    assert task["state"] == "SUBMITTED_TO_WORKER" and task["name"] == "f"
    assert task["required_resources"] == {"CPU": 1.0} and task["parent_task_id"] == ""
    buf._send(gcs, buf._swap())
    assert gcs.sent[-1].body["descs"] == []  # each description goes once
    deliver(gcs, table)
    assert table.get(tid.hex())[0]["state"] == "FINISHED"


def test_descriptions_are_shared_and_sent_again_to_a_new_gcs() -> None:
    cw, buf = make_buffer()
    for i in range(3):
        first_row(cw, buf, bytes([i]) * 16)
    first_row(cw, buf, b"\x09" * 16, name="g")
    assert len(buf.descriptions) == 2
    buf._swap()
    old_gcs, new_gcs = FakeConnection("gcs"), FakeConnection("gcs-restarted")
    buf._send(old_gcs, buf._swap())
    assert len(old_gcs.sent[-1].body["descs"]) == 2
    first_row(cw, buf, b"\x0a" * 16)  # an old description: nothing new to send
    buf._swap()
    buf._send(new_gcs, buf._swap())  # the GCS restarted: it learns every description
    table = TaskTable(100)
    deliver(new_gcs, table)
    assert {d[1] for d in new_gcs.sent[-1].body["descs"]} == {"f", "g"}
    assert table.get((b"\x0a" * 16).hex())[0]["name"] == "f"


def test_full_buffers_drop_the_oldest_and_count_them() -> None:
    cw, buf = make_buffer(capacity=3)
    for i in range(5):
        record(cw, bytes([i]) * 16, te.PENDING_NODE_ASSIGNMENT)
        first_row(cw, buf, bytes([i]) * 16)
        cw.task_event_extras.append((bytes([i]) * 16, 0, te.FAILED, 1.0, "E", "E: x"))
    buf._swap()
    ready = buf._swap()
    assert buf.dropped == 6  # two of each kind
    kept = [t for t, *_ in te.ROW.iter_unpack(ready.rows)]
    assert kept == [bytes([i]) * 16 for i in (2, 3, 4)]
    assert [t for t, *_ in te.INFO.iter_unpack(ready.infos)] == kept
    assert [e[0][0] for e in ready.extras] == [2, 3, 4]


def test_rows_from_many_threads_never_interleave() -> None:
    cw, buf = make_buffer(capacity=10**6)

    def work(k: int) -> None:
        for i in range(5000):
            record(cw, bytes([k]) * 16, te.RUNNING, attempt=i)
            first_row(cw, buf, bytes([k]) * 16, name=str(k))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    buf._swap()
    ready = buf._swap()
    seen: dict[bytes, list[int]] = {}
    for tid, code, attempt, _ in te.ROW.iter_unpack(ready.rows):
        assert code == te.RUNNING and tid[:1] * 16 == tid
        seen.setdefault(tid, []).append(attempt)
    assert all(attempts == list(range(5000)) for attempts in seen.values()) and len(seen) == 4
    names = {number: key[0] for key, number in buf.descriptions.items()}
    for tid, _, _, number in te.INFO.iter_unpack(ready.infos):
        assert names[number] == str(tid[0])  # each thread's rows name its description


def test_the_gcs_refuses_rows_that_are_not_whole() -> None:
    table = TaskTable(10)
    with pytest.raises(ValueError, match="task event rows of 30 bytes: not whole 29-byte"):
        table.receive({"new": 0}, msgpack.packb([]), b"\0" * 30)
    with pytest.raises(ValueError, match="first rows of 10 bytes: not whole 44-byte"):
        table.receive({"new": 0}, msgpack.packb([]), b"", b"\0" * 10)
    assert not table.pending

"""Unit tests of the GCS task table (daemons/gcs/task_events.py) and the State API's
filters (aioray/util/state/schema.py): pure logic, no cluster, no loop."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from aioray.daemons.gcs.task_events import TaskTable

import aioray._private.core.state_schema as schema
from aioray._private.owner import task_events as te
from aioray._private.wire.ids import TASK_ID_SIZE as TID
from aioray.exceptions import WorkerCrashedError

OWNER = ("", "", None)
EXECUTOR = ("aa" * 16, "bb" * 16, 4242)


def info(name: str = "f", kind: str = "NORMAL_TASK") -> list[Any]:
    return [name, kind, b"\x01\0\0\0", b"", b"", (("CPU", 1.0),), b""]


def wire_row(tid: bytes, attempt: int, code: int, ts: float, extra: Any = None) -> tuple[Any, ...]:
    """One transition as a wire row: (task, attempt, code, time, *info or *error)."""
    return (tid, attempt, code, ts, *(extra or ()))


def first_rows(tids: list[bytes], ts: float = 1.0) -> tuple[dict[str, Any], bytes]:
    """A batch's header (with the one description its rows name) and its first rows."""
    header = {
        "new": len(tids),
        "worker": b"w" * 16,
        "descs": [[0, "f", "NORMAL_TASK", b"\x01\0\0\0", None, [["CPU", 1.0]], None]],
    }
    return header, b"".join(te.pack_info(tid, ts, te.NO_PARENT, 0) for tid in tids)


def test_owner_and_executor_rows_merge_in_any_order() -> None:
    table = TaskTable(100)
    tid = b"\x07" * 16
    # The executor's rows arrive before the owner's (different connections).
    table.add(wire_row(tid, 0, te.EXEC + te.RUNNING, 2.0, info()), EXECUTOR)
    table.add(wire_row(tid, 0, te.EXEC + te.FINISHED, 3.0, None), EXECUTOR)
    table.add(wire_row(tid, 0, te.PENDING_ARGS_AVAIL, 1.0, info()), OWNER)
    rec = table.add(wire_row(tid, 0, te.SUBMITTED_TO_WORKER, 1.5, None), OWNER)
    assert rec.state == "FINISHED"  # the furthest state reported, not the last row
    row = rec.row(detail=True)
    assert row["node_id"] == "aa" * 16 and row["worker_pid"] == 4242
    assert row["job_id"] == "01000000" and row["required_resources"] == {"CPU": 1.0}
    assert [e["state"] for e in row["events"]] == [
        "PENDING_ARGS_AVAIL",
        "SUBMITTED_TO_WORKER",
        "RUNNING",
        "FINISHED",
    ]
    assert (row["creation_time_ms"], row["start_time_ms"], row["end_time_ms"]) == (
        1000,
        2000,
        3000,
    )
    table.add(wire_row(tid, 0, te.FINISHED, 3.1, None), OWNER)
    assert table.summary()["summary"]["f"]["state_counts"] == {"FINISHED": 1}


def test_attempts_are_separate_and_failure_keeps_its_error() -> None:
    table = TaskTable(100)
    tid = b"\x08" * 16
    table.add(wire_row(tid, 0, te.PENDING_ARGS_AVAIL, 1.0, info()), OWNER)
    table.add(wire_row(tid, 0, te.FAILED, 2.0, ["WORKER_DIED", "WorkerCrashedError: ..."]), OWNER)
    table.add(wire_row(tid, 1, te.PENDING_NODE_ASSIGNMENT, 2.1, None), OWNER)
    table.add(wire_row(tid, 1, te.EXEC + te.RUNNING, 2.2, info()), EXECUTOR)
    first, second = table.get(tid.hex())
    assert (first["state"], first["error_type"]) == ("FAILED", "WORKER_DIED")
    assert (second["attempt_number"], second["state"]) == (1, "RUNNING")
    counts = table.summary()
    assert counts["summary"]["f"]["state_counts"] == {"FAILED": 1, "RUNNING": 1}
    assert counts["total_tasks"] == 2


def test_oldest_records_are_evicted_and_counted() -> None:
    table = TaskTable(3)
    for i in range(5):
        header, infos = first_rows([bytes([i]) * TID], float(i))
        table.receive({**header, "dropped": 2}, b"", b"", infos)
        table.merge()  # one at a time: each is merged, then the oldest evicted
    assert len(table.records) == 3
    assert table.evicted == 2 and table.dropped == 10
    ids = [r["task_id"] for r in table.list([], 10, False)["result"]]
    assert ids == [bytes([i]).hex() * TID for i in (4, 3, 2)]  # newest first
    answer = table.summary()
    assert answer["num_tasks_evicted"] == 2
    assert answer["num_status_task_events_dropped"] == 10
    assert answer["summary"]["f"]["state_counts"] == {"PENDING_ARGS_AVAIL": 3}
    # A late row of an evicted task (the executor's, say) does not bring it back.
    table.add_batch([wire_row(bytes([0]) * TID, 0, te.EXEC + te.FINISHED, 9.0)], EXECUTOR)
    assert len(table.records) == 3 and table.evicted == 2


def test_filters_apply_before_the_limit() -> None:
    table = TaskTable(10_000)
    for i in range(1000):
        tid = i.to_bytes(16, "little")
        table.add(wire_row(tid, 0, te.PENDING_ARGS_AVAIL, 1.0, info()), OWNER)
        code = te.EXEC + (te.RUNNING if i in (3, 500) else te.FINISHED)
        table.add(wire_row(tid, 0, code, 2.0, None), EXECUTOR)
    filters = schema.check_query("tasks", [("state", "=", "running")], 1)
    answer = table.list(filters, 1, False)
    assert (answer["total"], answer["num_filtered"], len(answer["result"])) == (1000, 2, 1)
    filters = schema.check_query("tasks", [("state", "!=", "FINISHED")], 10)
    assert {r["task_id"] for r in table.list(filters, 10, False)["result"]} == {
        (3).to_bytes(16, "little").hex(),
        (500).to_bytes(16, "little").hex(),
    }


def test_bad_queries_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="Supported filter columns: task_id"):
        schema.check_query("tasks", [("colour", "=", "x")], 10)
    with pytest.raises(ValueError, match="Available predicates: =, !="):
        schema.check_query("tasks", [("state", ">", "x")], 10)
    with pytest.raises(ValueError, match="between 1 and 10000"):
        schema.check_query("tasks", [], 10_001)
    with pytest.raises(ValueError, match="Valid choices: tasks, actors"):
        schema.check_resource("taks")
    with pytest.raises(ValueError, match="not supported for tasks"):
        schema.check_query("tasks", [("required_resources", "=", "x")], 10)  # not filterable
    assert schema.check_resource("placement-groups") == "placement_groups"
    assert schema.parse_filter("state!=RUNNING") == ("state", "!=", "RUNNING")
    assert schema.parse_filter("name=a=b") == ("name", "=", "a=b")
    with pytest.raises(ValueError, match="key=value"):
        schema.parse_filter("state")


def test_batches_that_would_be_evicted_are_never_merged() -> None:
    table = TaskTable(2)
    for i in range(4):
        header, infos = first_rows([bytes([i]) * TID], float(i))
        table.receive(header, b"", b"", infos)
    late = wire_row(bytes([0]) * TID, 0, te.EXEC + te.FINISHED, 5.0)
    table.receive({"new": 0}, msgpack.packb([late]))  # (a late row of a skipped task)
    table.merge()
    assert [r["task_id"] for r in table.list([], 10, False)["result"]] == [
        bytes([3]).hex() * TID,
        bytes([2]).hex() * TID,
    ]
    assert table.evicted == 2


def test_the_owner_records_plain_rows() -> None:
    assert te.error_of(RuntimeError("x")) == ("RuntimeError", "RuntimeError: x")
    assert te.error_of(WorkerCrashedError())[0] == "WORKER_DIED"
    assert te.reply_failed({"r": [[0, 0, True]], "x": True})
    assert not te.reply_failed({"r": [[0, 0, False]]})


def test_merging_pauses_between_steps_and_filters_compare_ids_as_bytes() -> None:
    table = TaskTable(1000)
    header, infos = first_rows([i.to_bytes(TID, "little") for i in range(100)])
    table.receive(header, b"", b"", infos)
    steps = sum(1 for _ in table.merge_steps(rows_per_step=10))
    assert steps == 10 and len(table.records) == 100  # the loop ran others 10 times
    tid = (7).to_bytes(TID, "little").hex()
    for value, expected in ((tid, 1), (tid.upper(), 1), ("zz", 0), ("", 0)):
        filters = schema.check_query("tasks", [("task_id", "=", value)], 10)
        assert table.list(filters, 10, False)["num_filtered"] == expected
    filters = schema.check_query("tasks", [("job_id", "=", "01000000"), ("name", "=", "F")], 10)
    assert table.list(filters, 10, False)["num_filtered"] == 100


def test_a_task_blocked_in_get_shows_so_until_it_runs_again() -> None:
    table = TaskTable(100)
    tid = b"\x0b" * 16
    table.add(wire_row(tid, 0, te.PENDING_ARGS_AVAIL, 1.0, info()), OWNER)
    table.add(wire_row(tid, 0, te.EXEC + te.RUNNING, 2.0), EXECUTOR)
    rec = table.add(wire_row(tid, 0, te.EXEC + te.RUNNING_IN_RAY_GET, 3.0), EXECUTOR)
    assert rec is not None and rec.state == "RUNNING_IN_RAY_GET"
    blocked = table.list([("state", "=", "RUNNING_IN_RAY_GET")], 10, False)
    assert [r["task_id"] for r in blocked["result"]] == [tid.hex()]
    assert table.summary()["summary"]["f"]["state_counts"] == {"RUNNING_IN_RAY_GET": 1}
    # An owner's late row does not unblock it; the executor's RUNNING does.
    table.add(wire_row(tid, 0, te.SUBMITTED_TO_WORKER, 1.5), OWNER)
    assert rec.state == "RUNNING_IN_RAY_GET"
    table.add(wire_row(tid, 0, te.EXEC + te.RUNNING, 4.0), EXECUTOR)
    assert rec.state == "RUNNING"
    table.add(wire_row(tid, 0, te.EXEC + te.RUNNING_IN_RAY_WAIT, 5.0), EXECUTOR)
    assert rec.state == "RUNNING_IN_RAY_WAIT"
    table.add(wire_row(tid, 0, te.EXEC + te.FINISHED, 6.0), EXECUTOR)
    assert rec.state == "FINISHED"
    row = rec.row(detail=True)
    assert [e["state"] for e in row["events"]] == [
        "PENDING_ARGS_AVAIL",
        "SUBMITTED_TO_WORKER",
        "RUNNING",
        "RUNNING_IN_RAY_GET",
        "RUNNING_IN_RAY_WAIT",
        "FINISHED",
    ]
    assert row["start_time_ms"] == 2000  # the first RUNNING
    assert table.summary()["summary"]["f"]["state_counts"] == {"FINISHED": 1}

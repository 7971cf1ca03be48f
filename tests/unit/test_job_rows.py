"""Unit tests of the State API's job rows (daemons/gcs/job_rows.py): drivers and submitted
jobs merged, each job once (no cluster)."""

from __future__ import annotations

from aioray.daemons.gcs.job_rows import job_rows

from aioray._private.wire import job_records


def test_each_job_is_listed_once_with_its_last_driver() -> None:
    drivers = {
        b"\x01\0\0\0": {"pid": 11, "ip": "10.0.0.1", "namespace": "ns", "start": 1.0},
        b"\x02\0\0\0": {"pid": 12, "namespace": "_aioray_dashboard", "start": 2.0},
        b"\x03\0\0\0": {"pid": 13, "ip": "10.0.0.1", "sid": "s1", "start": 3.0, "end": 4.0},
        b"\x04\0\0\0": {"pid": 14, "ip": "10.0.0.2", "sid": "s1", "start": 5.0},
    }
    kv = {
        job_records.key("s1"): job_records.encode({"submission_id": "s1", "status": "RUNNING"}),
        job_records.key("s2"): job_records.encode({"submission_id": "s2", "status": "PENDING"}),
        b"other": b"not a job",
    }
    rows = list(job_rows(drivers, kv))
    assert [(r["type"], r["job_id"], r.get("submission_id")) for r in rows] == [
        ("DRIVER", "01000000", None),  # the dashboard's own driver is no job
        ("SUBMISSION", "04000000", "s1"),  # its last driver; its drivers have no row
        ("SUBMISSION", None, "s2"),  # no driver yet
    ]
    assert rows[0]["driver_info"] == {"id": "01000000", "node_ip_address": "10.0.0.1", "pid": "11"}
    assert (rows[0]["status"], rows[0]["start_time"], rows[0]["end_time"]) == (
        "RUNNING",
        1000,
        None,
    )
    assert rows[1]["driver_info"]["pid"] == "14" and rows[1]["status"] == "RUNNING"
    assert rows[2].get("driver_info") is None
    ended = dict(drivers[b"\x01\0\0\0"], end=9.5)
    (row,) = job_rows({b"\x01\0\0\0": ended}, {})
    assert (row["status"], row["end_time"]) == ("SUCCEEDED", 9500)

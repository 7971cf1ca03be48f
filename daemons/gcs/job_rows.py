"""The State API's jobs, as Ray's ``list_jobs`` gives them: the drivers that registered
with this GCS (DRIVER jobs) and the jobs submitted through the dashboard (SUBMISSION
jobs, their records in the KV store), each job once. A submitted job's drivers say so
when they register; the job's row then carries its last driver's job id and info, and
those drivers get no row of their own. aioray's own drivers (the dashboard's) are left
out, as Ray leaves out its internal namespaces."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aioray._private.wire import job_records


def _ms(t: float | None) -> int | None:
    return int(t * 1000) if t else None


def driver_info(job_id: bytes, info: Mapping[str, Any]) -> dict[str, str]:
    """Ray's DriverInfo of a registered driver."""
    return {
        "id": job_id.hex(),
        "node_ip_address": info.get("ip", ""),
        "pid": str(info.get("pid", "")),
    }


def driver_row(job_id: bytes, info: Mapping[str, Any]) -> dict[str, Any]:
    """Ray's JobDetails of a driver job (one not submitted)."""
    ended = info.get("end")
    return {
        "job_id": job_id.hex(),
        "submission_id": None,
        "entrypoint": info.get("entrypoint", ""),
        "type": "DRIVER",
        "status": "SUCCEEDED" if ended else "RUNNING",
        "message": None,
        "error_type": None,
        "driver_info": driver_info(job_id, info),
        "start_time": _ms(info.get("start")),
        "end_time": _ms(ended),
        "metadata": {},
        "runtime_env": {},
    }


def submission_row(
    record: Mapping[str, Any], driver: tuple[bytes, Mapping[str, Any]] | None
) -> dict[str, Any]:
    """Ray's JobDetails of a submitted job (its record), with its last driver's id."""
    row = {"job_id": None, **record, "type": "SUBMISSION"}
    if driver is not None:
        row["job_id"] = driver[0].hex()
        row["driver_info"] = driver_info(*driver)
    return row


def job_rows(
    drivers: Mapping[bytes, Mapping[str, Any]], kv: Mapping[bytes, bytes]
) -> Iterator[dict[str, Any]]:
    """Every job: ``drivers`` by job id (registration info), ``kv`` the job records'
    KV namespace. Driver jobs first, then submitted ones, as Ray lists them."""
    last_driver: dict[str, tuple[bytes, Mapping[str, Any]]] = {}
    for job_id, info in drivers.items():
        sid = info.get("sid")
        if sid:
            last_driver[sid] = (job_id, info)
        elif not str(info.get("namespace", "")).startswith(job_records.INTERNAL_NAMESPACE_PREFIX):
            yield driver_row(job_id, info)
    for k, value in list(kv.items()):
        if k.startswith(job_records.PREFIX):
            record = job_records.decode(value) or {}
            yield submission_row(record, last_driver.get(str(record.get("submission_id"))))

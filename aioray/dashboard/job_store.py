"""Where job records live: the GCS's key-value store (durable: it survives a GCS
restart), one JSON record per submission id under the ``_aioray_jobs`` namespace
(the format: ``_private/wire/job_records.py``, which the GCS reads too)."""

from __future__ import annotations

from aioray._private.wire.job_records import NAMESPACE, PREFIX, decode, encode, key

__all__ = ["NAMESPACE", "PREFIX", "decode", "encode", "key", "supervisor_name"]


def supervisor_name(submission_id: str) -> str:
    """The name of the actor that runs a submission's entrypoint."""
    return f"_aioray_job_supervisor_{submission_id}"

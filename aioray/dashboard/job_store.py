"""Where job records live: the GCS's key-value store (durable: it survives a GCS
restart), one JSON record per submission id under the ``_aioray_jobs`` namespace."""

from __future__ import annotations

import json
from typing import Any

NAMESPACE = "_aioray_jobs"  # the KV namespace, and the supervisors' actor namespace
PREFIX = b"job:"


def key(submission_id: str) -> bytes:
    return PREFIX + submission_id.encode()


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def decode(value: bytes | None) -> dict[str, Any] | None:
    return None if value is None else dict(json.loads(bytes(value)))


def supervisor_name(submission_id: str) -> str:
    return f"_aioray_job_supervisor_{submission_id}"

"""Submitted jobs' records as they cross processes: one JSON record per submission id in
the GCS's key-value store (durable), written by the dashboard and the job's supervisor,
read by the GCS's State API; the variable that tells a job's driver its submission; and
the key where the GCS says its dashboard listens (clients given only the GCS address)."""

from __future__ import annotations

import json
from typing import Any

NAMESPACE = "_aioray_jobs"  # the KV namespace, and the supervisors' actor namespace
PREFIX = b"job:"
# Set in a submitted job's entrypoint: its drivers register as the job's (Ray's name).
SUBMISSION_ID_ENV = "RAY_JOB_SUBMISSION_ID"
# Drivers in namespaces with this prefix are aioray's own (the dashboard's), not jobs.
INTERNAL_NAMESPACE_PREFIX = "_aioray_"
# (namespace, key) of the dashboard's "host:port" in the GCS's KV store (Ray's).
DASHBOARD_KV = ("dashboard", b"dashboard")


def key(submission_id: str) -> bytes:
    """The KV key of a submission's record."""
    return PREFIX + submission_id.encode()


def encode(record: dict[str, Any]) -> bytes:
    """A record as stored."""
    return json.dumps(record).encode()


def decode(value: bytes | None) -> dict[str, Any] | None:
    """A stored record (None: no record)."""
    return None if value is None else dict(json.loads(bytes(value)))

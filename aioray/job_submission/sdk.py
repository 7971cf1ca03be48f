"""``JobSubmissionClient``: Ray's job client over the dashboard's REST routes.

It finds the dashboard and the cluster token as Ray's client does: ``$RAY_ADDRESS``
(``$AIORAY_ADDRESS`` first) over the address given; an explicit ``http://host:port``
(token from ``$AIORAY_TOKEN`` or the local session serving that address); a cluster's
GCS ``host:port`` (its dashboard's address is in the GCS's KV store, Ray's key); or
None/"auto" for this machine's cluster. ``headers`` may carry the token
(``Authorization: Bearer ...``) for a remote cluster. A local ``working_dir`` or
``py_modules`` entry is packaged (runtime_env_packaging: zipped, content-hashed) and
uploaded through the package routes unless the cluster has it already, as Ray's client.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from aioray._private.core import runtime_env as _runtime_env
from aioray._private.node import node, node_commands
from aioray._private.node import runtime_env_packaging as packaging
from aioray._private.wire.job_records import DASHBOARD_KV
from aioray.job_submission.models import JobDetails, JobStatus

UPLOAD_TIMEOUT_S = 300
GCS_ASK_TIMEOUT_S = 10  # asking a GCS given as the address where its dashboard is


def dashboard_address(address: str | None) -> str | None:
    """The dashboard a client's ``address`` names, read as Ray's client reads it:
    ``$AIORAY_ADDRESS``/``$RAY_ADDRESS`` always override it; ``http(s)://...`` is the
    dashboard; None/"auto" this machine's cluster; ``host:port`` a dashboard on this
    machine, else a cluster's GCS, asked where its dashboard listens."""
    return resolve_dashboard(address)[0]


def resolve_dashboard(address: str | None) -> tuple[str | None, str]:
    """``dashboard_address``, and why a ``host:port`` was taken as a dashboard's own ("" if
    it was not): no GCS answered there either, which a failure to connect should say."""
    for name in node.ADDRESS_ENV:
        if os.environ.get(name):
            address = os.environ[name]
            break
    if address in (None, "", "auto") or "://" in address or node.is_local_dashboard(address):
        return address, ""
    local = node.local_dashboard_of(address)
    if local is not None:
        return local, ""
    try:
        url = node_commands.gcs_call(address, "kv_get", GCS_ASK_TIMEOUT_S, list(DASHBOARD_KV))
    except (ConnectionError, OSError, RuntimeError, asyncio.TimeoutError) as e:
        # No GCS there: taken as a dashboard's address, as before.
        return address, f"nor is a cluster's GCS listening at {address}: {e or type(e).__name__}"
    if url:
        return "http://" + url.decode(), ""
    return address, f"the GCS at {address} names no dashboard"


class JobSubmissionClient:
    """Submit and manage jobs on a cluster through its dashboard (Ray's signatures)."""

    def __init__(
        self,
        address: str | None = None,
        create_cluster_if_needed: bool = False,
        cookies: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        verify: bool | str | None = True,
    ) -> None:
        where, self._not_a_gcs = resolve_dashboard(address)
        self._address, token = node.find_dashboard(where)
        self._headers = {str(k): str(v) for k, v in (headers or {}).items()}
        if token and not any(k.lower() == "authorization" for k in self._headers):
            self._headers["Authorization"] = f"Bearer {token}"
        self._default_metadata = dict(metadata or {})
        self._version = self._request("GET", "/api/version")

    def __repr__(self) -> str:
        return f"<JobSubmissionClient {self._address}>"

    def get_address(self) -> str:
        """The dashboard address this client sends its requests to."""
        return self._address

    def _request(self, method: str, path: str, body: Any = None, raw: bytes = b"") -> Any:
        data = None if body is None else json.dumps(body).encode()
        kind = "application/json"
        if raw:
            data, kind = raw, "application/octet-stream"
        headers = {**self._headers, "Content-Type": kind}
        req = urllib.request.Request(self._address + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=UPLOAD_TIMEOUT_S if raw else 30) as resp:
                text = resp.read().decode()
                if raw or (method == "GET" and path.startswith("/api/packages/")):
                    return text
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            raise RuntimeError(f"Request failed with status code {e.code}: {text}.") from None
        except urllib.error.URLError as e:
            also = f"; {self._not_a_gcs}" if self._not_a_gcs else ""
            raise ConnectionError(
                f"Failed to connect to the dashboard at {self._address}: {e.reason}{also}"
            ) from None
        return json.loads(text) if text else None

    def submit_job(
        self,
        *,
        entrypoint: str,
        job_id: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: int | float | None = None,
        entrypoint_num_gpus: int | float | None = None,
        entrypoint_memory: int | None = None,
        entrypoint_resources: dict[str, float] | None = None,
    ) -> str:
        """Start ``entrypoint`` (a shell command) on the cluster; returns the submission id.
        A local ``working_dir``/``py_modules`` in ``runtime_env`` is uploaded first."""
        try:
            wire, packages = packaging.plan_env(_runtime_env.normalize(runtime_env))
        except TypeError as e:
            raise ValueError(str(e)) from None
        for package in packages:
            self._upload_if_missing(package)
        body = {
            "entrypoint": entrypoint,
            "submission_id": submission_id or job_id,
            "runtime_env": wire,
            "metadata": {**self._default_metadata, **(metadata or {})},
            "entrypoint_num_cpus": entrypoint_num_cpus,
            "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_memory": entrypoint_memory,
            "entrypoint_resources": entrypoint_resources,
        }
        return str(self._request("POST", "/api/jobs/", body)["submission_id"])

    def _upload_if_missing(self, package: packaging.Package) -> None:
        path = "/api/packages/" + package.uri.replace("://", "/", 1)
        try:
            self._request("GET", path)
            return  # content-addressed: the cluster has these very files
        except RuntimeError as e:
            if "status code 404" not in str(e):
                raise
        self._request("PUT", path, raw=package.data())

    def stop_job(self, job_id: str) -> bool:
        """Ask the job to stop (SIGTERM, then SIGKILL); False if it had already ended."""
        return bool(self._request("POST", f"/api/jobs/{job_id}/stop")["stopped"])

    def delete_job(self, job_id: str) -> bool:
        """Forget an ended job and its logs."""
        return bool(self._request("DELETE", f"/api/jobs/{job_id}")["deleted"])

    def get_job_info(self, job_id: str) -> JobDetails:
        """The JobDetails of the job with this submission id (``GET /api/jobs/{job_id}``)."""
        return JobDetails.from_json(self._request("GET", f"/api/jobs/{job_id}"))

    def list_jobs(self) -> list[JobDetails]:
        """JobDetails for every job the cluster knows of (``GET /api/jobs/``)."""
        return [JobDetails.from_json(j) for j in self._request("GET", "/api/jobs/")]

    def get_job_status(self, job_id: str) -> JobStatus:
        """The job's current JobStatus (``get_job_info(job_id).status``)."""
        return self.get_job_info(job_id).status

    def get_job_logs(self, job_id: str) -> str:
        """The job's driver output so far, as one string."""
        return str(self._request("GET", f"/api/jobs/{job_id}/logs")["logs"])

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """The job's output as it is written, until the job ends (a websocket)."""
        import aiohttp

        url = self._address.replace("http", "ws", 1) + f"/api/jobs/{job_id}/logs/tail"
        async with (
            aiohttp.ClientSession(headers=self._headers) as session,
            session.ws_connect(url) as ws,
        ):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    yield msg.data
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break

"""The Jobs REST routes, as Ray's (``/api/jobs/...``): thin handlers over JobManager;
and the package routes a job client uploads its working_dir and py_modules through
(``GET``/``PUT /api/packages/{protocol}/{package_name}``), stored in the GCS KV as
``runtime_env_packaging`` stores them for a driver."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from aioray._private.node import runtime_env_packaging as packaging
from aioray.dashboard.job_manager import JobManager, JobNotFound
from aioray.job_submission.models import check_submit_request

TAIL_POLL_S = 0.2


def routes(jobs: JobManager) -> list[web.RouteDef]:
    """The route table of the Jobs feature."""

    async def submit(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _bad("the request body is not valid JSON")
        try:
            req = check_submit_request(body)
            sid = await jobs.submit(req)
        except ValueError as e:
            return _bad(str(e))
        return web.json_response({"submission_id": sid, "job_id": None})

    async def list_jobs(request: web.Request) -> web.Response:
        return web.json_response([j.to_json() for j in await jobs.list()])

    async def get_job(request: web.Request) -> web.Response:
        details = await jobs.find(request.match_info["job_id"])
        return web.json_response(details.to_json())

    async def stop(request: web.Request) -> web.Response:
        return web.json_response({"stopped": await jobs.stop(request.match_info["job_id"])})

    async def delete(request: web.Request) -> web.Response:
        try:
            deleted = await jobs.delete(request.match_info["job_id"])
        except ValueError as e:
            return _bad(str(e))
        return web.json_response({"deleted": deleted})

    async def logs(request: web.Request) -> web.Response:
        sid = request.match_info["job_id"]
        await jobs.get(sid)
        text, _ = await asyncio.to_thread(jobs.read_logs, sid)
        return web.json_response({"logs": text})

    async def tail(request: web.Request) -> web.WebSocketResponse:
        sid = request.match_info["job_id"]
        await jobs.get(sid)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        offset = 0
        while not ws.closed:
            text, offset = await asyncio.to_thread(jobs.read_logs, sid, offset)
            if text:
                await ws.send_str(text)
                continue
            if (await jobs.get(sid)).status.is_terminal():
                text, offset = await asyncio.to_thread(jobs.read_logs, sid, offset)
                if text:
                    await ws.send_str(text)
                break
            await asyncio.sleep(TAIL_POLL_S)
        await ws.close()
        return ws

    async def package_exists(request: web.Request) -> web.Response:
        try:
            uri = packaging.package_uri(*_package_of(request))
        except ValueError as e:
            return _bad(str(e))
        if await jobs.link.gcs("kv_get", [packaging.KV_NAMESPACE, uri.encode()]) is None:
            return web.Response(status=404, text=f"Package {uri} does not exist")
        return web.Response(text=f"Package {uri} exists")

    async def upload_package(request: web.Request) -> web.Response:
        try:
            uri = packaging.package_uri(*_package_of(request))
            entries = packaging.package_entries(uri, await _read_body(request))
        except ValueError as e:
            return _bad(str(e))
        for key, value in entries:
            await jobs.link.gcs("kv_put", [packaging.KV_NAMESPACE, key, value, True])
        return web.Response(text=f"Successfully uploaded {uri}")

    return [
        web.post("/api/jobs/", _found(submit)),
        web.get("/api/jobs/", _found(list_jobs)),
        web.get("/api/jobs/{job_id}", _found(get_job)),
        web.post("/api/jobs/{job_id}/stop", _found(stop)),
        web.delete("/api/jobs/{job_id}", _found(delete)),
        web.get("/api/jobs/{job_id}/logs", _found(logs)),
        web.get("/api/jobs/{job_id}/logs/tail", _found(tail)),
        web.get("/api/packages/{protocol}/{package_name}", package_exists),
        web.put("/api/packages/{protocol}/{package_name}", upload_package),
    ]


def _found(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except JobNotFound as e:
            return web.Response(status=404, text=str(e))

    return wrapped


def _bad(message: str) -> web.Response:
    return web.Response(status=400, text=message)


async def _read_body(request: web.Request) -> bytes:
    """A package's bytes: past the service's small-body limit, up to the package limit."""
    parts, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size >= packaging.MAX_PACKAGE_BYTES:
            raise ValueError(
                f"the package is over the {packaging.MAX_PACKAGE_BYTES >> 20} MiB limit"
            )
        parts.append(chunk)
    return b"".join(parts)


def _package_of(request: web.Request) -> tuple[str, str]:
    return request.match_info["protocol"], request.match_info["package_name"]

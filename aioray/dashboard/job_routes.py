"""The Jobs REST routes, as Ray's (``/api/jobs/...``): thin handlers over JobManager."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

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
        details = await jobs.get(request.match_info["job_id"])
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

    return [
        web.post("/api/jobs/", _found(submit)),
        web.get("/api/jobs/", _found(list_jobs)),
        web.get("/api/jobs/{job_id}", _found(get_job)),
        web.post("/api/jobs/{job_id}/stop", _found(stop)),
        web.delete("/api/jobs/{job_id}", _found(delete)),
        web.get("/api/jobs/{job_id}/logs", _found(logs)),
        web.get("/api/jobs/{job_id}/logs/tail", _found(tail)),
        web.get("/api/packages/{protocol}/{package_name}", _no_packages),
        web.put("/api/packages/{protocol}/{package_name}", _no_packages),
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


async def _no_packages(request: web.Request) -> web.Response:
    # working_dir packages arrive with the runtime_env machinery (a separate branch).
    return web.Response(
        status=501, text="Package upload (runtime_env working_dir) is not supported yet."
    )

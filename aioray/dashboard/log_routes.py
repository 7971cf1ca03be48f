"""Log routes (Ray's ``/api/v0/logs`` and ``/api/v0/logs/file``): only files inside the
head's session log directory are served; any other path, however spelled, is a 404."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from aioray.dashboard.state_routes import envelope, error

MAX_LINES = 100_000
FOLLOW_POLL_S = 0.2  # as tail -f


def inside(logs_dir: str, filename: str) -> str | None:
    """The real path of ``filename`` if it is a file inside ``logs_dir``, else None."""
    root = os.path.realpath(logs_dir)
    path = os.path.realpath(os.path.join(root, filename))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    return path


def _tail(path: str, lines: int) -> str:
    with open(path, "rb") as f:
        return _last_lines(f.read(), lines)


def _last_lines(data: bytes, lines: int) -> str:
    text = data.decode(errors="replace")
    if lines < 0:
        return text
    return "".join(text.splitlines(keepends=True)[-lines:])


def routes(logs_dir: str) -> list[web.RouteDef]:
    async def list_logs(request: web.Request) -> web.Response:
        names = sorted(os.listdir(logs_dir)) if os.path.isdir(logs_dir) else []
        groups: dict[str, list[str]] = {}
        for name in names:
            kind = "worker" if name.startswith("worker") else name.split(".")[0].split("-")[0]
            groups.setdefault(kind, []).append(name)
        return envelope({"result": groups})

    async def get_file(request: web.Request) -> web.StreamResponse:
        filename = request.query.get("filename", "")
        path = inside(logs_dir, filename) if filename else None
        if path is None:
            return error(404, f"Log file {filename!r} not found in the session's log directory")
        try:
            lines = int(request.query.get("lines", "1000"))
        except ValueError:
            return error(400, "lines must be an integer")
        text = await asyncio.to_thread(_tail, path, min(lines, MAX_LINES))
        return web.Response(text=text, content_type="text/plain")

    async def stream(request: web.Request) -> web.StreamResponse:
        """The file's last ``lines`` lines, then what is appended, until the client goes."""
        filename = request.query.get("filename", "")
        path = inside(logs_dir, filename) if filename else None
        if path is None:
            return error(404, f"Log file {filename!r} not found in the session's log directory")
        try:
            lines = int(request.query.get("lines", "100"))
        except ValueError:
            return error(400, "lines must be an integer")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        # The tail and the offset to follow from come from one read: a line appended
        # between the two would otherwise be skipped.
        data, offset = await asyncio.to_thread(_read_from, path, 0)
        await response.write(_last_lines(data, min(lines, MAX_LINES)).encode())
        while request.transport is not None and not request.transport.is_closing():
            data, offset = await asyncio.to_thread(_read_from, path, offset)
            if data:
                await response.write(data)
            else:
                await asyncio.sleep(FOLLOW_POLL_S)
        return response

    return [
        web.get("/api/v0/logs", list_logs),
        web.get("/api/v0/logs/file", get_file),
        web.get("/api/v0/logs/stream", stream),
    ]


def _read_from(path: str, offset: int) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    return data, offset + len(data)

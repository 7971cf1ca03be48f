"""The dashboard process on the head: one ``HttpService`` with the dashboard's route
tables (State API, jobs, logs, login) and the web UI's static files, until the
node's lifeline closes or SIGTERM. It binds nothing itself: the node launcher passes
the listening socket, so the URL is known before this process starts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from importlib import resources

from aiohttp import web

from aioray._private.rpc.http_service import HttpService
from aioray.dashboard import job_routes, log_routes, state_routes
from aioray.dashboard.cluster_link import ClusterLink
from aioray.dashboard.job_manager import JobManager
from aioray.dashboard.session_auth import Sessions
from aioray.dashboard.time_series import TimeSeries

CLIENT_DIR = str(resources.files("aioray.dashboard") / "client")


class Dashboard:
    """The head's web service: what ``python -m aioray.dashboard`` runs."""

    def __init__(self, gcs_address: str, session_dir: str) -> None:
        self.link = ClusterLink(gcs_address)
        self.jobs = JobManager(self.link, session_dir)
        self.http = HttpService()
        self.sessions = Sessions(self.http)
        self.http.add_routes(self.sessions.routes())
        self.http.add_routes(state_routes.routes(self.link, session_dir, time.time()))
        self.http.add_routes(job_routes.routes(self.jobs))
        self.http.add_routes(log_routes.routes(os.path.join(session_dir, "logs")))
        self.series = TimeSeries(self.link)
        self.http.add_routes(self.series.routes())
        self.http.add_routes([web.get("/", _index), web.static("/static", CLIENT_DIR)])

    def __repr__(self) -> str:
        return f"<Dashboard {self.http!r} {self.link!r}>"

    async def serve(self, sock: socket.socket, lifeline_fd: int | None) -> None:
        """Serve until the lifeline closes or SIGTERM/SIGINT; then leave nothing behind."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        if lifeline_fd is not None:
            loop.add_reader(lifeline_fd, done.set)  # readable only at EOF: the node stopped
        await self.http.start(sock=sock)
        try:
            await done.wait()
        finally:
            await self.series.stop()
            await self.http.stop()
            await asyncio.to_thread(self.link.close)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(os.path.join(CLIENT_DIR, "index.html"))

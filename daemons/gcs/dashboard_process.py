"""The head's dashboard process, started when its port is first connected to.

The node launcher binds the dashboard's socket (the URL is printed at once) and hands
it to the GCS, which holds it until a connection waits in its backlog, then starts
``python -m aioray.dashboard`` on it and lets go of its own copy. An unvisited cluster
never pays the dashboard's ~30 MiB and ~0.4 s of CPU (aiohttp, the public API), and a
visited one pays them after ``init()``, not during it. The GCS stops it on the way out.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys

from aioray.daemons._common import wait_first_connection

logger = logging.getLogger(__name__)

DASHBOARD_MODULE = "aioray.dashboard"  # by name: the dashboard sits above the daemons


class DashboardProcess:
    """Starts the dashboard on ``sock`` when first asked; ``stop`` ends it."""

    def __init__(
        self, sock: socket.socket, gcs_address: str, session_dir: str, lifeline_fd: int | None
    ) -> None:
        self.sock = sock
        self.gcs_address = gcs_address
        self.session_dir = session_dir
        self.lifeline_fd = lifeline_fd
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self.proc.pid}" if self.proc is not None else "not started"
        return f"<DashboardProcess {state}>"

    async def run(self, stopped: asyncio.Event) -> None:
        """Start the dashboard once a connection waits (never if ``stopped`` comes first);
        stop it when ``stopped`` is set."""
        try:
            if await wait_first_connection(self.sock, stopped):
                self.proc = self._spawn()
                logger.info("dashboard started on first request: pid %d", self.proc.pid)
        except OSError:
            logger.exception("cannot start the dashboard")
        finally:
            self.sock.close()  # the dashboard has its own copy: if it dies, the port closes
        await stopped.wait()
        await self.stop()

    def _spawn(self) -> subprocess.Popen[bytes]:
        fds = [self.sock.fileno()]
        args = ["--listen-fd", str(self.sock.fileno()), "--gcs-address", self.gcs_address]
        args += ["--session-dir", self.session_dir]
        if self.lifeline_fd is not None:
            args += ["--lifeline-fd", str(self.lifeline_fd)]
            fds.append(self.lifeline_fd)
        cmd = [sys.executable, "-m", DASHBOARD_MODULE, *args]
        return subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL)

    async def stop(self, timeout: float = 5.0) -> None:
        """End the dashboard (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

"""The raylet's workers: started by a fork server, registered, idle or leased.

Starting a Python interpreter and importing numpy costs ~0.3 s, so the raylet
keeps a fork server: a process that has imported aioray, cloudpickle, numpy and
uvloop, holds no threads and no loop, and forks a worker on request. The control
channel is a socketpair with one JSON line per request and per answer; workers
keep the raylet's stdout and stderr, so their prints reach the driver's terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from aioray import rpc, runtime_env

logger = logging.getLogger(__name__)


class WorkerHandle:
    __slots__ = (
        "conn",
        "env_key",
        "idle_since",
        "lease_id",
        "pid",
        "port",
        "registered",
        "worker_id",
    )

    def __init__(self, worker_id: bytes, env_key: str, pid: int) -> None:
        self.worker_id = worker_id
        self.env_key = env_key
        self.pid = pid
        self.port = 0
        self.conn: rpc.Connection | None = None
        self.lease_id: int | None = None
        self.registered = False
        self.idle_since = 0.0

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id.hex()[:8]} pid={self.pid} lease={self.lease_id}>"


class WorkerPool:
    def __init__(self, worker_args: dict[str, Any], session_dir: str) -> None:
        self.worker_args = worker_args
        self.session_dir = session_dir
        self.workers: dict[bytes, WorkerHandle] = {}
        self.idle: dict[str, list[WorkerHandle]] = {}
        self.starting: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._spawning: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self.idle.values())
        return f"<WorkerPool workers={len(self.workers)} idle={idle} starting={self.starting}>"

    async def start(self) -> None:
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aioray.daemons.forkserver",
                "--control-fd",
                str(theirs.fileno()),
                "--session-dir",
                self.session_dir,
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)

    def spawn(self, env: dict[str, str] | None) -> None:
        """Start a worker in the background (a failure is logged by start_worker)."""
        task = asyncio.ensure_future(self.start_worker(env))
        self._spawning.add(task)
        task.add_done_callback(self._spawn_done)

    def _spawn_done(self, task: asyncio.Future[None]) -> None:
        self._spawning.discard(task)
        if not task.cancelled():
            task.exception()  # already logged; mark retrieved

    async def start_worker(self, env: dict[str, str] | None) -> None:
        """Fork one worker; it registers itself through ``register``."""
        env_key = env_key_of(env)
        self.starting[env_key] = self.starting.get(env_key, 0) + 1
        worker_id = os.urandom(16)
        args = {**self.worker_args, "worker_id": worker_id.hex(), "env_key": env_key}
        try:
            async with self._lock:
                assert self._writer is not None and self._reader is not None
                request = {"args": args, "env": (env or {}).get("env_vars") or {}, "runtime_env": env}
                self._writer.write(json.dumps(request).encode() + b"\n")
                line = await self._reader.readline()
            if not line:
                raise ConnectionError("fork server exited")
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"fork server: {reply['error']}")
            pid = reply["pid"]
        except Exception:
            self.starting[env_key] -= 1
            logger.exception("could not start a worker")
            raise
        self.workers[worker_id] = WorkerHandle(worker_id, env_key, pid)

    def register(self, worker_id: bytes, port: int, conn: rpc.Connection) -> WorkerHandle | None:
        w = self.workers.get(worker_id)
        if w is None:
            return None
        w.port = port
        w.conn = conn
        w.registered = True
        self.starting[w.env_key] = max(0, self.starting.get(w.env_key, 0) - 1)
        self.push_idle(w)
        return w

    def push_idle(self, w: WorkerHandle) -> None:
        w.lease_id = None
        w.idle_since = time.monotonic()
        self.idle.setdefault(w.env_key, []).append(w)

    def pop_idle(self, env_key: str) -> WorkerHandle | None:
        idle = self.idle.get(env_key)
        while idle:
            w = idle.pop()
            if w.conn is not None and not w.conn.is_closed:
                return w
        return None

    def remove(self, worker_id: bytes) -> WorkerHandle | None:
        w = self.workers.pop(worker_id, None)
        if w is not None:
            idle = self.idle.get(w.env_key, [])
            if w in idle:
                idle.remove(w)
            if not w.registered:
                self.starting[w.env_key] = max(0, self.starting.get(w.env_key, 0) - 1)
        return w

    async def stop(self, timeout: float = 5.0) -> None:
        """Kill every worker, wait until they are gone, then stop the fork server."""
        pids = [w.pid for w in self.workers.values()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                await asyncio.sleep(0.01)  # polling the kernel: no event tells us of a grandchild
        if self._writer is not None:
            self._writer.close()
        if self._proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self._proc.wait), timeout)
            except asyncio.TimeoutError:
                self._proc.kill()
                self._proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
    return True


def env_key_of(env: dict[str, Any] | None) -> str:
    return runtime_env.env_key(env)

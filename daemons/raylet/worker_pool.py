"""The raylet's workers: started by a fork server, registered, idle or leased.

Starting a Python interpreter and importing numpy costs ~0.3 s, so the raylet
keeps a fork server: a process that has imported aioray, cloudpickle, numpy and
uvloop, holds no threads and no loop, and forks a worker on request. The control
channel is a socketpair with one JSON line per request and per answer; workers
keep the fork server's stdout and stderr (the raylet's), so their prints reach the
driver's terminal. ``LocalNode`` starts the default fork server beside the raylet
and hands it the socketpair (``--forkserver-fd``); a raylet run alone starts its own.

A registered worker's death is its connection closing. One that dies before it
registers (killed while starting) has no connection yet: the pool watches each
starting worker's pid (a pidfd, readable once the process is gone) until it
registers, so that a lost start is forgotten and the raylet starts another
instead of waiting for it forever.

A worker the raylet ends (``ray.kill`` of its actor, idle too long) is told to exit
(``exit_worker``), so that it sends its task events not yet sent first, as Ray's
workers do; one still there after ``EXIT_GRACE_S`` is SIGKILLed.
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
from collections.abc import Callable
from typing import Any

from aioray.daemons.raylet.runtime_env_agent import PreparedEnv, RuntimeEnvAgent, SetupFailed

from aioray._private.core import runtime_env
from aioray._private.rpc import rpc
from aioray._private.wire import config

logger = logging.getLogger(__name__)

# Idle workers of a runtime env (not the default one) exit after this long unused,
# so the env's cached pieces can be released (Ray also kills idle workers).
ENV_WORKER_IDLE_S = config.env_float("RUNTIME_ENV_WORKER_IDLE_S", 10.0)
# A worker told to exit has this long (its last task events take ~1 ms) before SIGKILL.
EXIT_GRACE_S = 3.0


class WorkerHandle:
    __slots__ = (
        "conn",
        "env_key",
        "idle_since",
        "lease_id",
        "pid",
        "pidfd",
        "port",
        "prepared",
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
        self.pidfd: int | None = None  # watched until it registers
        self.prepared = False  # holds a reference on its runtime env's cached pieces

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id.hex()[:8]} pid={self.pid} lease={self.lease_id}>"


class ForkServer:
    """One fork server process and its control channel (one request at a time)."""

    def __init__(self, python: str, session_dir: str) -> None:
        self.python = python
        self.session_dir = session_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        ours, theirs = socket.socketpair()
        cmd = [self.python, "-m", "aioray.daemons.forkserver", "--control-fd"]
        cmd += [str(theirs.fileno()), "--session-dir", self.session_dir]
        self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        await self.adopt(ours)

    async def adopt(self, control: socket.socket) -> None:
        """Use a fork server started by someone else (``LocalNode`` starts it beside the
        raylet, not after it): ``control`` is our end of its control channel. It exits
        when we close that, so it is not ours to wait for."""
        self._reader, self._writer = await asyncio.open_unix_connection(sock=control)

    async def fork(self, request: dict[str, Any]) -> int:
        """Ask for one worker; its pid."""
        async with self._lock:
            assert self._writer is not None and self._reader is not None
            self._writer.write(json.dumps(request).encode() + b"\n")
            line = await self._reader.readline()
        if not line:
            raise ConnectionError(f"fork server {self.python} exited")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fork server: {reply['error']}")
        return int(reply["pid"])

    async def stop(self, timeout: float) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
                self.proc.wait()


class WorkerPool:
    """Workers by env key: a worker of one runtime env is never leased for another.

    Workers of the default interpreter fork from the main fork server; a pip/uv env's
    workers fork from a fork server of its own, started with the env's python on
    first use (so each later worker of that env costs a fork, not an interpreter).
    """

    def __init__(
        self,
        worker_args: dict[str, Any],
        session_dir: str,
        agent: RuntimeEnvAgent | None = None,
        on_lost_start: Callable[[WorkerHandle], None] = lambda w: None,
    ) -> None:
        self.worker_args = worker_args
        self.on_lost_start = on_lost_start  # a worker died before it registered
        self.session_dir = session_dir
        self.agent = agent
        self.workers: dict[bytes, WorkerHandle] = {}
        self.idle: dict[str, list[WorkerHandle]] = {}
        self.starting: dict[str, int] = {}
        self.servers: dict[str, ForkServer] = {}  # by python ("": this interpreter)
        self._server_starts: dict[str, asyncio.Future[ForkServer]] = {}
        self._spawning: set[asyncio.Future[None]] = set()
        self.reaped = 0  # idle env workers ended
        self.kept_idle = 0  # idle env workers that still owned something when asked
        # Called with (env key, message) when an env cannot be set up on this node.
        self.on_setup_failed: Callable[[str, str], None] | None = None
        if agent is not None:
            self.set_agent(agent)

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self.idle.values())
        return f"<WorkerPool workers={len(self.workers)} idle={idle} starting={self.starting}>"

    async def start(self, control_fd: int | None = None) -> None:
        """Start this interpreter's fork server, or adopt the one on ``control_fd``."""
        server = ForkServer(sys.executable, self.session_dir)
        if control_fd is None:
            await server.start()
        else:
            await server.adopt(socket.socket(fileno=control_fd))
        self.servers[""] = server

    async def _server(self, python: str) -> ForkServer:
        server = self.servers.get(python)
        if server is not None:
            return server
        starting = self._server_starts.get(python)
        if starting is None:
            starting = self._server_starts[python] = asyncio.ensure_future(
                self._start_server(python)
            )
        return await asyncio.shield(starting)

    async def _start_server(self, python: str) -> ForkServer:
        server = ForkServer(python, self.session_dir)
        try:
            await server.start()
            self.servers[python] = server
            return server
        finally:
            self._server_starts.pop(python, None)

    def _venv_deleted(self, python: str) -> None:
        server = self.servers.pop(python, None)
        if server is not None:
            task = asyncio.ensure_future(server.stop(5.0))
            self._spawning.add(task)
            task.add_done_callback(self._spawn_done)

    def set_agent(self, agent: RuntimeEnvAgent) -> None:
        self.agent = agent
        agent.on_venv_deleted = self._venv_deleted

    def prepare_eagerly(self, env: dict[str, Any]) -> None:
        """Prepare an env in the background, holding no reference (it stays cached)."""
        if self.agent is None or not runtime_env.needs_setup(env):
            return
        task = asyncio.ensure_future(self._prepare_eagerly(self.agent, env))
        self._spawning.add(task)
        task.add_done_callback(self._spawn_done)

    async def _prepare_eagerly(self, agent: RuntimeEnvAgent, env: dict[str, Any]) -> None:
        key = env_key_of(env)
        try:
            await agent.prepare(env, key)
        except SetupFailed as e:
            logger.warning("eager runtime env setup failed: %s", e)
            return
        agent.release(key)

    def spawn(self, env: dict[str, Any] | None) -> None:
        """Start a worker in the background (a failure is logged by start_worker)."""
        task = asyncio.ensure_future(self.start_worker(env))
        self._spawning.add(task)
        task.add_done_callback(self._spawn_done)

    def _spawn_done(self, task: asyncio.Future[None]) -> None:
        self._spawning.discard(task)
        if not task.cancelled():
            task.exception()  # already logged; mark retrieved

    async def start_worker(self, env: dict[str, Any] | None) -> None:
        """Prepare the env (once per node), fork one worker; it registers through ``register``."""
        env_key = env_key_of(env)
        self.starting[env_key] = self.starting.get(env_key, 0) + 1
        worker_id = os.urandom(16)
        args = {**self.worker_args, "worker_id": worker_id.hex(), "env_key": env_key}
        request: dict[str, Any] = {"args": args, "env": {}, "runtime_env": env}
        prepared = None
        try:
            if env and self.agent is not None and runtime_env.needs_setup(env):
                prepared = await self.agent.prepare(env, env_key)
                request.update(cwd=prepared.cwd, path=prepared.paths)
            request["env"] = _worker_environ(env, prepared)
            server = await self._server(prepared.python if prepared else "")
            pid = await server.fork(request)
        except Exception as e:
            self.starting[env_key] -= 1
            if prepared is not None:
                assert self.agent is not None
                self.agent.release(env_key)
            if isinstance(e, SetupFailed):
                if self.on_setup_failed is not None:
                    self.on_setup_failed(env_key, str(e))
                return
            logger.exception("could not start a worker")
            raise
        w = self.workers[worker_id] = WorkerHandle(worker_id, env_key, pid)
        w.prepared = prepared is not None
        self._watch_start(w)

    def _watch_start(self, w: WorkerHandle) -> None:
        try:
            w.pidfd = os.pidfd_open(w.pid)
        except ProcessLookupError:  # gone already (the fork server reaps its children)
            self._lost_start(w)
            return
        except (AttributeError, OSError):  # no pidfds here: a start lost stays unnoticed
            return
        asyncio.get_running_loop().add_reader(w.pidfd, self._lost_start, w)

    def _unwatch(self, w: WorkerHandle) -> None:
        if w.pidfd is not None:
            asyncio.get_running_loop().remove_reader(w.pidfd)
            os.close(w.pidfd)
            w.pidfd = None

    def _lost_start(self, w: WorkerHandle) -> None:
        self._unwatch(w)
        if w.registered or self.workers.get(w.worker_id) is not w:
            return
        logger.info("worker %s (pid %d) exited before it registered", w.worker_id.hex()[:8], w.pid)
        self.remove(w.worker_id)
        self.on_lost_start(w)

    def register(self, worker_id: bytes, port: int, conn: rpc.Connection) -> WorkerHandle | None:
        w = self.workers.get(worker_id)
        if w is None:
            return None
        self._unwatch(w)
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
        if w.env_key:  # a runtime env's worker holds its env: it goes when unused a while
            asyncio.get_running_loop().call_later(ENV_WORKER_IDLE_S, self._reap, w, w.idle_since)

    def reclaim(self, w: WorkerHandle) -> None:
        """A task worker whose lease ended with its owner's death: back to idle if it runs
        nothing, else ended, not reused (nobody will read its result: Ray's raylet kills a
        dead owner's leased workers). Until it answers it is neither idle nor leased."""
        if w.conn is None or w.conn.is_closed:
            return
        w.lease_id = None
        task = asyncio.ensure_future(self._reclaim(w, w.conn))
        self._spawning.add(task)
        task.add_done_callback(self._spawn_done)

    async def _reclaim(self, w: WorkerHandle, conn: rpc.Connection) -> None:
        try:
            busy = await conn.call("is_busy")
        except (ConnectionError, rpc.RpcError):
            busy = True  # (cannot tell: ending it is safe, reusing it may not be)
        if conn.is_closed:
            return
        if busy is False:
            self.push_idle(w)
        else:
            self.end(w, 1)

    def _reap(self, w: WorkerHandle, idle_since: float) -> None:
        idle = self.idle.get(w.env_key, [])
        if w.idle_since == idle_since and w in idle and w.conn is not None:
            idle.remove(w)  # not leased while asked
            task = asyncio.ensure_future(self._ask_to_exit(w, w.conn))
            self._spawning.add(task)
            task.add_done_callback(self._spawn_done)

    async def _ask_to_exit(self, w: WorkerHandle, conn: rpc.Connection) -> None:
        """Ask an idle worker whether it may go; if so, end it (its exit, the connection
        closing, then releases its env); if it still owns something, keep it idle."""
        try:
            may_go = await conn.call("exit_if_idle")
        except (ConnectionError, rpc.RpcError):
            may_go = False
        if conn.is_closed:
            return
        if may_go:
            self.reaped += 1
            self.end(w, 0)
        else:
            self.kept_idle += 1
            self.push_idle(w)

    def end(self, w: WorkerHandle, code: int) -> None:
        """Make a worker exit (with ``code``): told to, so that it sends its last task
        events; SIGKILLed if it cannot be told or is still registered after EXIT_GRACE_S
        (its connection closing removes it)."""
        if w.conn is None or w.conn.is_closed:
            _kill(w.pid)
            return
        w.conn.notify("exit_worker", code)
        asyncio.get_running_loop().call_later(EXIT_GRACE_S, self._kill_if_still_here, w)

    def _kill_if_still_here(self, w: WorkerHandle) -> None:
        if self.workers.get(w.worker_id) is w:
            logger.warning("worker pid %d did not exit when told to: killing it", w.pid)
            _kill(w.pid)

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
            if w.prepared and self.agent is not None:
                self.agent.release(w.env_key)
        return w

    async def stop(self, timeout: float = 5.0) -> None:
        """Kill every worker, wait until they are gone, then stop the fork server."""
        for w in self.workers.values():
            self._unwatch(w)
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
        for server in list(self.servers.values()):
            await server.stop(timeout)
        self.servers.clear()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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


def _worker_environ(env: dict[str, Any] | None, prepared: PreparedEnv | None) -> dict[str, str]:
    """The variables a worker starts with: the env's, and PYTHONPATH for its packages
    (so that subprocesses of a task import them too)."""
    out = dict((env or {}).get("env_vars") or {})
    if prepared is not None and prepared.paths:
        inherited = out.get("PYTHONPATH") or os.environ.get("PYTHONPATH")
        out["PYTHONPATH"] = os.pathsep.join([*prepared.paths, *([inherited] if inherited else [])])
    return out


def env_key_of(env: dict[str, Any] | None) -> str:
    return runtime_env.env_key(env)

"""The fork server: it survives a malformed request and ends quietly when the raylet
goes, however the raylet closes the socket; the worker pool notices a worker that
dies while it starts."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import wait_for_condition

DEADLINE_S = 30


@pytest.fixture
def fork_server() -> Iterator[tuple[socket.socket, subprocess.Popen[bytes]]]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aioray.daemons.forkserver", "--control-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    theirs.close()
    try:
        yield ours, proc
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _answer(sock: socket.socket, peek: bool = False) -> dict[str, object]:
    readable, _, _ = select.select([sock], [], [], DEADLINE_S)
    assert readable, "the fork server did not answer"
    data = sock.recv(4096, socket.MSG_PEEK if peek else 0)
    return json.loads(data.splitlines()[0])  # type: ignore[no-any-return]


def test_fork_server_answers_a_malformed_request_and_carries_on(
    fork_server: tuple[socket.socket, subprocess.Popen[bytes]],
) -> None:
    sock, proc = fork_server
    for bad in (b"not json\n", b"[1, 2]\n", b'{"env": {}}\n'):
        sock.sendall(bad)
        assert "malformed fork request" in str(_answer(sock)["error"])
    assert proc.poll() is None


def test_fork_server_exits_cleanly_when_the_raylet_resets_the_socket(
    fork_server: tuple[socket.socket, subprocess.Popen[bytes]],
) -> None:
    sock, proc = fork_server
    # A request whose worker fails at once (no arguments). Its answer stays unread
    # (peeked), so closing our end resets the fork server's.
    sock.sendall(json.dumps({"args": {}, "env": {}}).encode() + b"\n")
    child = _answer(sock, peek=True)["pid"]
    sock.close()
    assert proc.wait(timeout=DEADLINE_S) == 0
    assert proc.stderr is not None
    assert "ConnectionResetError" not in proc.stderr.read().decode()
    wait_for_condition(lambda: not psutil.pid_exists(child), timeout=DEADLINE_S)


def test_pool_forgets_a_worker_killed_before_it_registered(tmp_path: Path) -> None:
    """A worker that dies before registering has no connection whose close would tell:
    the pool must notice (its pid), stop counting it as starting, and say so, or the
    raylet would wait for it forever instead of starting another."""
    from aioray.daemons.raylet.worker_pool import WorkerHandle, WorkerPool

    async def main() -> None:
        lost: list[WorkerHandle] = []
        noticed = asyncio.Event()

        def on_lost_start(w: WorkerHandle) -> None:
            lost.append(w)
            noticed.set()

        args = {"node_ip": "127.0.0.1", "raylet_port": 1, "session_dir": str(tmp_path)}
        pool = WorkerPool(args, str(tmp_path), on_lost_start=on_lost_start)
        await pool.start()
        try:
            await pool.start_worker(None)
            (w,) = pool.workers.values()
            assert pool.starting[""] == 1 and not w.registered
            os.kill(w.pid, signal.SIGKILL)
            await asyncio.wait_for(noticed.wait(), DEADLINE_S)
            assert lost == [w] and pool.workers == {} and pool.starting[""] == 0
            assert w.pidfd is None  # the watch is closed
        finally:
            await pool.stop()

    asyncio.run(main())


def test_the_node_starts_the_fork_server_beside_the_raylet(ray_start: Any) -> None:
    """init() starts the fork server itself, with the GCS and the raylet, instead of the
    raylet starting it once its own imports are done (the first task waits for a worker,
    and so for the fork server's imports): the raylet's workers are that server's children."""
    import aioray as ray

    session = ray_start.address_info["session_dir"]
    servers = [
        p
        for p in psutil.Process().children()
        if p.cmdline()[1:3] == ["-m", "aioray.daemons.forkserver"] and session in p.cmdline()
    ]
    assert len(servers) == 1, [p.cmdline() for p in psutil.Process().children()]

    @ray.remote
    def parent_pid() -> int:
        return os.getppid()

    assert ray.get(parent_pid.remote(), timeout=DEADLINE_S) == servers[0].pid


def test_a_worker_shares_the_template_and_starts_nothing_of_its_own(ray_start: Any) -> None:
    """What keeps an idle worker's private memory small, checked by state, not by size:
    the fork server froze its objects before forking (a worker's collections never write
    to their headers, so those pages stay shared), it loaded numpy.random (numpy loads it
    on first use: otherwise in each worker, privately) and the public API, which tasks
    use; a worker runs no hidden native threads (a loop resolving its server's address
    starts four, each with its own malloc arena) and never loads the dashboard."""
    import gc
    import threading

    import aioray as ray

    @ray.remote
    def state() -> dict[str, Any]:
        return {
            "frozen": gc.get_freeze_count(),
            "threads": psutil.Process().num_threads(),
            "python_threads": threading.active_count(),
            "loaded": sorted(
                m for m in ("aioray.api", "aioray.dashboard", "aiohttp") if m in sys.modules
            ),
            "server": os.getppid(),
        }

    got = ray.get(state.remote(), timeout=DEADLINE_S)
    assert got["frozen"] > 10_000, got
    assert got["threads"] == got["python_threads"], got
    assert got["loaded"] == ["aioray.api"], got
    maps = Path(f"/proc/{got['server']}/maps").read_text()
    assert "numpy/random/" in maps  # its extension modules are mapped in the template

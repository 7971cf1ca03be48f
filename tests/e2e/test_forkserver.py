"""The fork server: it survives a malformed request and ends quietly when the raylet
goes, however the raylet closes the socket."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
from collections.abc import Iterator

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

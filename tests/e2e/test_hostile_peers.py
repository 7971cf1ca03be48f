"""Hostile peers against real daemons: memory per silent socket, file descriptors, log floods.

Each test starts its own cluster (some change a daemon's limits for good) and
talks to its ports with raw sockets, as an attacker on the network would: no
token, no handshake, or one stray byte.
"""

from __future__ import annotations

import os
import re
import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import _shutdown_and_check_ports, listener_pids, port_of, wait_for_condition

import aioray as ray
from aioray._private.wire import protocol

CHALLENGE_LEN = len(
    b"".join(bytes(p) for p in protocol.encode_frame(protocol.NOTIFY, 0, "challenge", bytes(16)))
)
SILENT = 500
PER_CONNECTION_LIMIT = 16 * 1024


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A one-node cluster whose daemons read ``request.param`` as environment."""
    for name, value in (getattr(request, "param", None) or {}).items():
        monkeypatch.setenv(name, value)
    ctx = ray.init(num_cpus=1)
    try:
        yield ctx
    finally:
        _shutdown_and_check_ports(ctx)


def daemon(ctx: Any, which: str) -> psutil.Process:
    port = port_of(ctx.address_info[f"{which}_address"])
    [pid] = listener_pids(port) - {os.getpid()}
    return psutil.Process(pid)


def open_silent(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that never speak, each accepted (its challenge has arrived)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    for s in socks:
        got = b""
        while len(got) < CHALLENGE_LEN:
            chunk = s.recv(CHALLENGE_LEN - len(got))
            assert chunk, "the daemon closed a silent connection early"
            got += chunk
    return socks


def established(proc: psutil.Process) -> int:
    return sum(1 for c in proc.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED)


@pytest.mark.parametrize("cluster", [{"AIORAY_HANDSHAKE_TIMEOUT_S": "120"}], indirect=True)
def test_silent_connections_cost_a_few_kib_and_give_it_back(cluster: Any) -> None:
    gcs = daemon(cluster, "gcs")
    port = port_of(cluster.address_info["gcs_address"])
    baseline_conns = established(gcs)
    before = gcs.memory_full_info().uss
    growth = []
    for _ in range(3):
        socks = open_silent(port, SILENT)
        held = gcs.memory_full_info().uss - before
        growth.append(held)
        assert held < SILENT * PER_CONNECTION_LIMIT, f"{held / SILENT:.0f} B per connection"
        for s in socks:
            s.close()
        wait_for_condition(lambda: established(gcs) <= baseline_conns, 30)
    after = gcs.memory_full_info().uss - before
    # Three rounds leave no more behind than one round holds: nothing accumulates.
    assert after < SILENT * PER_CONNECTION_LIMIT, (growth, after)
    assert ray.get(ray.put("still serving")) == "still serving"


def test_daemons_raise_their_open_file_limit_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Low, but above what this (long-lived pytest) process already holds.
    low = min(hard, max(256, len(os.listdir("/proc/self/fd")) + 64))
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        ctx = ray.init(num_cpus=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        for which in ("gcs", "raylet"):
            assert daemon(ctx, which).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard), which
    finally:
        _shutdown_and_check_ports(ctx)


FD_LIMIT = 256
FLOOD = 1100


@pytest.mark.parametrize(
    "cluster",
    [{"AIORAY_HANDSHAKE_TIMEOUT_S": "120", "AIORAY_MEMORY_MONITOR_REFRESH_MS": "20"}],
    indirect=True,
)
def test_a_flood_of_idle_sockets_leaves_the_raylet_its_file_descriptors(cluster: Any) -> None:
    raylet = daemon(cluster, "raylet")
    port = port_of(cluster.address_info["raylet_address"])
    raylet.rlimit(psutil.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= FLOOD + 200, "the test itself needs the descriptors"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    try:
        for _ in range(FLOOD):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        for s in socks:  # each was accepted: it got a challenge, or was closed at once
            try:
                s.recv(CHALLENGE_LEN)
            except ConnectionResetError:
                pass
        # Silent peers hold at most half of what is left above the reserve (the last 32).
        assert raylet.num_fds() < FD_LIMIT - 32

        @ray.remote
        def square(x: int) -> int:
            return x * x

        assert ray.get([square.remote(i) for i in range(50)], timeout=60) == [
            i * i for i in range(50)
        ]
        assert raylet.is_running()
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    log = Path(cluster.address_info["session_dir"], "logs", "raylet.log").read_text()
    assert "Too many open files" not in log
    assert "cannot read the node's memory usage" not in log
    assert "evicted: 112 handshakes in progress (at most 112)" in log  # logged, rate-limited
    assert log.count("evicted: ") <= 20


@ray.remote
class Target:
    def port(self) -> tuple[int, int]:
        from aioray._private.owner import worker_context

        cw = worker_context.core_worker
        assert cw is not None
        return os.getpid(), cw.address[1]

    def say(self, text: str) -> None:
        print(text)


@pytest.mark.parametrize(
    "cluster",
    [{"AIORAY_PEER_LOG_WINDOW_S": "2", "AIORAY_PEER_LOG_BURST": "3"}],
    indirect=True,
)
def test_stray_bytes_to_a_worker_are_logged_in_its_file_not_printed_by_the_driver(
    cluster: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    target = Target.remote()  # type: ignore[attr-defined]
    pid, port = ray.get(target.port.remote(), timeout=60)
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.recv(CHALLENGE_LEN)
            s.sendall(b"\x01")  # the start of a frame that never ends
    ray.get(target.say.remote("after the stray bytes"), timeout=60)
    log = Path(cluster.address_info["session_dir"], "logs", f"worker-{pid}.log")

    def accounted() -> tuple[int, int] | None:
        """(lines written, warnings summarised) once all 40 are accounted for."""
        text = log.read_text() if log.exists() else ""
        written = text.count("closed in the middle of a frame")
        held = sum(int(n) for n in re.findall(r"(\d+) more such warnings \(partial frame\)", text))
        return (written, held) if written + held == 40 else None

    written, held = wait_for_condition(
        accounted, 30, message=lambda: log.read_text() if log.exists() else "no log"
    )
    assert held > 0 and written < 40
    out, err = capfd.readouterr()
    assert "after the stray bytes" in out + err  # the actor's own print still arrives
    assert "middle of a frame" not in out + err
    assert "more such warnings" not in out + err

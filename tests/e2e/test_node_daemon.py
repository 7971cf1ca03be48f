"""The node daemon: ``aioray serve-node`` in the foreground, ``start``/``stop``/``status``
with a second node at another loopback address, and --address pointing at nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import listening_ports, shm_entries, wait_for_condition, wait_ports_closed

import aioray as ray
from aioray._private.node import node
from aioray._private.wire import auth, config

REPO = Path(__file__).resolve().parents[2]
GET_TIMEOUT = 30
CLI_TIMEOUT = 60
SECOND_IP = "127.0.0.2"  # all of 127/8 is loopback on Linux: a second node's own address


def _free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict[str, str] | None = None, tmp_path: Path, name: str) -> Any:
    """``python -m aioray.cli ARGS`` to completion; output through files (see
    test_cluster_lifecycle: detached daemons must not hold our pipes)."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.run(
            [sys.executable, "-m", "aioray.cli", *args],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
            timeout=CLI_TIMEOUT,
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


class Foreground:
    """``aioray serve-node ARGS`` running in the foreground, its stderr in a file."""

    def __init__(self, args: list[str], env: dict[str, str], stderr: Path) -> None:
        self.stderr_path = stderr
        with open(stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aioray.cli", "serve-node", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_serving(self) -> None:
        wait_for_condition(
            lambda: "aioray node serving" in self.stderr() or self.proc.poll() is not None,
            timeout=CLI_TIMEOUT,
            message=self.stderr,
        )
        assert self.proc.poll() is None, self.stderr()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A cluster token in the environment, for the nodes and for this test's driver."""
    monkeypatch.setenv(auth.TOKEN_ENV, auth.generate_token())
    yield dict(os.environ)
    auth.reset()


def _nodes(address: str) -> list[dict[str, Any]]:
    from aioray._private.node.node_commands import gcs_call

    auth.set_token(node.token_for(address))
    return list(gcs_call(address, "get_nodes"))


# -------------------------------------------------------------------------- serve-node


def test_serve_node_head_runs_in_the_foreground_and_stops_on_sigterm(
    token_env: dict[str, str], tmp_path: Path
) -> None:
    port, metrics_port = _free_port(), _free_port()
    shm_before = shm_entries()
    args = ["--head", "--port", str(port), "--num-cpus", "1", "--resources", '{"tpu": 2}']
    args += ["--labels", '{"zone": "a"}', "--metrics-export-port", str(metrics_port)]
    head = Foreground(args, token_env, tmp_path / "head.err")
    try:
        head.wait_serving()
        address = f"127.0.0.1:{port}"
        ray.init(address=address)
        try:
            assert ray.cluster_resources()["tpu"] == 2

            @ray.remote
            def hello() -> str:
                return "from serve-node"

            assert ray.get(hello.remote(), timeout=GET_TIMEOUT) == "from serve-node"
            [info] = ray.nodes()
            assert info["Labels"] == {"zone": "a"} and info["IsHead"]
            assert info["MetricsExportPort"] == metrics_port
            ray.put(b"x" * 300_000)  # a shm segment the node must free when it stops
        finally:
            ray.shutdown()
        logs = head.stderr()
        assert "GCS listening on" in logs and "raylet" in logs  # daemons log to stderr
        raylet_port = node.split_address(f"x:{info['NodeManagerPort']}")[1]
    finally:
        code = head.stop(signal.SIGTERM)
    assert code == 0, head.stderr()
    wait_ports_closed({"gcs": port, "raylet": raylet_port, "metrics": metrics_port})
    assert shm_entries() <= shm_before


def test_serve_node_joins_at_another_address_and_sigint_stops_it(
    token_env: dict[str, str], tmp_path: Path
) -> None:
    started = _cli("start", "--head", "--port", str(_free_port()), "--num-cpus", "1",
                   tmp_path=tmp_path, name="head")  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        address = node.resolve_address("auto")
        worker = Foreground(
            ["--address", address, "--node-ip-address", SECOND_IP, "--num-cpus", "2",
             "--resources", '{"side": 1}'],
            token_env,
            tmp_path / "worker.err",
        )  # fmt: skip
        try:
            worker.wait_serving()
            nodes = _nodes(address)
            assert sorted(n["NodeManagerAddress"] for n in nodes) == ["127.0.0.1", SECOND_IP]
            status = _cli("status", tmp_path=tmp_path, name="status")
            assert status.returncode == 0, status.stderr
            assert "2 alive node(s), 0 dead" in status.stdout
            assert f"{SECOND_IP}:" in status.stdout and "side: 0/1 used" in status.stdout
        finally:
            assert worker.stop(signal.SIGINT) == 0, worker.stderr()
        # The GCS saw the node go: status lists it as dead.
        wait_for_condition(lambda: sum(not n["Alive"] for n in _nodes(address)) == 1)
        status = _cli("status", tmp_path=tmp_path, name="status2")
        assert "1 alive node(s), 1 dead" in status.stdout and "DEAD" in status.stdout
    finally:
        stopped = _cli("stop", tmp_path=tmp_path, name="stop")
        assert stopped.returncode == 0, stopped.stderr


def test_serve_node_exits_nonzero_when_a_daemon_dies(
    token_env: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    head = Foreground(["--head", "--port", str(port), "--num-cpus", "1"], token_env,
                      tmp_path / "head.err")  # fmt: skip
    try:
        head.wait_serving()
        [info] = _nodes(f"127.0.0.1:{port}")
        raylet_port = info["NodeManagerPort"]
        import psutil

        [raylet] = [
            c.pid
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == raylet_port
        ]
        os.kill(raylet, signal.SIGKILL)
        assert head.proc.wait(20) == 1
        assert "aioray.daemons.raylet exited; stopping the node" in head.stderr()
    finally:
        head.stop()
    wait_ports_closed({"gcs": port})


def test_start_address_joins_a_second_node_and_stop_stops_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No token anywhere: the head generates one, and the joining node and the driver
    # find it in this machine's cluster file.
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    env = dict(os.environ)
    port = _free_port()
    head = _cli("start", "--head", "--port", str(port), "--num-cpus", "1", env=env,
                tmp_path=tmp_path, name="head")  # fmt: skip
    assert head.returncode == 0, head.stderr
    try:
        assert oct(os.stat(node.CLUSTER_FILE).st_mode & 0o777) == "0o600"  # it holds the token
        # The dashboard, found by the job client with no address and no token given.
        assert "Dashboard at http://127.0.0.1:" in head.stdout
        from aioray.job_submission import JobSubmissionClient

        assert JobSubmissionClient().list_jobs() == []
        address = f"127.0.0.1:{port}"
        joined = _cli("start", "--address", address, "--node-ip-address", SECOND_IP,
                      "--num-cpus", "1", env=env, tmp_path=tmp_path, name="join")  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        alive = [n for n in _nodes(address) if n["Alive"]]
        assert {n["NodeManagerAddress"] for n in alive} == {"127.0.0.1", SECOND_IP}
        ray.init(address="auto")
        try:
            assert ray.cluster_resources()["CPU"] == 2
        finally:
            ray.shutdown()
    finally:
        stopped = _cli("stop", tmp_path=tmp_path, name="stop")
    # GCS, dashboard and two raylets
    assert stopped.returncode == 0 and "Stopped 4 aioray daemon" in stopped.stdout
    wait_ports_closed({"gcs": port})
    assert port not in listening_ports()


def test_stop_stops_a_gcs_restarted_by_hand(token_env: dict[str, str], tmp_path: Path) -> None:
    """Issue 14.7: after ``kill -9`` of the GCS and its restart as docs/deploy.md says,
    ``aioray stop`` finds every daemon of the session, the new GCS included."""
    from conftest import aioray_processes

    processes_before = aioray_processes()
    port = _free_port()
    head = _cli("start", "--head", "--port", str(port), "--num-cpus", "1", env=token_env,
                tmp_path=tmp_path, name="head")  # fmt: skip
    assert head.returncode == 0, head.stderr
    restarted: subprocess.Popen[bytes] | None = None
    try:
        with open(os.path.join(config.SESSION_ROOT, "started_nodes.json")) as f:
            [record] = json.load(f)
        os.kill(record["gcs_pid"], signal.SIGKILL)
        cmd = [sys.executable, "-m", "aioray.daemons.gcs", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--session-dir", record["session_dir"]]
        restarted = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=token_env)
        address = f"127.0.0.1:{port}"

        def serving() -> bool:
            try:
                return [n["Alive"] for n in _nodes(address)] == [True]
            except ConnectionError:  # not listening yet
                return False

        wait_for_condition(serving, timeout=30, message="the restarted GCS does not answer")
    finally:
        stopped = _cli("stop", tmp_path=tmp_path, name="stop")
    assert stopped.returncode == 0, stopped.stderr
    # The restarted GCS and the raylet (the dashboard starts on its first visit: none here).
    assert "Stopped 2 aioray daemon" in stopped.stdout, stopped.stdout
    assert restarted is not None and restarted.wait(20) == 0  # SIGTERM: a clean stop

    def remaining() -> dict[tuple[int, float], str]:
        return {k: v for k, v in aioray_processes().items() if k not in processes_before}

    wait_for_condition(lambda: not remaining(), message=lambda: f"stop left: {remaining()}")
    wait_ports_closed({"gcs": port})


def test_start_head_with_autoscaling_and_stop_stops_the_launched_nodes(
    token_env: dict[str, str], tmp_path: Path
) -> None:
    """``aioray start --head --autoscaling-config`` (detached): the autoscaler launches
    a min_workers node; ``aioray stop`` stops the autoscaler first, which stops it."""
    import json

    config = tmp_path / "autoscaling.json"
    types = {"w": {"resources": {"CPU": 1}, "min_workers": 1, "max_workers": 1}}
    config.write_text(json.dumps({"provider": {"type": "local"}, "available_node_types": types}))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _cli("start", "--head", "--port", str(port), "--num-cpus", "0",
                "--autoscaling-config", str(config), env=token_env, tmp_path=tmp_path,
                name="head")  # fmt: skip
    assert head.returncode == 0, head.stderr
    try:
        wait_for_condition(lambda: sum(n["Alive"] for n in _nodes(address)) == 2, 30)
    finally:
        stopped = _cli("stop", tmp_path=tmp_path, name="stop")
    # The GCS and the head's raylet (the dashboard starts on its first visit: none here).
    assert stopped.returncode == 0 and "Stopped 2 aioray daemon" in stopped.stdout

    wait_for_condition(lambda: not _launched(address), 20, message="a launched serve-node was left")
    wait_ports_closed({"gcs": port})


def _launched(address: str) -> list[int]:
    """Pids of the serve-node processes an autoscaler launched for the cluster at ``address``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if "serve-node" in cmd and f"--address {address}" in cmd:
            found.append(p.pid)
    return found


# ------------------------------------------------------------------ bad input: --address


def _silent_listener() -> socket.socket:
    """A port that accepts TCP connections (backlog) but never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_init_address_pointing_at_nothing_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(
        ConnectionError, match=f"Could not connect to the aioray cluster at {address}"
    ):
        ray.init(address=address)
    assert time.monotonic() - start < 5
    assert not ray.is_initialized()

    monkeypatch.setattr(config, "CONNECT_TIMEOUT_S", 1.0)
    with _silent_listener() as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=address):
            ray.init(address=address)
        assert time.monotonic() - start < 5  # the handshake timed out: no hang
    assert not ray.is_initialized()


@pytest.mark.parametrize("command", ["start", "serve-node"])
def test_cli_address_pointing_at_nothing_fails_fast(command: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    proc = _cli(command, "--address", address, tmp_path=tmp_path, name=command)
    assert proc.returncode != 0
    assert f"cannot join the cluster at {address}" in proc.stderr
    assert "Connection refused" in proc.stderr or "Connect call failed" in proc.stderr
    assert time.monotonic() - start < 10


def test_cli_silent_address_times_out(tmp_path: Path) -> None:
    env = {**os.environ, "AIORAY_CONNECT_TIMEOUT_S": "1"}
    with _silent_listener() as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        proc = _cli("start", "--address", address, env=env, tmp_path=tmp_path, name="silent")
    assert proc.returncode != 0 and f"cannot join the cluster at {address}" in proc.stderr
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--head", "--resources", "{oops"], "--resources is not valid JSON"),
        (["--head", "--labels", "[1]"], "--labels must be a JSON object"),
        (["--head", "--address", "127.0.0.1:1"], "give --head to start a cluster or --address"),
        ([], "give --head to start a cluster or --address"),
        (["--address", "no-port"], "Invalid address 'no-port'"),
    ],
)
def test_serve_node_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    proc = _cli("serve-node", *args, tmp_path=tmp_path, name="bad")
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_serve_node_port_in_use_or_foreign_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _cli("serve-node", "--head", "--port", str(port), tmp_path=tmp_path, name="taken")
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _cli("serve-node", "--head", "--port", "0", "--metrics-export-port", str(port),
                    tmp_path=tmp_path, name="metrics-taken")  # fmt: skip
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    proc = _cli("serve-node", "--head", "--port", "0", "--node-ip-address", "192.0.2.1",
                tmp_path=tmp_path, name="foreign")  # fmt: skip
    assert proc.returncode != 0 and "cannot listen on 192.0.2.1:0" in proc.stderr


def test_serve_node_head_runs_the_autoscaler_and_stops_its_nodes(
    token_env: dict[str, str], tmp_path: Path
) -> None:
    """``serve-node --head --autoscaling-config``: a min_workers node is launched without
    demand, shown by ``aioray status``, and stopped with the head (no serve-node left)."""
    import json

    config = tmp_path / "autoscaling.json"
    types = {"w": {"resources": {"CPU": 1}, "min_workers": 1, "max_workers": 1}}
    config.write_text(json.dumps({"provider": {"type": "local"}, "available_node_types": types}))
    port = _free_port()
    args = ["--head", "--port", str(port), "--num-cpus", "0", "--autoscaling-config", str(config)]
    head = Foreground(args, token_env, tmp_path / "head.err")
    address = f"127.0.0.1:{port}"

    try:
        head.wait_serving()
        wait_for_condition(
            lambda: sum(n["Alive"] for n in _nodes(address)) == 2, 30, message=head.stderr
        )
        status = _cli("status", "--address", address, env=token_env, tmp_path=tmp_path, name="st")
        assert "Active:" in status.stdout and " 1 w" in status.stdout, status.stdout
        assert len(_launched(address)) == 1
    finally:
        code = head.stop(signal.SIGTERM)
    assert code == 0, head.stderr()
    wait_for_condition(lambda: not _launched(address), 20, message="a launched serve-node was left")


def test_serve_node_head_serves_the_dashboard_and_takes_rays_flags(
    token_env: dict[str, str], tmp_path: Path
) -> None:
    port, dash = _free_port(), _free_port()
    args = ["--head", "--port", str(port), "--num-cpus", "1", "--dashboard-port", str(dash)]
    args += ["--include-dashboard=true", "--dashboard-agent-listen-port", "52365", "--block"]
    args += ["--ray-client-server-port", "10001", "--temp-dir", "/tmp", "--disable-usage-stats"]
    head = Foreground(args, token_env, tmp_path / "head.err")
    try:
        head.wait_serving()
        assert f"dashboard http://127.0.0.1:{dash}" in head.stderr()
        req = urllib.request.Request(
            f"http://127.0.0.1:{dash}/api/v0/nodes",
            headers={"Authorization": f"Bearer {token_env[auth.TOKEN_ENV]}"},
        )
        with urllib.request.urlopen(req, timeout=GET_TIMEOUT) as r:
            assert json.loads(r.read())["data"]["result"]["total"] == 1
    finally:
        code = head.stop(signal.SIGTERM)
    assert code == 0, head.stderr()
    wait_ports_closed({"gcs": port, "dashboard": dash})


def test_dashboard_refuses_a_public_host_without_auth(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {**os.environ, "AIORAY_AUTH_MODE": "disabled"}
    env.pop(auth.TOKEN_ENV, None)
    proc = _cli(
        "serve-node", "--head", "--port", "0", "--dashboard-host", "0.0.0.0",
        env=env, tmp_path=tmp_path, name="public",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Refusing to serve the dashboard on 0.0.0.0" in proc.stderr

"""Cluster lifecycle: init/shutdown leave nothing behind, re-init, the CLI, hostile peers."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import (
    aioray_processes,
    cluster_ports,
    listener_pids,
    listening_ports,
    shm_entries,
    wait_for_condition,
    wait_ports_closed,
)

import aioray as ray

REPO = Path(__file__).resolve().parents[2]
GET_TIMEOUT = 30
CLI_TIMEOUT = 60


@ray.remote
def _pid_of_worker():
    return os.getpid()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aioray.cli ARGS``; output goes to files so detached daemons
    holding inherited descriptors cannot make the call hang."""
    out_path = tmp_path / f"{name}.out"
    err_path = tmp_path / f"{name}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "aioray.cli", *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            timeout=CLI_TIMEOUT,
            text=True,
        )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, out_path.read_text(), err_path.read_text()
    )


# -------------------------------------------------------------------- init/shutdown


def test_init_shutdown_leaves_no_process_shm_or_port():
    processes_before = aioray_processes()
    shm_before = shm_entries()

    ctx = ray.init(num_cpus=1)
    info = ctx.address_info
    assert info["gcs_address"].startswith("127.0.0.1:")
    assert info["raylet_address"].startswith("127.0.0.1:")
    assert info["node_id"]
    assert Path(info["session_dir"]).is_dir()
    ports = cluster_ports(ctx)
    assert ports["gcs"] in listening_ports()
    assert ports["raylet"] in listening_ports()

    # the GCS and the raylet are separate daemon processes, not the driver
    gcs_pids = listener_pids(ports["gcs"])
    raylet_pids = listener_pids(ports["raylet"])
    assert gcs_pids and raylet_pids
    assert not gcs_pids & raylet_pids, "GCS and raylet must be different processes"
    assert os.getpid() not in gcs_pids | raylet_pids
    for pid in gcs_pids | raylet_pids:
        assert "aioray.daemons" in " ".join(psutil.Process(pid).cmdline())

    worker_pid = ray.get(_pid_of_worker.remote(), timeout=GET_TIMEOUT)
    assert worker_pid not in gcs_pids | raylet_pids | {os.getpid()}
    big = ray.put(np.ones(1_000_000))
    assert float(ray.get(big, timeout=GET_TIMEOUT).sum()) == 1_000_000.0
    segments = {n for n in shm_entries() - shm_before if not n.endswith("_pool")}
    assert segments, "a large object should live in /dev/shm"  # (not the pool's directory)
    started = {key for key in aioray_processes() if key not in processes_before}
    assert {pid for pid, _ in started} >= gcs_pids | raylet_pids | {worker_pid}
    del big

    ray.shutdown()
    assert not ray.is_initialized()
    wait_ports_closed(ports)
    wait_for_condition(
        lambda: not any(_alive(pid) for pid, _ in started),
        message=lambda: f"processes survived shutdown: {[p for p, _ in started if _alive(p)]}",
    )
    wait_for_condition(
        lambda: not (shm_entries() - shm_before),
        message=lambda: f"segments survived shutdown: {sorted(shm_entries() - shm_before)}",
    )
    # shutdown twice is harmless, as in Ray
    ray.shutdown()


def test_is_initialized():
    assert ray.is_initialized() is False
    ray.init(num_cpus=1)
    try:
        assert ray.is_initialized() is True
    finally:
        ray.shutdown()
    assert ray.is_initialized() is False


def test_init_shutdown_init_again():
    fds = []
    for round_ in range(3):
        ctx = ray.init(num_cpus=1)
        ports = cluster_ports(ctx)

        @ray.remote
        def which(r):
            return f"round {r}"

        assert ray.get(which.remote(round_), timeout=GET_TIMEOUT) == f"round {round_}"
        assert ray.get(ray.put(round_), timeout=GET_TIMEOUT) == round_
        ray.shutdown()
        wait_ports_closed(ports)
        fds.append(len(os.listdir("/proc/self/fd")))
    # Each cycle's core loop is closed with it (it kept six descriptors open per cycle).
    assert fds[2] <= fds[1], fds


@pytest.mark.parametrize(
    "ray_start",
    [{"num_cpus": 1, "num_gpus": 1, "object_store_memory": 200 * 1024**2, "namespace": "ns"}],
    indirect=True,
)
def test_init_accepts_ray_arguments(ray_start):
    total = ray.cluster_resources()
    assert total["CPU"] == 1
    assert total["GPU"] == 1

    @ray.remote(num_gpus=1)
    def gpu_task():
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert ray.get(gpu_task.remote(), timeout=GET_TIMEOUT) == "0"


def test_init_runtime_env_reaches_tasks():
    ray.init(num_cpus=1, runtime_env={"env_vars": {"AIORAY_LIFECYCLE_VAR": "set"}})
    try:

        @ray.remote
        def read():
            return os.environ.get("AIORAY_LIFECYCLE_VAR")

        assert ray.get(read.remote(), timeout=GET_TIMEOUT) == "set"
    finally:
        ray.shutdown()


# ------------------------------------------------------------------ hostile peers


def _send_and_expect_close(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(payload)
        except OSError:
            return  # already dropped
        try:
            while sock.recv(65536):
                pass  # the server may send its own handshake first; then it must hang up
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"port {port} kept a connection open after receiving {payload[:16]!r}")


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_daemons_drop_garbage_connections_and_keep_serving(ray_start):
    ports = cluster_ports(ray_start)
    for port in ports.values():
        _send_and_expect_close(port, b"\xff" * 64)  # an absurd length prefix
        _send_and_expect_close(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 64)
        # a connection that opens and closes without a word
        socket.create_connection(("127.0.0.1", port), timeout=10).close()

    @ray.remote
    def still_serving():
        return "yes"

    assert ray.get(still_serving.remote(), timeout=GET_TIMEOUT) == "yes"
    assert ray.get(ray.put(np.ones(200_000)), timeout=GET_TIMEOUT).shape == (200_000,)


# ----------------------------------------------------------------------------- CLI


def test_cli_start_status_stop(tmp_path):
    port = _free_port()
    processes_before = aioray_processes()
    started = _cli(
        "start",
        "--head",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--resources",
        json.dumps({"custom": 2}),
        tmp_path=tmp_path,
        name="start",
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        wait_for_condition(
            lambda: port in listening_ports(), message=f"nothing listens on --port {port}"
        )

        # a driver connects with address="auto" and runs a task
        ctx = ray.init(address="auto")
        try:
            assert ctx.address_info["gcs_address"].endswith(f":{port}")
            assert ray.cluster_resources()["CPU"] == 1
            assert ray.cluster_resources()["custom"] == 2

            @ray.remote
            def where():
                return "on the CLI cluster"

            assert ray.get(where.remote(), timeout=GET_TIMEOUT) == "on the CLI cluster"
            node_id = ray.nodes()[0]["NodeID"]
        finally:
            ray.shutdown()
        # a connected driver's shutdown leaves the cluster running
        assert port in listening_ports()

        # an explicit address works too
        ray.init(address=f"127.0.0.1:{port}")
        try:
            assert ray.get(ray.put("explicit"), timeout=GET_TIMEOUT) == "explicit"
        finally:
            ray.shutdown()

        status = _cli("status", tmp_path=tmp_path, name="status")
        assert status.returncode == 0, status.stdout + status.stderr
        text = status.stdout + status.stderr
        assert "CPU" in text
        assert "1" in text
        assert node_id in text or node_id[:8] in text or "127.0.0.1" in text, text
    finally:
        stopped = _cli("stop", tmp_path=tmp_path, name="stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    def remaining():
        return {k: v for k, v in aioray_processes().items() if k not in processes_before}

    wait_for_condition(
        lambda: not remaining(), message=lambda: f"`aioray stop` left: {remaining()}"
    )
    assert port not in listening_ports()


def test_cli_help(tmp_path):
    helped = _cli("--help", tmp_path=tmp_path, name="help")
    assert helped.returncode == 0, helped.stderr
    for command in ("start", "stop", "status"):
        assert command in helped.stdout
    start_help = _cli("start", "--help", tmp_path=tmp_path, name="start-help")
    assert start_help.returncode == 0, start_help.stderr
    for flag in ("--head", "--port", "--num-cpus", "--resources"):
        assert flag in start_help.stdout


@pytest.mark.parametrize("ray_start", [{"log_to_driver": False}], indirect=True)
def test_log_to_driver_false_keeps_worker_output_away(ray_start, capfd):
    """With log_to_driver=False nothing a task prints reaches the driver."""
    token = f"silent-{os.getpid()}-{time.time_ns()}"

    @ray.remote
    def talk(text):
        print(text, flush=True)
        return text

    # Once a second task has printed and returned, the first one's line would have
    # been forwarded already (one worker stream, one raylet, in order).
    assert ray.get(talk.remote(token), timeout=GET_TIMEOUT) == token
    assert ray.get(talk.remote("after"), timeout=GET_TIMEOUT) == "after"
    out, err = capfd.readouterr()
    assert token not in out + err


def _write_script(code: str, tmp_path: Path, name: str) -> Path:
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    return script


def test_driver_exit_without_shutdown_cleans_up(tmp_path):
    """A script that never calls shutdown() still leaves nothing behind (atexit)."""
    script = _write_script(
        "import aioray as ray\n"
        "ray.init(num_cpus=1)\n"
        "print(ray.get(ray.put('exiting')), flush=True)\n",
        tmp_path,
        "no_shutdown",
    )
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.run(
            [sys.executable, str(script)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            timeout=CLI_TIMEOUT,
        )
    assert proc.returncode == 0, err_path.read_text()
    assert out_path.read_text().strip() == "exiting"
    # the autouse leak check asserts that no process or segment survived


def test_killed_driver_takes_its_cluster_down(tmp_path):
    """Daemons started by init() share the driver's fate, even on SIGKILL."""
    script = _write_script(
        "import threading\nimport aioray as ray\n"
        "ray.init(num_cpus=1)\n"
        "print(ray.get(ray.put('up')), flush=True)\n"
        "threading.Event().wait()\n",
        tmp_path,
        "killed",
    )
    driver = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        text=True,
    )
    try:
        readable, _, _ = select.select([driver.stdout], [], [], GET_TIMEOUT)
        assert readable, "the driver never reported its cluster up"
        assert driver.stdout.readline().strip() == "up"
    finally:
        driver.kill()
        driver.wait(timeout=CLI_TIMEOUT)
        driver.stdout.close()
    # the autouse leak check waits (bounded) for the orphaned daemons to exit

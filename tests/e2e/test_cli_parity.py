"""Ray's command-line and init behaviours: ``aioray --version``; a cluster started with
``aioray serve-node --head`` found by ``address="auto"``, ``aioray status`` (memory in
human units) and ``aioray logs`` (its own session); ``init(local_mode=True)`` refused
with Ray's message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_node_daemon import CLI_TIMEOUT, REPO, Foreground, _cli, _free_port

import aioray as ray


def test_version(tmp_path: Path) -> None:
    proc = _cli("--version", tmp_path=tmp_path, name="version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"aioray, version {ray.__version__}"


def test_serve_node_is_found_by_auto_status_and_logs(tmp_path: Path) -> None:
    env = {**os.environ, "AIORAY_SESSION_ROOT": str(tmp_path / "sessions")}
    port = _free_port()
    args = ["--head", "--port", str(port), "--num-cpus", "1", "--object-store-memory", "80000000"]
    head = Foreground(args, env, tmp_path / "head.err")
    try:
        head.wait_serving()
        driver = subprocess.run(
            [
                sys.executable,
                "-c",
                "import aioray as ray; ray.init(address='auto'); "
                "print(ray.cluster_resources()['CPU']); ray.shutdown()",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=CLI_TIMEOUT,
        )
        assert driver.returncode == 0, driver.stderr
        assert driver.stdout.strip() == "1.0"
        status = _cli("status", env=env, tmp_path=tmp_path, name="status")
        assert status.returncode == 0, status.stderr
        assert f"Cluster at 127.0.0.1:{port}" in status.stdout
        assert "object_store_memory: 0B/76.29MiB used" in status.stdout
        # A newer session (another cluster's) must not be the one `aioray logs` reads.
        os.makedirs(tmp_path / "sessions" / "session_2999-01-01_00-00-00_x" / "logs")
        logs = _cli("logs", env=env, tmp_path=tmp_path, name="logs")
        assert logs.returncode == 0, logs.stderr
        session = head.stderr().split("session ", 1)[1].split()[0].rstrip(",")
        assert f"Log files of {session}:" in logs.stdout
    finally:
        assert head.stop() == 0, head.stderr()
    # Stopped: "auto" finds nothing any more.
    status = _cli("status", env=env, tmp_path=tmp_path, name="status-after")
    assert status.returncode == 1 and "Could not find any running aioray" in status.stderr


def test_init_local_mode_is_refused_with_rays_message() -> None:
    """Ray 2.54+ raises this RuntimeError (2.58 checked); nothing starts."""
    with pytest.raises(RuntimeError) as info:
        ray.init(num_cpus=1, local_mode=True)
    assert str(info.value) == (
        "`local_mode` is no longer supported. For interactive debugging consider using "
        "the Ray distributed debugger."
    )
    assert not ray.is_initialized()

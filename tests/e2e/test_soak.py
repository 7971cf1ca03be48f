"""A short soak (benchmarks/soak.py): 1 task/ms with the State API polled every second,
and no process of the cluster growing once the GCS's task table is full."""

from __future__ import annotations

import os
import subprocess
import sys

BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "soak.py")


def test_a_steady_load_with_state_polls_grows_no_process() -> None:
    env = {**os.environ, "AIORAY_TASK_EVENTS_MAX_NUM_TASK_IN_GCS": "3000"}  # full in 3 s
    cmd = [sys.executable, BENCHMARK, "--duration", "14", "--sample", "1", "--settle", "0.4"]
    proc = subprocess.run(
        [*cmd, "--check", "20"], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check passed" in proc.stdout
    assert "state polls:" in proc.stdout  # the State API was polled meanwhile
    tasks = int(proc.stdout.split("soak: ")[1].split(" tasks")[0].replace(",", ""))
    assert tasks >= 10_000  # the load ran at (about) its rate

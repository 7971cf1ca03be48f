"""The scripts in examples/ run as smoke tests: each in its own interpreter, as a user would."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


pytestmark = pytest.mark.timeout(150)


def test_quickstart():
    out = run_example("quickstart.py")
    assert "squares: [0, 1, 4, 9]" in out
    assert "4 + 9 = 13" in out
    assert "put/get: {'greeting': 'hello', 'from': 'aioray'}" in out
    assert out.rstrip().endswith("done")


def test_monte_carlo_pi():
    out = run_example("monte_carlo_pi.py")
    match = re.search(r"pi estimate: ([0-9.]+) from 4 tasks", out)
    assert match, out
    assert abs(float(match.group(1)) - math.pi) < 0.01


def test_array_chunks():
    out = run_example("array_chunks.py")
    assert "chunks: 4" in out
    assert "match: True" in out
    chunked = float(re.search(r"mean of chunks: ([0-9.]+)", out).group(1))
    direct = float(re.search(r"np.mean:\s+([0-9.]+)", out).group(1))
    assert math.isclose(chunked, direct, rel_tol=1e-9)
    assert 0.49 < direct < 0.51


def test_retrieve_wait():
    out = run_example("retrieve_wait.py")
    runtime_lines = [ln for ln in out.splitlines() if ln.startswith("Runtime:")]
    assert len(runtime_lines) >= 4, out
    assert "all items: True" in out
    follow_ups = [ln for ln in out.splitlines() if ln.startswith("follow-up:")]
    assert follow_ups == [
        "follow-up: ((0, 'Learning'), (1, 'Ray'))",
        "follow-up: ((2, 'Flexible'), (3, 'Distributed'))",
        "follow-up: ((4, 'Python'), (5, 'for'))",
        "follow-up: ((6, 'Machine'), (7, 'Learning'))",
    ]


def test_counter_actor():
    out = run_example("counter_actor.py")
    assert "increment results: [1, 3, 6, 10, 15]" in out
    assert "final count: 15" in out
    history = [
        ("increment", 1, 1),
        ("increment", 2, 3),
        ("increment", 3, 6),
        ("increment", 4, 10),
        ("increment", 5, 15),
    ]
    assert f"history: {history}" in out


def test_data_tracker():
    out = run_example("data_tracker.py")
    words = ["Learning", "Ray", "Flexible", "Distributed", "Python", "for", "Data", "Science"]
    assert f"data: {list(enumerate(words))}" in out
    assert "tracker counts: 8" in out

"""Smoke tests for benchmarks/microbenchmark.py: it loads the way `aioray microbenchmark`
loads it, and one quick benchmark against a real cluster prints Ray's line format."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "microbenchmark.py"

LINE = re.compile(r"^single client tasks sync per second (\S+) \+- (\S+)$", re.MULTILINE)


def test_loads_by_path_and_lists_names(capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--list", "--filter", "tasks sync"]) == 0
    assert capsys.readouterr().out.splitlines() == ["single client tasks sync"]


@pytest.mark.timeout(150)
def test_quick_tasks_sync_prints_ray_format() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--filter", "tasks sync"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = LINE.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    mean, std = float(match.group(1)), float(match.group(2))
    assert mean > 0
    assert std >= 0

"""Helpers shared by tests/unit and tests/e2e (pytest puts tests/ on sys.path): waiting
on a condition with a bounded timeout, never sleeping and hoping."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_for_condition(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes.

    Returns the truthy value; raises AssertionError naming ``message`` on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.1f}s: {text}")
        time.sleep(interval)


def wait_for_file(path: os.PathLike[str] | str, timeout: float = 20.0) -> str:
    """Wait until ``path`` exists (written by a task) and return its text.

    A writer whose content matters writes a temporary file and renames it onto
    ``path``: the file appears complete or not at all.
    """
    wait_for_condition(lambda: os.path.exists(path), timeout, message=f"{path} never appeared")
    with open(path) as f:
        return f.read()


def reap(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Kill ``proc`` if it still runs, wait for it (bounded) and close its stdout: a test's
    child process (a second driver) is never left behind, whatever the test did."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()

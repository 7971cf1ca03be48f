"""Owner death: borrowers' gets raise OwnerDiedError promptly, the owner's objects are freed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import local_segment, wait_for_condition
from helpers import reap

import aioray as ray
from aioray.exceptions import OwnerDiedError

GET_TIMEOUT = 30
N = 50_000  # float64: 400 KB, kept in shared memory


def segment_exists(oid: bytes) -> bool:
    return os.path.exists(local_segment(oid))


@ray.remote
def slow(marker: str) -> int:
    deadline = time.time() + 30
    while not os.path.exists(marker) and time.time() < deadline:
        time.sleep(0.01)
    return 1


@ray.remote
class Owner:
    def make(self) -> list[Any]:
        return [ray.put(np.full(N, 1.0))]

    def start_slow(self, marker: str) -> list[Any]:
        return [slow.remote(marker)]

    def pid(self) -> int:
        return os.getpid()


def test_owner_death_frees_its_objects_and_borrowers_get_owner_died(ray_start: Any) -> None:
    owner = Owner.remote()
    [ref] = ray.get(owner.make.remote(), timeout=GET_TIMEOUT)
    assert ray.get(ref, timeout=GET_TIMEOUT).sum() == N
    assert segment_exists(ref.binary())
    pid = ray.get(owner.pid.remote(), timeout=GET_TIMEOUT)
    psutil.Process(pid).kill()
    wait_for_condition(
        lambda: not segment_exists(ref.binary()),
        message="the dead owner's object was not freed",
    )
    with pytest.raises(OwnerDiedError, match="owner"):
        ray.get(ref, timeout=GET_TIMEOUT)


def test_get_of_a_pending_object_fails_when_its_owner_dies(ray_start: Any, tmp_path: Path) -> None:
    owner = Owner.remote()
    marker = tmp_path / "release"
    [pending] = ray.get(owner.start_slow.remote(str(marker)), timeout=GET_TIMEOUT)
    pid = ray.get(owner.pid.remote(), timeout=GET_TIMEOUT)
    fut = pending.future()  # waiting at the owner: its reply can never come now
    psutil.Process(pid).kill()
    start = time.monotonic()
    with pytest.raises(OwnerDiedError):
        fut.result(timeout=GET_TIMEOUT)
    assert time.monotonic() - start < 10, "a borrower's get hung after its owner died"
    marker.write_text("go")  # let the orphaned task end now rather than at its deadline


BLOCKED_DRIVER = """
import os, sys, time
import aioray as ray

@ray.remote
def block(pid_file, marker):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.time() + 120  # (bounded: a worker left running goes in the end)
    while not os.path.exists(marker) and time.time() < deadline:
        time.sleep(0.05)
    return 1

ray.init(address=sys.argv[1])
ref = block.remote(sys.argv[2], sys.argv[3])
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
print("ready", flush=True)
time.sleep(600)
"""


@ray.remote
def worker_pid() -> int:
    return os.getpid()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_a_dead_drivers_running_task_worker_is_killed_not_reused(
    ray_start: Any, tmp_path: Path
) -> None:
    """A driver SIGKILLed while its task runs: nobody will read that task's result, so its
    worker is killed (as Ray's raylet kills a dead owner's leased workers), not put back
    as idle still running it; the node's CPU comes back and the next task runs."""
    pid_file, marker = tmp_path / "pid", tmp_path / "never"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            BLOCKED_DRIVER,
            ray_start.address_info["gcs_address"],
            str(pid_file),
            str(marker),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
        busy = int(pid_file.read_text())
        driver.kill()
        driver.wait(10)
    finally:
        reap(driver)
    wait_for_condition(
        lambda: _gone(busy), timeout=30, message="the dead driver's task worker still runs"
    )
    assert ray.get(worker_pid.remote(), timeout=GET_TIMEOUT) != busy

"""``aioray memory``: object references by owner, type, size and location, with totals."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np

import aioray as ray
from aioray.cli import memory_summary

GET_TIMEOUT = 30


@ray.remote
class Keeper:
    def keep(self, wrapped: list[Any]) -> bool:
        self.kept = wrapped[0]
        return True


def test_memory_lists_references_by_type_owner_and_location(ray_start: Any) -> None:
    big = ray.put(np.zeros(200_000))
    outer = ray.put([big])  # captures big
    small = ray.put("small")
    keeper = Keeper.remote()
    assert ray.get(keeper.keep.remote([big]), timeout=GET_TIMEOUT)
    report = memory_summary()
    lines = {line.split()[0]: line for line in report.splitlines() if line[:1].isalnum()}
    assert "LOCAL_REFERENCE" in lines[small.hex()] and "inline" in lines[small.hex()]
    assert "in shared memory" in lines[big.hex()] and "MiB" in lines[big.hex()]
    assert outer.hex() in lines
    assert "BORROWED" in report and "--- worker pid=" in report  # the actor's hold
    assert "--- driver pid=" in report
    assert "Object store: 1 object(s)" in report
    ray.kill(keeper)


def test_memory_cli_joins_a_cluster_and_prints_the_report(ray_start: Any) -> None:
    ref = ray.put(np.ones(200_000))
    address = ray_start.address_info["gcs_address"]
    out = subprocess.run(
        [sys.executable, "-m", "aioray.cli", "memory", "--address", address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert ref.hex() in out.stdout and "Object references status" in out.stdout


def test_memory_cli_without_a_cluster_fails_clearly(tmp_path: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aioray.cli", "memory", "--address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "aioray memory:" in out.stderr and "127.0.0.1:1" in out.stderr

"""Lineage reconstruction: a lost shared-memory copy is rebuilt by re-running its task.

Losing a copy is simulated by unlinking its /dev/shm segment (what a dead node or a
vanished spill file amounts to for the reader). Task runs are counted with files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import local_segment

import aioray as ray
from aioray.exceptions import ObjectLostError, ObjectReconstructionFailedMaxAttemptsExceededError

GET_TIMEOUT = 30
N = 50_000  # float64: 400 KB, kept in shared memory


def lose(ref: Any) -> None:
    os.unlink(local_segment(ref.binary()))


def runs(path: Path) -> int:
    return len(path.read_text()) if path.exists() else 0


@ray.remote(max_retries=2)
def produce(marker: str, value: float) -> Any:
    with open(marker, "a") as f:
        f.write("x")
    return np.full(N, value)


@ray.remote(max_retries=2)
def double(marker: str, arr: Any) -> Any:
    with open(marker, "a") as f:
        f.write("x")
    return arr * 2


@ray.remote
def total_of(wrapped: list[Any]) -> float:
    return float(ray.get(wrapped[0]).sum())


def test_lost_task_result_is_rebuilt_by_running_the_task_again(
    ray_shared: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    ref = produce.remote(str(marker), 3.0)
    assert ray.get(ref, timeout=GET_TIMEOUT).sum() == 3.0 * N
    assert runs(marker) == 1
    lose(ref)
    assert ray.get(ref, timeout=GET_TIMEOUT).sum() == 3.0 * N
    assert runs(marker) == 2


def test_lost_inputs_are_rebuilt_recursively(ray_shared: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    a = produce.remote(str(first), 1.0)
    b = double.remote(str(second), a)
    assert ray.get(b, timeout=GET_TIMEOUT).sum() == 2.0 * N
    lose(a)
    lose(b)
    # b runs again; its argument a is gone too, so the worker has a rebuilt as well.
    assert ray.get(b, timeout=GET_TIMEOUT).sum() == 2.0 * N
    assert (runs(first), runs(second)) == (2, 2)


def test_a_borrower_gets_a_lost_object_rebuilt_by_its_owner(
    ray_shared: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    ref = produce.remote(str(marker), 4.0)
    ray.wait([ref], timeout=GET_TIMEOUT)
    lose(ref)
    assert ray.get(total_of.remote([ref]), timeout=GET_TIMEOUT) == 4.0 * N
    assert runs(marker) == 2


def test_retries_bound_reconstruction(ray_shared: Any, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    ref = produce.options(max_retries=1).remote(str(marker), 5.0)
    ray.get(ref, timeout=GET_TIMEOUT)
    lose(ref)
    ray.get(ref, timeout=GET_TIMEOUT)  # the one retry rebuilds it
    lose(ref)
    with pytest.raises(ObjectReconstructionFailedMaxAttemptsExceededError, match="max_retries"):
        ray.get(ref, timeout=GET_TIMEOUT)
    assert runs(marker) == 2


def test_lost_put_object_raises_object_lost_with_the_reason(ray_shared: Any) -> None:
    ref = ray.put(np.zeros(N))
    lose(ref)
    with pytest.raises(ObjectLostError, match="put"):
        ray.get(ref, timeout=GET_TIMEOUT)


def test_lost_result_of_a_task_without_retries_raises(ray_shared: Any, tmp_path: Path) -> None:
    ref = produce.options(max_retries=0).remote(str(tmp_path / "runs"), 1.0)
    ray.get(ref, timeout=GET_TIMEOUT)
    lose(ref)
    with pytest.raises(ObjectLostError, match="max_retries=0"):
        ray.get(ref, timeout=GET_TIMEOUT)

"""The joblib backend and Dask on aioray: results as joblib's and dask's own schedulers
give, errors raised as theirs, and where the work runs (actors, aioray tasks)."""

from __future__ import annotations

import math
import os

import dask
import dask.array as da
import joblib
import numpy as np
import pytest

import aioray as ray
from aioray.util.dask import disable_dask_on_ray, enable_dask_on_ray, ray_dask_get
from aioray.util.joblib import register_ray

GET_TIMEOUT = 60


# ------------------------------------------------------------------------------ joblib


def test_joblib_backend_runs_in_actors(ray_shared):
    register_ray()
    with joblib.parallel_backend("ray"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(math.sqrt)(i * i) for i in range(20))
        pids = set(joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(8)))
    assert out == [float(i) for i in range(20)]
    assert os.getpid() not in pids


def test_joblib_n_jobs_minus_one_is_the_cluster_cpus(ray_shared):
    from aioray.util.joblib import RayBackend

    assert RayBackend().effective_n_jobs(-1) == int(ray.cluster_resources()["CPU"])
    assert RayBackend().effective_n_jobs(-2) == int(ray.cluster_resources()["CPU"]) - 1


def test_joblib_errors_are_raised_as_joblibs(ray_shared):
    register_ray()
    with joblib.parallel_backend("ray"), pytest.raises(ValueError, match="math domain error"):
        joblib.Parallel(n_jobs=2)(joblib.delayed(math.sqrt)(x) for x in [1, -1, 4])


# -------------------------------------------------------------------------------- dask


def test_dask_array_matches_the_threaded_scheduler(ray_shared):
    x = da.arange(10_000, chunks=500)
    y = (x * 2 + 1).reshape((100, 100)).T.sum(axis=0)
    expected = y.compute(scheduler="threads")
    np.testing.assert_array_equal(y.compute(scheduler=ray_dask_get), expected)
    assert x.sum().compute(scheduler=ray_dask_get) == np.arange(10_000).sum()


def test_dask_tasks_run_as_aioray_tasks_and_persist(ray_shared):
    @dask.delayed
    def where(_):
        return os.getpid()

    @dask.delayed
    def inc(a):
        return a + 1

    (pid,) = dask.compute(where(1), scheduler=ray_dask_get)
    assert pid != os.getpid()
    (ref,) = dask.compute(inc(inc(1)), scheduler=ray_dask_get, ray_persist=True)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 3


def test_upstream_values_arrive_resolved_in_the_worker(ray_shared):
    @dask.delayed
    def make():
        return ray.get_runtime_context().get_task_id() is not None

    @dask.delayed
    def use(value):  # an upstream value arrives as the value, resolved in the worker
        return value is True and ray.get_runtime_context().get_task_id() is not None

    assert dask.compute(use(make()), scheduler=ray_dask_get) == (True,)


def test_enable_and_disable_dask_on_ray(ray_shared):
    @dask.delayed
    def pid():
        return os.getpid()

    enable_dask_on_ray()
    try:
        assert dask.compute(pid())[0] != os.getpid()
    finally:
        disable_dask_on_ray()
    assert dask.compute(pid(), scheduler="sync")[0] == os.getpid()


def test_dask_task_errors_raise_the_cause(ray_shared):
    @dask.delayed
    def fail():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        dask.compute(fail(), scheduler=ray_dask_get)

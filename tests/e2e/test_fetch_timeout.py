"""A pull from a node whose raylet is alive but silent fails with ObjectFetchTimedOutError
(Ray's ``fetch_fail_timeout_milliseconds``), and the failure is final: the object is not
rebuilt, as in Ray."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import psutil
import pytest

import aioray as ray
from aioray.exceptions import ObjectFetchTimedOutError, ObjectLostError

# The head runs nothing; the second node makes the object. Failure detection keeps its
# default (10 s), far above the 2 s fetch timeout: the silent node stays alive.
CLUSTER_NODES = [
    {"num_cpus": 0, "_system_config": {"fetch_fail_timeout_milliseconds": 2000}},
    {"num_cpus": 1},
]


def cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


@ray.remote
def make(nbytes: int) -> Any:
    return np.ones(nbytes, dtype=np.uint8)  # in the source node's shared memory


def test_pull_from_a_silent_node_times_out(ray_cluster: Any) -> None:
    source = ray_cluster.worker_nodes[0]
    ref = make.remote(1024 * 1024)
    ready, _ = ray.wait([ref], timeout=60, fetch_local=False)
    assert ready, "the object was never made"
    (raylet,) = [p for p in source.pids if "aioray.daemons.raylet" in cmdline(p)]
    os.kill(raylet, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(ObjectFetchTimedOutError, match="timed out") as info:
            ray.get(ref, timeout=8)  # (a rebuild would wait for the frozen node's CPU)
        assert isinstance(info.value, ObjectLostError)  # Ray's base
        assert time.monotonic() - start < 8
    finally:
        os.kill(raylet, signal.SIGCONT)
    assert ray.get(ref, timeout=60).sum() == 1024 * 1024  # awake: the pull goes through

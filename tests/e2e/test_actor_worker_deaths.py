"""An actor's worker that dies, however it dies, is news the GCS must act on.

Whatever ends the worker (the raylet's own decisions included), the GCS restarts the
actor while ``max_restarts`` allows, else marks it DEAD, and the caller's calls are
retried or fail with ActorDiedError, never wait for good. Each test here ends a worker
in a way the raylet reports unlike a plain crash, with bounded waits throughout.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import cluster_ports, listener_pids, wait_for_condition

import aioray as ray
from aioray._private.owner import worker_context

GET_TIMEOUT = 30


@ray.remote
class Probe:
    def pid(self) -> int:
        return os.getpid()


def raylet_state() -> dict[str, Any]:
    """The local raylet's ``get_state``, asked directly (the GCS may be frozen)."""
    cw = worker_context.core_worker
    assert cw is not None
    state: dict[str, Any] = cw.run_sync(cw.raylet.call("get_state"), timeout=GET_TIMEOUT)
    return state


def worker_pids() -> set[int]:
    """Pids of the worker processes connected to the local raylet."""
    cw = worker_context.core_worker
    assert cw is not None
    rows = cw.run_sync(cw.raylet.call("state_workers"), timeout=GET_TIMEOUT)
    return {r["pid"] for r in rows if r["worker_type"] == "WORKER" and r["pid"]}


@pytest.fixture
def frozen_gcs(ray_start: Any) -> Iterator[tuple[Any, Any]]:
    """(freeze, thaw): SIGSTOP and SIGCONT the cluster's GCS (thawed at the end anyway)."""
    [gcs_pid] = listener_pids(cluster_ports(ray_start)["gcs"])
    stopped = []

    def freeze() -> None:
        os.kill(gcs_pid, signal.SIGSTOP)
        stopped.append(gcs_pid)

    def thaw() -> None:
        if stopped:
            os.kill(stopped.pop(), signal.SIGCONT)

    try:
        yield freeze, thaw
    finally:
        thaw()


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
@pytest.mark.parametrize("max_restarts", [0, 1])
def test_a_worker_dying_as_its_actor_lease_is_granted_restarts_or_kills_the_actor(
    frozen_gcs: tuple[Any, Any], max_restarts: int
) -> None:
    """The raylet grants an actor's lease, then the worker dies, and the GCS reads the
    grant and the death together (one read: it was busy, here frozen). The death came
    before the GCS had noted which worker the actor got: it was ignored, and the actor
    stayed PENDING_CREATION for good, every call to it waiting forever."""
    freeze, thaw = frozen_gcs
    blocker = Probe.options(num_cpus=1).remote()
    blocker_pid = ray.get(blocker.pid.remote(), timeout=GET_TIMEOUT)
    target = Probe.options(num_cpus=1, max_restarts=max_restarts).remote()
    wait_for_condition(lambda: raylet_state()["queued"] == 1, GET_TIMEOUT)  # its lease waits
    freeze()
    os.kill(blocker_pid, signal.SIGKILL)  # the CPU frees: the target's lease is granted
    wait_for_condition(
        lambda: raylet_state()["leases"] == 1 and raylet_state()["queued"] == 0, GET_TIMEOUT
    )
    for pid in worker_pids():  # the target's worker among them: it dies before its creation
        os.kill(pid, signal.SIGKILL)
    wait_for_condition(lambda: raylet_state()["leases"] == 0, GET_TIMEOUT)
    thaw()
    if max_restarts:  # restarted (its one restart), it answers
        assert ray.get(target.pid.remote(), timeout=GET_TIMEOUT) > 0
    else:
        with pytest.raises(ray.exceptions.ActorDiedError, match="died unexpectedly"):
            ray.get(target.pid.remote(), timeout=GET_TIMEOUT)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(blocker.pid.remote(), timeout=GET_TIMEOUT)

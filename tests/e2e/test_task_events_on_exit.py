"""A worker that exits on purpose sends its task events first, as Ray's workers do:
an actor ended by ``ray.kill`` or ``exit_actor``, an idle worker the raylet lets go,
a forced cancel. Events are sent only once a minute here, so every executor row these
tests see was sent by the exit itself."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import wait_for_condition, wait_for_file

import aioray as ray
from aioray.util import state

SLOW_EVENTS = {"_system_config": {"task_events_report_interval_ms": 60_000}}


@ray.remote(num_cpus=0)
class Pid:
    def pid(self) -> int:
        return os.getpid()

    def leave(self) -> None:
        ray.actor.exit_actor()


@ray.remote(num_cpus=0)
def pid_of_worker() -> int:
    return os.getpid()


@ray.remote(num_cpus=0, max_retries=0)
def stuck(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(120)


def executor_states(ref: Any, pid: int) -> list[str]:
    """The states the worker ``pid`` reported for the task of ``ref`` (empty: none yet)."""
    row = state.get_task(ref.task_id().hex())
    if row is None or row.worker_pid != pid:
        return []
    return [e["state"] for e in row.events]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def idle_workers_go_soon(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Read by the raylet at its start: requested before ray_start.
    monkeypatch.setenv("AIORAY_RUNTIME_ENV_WORKER_IDLE_S", "0.2")
    yield


@pytest.mark.parametrize("ray_start", [SLOW_EVENTS], indirect=True)
def test_ended_workers_send_their_events_before_they_go(
    idle_workers_go_soon: None, ray_start: Any, tmp_path: Any
) -> None:
    # ray.kill: the killed actor's finished call shows where it ran and that it ended.
    killed = Pid.remote()
    call = killed.pid.remote()
    killed_pid = ray.get(call)
    ray.kill(killed)
    states = wait_for_condition(lambda: executor_states(call, killed_pid), 20)
    assert "RUNNING" in states and states[-1] == "FINISHED"
    # exit_actor: the calls before it, and the exiting call itself.
    leaving = Pid.remote()
    call = leaving.pid.remote()
    leaving_pid = ray.get(call)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(leaving.leave.remote())
    states = wait_for_condition(lambda: executor_states(call, leaving_pid), 20)
    assert states[-1] == "FINISHED"
    # An idle worker of a runtime env, let go by the raylet.
    ref = pid_of_worker.options(runtime_env={"env_vars": {"IDLE": "1"}}).remote()
    idle_pid = ray.get(ref)
    wait_for_condition(lambda: gone(idle_pid), 30)
    states = wait_for_condition(lambda: executor_states(ref, idle_pid), 20)
    assert "RUNNING" in states and states[-1] == "FINISHED"
    # A forced cancel: the task was RUNNING there (its owner fails it).
    path = str(tmp_path / "stuck")
    ref = stuck.remote(path)
    stuck_pid = int(wait_for_file(path, 30))
    ray.cancel(ref, force=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref, timeout=30)
    assert "RUNNING" in wait_for_condition(lambda: executor_states(ref, stuck_pid), 20)

"""The State API (aioray.util.state) on a real 2-node cluster: task events from owners
and executors, list/get/summarize of every resource, filters before the limit, a
SIGKILLed worker's task, opting out of events, and bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from conftest import wait_for_condition, wait_for_file

import aioray as ray
from aioray.util import state
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

FAST_EVENTS = {"task_events_report_interval_ms": 100}
CLUSTER_NODES = [
    {"num_cpus": 2, "_system_config": FAST_EVENTS},
    {"num_cpus": 1, "resources": {"other": 1}},
]


@ray.remote(num_cpus=0, resources={"other": 1})
def on_other() -> int:
    return os.getpid()


@ray.remote(num_cpus=1)
def on_head() -> int:
    return os.getpid()


@ray.remote(max_retries=0, num_cpus=0)
def sleeper(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)


@ray.remote(num_cpus=0)
def quick(i: int) -> int:
    return i


@ray.remote(num_cpus=0)
def broken() -> None:
    raise ValueError("no good")


@ray.remote(num_cpus=0)
class Counter:
    def incr(self) -> int:
        return 1


@ray.remote(num_cpus=0)
def hidden() -> int:
    return os.getpid()


@ray.remote(num_cpus=0)
def shown() -> int:
    return os.getpid()


@ray.remote(num_cpus=0, enable_task_events=False)
class Quiet:
    def m(self) -> int:
        return os.getpid()


@ray.remote(num_cpus=0)
class Gate:
    """Calls to ``passed`` return once ``open`` was called (an async actor)."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self.event is None:
            self.event = asyncio.Event()
        return self.event

    async def passed(self) -> str:
        await self._event().wait()
        return "passed"

    async def open(self) -> None:
        self._event().set()


@ray.remote(num_cpus=0)
def gets_through(gate: Any) -> str:
    return ray.get(gate.passed.remote())  # type: ignore[no-any-return]


@ray.remote(num_cpus=0)
class Waiter:
    def wait_through(self, gate: Any) -> int:
        ready, _ = ray.wait([gate.passed.remote()], timeout=120)
        return len(ready)


@ray.remote(num_cpus=0)
class SlowInit:
    def __init__(self, path: str) -> None:
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(120)


@ray.remote(num_cpus=0)
class Pid:
    def pid(self) -> int:
        return os.getpid()


@ray.remote(num_cpus=0)
class BadInit:
    def __init__(self) -> None:
        raise ValueError("no init")


def head_and_worker_ids() -> tuple[str, str]:
    nodes = state.list_nodes()
    head = next(n for n in nodes if n.is_head_node)
    other = next(n for n in nodes if not n.is_head_node)
    return head.node_id, other.node_id


def tasks_named(name: str, **kwargs: Any) -> list[state.TaskState]:
    return state.list_tasks(filters=[("name", "=", name)], limit=10_000, **kwargs)


def test_tasks_are_listed_with_the_nodes_they_ran_on(ray_cluster: Any) -> None:
    head, other = head_and_worker_ids()

    pid_other = ray.get(on_other.remote())
    pid_head = ray.get(
        on_head.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
        ).remote()
    )
    rows = wait_for_condition(
        lambda: [t for t in tasks_named("on_other") if t.state == "FINISHED" and t.worker_pid], 20
    )
    assert rows[0].node_id == other and rows[0].worker_pid == pid_other
    assert rows[0].type == "NORMAL_TASK" and rows[0].func_or_class_name == "on_other"
    assert rows[0].job_id == ray.get_runtime_context().get_job_id()
    (head_row,) = wait_for_condition(
        lambda: [t for t in tasks_named("on_head") if t.state == "FINISHED" and t.worker_pid], 20
    )
    assert (head_row.node_id, head_row.worker_pid) == (head, pid_head)
    detail = state.get_task(head_row.task_id)
    assert isinstance(detail, state.TaskState)
    assert detail["required_resources"] == {"CPU": 1.0}
    states = [e["state"] for e in detail.events]
    assert states[0] == "PENDING_ARGS_AVAIL" and states[-1] == "FINISHED"
    assert "RUNNING" in states and "SUBMITTED_TO_WORKER" in states
    assert detail.creation_time_ms <= detail.start_time_ms <= detail.end_time_ms
    assert "events" not in head_row  # detail columns only with detail=True


def test_filter_applies_before_the_limit_and_a_killed_worker_fails_its_task(
    ray_cluster: Any, tmp_path: Any
) -> None:
    ref = sleeper.remote(str(tmp_path / "pid"))  # first: the oldest row of the table
    ray.get([quick.remote(i) for i in range(60)])
    wait_for_condition(lambda: len(tasks_named("quick")) == 60, 20)
    running = wait_for_condition(
        lambda: state.list_tasks(filters=[("state", "=", "running")], limit=1), 20
    )
    assert running[0].name == "sleeper"  # found under a limit of 1 among 60+ newer rows
    pid = int((tmp_path / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(ref, timeout=30)
    failed = wait_for_condition(
        lambda: [t for t in tasks_named("sleeper") if t.state == "FAILED"], 20
    )
    assert failed[0].error_type == "WORKER_DIED"
    assert failed[0].worker_pid == pid
    others = state.list_tasks(filters=[("name", "!=", "sleeper"), ("state", "=", "FAILED")])
    assert all(t.name != "sleeper" for t in others)


def test_application_errors_and_actor_tasks(ray_cluster: Any) -> None:
    with pytest.raises(ValueError):
        ray.get(broken.remote())
    c = Counter.remote()
    ray.get(c.incr.remote())
    (row,) = wait_for_condition(
        lambda: [t for t in tasks_named("broken") if t.state == "FAILED" and t.worker_pid], 20
    )
    assert row.error_type == "TASK_EXECUTION_EXCEPTION"
    assert "no good" in state.get_task(row.task_id).error_message  # type: ignore[union-attr]
    actor_id = c._actor_id.hex()
    calls = wait_for_condition(
        lambda: [t for t in tasks_named("Counter.incr") if t.state == "FINISHED" and t.worker_pid],
        20,
    )
    assert calls[0].type == "ACTOR_TASK" and calls[0].actor_id == actor_id
    wait_for_condition(lambda: tasks_named("Counter.__init__"), 20)
    actor = state.get_actor(actor_id)
    assert actor is not None and (actor.state, actor.class_name) == ("ALIVE", "Counter")
    assert state.list_actors(filters=[("class_name", "=", "counter")])[0].actor_id == actor_id
    summary = state.summarize_tasks()["cluster"]
    assert summary["summary"]["Counter.incr"]["state_counts"]["FINISHED"] >= 1
    assert summary["summary"]["broken"]["state_counts"] == {"FAILED": 1}
    assert state.summarize_actors()["cluster"]["summary"]["Counter"]["state_counts"]["ALIVE"] == 1


def test_a_task_blocked_in_get_or_wait_shows_it_until_it_resumes(ray_cluster: Any) -> None:
    gate = Gate.remote()
    ref = gets_through.remote(gate)
    waiter = Waiter.remote()
    waited = waiter.wait_through.remote(gate)

    def in_state(name: str, state_name: str) -> list[state.TaskState]:
        return state.list_tasks(filters=[("name", "=", name), ("state", "=", state_name)])

    wait_for_condition(lambda: in_state("gets_through", "RUNNING_IN_RAY_GET"), 30)
    wait_for_condition(lambda: in_state("Waiter.wait_through", "RUNNING_IN_RAY_WAIT"), 30)
    ray.get(gate.open.remote())
    assert ray.get([ref, waited], timeout=60) == ["passed", 1]
    (row,) = wait_for_condition(lambda: in_state("gets_through", "FINISHED"), 30)
    states = [e["state"] for e in state.get_task(row.task_id).events]  # type: ignore[union-attr]
    assert states.index("RUNNING") < states.index("RUNNING_IN_RAY_GET") < states.index("FINISHED")
    wait_for_condition(lambda: in_state("Waiter.wait_through", "FINISHED"), 30)


def test_an_actor_that_dies_before_it_is_created_fails_its_creation_task(
    ray_cluster: Any, tmp_path: Any
) -> None:
    never = Pid.options(resources={"nowhere": 1}).remote()  # cannot be scheduled
    killed = SlowInit.remote(str(tmp_path / "killed"))
    crashed = SlowInit.options(max_restarts=0).remote(str(tmp_path / "crashed"))
    bad = BadInit.remote()
    alive = Pid.remote()
    wait_for_file(tmp_path / "killed", 60)
    ray.kill(never)
    ray.kill(killed)
    os.kill(int(wait_for_file(tmp_path / "crashed", 60)), signal.SIGKILL)
    ray.get(alive.pid.remote())
    ray.kill(alive)

    def creation(handle: Any) -> state.TaskState | None:
        rows = state.list_tasks(
            filters=[
                ("actor_id", "=", handle._actor_id.hex()),
                ("type", "=", "ACTOR_CREATION_TASK"),
            ],
            detail=True,
        )
        ended = [t for t in rows if t.state in ("FINISHED", "FAILED")]
        return ended[0] if ended else None

    for handle, why in [(never, "killed by ray.kill"), (killed, "killed by ray.kill")]:
        row = wait_for_condition(lambda h=handle: creation(h), 30)
        assert (row.state, row.error_type) == ("FAILED", "ACTOR_CREATION_FAILED")
        assert why in row.error_message
    row = wait_for_condition(lambda: creation(crashed), 30)
    assert (row.state, row.error_type) == ("FAILED", "ACTOR_CREATION_FAILED")
    assert "died" in row.error_message
    row = wait_for_condition(lambda: creation(bad), 30)
    assert (row.state, row.error_type) == ("FAILED", "TASK_EXECUTION_EXCEPTION")
    assert "no init" in row.error_message
    # Killed once created: its creation task had FINISHED, and stays so (as in Ray).
    row = wait_for_condition(lambda: creation(alive), 30)
    assert (row.state, row.error_type) == ("FINISHED", None)


def test_opted_out_tasks_leave_no_events(ray_cluster: Any) -> None:
    # Each process sends its events in the order it recorded them, so once a marker's
    # events, recorded after the opted-out ones by the same owner (this driver) and the
    # same executor, have arrived, the opted-out ones would have arrived too.
    head, _ = head_and_worker_ids()
    on_head = NodeAffinitySchedulingStrategy(head, soft=False)
    q = Quiet.remote()  # the actor and its calls opted out
    quiet_pid = ray.get(q.m.remote())
    hidden_ref = hidden.options(enable_task_events=False, scheduling_strategy=on_head).remote()
    hidden_pid = ray.get(hidden_ref)
    marker = q.m.options(enable_task_events=True).remote()  # opts back in: the marker call
    assert ray.get(marker) == quiet_pid

    def marker_task_on(pid: int) -> bool:  # an idle worker is reused: soon hidden's
        return ray.get(shown.options(scheduling_strategy=on_head).remote()) == pid

    wait_for_condition(lambda: marker_task_on(hidden_pid), 30)

    def arrived(name: str, pid: int) -> list[state.TaskState]:
        return [t for t in tasks_named(name) if t.state == "FINISHED" and t.worker_pid == pid]

    wait_for_condition(lambda: arrived("shown", hidden_pid), 20)
    wait_for_condition(lambda: arrived("Quiet.m", quiet_pid), 20)
    # Nothing else from those executors (an executor's row without its owner's has no
    # name; the workers may have run earlier tests' tasks), nor from this owner.
    rows = state.list_tasks(limit=10_000, raise_on_missing_output=False)
    ours = ("", "hidden", "Quiet.m", "Quiet.__init__")
    at = {quiet_pid: [marker.task_id().hex()], hidden_pid: []}
    assert {p: [t.task_id for t in rows if t.worker_pid == p and t.name in ours] for p in at} == at
    assert state.get_task(hidden_ref.task_id().hex()) is None
    assert tasks_named("hidden") == [] and tasks_named("Quiet.__init__") == []


def test_nodes_jobs_workers_objects_and_placement_groups(ray_cluster: Any) -> None:
    head, other = head_and_worker_ids()
    nodes = {n.node_id: n for n in state.list_nodes(detail=True)}
    assert set(nodes) == {head, other} and nodes[other].state == "ALIVE"
    assert nodes[other].resources_total["other"] == 1
    assert state.get_node(other).node_ip == nodes[other].node_ip  # type: ignore[union-attr]
    job_id = ray.get_runtime_context().get_job_id()
    job = state.get_job(job_id)
    assert (
        job is not None and job.status == "RUNNING" and job.driver_info["pid"] == str(os.getpid())
    )
    workers = state.list_workers(
        filters=[("worker_type", "=", "driver"), ("pid", "=", os.getpid())]
    )
    assert len(workers) == 1 and workers[0].node_id == head
    ref = ray.put(b"x" * 200_000)
    objects = state.get_objects(ref.hex())
    assert objects and objects[0].reference_type == "LOCAL_REFERENCE"
    assert objects[0].object_size >= 200_000
    summary = state.summarize_objects()["cluster"]
    assert summary["total_objects"] >= 1
    pg = ray.util.placement_group([{"CPU": 1}], name="pg_for_state")
    ray.get(pg.ready())
    (row,) = state.list_placement_groups(filters=[("name", "=", "pg_for_state")], detail=True)
    assert row.state == "CREATED" and row.bundles[0]["unit_resources"] == {"CPU": 1.0}
    ray.util.remove_placement_group(pg)


def test_bad_queries_fail_clearly(ray_cluster: Any) -> None:
    with pytest.raises(ValueError, match="Supported filter columns"):
        state.list_tasks(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="Available predicates"):
        state.list_actors(filters=[("state", "~", "ALIVE")])
    with pytest.raises(ValueError, match="between 1 and 10000"):
        state.list_nodes(limit=10_001)
    assert state.get_actor("00" * 16) is None and state.get_task("00" * 16) is None
    start = time.monotonic()
    with pytest.raises((ConnectionError, state.RayStateApiException)):
        state.list_nodes(address="127.0.0.1:9", timeout=2)
    assert time.monotonic() - start < 10

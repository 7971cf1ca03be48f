"""Actor lifetimes, termination and fault tolerance.

A non-detached actor dies when its handles are gone or its owner dies; a detached one
outlives its driver. ``ray.kill``, ``exit_actor`` and ``__ray_terminate__`` end an
actor; a crashed worker restarts it while ``max_restarts`` allows, retrying calls in
flight up to ``max_task_retries``. Deaths are observed through the actor's worker
pid (psutil) with bounded waits; crashes are SIGKILLs sent by the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import listening_ports, wait_for_condition, wait_for_file

import aioray as ray
from aioray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
)

REPO = Path(__file__).resolve().parents[2]
GET_TIMEOUT = 30
CLI_TIMEOUT = 60


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self):
        self.value += 1
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@ray.remote
class Recorder:
    """Counts its constructions in a file, so a test can see __init__ run again."""

    def __init__(self, init_log):
        with open(init_log, "a") as f:
            f.write("init\n")
        self.items = []

    def append(self, item, delay=0.0):
        if delay:
            time.sleep(delay)
        self.items.append(item)
        return len(self.items)

    def items_(self):
        return self.items

    def pid(self):
        return os.getpid()

    def block(self, started, attempts_log):
        """Blocks (bounded) on the first attempt; returns at once when retried."""
        with open(attempts_log, "a") as f:
            f.write("x")
        if os.path.getsize(attempts_log) > 1:
            return "retried"
        with open(started + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(started + ".tmp", started)
        deadline = time.time() + 30
        while time.time() < deadline:
            time.sleep(0.01)
        return "never killed"

    def exit(self):
        ray.actor.exit_actor()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, what: str = "actor worker", timeout: float = 15.0) -> None:
    wait_for_condition(lambda: _gone(pid), timeout, message=f"{what} pid={pid} is still alive")


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _call_until_available(submit, timeout: float = 20.0):
    """Call through a restart: transient RayActorErrors (the call raced the crash, or
    ActorUnavailableError while restarting) are retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(submit(), timeout=GET_TIMEOUT)
        except RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_actor_died(submit, timeout: float = 20.0) -> ActorDiedError:
    """Calls end in ActorDiedError (ActorUnavailableError may come first); never a hang."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = ray.get(submit(), timeout=GET_TIMEOUT)
        except ActorDiedError as err:
            return err
        except ActorUnavailableError:
            value = "ActorUnavailableError"
        if time.monotonic() > deadline:
            raise AssertionError(f"the actor still answers ({value!r}) after it should be dead")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    out_path = tmp_path / f"{name}.out"
    err_path = tmp_path / f"{name}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "aioray.cli", *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            timeout=CLI_TIMEOUT,
            text=True,
        )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, out_path.read_text(), err_path.read_text()
    )


FIRST_DRIVER = """
import os
import sys

import aioray as ray

ray.init(address=sys.argv[1], namespace="detached-test-ns")


@ray.remote
class Keeper:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return list(self.items)

    def pid(self):
        return os.getpid()


keeper = Keeper.options(name="keeper", lifetime="detached").remote()
transient = Keeper.options(name="transient").remote()
ray.get(keeper.add.remote("from the first driver"))
print(ray.get(keeper.pid.remote()), ray.get(transient.pid.remote()), flush=True)
ray.shutdown()
"""


# ------------------------------------------------- detached actors (a CLI cluster)
# (first: it runs its own drivers, before the module's shared cluster starts)


def test_detached_actor_survives_its_driver(tmp_path):
    port = _free_port()
    started = _cli(
        "start", "--head", "--port", str(port), "--num-cpus", "2", tmp_path=tmp_path, name="start"
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        wait_for_condition(lambda: port in listening_ports(), message=f"nothing on port {port}")
        address = f"127.0.0.1:{port}"

        script = tmp_path / "first_driver.py"
        script.write_text(FIRST_DRIVER)
        first = subprocess.run(
            [sys.executable, str(script), address],
            capture_output=True,
            text=True,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            timeout=CLI_TIMEOUT,
        )
        assert first.returncode == 0, first.stdout + first.stderr
        keeper_pid, transient_pid = (int(p) for p in first.stdout.split())

        ray.init(address=address, namespace="detached-test-ns")
        try:
            # the detached actor outlived the driver that made it, state and all
            assert not _gone(keeper_pid)
            keeper = ray.get_actor("keeper")
            assert ray.get(keeper.add.remote("from the second driver"), timeout=GET_TIMEOUT) == [
                "from the first driver",
                "from the second driver",
            ]
            assert ray.get(keeper.pid.remote(), timeout=GET_TIMEOUT) == keeper_pid
            assert "keeper" in ray.util.list_named_actors()

            # the first driver's non-detached actor died with its owner
            _wait_gone(transient_pid, "non-detached actor of a finished driver")

            def transient_gone() -> bool:
                try:
                    ray.get_actor("transient")
                except ValueError:
                    return True
                return False

            wait_for_condition(transient_gone, message="'transient' outlived its driver")

            ray.kill(keeper)
            _wait_gone(keeper_pid, "killed detached actor")
            _wait_actor_died(lambda: keeper.add.remote("after kill"))

            def keeper_gone() -> bool:
                try:
                    ray.get_actor("keeper")
                except ValueError:
                    return True
                return False

            wait_for_condition(keeper_gone, message="a killed detached actor is still named")
        finally:
            ray.shutdown()
    finally:
        stopped = _cli("stop", tmp_path=tmp_path, name="stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


# --------------------------------------------------------------- handle lifetimes


def test_actor_exits_when_its_last_handle_is_gone(ray_shared):
    counter = Counter.remote()
    pid = ray.get(counter.pid.remote(), timeout=GET_TIMEOUT)
    copy = counter
    del counter
    assert ray.get(copy.increment.remote(), timeout=GET_TIMEOUT) == 1  # one handle left
    assert not _gone(pid)
    del copy
    _wait_gone(pid, "actor without handles")


def test_actor_finishes_queued_calls_before_exiting(ray_shared, tmp_path):
    recorder = Recorder.remote(str(tmp_path / "init-log"))
    pid = ray.get(recorder.pid.remote(), timeout=GET_TIMEOUT)
    refs = [recorder.append.remote(i, 0.05) for i in range(5)]
    del recorder
    assert ray.get(refs, timeout=GET_TIMEOUT) == [1, 2, 3, 4, 5]
    _wait_gone(pid, "actor without handles")


def test_handle_held_by_a_running_task_keeps_the_actor_alive(ray_shared):
    @ray.remote
    def call_later(counter, delay):
        time.sleep(delay)
        return ray.get(counter.increment.remote())

    counter = Counter.remote()
    ray.get(counter.get.remote(), timeout=GET_TIMEOUT)
    ref = call_later.remote(counter, 0.5)
    del counter
    assert ray.get(ref, timeout=GET_TIMEOUT) == 1


def test_detached_actor_outlives_its_handles(ray_shared):
    detached = Counter.options(name="detached-in-shared", lifetime="detached").remote()
    control = Counter.remote()
    detached_pid, control_pid = ray.get(
        [detached.pid.remote(), control.pid.remote()], timeout=GET_TIMEOUT
    )
    ray.get(detached.increment.remote(), timeout=GET_TIMEOUT)
    del detached, control
    _wait_gone(control_pid, "non-detached control actor")  # handle GC has run
    assert not _gone(detached_pid)
    found = ray.get_actor("detached-in-shared")
    assert ray.get(found.increment.remote(), timeout=GET_TIMEOUT) == 2
    ray.kill(found)
    _wait_gone(detached_pid, "killed detached actor")


def test_actor_dies_with_its_owner(ray_shared):
    """Fate sharing: an actor whose creator dies dies too, even with max_restarts."""

    @ray.remote
    class Parent:
        def __init__(self):
            self.child = Counter.options(max_restarts=1).remote()

        def child_pid(self):
            return ray.get(self.child.pid.remote())

        def pid(self):
            return os.getpid()

    parent = Parent.remote()
    parent_pid, child_pid = ray.get([parent.pid.remote(), parent.child_pid.remote()], timeout=30)
    os.kill(parent_pid, signal.SIGKILL)
    _wait_gone(child_pid, "actor whose owner died")
    _wait_actor_died(lambda: parent.pid.remote())


# ------------------------------------------------------------------------ ray.kill


def test_kill_ends_the_actor_without_restart(ray_shared):
    counter = Counter.options(max_restarts=2).remote()
    pid = ray.get(counter.pid.remote(), timeout=GET_TIMEOUT)
    assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 1
    ray.kill(counter)
    _wait_actor_died(lambda: counter.increment.remote())
    _wait_gone(pid, "killed actor")
    for _ in range(3):  # and no restart comes, despite max_restarts
        with pytest.raises(ActorDiedError):
            ray.get(counter.increment.remote(), timeout=GET_TIMEOUT)


def test_a_call_made_after_ray_kill_returns_fails(ray_shared):
    """The worker may still be exiting when ray.kill returns (the raylet tells it to go,
    and it sends its last task events first), but the killer's calls fail from then on:
    none may reach the worker in that window and be served."""
    for _ in range(10):
        counter = Counter.remote()
        assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 1
        ray.kill(counter)
        with pytest.raises(ActorDiedError, match=r"killed by ray\.kill"):
            ray.get(counter.increment.remote(), timeout=GET_TIMEOUT)


def test_kill_interrupts_a_running_call(ray_shared, tmp_path):
    recorder = Recorder.remote(str(tmp_path / "init-log"))
    started = str(tmp_path / "started")
    ref = recorder.block.remote(started, str(tmp_path / "attempts"))
    pid = int(wait_for_file(started))
    t0 = time.monotonic()
    ray.kill(recorder)
    with pytest.raises(RayActorError):
        ray.get(ref, timeout=GET_TIMEOUT)
    assert time.monotonic() - t0 < 10, "kill must not wait for the running call"
    _wait_gone(pid, "killed actor")


def test_kill_through_any_handle(ray_shared):
    counter = Counter.options(name="killed-by-name").remote()
    pid = ray.get(counter.pid.remote(), timeout=GET_TIMEOUT)
    ray.kill(ray.get_actor("killed-by-name"))
    _wait_gone(pid, "actor killed through a second handle")
    _wait_actor_died(lambda: counter.get.remote())


def test_kill_with_no_restart_false_restarts(ray_shared, tmp_path):
    init_log = tmp_path / "init-log"
    recorder = Recorder.options(max_restarts=1).remote(str(init_log))
    old_pid = ray.get(recorder.pid.remote(), timeout=GET_TIMEOUT)
    assert ray.get(recorder.append.remote("a"), timeout=GET_TIMEOUT) == 1
    ray.kill(recorder, no_restart=False)
    _wait_gone(old_pid, "killed actor")
    new_pid = _call_until_available(lambda: recorder.pid.remote())
    assert new_pid != old_pid
    assert ray.get(recorder.items_.remote(), timeout=GET_TIMEOUT) == []  # state rebuilt
    assert _lines(init_log) == 2
    ray.kill(recorder)


# ----------------------------------------------------- exit_actor / __ray_terminate__


def test_exit_actor(ray_shared, tmp_path):
    init_log = tmp_path / "init-log"
    recorder = Recorder.options(max_restarts=1).remote(str(init_log))
    pid = ray.get(recorder.pid.remote(), timeout=GET_TIMEOUT)
    with pytest.raises(RayActorError):
        ray.get(recorder.exit.remote(), timeout=GET_TIMEOUT)
    _wait_gone(pid, "exited actor")
    # an intentional exit is never restarted
    with pytest.raises(ActorDiedError):
        ray.get(recorder.items_.remote(), timeout=GET_TIMEOUT)
    assert _lines(init_log) == 1


def test_exit_actor_from_an_async_method(ray_shared):
    @ray.remote
    class AsyncExiter:
        async def pid(self):
            return os.getpid()

        async def exit(self):
            ray.actor.exit_actor()

    exiter = AsyncExiter.remote()
    pid = ray.get(exiter.pid.remote(), timeout=GET_TIMEOUT)
    with pytest.raises(RayActorError):
        ray.get(exiter.exit.remote(), timeout=GET_TIMEOUT)
    _wait_gone(pid, "exited async actor")
    with pytest.raises(ActorDiedError):
        ray.get(exiter.pid.remote(), timeout=GET_TIMEOUT)


def test_exit_actor_in_an_async_actor_raises_asyncio_actor_exit(ray_shared, tmp_path):
    """As Ray: an exception the method may catch; the actor exits after the call anyway."""
    caught = tmp_path / "caught"

    @ray.remote
    class AsyncExiter:
        async def pid(self):
            return os.getpid()

        async def exit(self, path):
            try:
                ray.actor.exit_actor()
            except ray.exceptions.AsyncioActorExit as e:
                with open(path + ".tmp", "w") as f:
                    f.write(f"{type(e).__name__} {isinstance(e, ray.exceptions.RayError)}")
                os.rename(path + ".tmp", path)
            return "returned"

    exiter = AsyncExiter.remote()
    pid = ray.get(exiter.pid.remote(), timeout=GET_TIMEOUT)
    with pytest.raises(RayActorError):
        ray.get(exiter.exit.remote(str(caught)), timeout=GET_TIMEOUT)
    assert wait_for_file(caught) == "AsyncioActorExit True"
    _wait_gone(pid, "exited async actor")
    with pytest.raises(ActorDiedError):
        ray.get(exiter.pid.remote(), timeout=GET_TIMEOUT)


def test_ray_terminate_runs_queued_calls_first(ray_shared, tmp_path):
    recorder = Recorder.remote(str(tmp_path / "init-log"))
    pid = ray.get(recorder.pid.remote(), timeout=GET_TIMEOUT)
    refs = [recorder.append.remote(i, 0.05) for i in range(3)]
    recorder.__ray_terminate__.remote()
    assert ray.get(refs, timeout=GET_TIMEOUT) == [1, 2, 3]
    _wait_gone(pid, "terminated actor")
    with pytest.raises(ActorDiedError):
        ray.get(recorder.items_.remote(), timeout=GET_TIMEOUT)


# ---------------------------------------------------------------- fault tolerance


def test_crashed_actor_is_not_restarted_by_default(ray_shared):
    counter = Counter.remote()
    pid = ray.get(counter.pid.remote(), timeout=GET_TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    err = _wait_actor_died(lambda: counter.increment.remote())
    assert isinstance(err, RayActorError)


def test_crashed_actor_restarts_with_fresh_state(ray_shared, tmp_path):
    init_log = tmp_path / "init-log"
    recorder = Recorder.options(max_restarts=1).remote(str(init_log))
    old_pid = ray.get(recorder.pid.remote(), timeout=GET_TIMEOUT)
    assert ray.get([recorder.append.remote(i) for i in range(3)], timeout=30) == [1, 2, 3]

    os.kill(old_pid, signal.SIGKILL)
    new_pid = _call_until_available(lambda: recorder.pid.remote())
    assert new_pid != old_pid
    assert _lines(init_log) == 2, "__init__ must run again, with the same arguments"
    assert ray.get(recorder.items_.remote(), timeout=GET_TIMEOUT) == []
    assert ray.get(recorder.append.remote("after"), timeout=GET_TIMEOUT) == 1

    # the last restart is used up: the next crash is final, and calls fail fast
    os.kill(new_pid, signal.SIGKILL)
    t0 = time.monotonic()
    _wait_actor_died(lambda: recorder.items_.remote())
    assert time.monotonic() - t0 < 15
    for _ in range(3):
        with pytest.raises(ActorDiedError):
            ray.get(recorder.items_.remote(), timeout=GET_TIMEOUT)
    assert _lines(init_log) == 2


def test_restarts_follow_ray_doc_example(ray_shared):
    """Ray's actor_restart.py: an actor exiting every N calls, retried transparently."""

    @ray.remote(max_restarts=2, max_task_retries=-1)
    class Flaky:
        def __init__(self):
            self.counter = 0

        def increment_and_possibly_fail(self):
            if self.counter == 5:
                os._exit(0)
            self.counter += 1
            return self.counter

    flaky = Flaky.remote()
    results = [
        ray.get(flaky.increment_and_possibly_fail.remote(), timeout=GET_TIMEOUT) for _ in range(15)
    ]
    assert results == [1, 2, 3, 4, 5] * 3
    for _ in range(3):
        with pytest.raises(RayActorError):
            ray.get(flaky.increment_and_possibly_fail.remote(), timeout=GET_TIMEOUT)


@pytest.mark.parametrize("max_task_retries", [-1, 1])
def test_in_flight_call_is_retried_after_restart(ray_shared, tmp_path, max_task_retries):
    recorder = Recorder.options(max_restarts=1, max_task_retries=max_task_retries).remote(
        str(tmp_path / "init-log")
    )
    started = str(tmp_path / "started")
    attempts = tmp_path / "attempts"
    ref = recorder.block.remote(started, str(attempts))
    pid = int(wait_for_file(started))
    os.kill(pid, signal.SIGKILL)
    assert ray.get(ref, timeout=GET_TIMEOUT) == "retried"
    assert attempts.read_text() == "xx"
    assert ray.get(recorder.pid.remote(), timeout=GET_TIMEOUT) != pid
    ray.kill(recorder)


def test_in_flight_call_fails_without_task_retries(ray_shared, tmp_path):
    recorder = Recorder.options(max_restarts=1, max_task_retries=0).remote(
        str(tmp_path / "init-log")
    )
    started = str(tmp_path / "started")
    attempts = tmp_path / "attempts"
    ref = recorder.block.remote(started, str(attempts))
    pid = int(wait_for_file(started))
    os.kill(pid, signal.SIGKILL)
    # The actor restarts (max_restarts=1): the lost call is "unavailable", not "dead".
    with pytest.raises(ActorUnavailableError):
        ray.get(ref, timeout=GET_TIMEOUT)
    assert attempts.read_text() == "x", "a call without retries ran twice"
    # the actor itself restarted and serves later calls
    assert _call_until_available(lambda: recorder.append.remote("later")) == 1
    ray.kill(recorder)


def test_in_flight_call_on_an_actor_that_cannot_restart_is_dead(ray_shared, tmp_path):
    recorder = Recorder.options(max_restarts=0).remote(str(tmp_path / "init-log"))
    started = str(tmp_path / "started")
    ref = recorder.block.remote(started, str(tmp_path / "attempts"))
    os.kill(int(wait_for_file(started)), signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        ray.get(ref, timeout=GET_TIMEOUT)


def test_infinite_restarts(ray_shared):
    counter = Counter.options(max_restarts=-1).remote()
    pids = [ray.get(counter.pid.remote(), timeout=GET_TIMEOUT)]
    for _ in range(2):
        ray.get(counter.increment.remote(), timeout=GET_TIMEOUT)
        os.kill(pids[-1], signal.SIGKILL)
        pids.append(_call_until_available(lambda: counter.pid.remote()))
    assert len(set(pids)) == 3
    assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 1
    ray.kill(counter)


def test_restarted_actor_is_reachable_through_every_handle(ray_shared):
    """The new address reaches other holders: a named lookup and a task's copy."""

    @ray.remote
    def bump(counter):
        return ray.get(counter.increment.remote())

    counter = Counter.options(name="restarting-named", max_restarts=1).remote()
    by_name = ray.get_actor("restarting-named")
    old_pid = ray.get(by_name.pid.remote(), timeout=GET_TIMEOUT)
    assert ray.get(bump.remote(counter), timeout=GET_TIMEOUT) == 1
    os.kill(old_pid, signal.SIGKILL)
    new_pid = _call_until_available(lambda: counter.pid.remote())
    assert new_pid != old_pid
    assert _call_until_available(lambda: by_name.pid.remote()) == new_pid
    assert _call_until_available(lambda: bump.remote(counter)) == 1
    assert ray.get(ray.get_actor("restarting-named").get.remote(), timeout=GET_TIMEOUT) == 1
    ray.kill(counter)


def test_calls_to_a_dead_actor_never_hang(ray_shared):
    counter = Counter.remote()
    pid = ray.get(counter.pid.remote(), timeout=GET_TIMEOUT)
    ray.kill(counter)
    _wait_gone(pid, "killed actor")
    t0 = time.monotonic()
    refs = [counter.increment.remote() for _ in range(20)]
    for ref in refs:
        with pytest.raises(ActorDiedError):
            ray.get(ref, timeout=GET_TIMEOUT)
    assert time.monotonic() - t0 < 10
    ready, _ = ray.wait([counter.get.remote()], timeout=GET_TIMEOUT)
    assert len(ready) == 1, "wait on a dead actor's call must return it as ready"
    with pytest.raises(ActorDiedError):
        ray.get(ready[0], timeout=0.1)
    try:
        ray.get(counter.get.remote(), timeout=GET_TIMEOUT)
    except GetTimeoutError:
        pytest.fail("a call to a dead actor hung")
    except ActorDiedError:
        pass

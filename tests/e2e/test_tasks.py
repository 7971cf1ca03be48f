"""End-to-end tests of remote functions: options, arguments, scheduling, failures, cancel.

Each test states one Ray behaviour. Tasks that must overlap or wait use files in
``tmp_path`` as signals; the test side only ever waits with a deadline.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time

import numpy as np
import psutil
import pytest
from conftest import wait_for_condition, wait_for_file

import aioray as ray
from aioray.exceptions import (
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

INIT_ENV_VAR = "AIORAY_TEST_INIT_ENV"
OPTIONS_ENV_VAR = "AIORAY_TEST_OPTIONS_ENV"

RAY_SHARED_INIT_KWARGS = {
    "num_cpus": 2,
    "resources": {"custom": 1},
    "runtime_env": {"env_vars": {INIT_ENV_VAR: "from-init"}},
}

GET_TIMEOUT = 30


@ray.remote
def module_level_square(x):
    return x * x


@ray.remote
def module_level_depth(n):
    if n == 0:
        return 0
    return 1 + ray.get(module_level_depth.remote(n - 1))


def _attempts(path) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------- tests that need a fresh cluster
# (they come first: the module's shared cluster starts with the first test using it)


def test_numpy_rng_differs_between_workers(ray_start, tmp_path):
    """Two fresh workers must not share numpy's RNG state (a fork-server pitfall)."""

    @ray.remote
    def draw(barrier_dir, idx):
        open(os.path.join(barrier_dir, f"arrived-{idx}"), "w").close()
        deadline = time.time() + 20
        while time.time() < deadline:
            if all(os.path.exists(os.path.join(barrier_dir, f"arrived-{i}")) for i in range(2)):
                break
            time.sleep(0.01)
        return os.getpid(), float(np.random.rand()), float(np.random.rand())

    (pid_a, *draws_a), (pid_b, *draws_b) = ray.get(
        [draw.remote(str(tmp_path), 0), draw.remote(str(tmp_path), 1)], timeout=GET_TIMEOUT
    )
    assert pid_a != pid_b, "the two tasks must have run concurrently on two workers"
    assert draws_a != draws_b


def test_killed_idle_worker_returns_its_resources(ray_start):
    """A worker killed between tasks gives its CPU back; the cluster reads idle again."""

    @ray.remote
    def pid():
        return os.getpid()

    worker = psutil.Process(ray.get(pid.remote(), timeout=GET_TIMEOUT))
    worker.kill()
    worker.wait(timeout=10)
    wait_for_condition(
        lambda: ray.available_resources().get("CPU") == 2,
        message=lambda: f"CPU not returned after worker death: {ray.available_resources()}",
    )
    assert ray.get(pid.remote(), timeout=GET_TIMEOUT) != worker.pid


# ------------------------------------------------------------------ remote & options


def test_remote_function_without_options(ray_shared):
    @ray.remote
    def add_one(x):
        return x + 1

    ref = add_one.remote(1)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 2


def test_remote_decorator_with_options(ray_shared):
    @ray.remote(num_cpus=1, max_retries=0)
    def mul(x, y):
        return x * y

    @ray.remote(num_cpus=0.5, num_gpus=0, memory=10 * 1024 * 1024)
    def fractional():
        return "ok"

    assert ray.get(mul.remote(6, 7), timeout=GET_TIMEOUT) == 42
    assert ray.get(fractional.remote(), timeout=GET_TIMEOUT) == "ok"


def test_module_level_remote_function(ray_shared):
    """A module-level function is pickled by reference; the worker must import it."""
    assert ray.get(module_level_square.remote(9), timeout=GET_TIMEOUT) == 81


def test_options_override_without_mutating(ray_shared):
    @ray.remote(num_returns=2)
    def first_n(n):
        return tuple(range(n))

    a, b = first_n.remote(2)
    assert ray.get([a, b], timeout=GET_TIMEOUT) == [0, 1]

    refs = first_n.options(num_returns=3).remote(3)
    assert len(refs) == 3
    assert ray.get(refs, timeout=GET_TIMEOUT) == [0, 1, 2]

    # the original function keeps its decorator options
    again = first_n.remote(2)
    assert len(again) == 2
    assert ray.get(list(again), timeout=GET_TIMEOUT) == [0, 1]


def test_options_accepts_ray_task_options(ray_shared):
    @ray.remote
    def hello():
        return "hello"

    ref = hello.options(
        num_cpus=1,
        num_gpus=0,
        memory=10 * 1024 * 1024,
        max_retries=1,
        retry_exceptions=False,
        name="hello-task",
    ).remote()
    assert ray.get(ref, timeout=GET_TIMEOUT) == "hello"


@pytest.mark.parametrize("n", [2, 3])
def test_num_returns_many(ray_shared, n):
    @ray.remote(num_returns=n)
    def split():
        return tuple(f"value-{i}" for i in range(n))

    refs = split.remote()
    assert isinstance(refs, list | tuple)
    assert len(refs) == n
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert len({r.hex() for r in refs}) == n
    assert ray.get(list(refs), timeout=GET_TIMEOUT) == [f"value-{i}" for i in range(n)]


def test_num_returns_one_is_a_single_ref(ray_shared):
    @ray.remote(num_returns=1)
    def pair():
        return (1, 2)

    ref = pair.remote()
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == (1, 2)
    assert isinstance(pair.options(num_returns=1).remote(), ray.ObjectRef)


def test_kwargs_and_defaults(ray_shared):
    @ray.remote
    def combine(a, b=10, *args, c=100, **kwargs):
        return a, b, args, c, kwargs

    assert ray.get(combine.remote(1), timeout=GET_TIMEOUT) == (1, 10, (), 100, {})
    assert ray.get(combine.remote(1, 2, 3, 4, c=5, d=6), timeout=GET_TIMEOUT) == (
        1,
        2,
        (3, 4),
        5,
        {"d": 6},
    )
    assert ray.get(combine.remote(a=7, c=8), timeout=GET_TIMEOUT) == (7, 10, (), 8, {})


# ------------------------------------------------------------------------ arguments


def test_top_level_refs_are_resolved_to_values(ray_shared):
    @ray.remote
    def describe(x, y=None):
        return type(x).__name__, x if not isinstance(x, np.ndarray) else float(x.sum()), y

    @ray.remote
    def produce():
        return "produced"

    small = ray.put(41)
    assert ray.get(describe.remote(small), timeout=GET_TIMEOUT) == ("int", 41, None)
    assert ray.get(describe.remote(1, y=produce.remote()), timeout=GET_TIMEOUT) == (
        "int",
        1,
        "produced",
    )
    big = ray.put(np.ones(200_000))
    assert ray.get(describe.remote(big), timeout=GET_TIMEOUT) == ("ndarray", 200_000.0, None)


def test_nested_refs_arrive_as_refs(ray_shared):
    @ray.remote
    def inspect(container):
        inner = container["refs"][0]
        return isinstance(inner, ray.ObjectRef), ray.get(inner), ray.get(container["one"])

    a = ray.put("alpha")
    b = ray.put("beta")
    result = ray.get(inspect.remote({"refs": [a], "one": b}), timeout=GET_TIMEOUT)
    assert result == (True, "alpha", "beta")

    @ray.remote
    def list_arg(refs):
        return [isinstance(r, ray.ObjectRef) for r in refs], ray.get(refs)

    assert ray.get(list_arg.remote([a, b]), timeout=GET_TIMEOUT) == (
        [True, True],
        ["alpha", "beta"],
    )


def test_tasks_submit_tasks_and_put_objects(ray_shared):
    @ray.remote
    def leaf(x):
        return x * 2

    @ray.remote
    def total(arr):
        return float(arr.sum())

    @ray.remote
    def parent(n):
        children = [leaf.remote(i) for i in range(n)]
        small = ray.put(list(range(5)))
        big = ray.put(np.ones(300_000))
        return sum(ray.get(children)), ray.get(small), ray.get(total.remote(big))

    assert ray.get(parent.remote(5), timeout=GET_TIMEOUT) == (20, [0, 1, 2, 3, 4], 300_000.0)


def test_nested_tasks_deeper_than_cpu_count(ray_shared):
    """A task blocked in get must not starve its children (Ray releases its CPU)."""

    assert ray.get(module_level_depth.remote(4), timeout=GET_TIMEOUT) == 4


def test_dependent_chain(ray_shared):
    @ray.remote
    def inc(x):
        return x + 1

    ref = ray.put(0)
    for _ in range(10):
        ref = inc.remote(ref)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 10


def test_dependent_task_runs_when_input_ready(ray_shared, tmp_path):
    """A consumer runs as soon as its producer finishes, regardless of other tasks."""
    release_producer = tmp_path / "release-producer"
    release_slow = tmp_path / "release-slow"

    @ray.remote
    def wait_for(path, value):
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        return value

    @ray.remote
    def consume(x):
        return f"consumed {x}"

    slow = wait_for.remote(str(release_slow), "slow")
    producer = wait_for.remote(str(release_producer), "input")
    consumer = consume.remote(producer)
    ready, _ = ray.wait([consumer], timeout=0.5)
    assert ready == [], "the consumer must wait for its input"

    release_producer.touch()
    assert ray.get(consumer, timeout=GET_TIMEOUT) == "consumed input"
    ready, _ = ray.wait([slow], timeout=0)
    assert ready == [], "the unrelated slow task is still running"
    release_slow.touch()
    assert ray.get(slow, timeout=GET_TIMEOUT) == "slow"


# ------------------------------------------------------------------------ resources


def test_one_cpu_tasks_run_in_parallel(ray_shared, tmp_path):
    @ray.remote(num_cpus=1)
    def meet(barrier_dir, idx):
        open(os.path.join(barrier_dir, f"arrived-{idx}"), "w").close()
        deadline = time.time() + 20
        while time.time() < deadline:
            if all(os.path.exists(os.path.join(barrier_dir, f"arrived-{i}")) for i in range(2)):
                return True
            time.sleep(0.01)
        return False

    assert ray.get([meet.remote(str(tmp_path), i) for i in range(2)], timeout=GET_TIMEOUT) == [
        True,
        True,
    ]


def test_extra_tasks_queue_until_cpus_free(ray_shared, tmp_path):
    release = tmp_path / "release"

    @ray.remote(num_cpus=1)
    def hold(idx):
        open(os.path.join(os.path.dirname(str(release)), f"started-{idx}"), "w").close()
        deadline = time.time() + 30
        while not os.path.exists(str(release)) and time.time() < deadline:
            time.sleep(0.01)
        return idx

    refs = [hold.remote(i) for i in range(3)]
    wait_for_condition(
        lambda: len(list(tmp_path.glob("started-*"))) >= 2, message="two tasks never started"
    )
    ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
    assert ready == []
    assert len(list(tmp_path.glob("started-*"))) == 2, "a third task ran on 2 CPUs"
    release.touch()
    assert ray.get(refs, timeout=GET_TIMEOUT) == [0, 1, 2]


def test_two_cpu_task_excludes_one_cpu_tasks(ray_shared):
    @ray.remote(num_cpus=1)
    def small():
        start = time.time()
        time.sleep(0.3)
        return start, time.time()

    @ray.remote(num_cpus=2)
    def big():
        start = time.time()
        time.sleep(0.5)
        return start, time.time()

    before = [small.remote() for _ in range(2)]
    whole = big.remote()
    after = [small.remote() for _ in range(2)]
    big_start, big_end = ray.get(whole, timeout=GET_TIMEOUT)
    for start, end in ray.get(before + after, timeout=GET_TIMEOUT):
        assert end <= big_start or start >= big_end, (
            f"1-CPU task [{start}, {end}] overlapped the 2-CPU task [{big_start}, {big_end}]"
        )


def test_custom_resources(ray_shared):
    assert ray.cluster_resources().get("custom") == 1

    @ray.remote(resources={"custom": 1})
    def uses_custom():
        start = time.time()
        time.sleep(0.3)
        return start, time.time()

    (s1, e1), (s2, e2) = ray.get([uses_custom.remote(), uses_custom.remote()], timeout=GET_TIMEOUT)
    assert e1 <= s2 or e2 <= s1, "two tasks held the single 'custom' unit at once"

    @ray.remote
    def plain():
        return "plain"

    assert ray.get(plain.options(resources={"custom": 0.5}).remote(), timeout=GET_TIMEOUT) == (
        "plain"
    )


def test_infeasible_task_stays_pending_with_warning(ray_shared, caplog, capfd, recwarn):
    caplog.set_level(logging.INFO)

    @ray.remote(num_cpus=100)
    def impossible():
        return "ran"

    ref = impossible.remote()
    ready, not_ready = ray.wait([ref], timeout=1.0)
    assert ready == []
    assert not_ready == [ref]

    captured: list[str] = []

    def warning_lines() -> list[str]:
        out, err = capfd.readouterr()
        captured.append(out + err)
        texts = [*captured, *(r.getMessage() for r in caplog.records)]
        texts += [str(w.message) for w in recwarn]
        lines = "\n".join(texts).splitlines()
        keywords = ("cpu", "infeasib", "resource", "schedul")
        return [ln for ln in lines if "100" in ln and any(k in ln.lower() for k in keywords)]

    wait_for_condition(
        warning_lines, timeout=10, message="no warning naming the infeasible request {'CPU': 100}"
    )

    @ray.remote
    def feasible():
        return "fine"

    assert ray.get(feasible.remote(), timeout=GET_TIMEOUT) == "fine"
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=GET_TIMEOUT)


# ------------------------------------------------------------------------- failures


def test_max_retries_after_worker_death(ray_shared, tmp_path):
    counter = str(tmp_path / "attempts")

    @ray.remote(max_retries=2)
    def dies_twice(path):
        with open(path, "a") as f:
            f.write("x")
        attempts = os.path.getsize(path)
        if attempts < 3:
            os._exit(1)
        return attempts

    assert ray.get(dies_twice.remote(counter), timeout=GET_TIMEOUT) == 3
    assert _attempts(counter) == 3


def test_default_max_retries_is_three(ray_shared, tmp_path):
    counter = str(tmp_path / "attempts")

    @ray.remote
    def dies_three_times(path):
        with open(path, "a") as f:
            f.write("x")
        attempts = os.path.getsize(path)
        if attempts <= 3:
            os._exit(1)
        return attempts

    assert ray.get(dies_three_times.remote(counter), timeout=GET_TIMEOUT) == 4


def test_retries_exhausted_raises_worker_crashed(ray_shared, tmp_path):
    counter = str(tmp_path / "attempts")

    @ray.remote(max_retries=1)
    def always_dies(path):
        with open(path, "a") as f:
            f.write("x")
        os._exit(1)

    with pytest.raises(WorkerCrashedError):
        ray.get(always_dies.remote(counter), timeout=GET_TIMEOUT)
    assert _attempts(counter) == 2


def test_os_exit_without_retries_raises_worker_crashed(ray_shared, tmp_path):
    counter = str(tmp_path / "attempts")

    @ray.remote(max_retries=0)
    def exits(path):
        with open(path, "a") as f:
            f.write("x")
        os._exit(0)

    with pytest.raises(WorkerCrashedError) as info:
        ray.get(exits.remote(counter), timeout=GET_TIMEOUT)
    assert isinstance(info.value, RayError)
    assert _attempts(counter) == 1

    @ray.remote
    def still_works():
        return "ok"

    assert ray.get(still_works.remote(), timeout=GET_TIMEOUT) == "ok"


def test_killed_by_signal_raises_worker_crashed(ray_shared):
    @ray.remote(max_retries=0)
    def killed():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError):
        ray.get(killed.remote(), timeout=GET_TIMEOUT)


def test_application_errors_not_retried_by_default(ray_shared, tmp_path):
    counter = str(tmp_path / "attempts")

    @ray.remote(max_retries=3)
    def fails(path):
        with open(path, "a") as f:
            f.write("x")
        raise ValueError("application error")

    with pytest.raises(ValueError, match="application error"):
        ray.get(fails.remote(counter), timeout=GET_TIMEOUT)
    assert _attempts(counter) == 1


def test_retry_exceptions_true(ray_shared, tmp_path):
    counter = str(tmp_path / "attempts")

    @ray.remote(max_retries=3, retry_exceptions=True)
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        attempts = os.path.getsize(path)
        if attempts < 3:
            raise RuntimeError(f"attempt {attempts}")
        return attempts

    assert ray.get(flaky.remote(counter), timeout=GET_TIMEOUT) == 3


def test_retry_exceptions_exhausted_raises_last_error(ray_shared, tmp_path):
    counter = str(tmp_path / "attempts")

    @ray.remote(max_retries=1, retry_exceptions=True)
    def always(path):
        with open(path, "a") as f:
            f.write("x")
        raise ValueError("still failing")

    with pytest.raises(ValueError, match="still failing"):
        ray.get(always.remote(counter), timeout=GET_TIMEOUT)
    assert _attempts(counter) == 2


def test_retry_exceptions_allowlist(ray_shared, tmp_path):
    listed = str(tmp_path / "listed")
    unlisted = str(tmp_path / "unlisted")

    @ray.remote(max_retries=3, retry_exceptions=[ValueError])
    def flaky(path, exc_type):
        with open(path, "a") as f:
            f.write("x")
        attempts = os.path.getsize(path)
        if attempts < 3:
            raise exc_type(f"attempt {attempts}")
        return attempts

    assert ray.get(flaky.remote(listed, ValueError), timeout=GET_TIMEOUT) == 3
    with pytest.raises(KeyError):
        ray.get(flaky.remote(unlisted, KeyError), timeout=GET_TIMEOUT)
    assert _attempts(unlisted) == 1

    # the same list given through .options()
    via_options = str(tmp_path / "via-options")
    ref = flaky.options(retry_exceptions=[KeyError]).remote(via_options, KeyError)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 3


def test_task_error_is_user_exception_and_ray_task_error(ray_shared):
    class MyError(Exception):
        pass

    @ray.remote
    def boom():
        raise MyError("boom-message")

    with pytest.raises(MyError) as info:
        ray.get(boom.remote(), timeout=GET_TIMEOUT)
    err = info.value
    assert isinstance(err, RayTaskError)
    assert isinstance(err, RayError)
    assert isinstance(err, MyError)
    text = str(err)
    assert "boom-message" in text
    assert "in boom" in text, f"remote traceback missing from: {text!r}"
    assert 'File "' in text

    with pytest.raises(RayTaskError):
        ray.get(boom.remote(), timeout=GET_TIMEOUT)


def test_task_error_propagates_through_dependents(ray_shared):
    class UpstreamError(Exception):
        pass

    @ray.remote
    def upstream():
        raise UpstreamError("upstream failed")

    @ray.remote
    def downstream(x):
        return x

    with pytest.raises(UpstreamError, match="upstream failed"):
        ray.get(downstream.remote(upstream.remote()), timeout=GET_TIMEOUT)


def test_builtin_exception_keeps_its_class(ray_shared):
    @ray.remote
    def divide():
        return 1 / 0

    with pytest.raises(ZeroDivisionError) as info:
        ray.get(divide.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, RayTaskError)


# --------------------------------------------------------------------------- cancel


def test_cancel_pending_task(ray_shared, tmp_path):
    release = tmp_path / "release"
    marker = tmp_path / "cancelled-task-ran"

    @ray.remote(num_cpus=1)
    def hold(path):
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        return "held"

    @ray.remote(num_cpus=1)
    def victim(path):
        open(path, "w").close()
        return "ran"

    holders = [hold.remote(str(release)) for _ in range(2)]
    pending = victim.remote(str(marker))
    ready, _ = ray.wait([pending], timeout=0.3)
    assert ready == []
    ray.cancel(pending)
    with pytest.raises(TaskCancelledError):
        ray.get(pending, timeout=GET_TIMEOUT)
    release.touch()
    assert ray.get(holders, timeout=GET_TIMEOUT) == ["held", "held"]
    # a later task of the same kind runs; the cancelled one never did
    later = tmp_path / "later"
    assert ray.get(victim.remote(str(later)), timeout=GET_TIMEOUT) == "ran"
    assert not marker.exists()


def test_cancel_task_waiting_on_dependency(ray_shared, tmp_path):
    release = tmp_path / "release"

    @ray.remote
    def slow_input(path):
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        return 1

    @ray.remote
    def consumer(x):
        return x + 1

    upstream = slow_input.remote(str(release))
    pending = consumer.remote(upstream)
    ray.cancel(pending)
    with pytest.raises(TaskCancelledError):
        ray.get(pending, timeout=GET_TIMEOUT)
    release.touch()
    assert ray.get(upstream, timeout=GET_TIMEOUT) == 1


def _spinner():
    @ray.remote
    def spin(started, attempts):
        with open(attempts, "a") as f:
            f.write("x")
        with open(started + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(started + ".tmp", started)
        deadline = time.time() + 30
        while time.time() < deadline:
            time.sleep(0.01)
        return "finished"

    return spin


def test_cancel_running_task(ray_shared, tmp_path):
    started = str(tmp_path / "started")
    attempts = str(tmp_path / "attempts")
    ref = _spinner().remote(started, attempts)
    wait_for_file(started)
    t0 = time.monotonic()
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=GET_TIMEOUT)
    assert time.monotonic() - t0 < 10, "cancel must interrupt the running task promptly"
    assert _attempts(attempts) == 1, "cancelled tasks are not retried"

    @ray.remote
    def after():
        return "after"

    assert ray.get(after.remote(), timeout=GET_TIMEOUT) == "after"


def test_cancel_force_kills_worker(ray_shared, tmp_path):
    """Ray: get raises TaskCancelledError, or WorkerCrashedError with force=True."""
    started = str(tmp_path / "started")
    attempts = str(tmp_path / "attempts")
    ref = _spinner().remote(started, attempts)
    pid = int(wait_for_file(started))
    ray.cancel(ref, force=True)
    with pytest.raises((TaskCancelledError, WorkerCrashedError)):
        ray.get(ref, timeout=GET_TIMEOUT)
    wait_for_condition(lambda: _gone(pid), message=f"worker {pid} survived cancel(force=True)")
    assert _attempts(attempts) == 1, "force-cancelled tasks are not retried"

    @ray.remote
    def after():
        return "after"

    assert ray.get(after.remote(), timeout=GET_TIMEOUT) == "after"


def _parent_and_child():
    @ray.remote
    def child(started, release):
        open(started, "w").close()
        deadline = time.time() + 30
        while not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.01)
        return "child finished"

    @ray.remote
    def parent(started, release):
        return ray.get(child.remote(started, release))

    return parent


def test_cancel_task_blocked_in_get(ray_shared, tmp_path):
    """A running task waiting in ray.get is interrupted by cancel too."""
    started, release = str(tmp_path / "child-started"), tmp_path / "release"
    try:
        ref = _parent_and_child().remote(started, str(release))
        wait_for_file(started)
        ray.cancel(ref)
        with pytest.raises(TaskCancelledError):
            ray.get(ref, timeout=10)
    finally:
        release.touch()  # never leave the child holding a CPU for later tests


def test_cancel_is_recursive(ray_shared, tmp_path):
    """Ray's default recursive=True cancels the children a cancelled task submitted."""
    started, release = str(tmp_path / "child-started"), tmp_path / "release"
    try:
        ref = _parent_and_child().remote(started, str(release))
        wait_for_file(started)
        ray.cancel(ref)
        with pytest.raises(TaskCancelledError):
            ray.get(ref, timeout=10)

        @ray.remote(num_cpus=2)
        def needs_every_cpu():
            return "both CPUs free"

        # possible only once the (unreleased) child has been cancelled as well
        assert ray.get(needs_every_cpu.remote(), timeout=10) == "both CPUs free"
    finally:
        release.touch()


def test_cancel_finished_task_is_noop(ray_shared):
    @ray.remote
    def done():
        return "done"

    ref = done.remote()
    assert ray.get(ref, timeout=GET_TIMEOUT) == "done"
    ray.cancel(ref)
    assert ray.get(ref, timeout=GET_TIMEOUT) == "done"


# ------------------------------------------------------------------ runtime context


def test_runtime_context_ids(ray_shared):
    driver_ctx = ray.get_runtime_context()
    job_id = driver_ctx.get_job_id()
    assert job_id
    assert driver_ctx.get_node_id() == ray_shared.address_info["node_id"]

    @ray.remote
    def ids():
        ctx = ray.get_runtime_context()
        return ctx.get_job_id(), ctx.get_task_id(), ctx.get_node_id()

    (job_a, task_a, node_a), (job_b, task_b, node_b) = ray.get(
        [ids.remote(), ids.remote()], timeout=GET_TIMEOUT
    )
    assert job_a == job_b == job_id
    assert task_a and task_b and task_a != task_b
    assert node_a == node_b == ray_shared.address_info["node_id"]


def test_runtime_env_env_vars(ray_shared):
    @ray.remote
    def read_env():
        return os.environ.get(INIT_ENV_VAR), os.environ.get(OPTIONS_ENV_VAR)

    # init-level runtime_env reaches every task
    assert ray.get(read_env.remote(), timeout=GET_TIMEOUT) == ("from-init", None)

    # options-level env_vars are merged with the job's (Ray's inheritance rule)
    env = {"env_vars": {OPTIONS_ENV_VAR: "from-options"}}
    ref = read_env.options(runtime_env=env).remote()
    assert ray.get(ref, timeout=GET_TIMEOUT) == ("from-init", "from-options")

    @ray.remote(runtime_env={"env_vars": {OPTIONS_ENV_VAR: "from-decorator"}})
    def read_env_decorated():
        return os.environ.get(OPTIONS_ENV_VAR)

    assert ray.get(read_env_decorated.remote(), timeout=GET_TIMEOUT) == "from-decorator"

    # and they do not leak into tasks that did not ask for them
    plain = ray.get([read_env.remote() for _ in range(6)], timeout=GET_TIMEOUT)
    assert plain == [("from-init", None)] * 6


# ---------------------------------------------------------------------- worker pool


def test_workers_are_reused(ray_shared):
    @ray.remote
    def pid():
        return os.getpid()

    pids = [ray.get(pid.remote(), timeout=GET_TIMEOUT) for _ in range(20)]
    counts = collections.Counter(pids)
    assert os.getpid() not in counts, "tasks must run in worker processes, not the driver"
    assert counts.most_common(1)[0][1] >= 5, f"workers not reused: {counts}"
    cmdline = " ".join(psutil.Process(pids[-1]).cmdline())
    assert "aioray.daemons" in cmdline


def test_worker_output_streams_to_driver(ray_shared, capfd):
    """print() in a task shows up on the driver, prefixed with the worker's pid."""
    token = f"hello-from-task-{os.getpid()}-{time.time_ns()}"

    @ray.remote
    def talk(text):
        print(text, flush=True)
        return os.getpid()

    pid = ray.get(talk.remote(token), timeout=GET_TIMEOUT)
    seen: list[str] = []

    def streamed() -> list[str]:
        out, err = capfd.readouterr()
        seen.append(out + err)
        return [ln for ln in "".join(seen).splitlines() if token in ln]

    lines = wait_for_condition(streamed, message=f"{token!r} never reached the driver")
    assert any(f"pid={pid}" in ln for ln in lines), lines


@ray.remote
class _Counter:
    def incr(self) -> int:
        return 1


def _count_gil_releases(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from aioray._private.owner import core_worker

    released: list[int] = []
    monkeypatch.setattr(core_worker, "release_gil", lambda: released.append(1))
    return released


def test_a_burst_of_submissions_releases_the_gil_every_so_often(
    ray_shared: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread submitting in a tight loop would keep the GIL for whole switch intervals
    # while the core loop (which pushes the tasks and stores their results) waits.
    from aioray._private.wire import config

    released = _count_gil_releases(monkeypatch)
    every = config.SUBMIT_YIELD_EVERY
    refs = [module_level_square.remote(i) for i in range(2 * every)]
    assert len(released) == 2
    counter = _Counter.remote()
    calls = [counter.incr.remote() for _ in range(every)]
    assert len(released) == 3  # actor calls count too
    assert sum(ray.get(calls, timeout=GET_TIMEOUT)) == every
    assert ray.get(refs, timeout=GET_TIMEOUT) == [i * i for i in range(2 * every)]
    ray.kill(counter)


def test_submissions_made_on_the_core_loop_do_not_release_the_gil(
    ray_shared: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the core loop's own thread has nobody to hand the GIL to that would help it)
    import asyncio

    from aioray import api
    from aioray._private.wire import config

    cw = api.ensure_connected()
    released = _count_gil_releases(monkeypatch)
    posted: list[int] = []

    async def burst() -> None:
        for i in range(2 * config.SUBMIT_YIELD_EVERY):
            cw.post_task(posted.append, i)

    asyncio.run_coroutine_threadsafe(burst(), cw.loop).result(GET_TIMEOUT)
    wait_for_condition(lambda: len(posted) == 2 * config.SUBMIT_YIELD_EVERY, GET_TIMEOUT)
    assert released == []

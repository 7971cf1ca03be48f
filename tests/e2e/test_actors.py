"""End-to-end tests of actors: creation, options, handles, names, bad input, context.

Each test states one Ray behaviour. Lifetimes, kills and restarts are in
test_actor_lifecycle.py; async and threaded actors, concurrency groups, queues and
pools in test_actor_concurrency.py. Actors that hold resources (CPU, GPU, custom)
are killed by the test that made them, so the next test finds the shared cluster
whole.
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    PendingCallsLimitExceeded,
    RayActorError,
    RayError,
    RayTaskError,
)

INIT_ENV_VAR = "AIORAY_ACTOR_TEST_INIT_ENV"
OPTIONS_ENV_VAR = "AIORAY_ACTOR_TEST_OPTIONS_ENV"

RAY_SHARED_INIT_KWARGS = {
    "num_cpus": 2,
    "num_gpus": 1,
    "resources": {"custom": 1},
    "runtime_env": {"env_vars": {INIT_ENV_VAR: "from-init"}},
}

GET_TIMEOUT = 30


# A module-level actor class is pickled by reference: the worker imports this module.
@ray.remote
class Counter:
    def __init__(self, start=0, step=1):
        self.value = start
        self.step = step

    def increment(self, by=None):
        self.value += self.step if by is None else by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@ray.remote
def module_level_task_pid():
    return os.getpid()


def _kill_all(*handles) -> None:
    for handle in handles:
        try:
            ray.kill(handle)
        except Exception:
            pass


def _wait_until_name_free(name: str, namespace: str | None = None) -> None:
    def free() -> bool:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return True
        return False

    wait_for_condition(free, message=f"the name {name!r} was never released")


# ---------------------------------------------------- tests that need a fresh cluster
# (they come first: the module's shared cluster starts with the first test using it)


@pytest.mark.parametrize("ray_start", [{"namespace": "actor-ns-from-init"}], indirect=True)
def test_init_namespace_holds_named_actors(ray_start):
    """Named actors live in the job's namespace, set by ray.init(namespace=...)."""
    assert ray.get_runtime_context().namespace == "actor-ns-from-init"
    counter = Counter.options(name="init-ns-counter").remote(10)
    assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 11

    same = ray.get_actor("init-ns-counter")
    assert ray.get(same.get.remote(), timeout=GET_TIMEOUT) == 11
    explicit = ray.get_actor("init-ns-counter", namespace="actor-ns-from-init")
    assert ray.get(explicit.get.remote(), timeout=GET_TIMEOUT) == 11

    assert "init-ns-counter" in ray.util.list_named_actors()
    everywhere = ray.util.list_named_actors(all_namespaces=True)
    assert {"name": "init-ns-counter", "namespace": "actor-ns-from-init"} in everywhere
    with pytest.raises(ValueError):
        ray.get_actor("init-ns-counter", namespace="some-other-namespace")
    ray.kill(counter)


# ------------------------------------------------------------------ remote & options


def test_remote_class_returns_handle_and_refs(ray_shared):
    @ray.remote
    class Greeter:
        def __init__(self, greeting):
            self.greeting = greeting

        def greet(self, name):
            return f"{self.greeting}, {name}"

    greeter = Greeter.remote("hello")
    assert isinstance(greeter, ray.actor.ActorHandle)
    ref = greeter.greet.remote("aioray")
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == "hello, aioray"


def test_creation_does_not_wait_for_init(ray_shared, tmp_path):
    """.remote() returns a handle at once; __init__ runs in the actor's worker."""
    release = tmp_path / "release"

    @ray.remote
    class SlowInit:
        def __init__(self, path):
            deadline = time.time() + 20
            while not os.path.exists(path) and time.time() < deadline:
                time.sleep(0.01)
            self.released = os.path.exists(path)

        def released_(self):
            return self.released

    handle = SlowInit.remote(str(release))  # would deadlock if it waited for __init__
    ref = handle.released_.remote()
    release.touch()
    assert ray.get(ref, timeout=GET_TIMEOUT) is True


def test_module_level_actor_class(ray_shared):
    counter = Counter.remote()
    assert ray.get([counter.increment.remote() for _ in range(3)], timeout=GET_TIMEOUT) == [
        1,
        2,
        3,
    ]
    assert ray.get(counter.get.remote(), timeout=GET_TIMEOUT) == 3


def test_constructor_and_method_args_kwargs(ray_shared):
    @ray.remote
    class Keeper:
        def __init__(self, a, b=2, *args, c=3, **kwargs):
            self.init_args = (a, b, args, c, kwargs)

        def init(self):
            return self.init_args

        def combine(self, a, b=10, *args, c=100, **kwargs):
            return a, b, args, c, kwargs

    keeper = Keeper.remote(1, 5, 6, c=7, d=8)
    assert ray.get(keeper.init.remote(), timeout=GET_TIMEOUT) == (1, 5, (6,), 7, {"d": 8})
    assert ray.get(keeper.combine.remote(1), timeout=GET_TIMEOUT) == (1, 10, (), 100, {})
    assert ray.get(keeper.combine.remote(1, 2, 3, c=4, e=5), timeout=GET_TIMEOUT) == (
        1,
        2,
        (3,),
        4,
        {"e": 5},
    )
    assert ray.get(Keeper.remote(a=0).init.remote(), timeout=GET_TIMEOUT) == (0, 2, (), 3, {})


def test_decorator_with_options(ray_shared):
    @ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
    class Configured:
        def ping(self):
            return "pong"

    assert ray.get(Configured.remote().ping.remote(), timeout=GET_TIMEOUT) == "pong"


def test_options_returns_a_new_class_and_leaves_the_original(ray_shared):
    @ray.remote
    class Reader:
        def read(self):
            return os.environ.get(OPTIONS_ENV_VAR)

    with_env = Reader.options(runtime_env={"env_vars": {OPTIONS_ENV_VAR: "from-options"}})
    assert ray.get(with_env.remote().read.remote(), timeout=GET_TIMEOUT) == "from-options"
    assert ray.get(Reader.remote().read.remote(), timeout=GET_TIMEOUT) is None


def test_every_actor_option_is_accepted(ray_shared):
    handle = Counter.options(
        num_cpus=0,
        num_gpus=0,
        resources={"custom": 0},
        memory=10 * 1024 * 1024,
        max_restarts=1,
        max_task_retries=-1,
        max_concurrency=1,
        concurrency_groups={"io": 1},
        max_pending_calls=100,
        name="every-option",
        namespace="every-option-ns",
        lifetime=None,
        get_if_exists=False,
        scheduling_strategy="DEFAULT",
        runtime_env={"env_vars": {OPTIONS_ENV_VAR: "x"}},
    ).remote(41)
    try:
        assert ray.get(handle.increment.remote(), timeout=GET_TIMEOUT) == 42
    finally:
        ray.kill(handle)


def test_each_actor_has_its_own_state_and_process(ray_shared):
    a, b = Counter.remote(), Counter.remote(100)
    ray.get([a.increment.remote(), a.increment.remote(), b.increment.remote()], timeout=30)
    assert ray.get([a.get.remote(), b.get.remote()], timeout=GET_TIMEOUT) == [2, 101]

    pid_a, pid_b = ray.get([a.pid.remote(), b.pid.remote()], timeout=GET_TIMEOUT)
    assert pid_a != pid_b
    assert os.getpid() not in (pid_a, pid_b)
    # the actor's worker is dedicated to it: tasks never run there
    task_pids = set(ray.get([module_level_task_pid.remote() for _ in range(10)], timeout=30))
    assert not task_pids & {pid_a, pid_b}
    # and every call lands in the same process
    assert set(ray.get([a.pid.remote() for _ in range(5)], timeout=GET_TIMEOUT)) == {pid_a}


def test_calls_from_one_caller_run_in_submission_order(ray_shared):
    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def append(self, item):
            self.items.append(item)
            return len(self.items)

        def items_(self):
            return self.items

    log = Log.remote()
    refs = [log.append.remote(i) for i in range(200)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == list(range(1, 201))
    assert ray.get(log.items_.remote(), timeout=GET_TIMEOUT) == list(range(200))


def test_submission_order_holds_when_an_earlier_argument_is_late(ray_shared):
    """Ray's docs: a call whose argument resolves late still runs before later calls."""

    @ray.remote
    def delayed(value):
        time.sleep(0.3)
        return value

    counter = Counter.remote()
    first = counter.increment.remote(delayed.remote(1))
    second = counter.increment.remote(2)
    assert ray.get([first, second], timeout=GET_TIMEOUT) == [1, 3]


def test_method_arguments_resolve_refs_and_large_values(ray_shared):
    @ray.remote
    class Inspector:
        def describe(self, value, nested=None):
            if isinstance(value, np.ndarray):
                value = ("ndarray", float(value.sum()))
            inner = None
            if nested is not None:
                inner = (isinstance(nested[0], ray.ObjectRef), ray.get(nested[0]))
            return value, inner

        def big(self, n):
            return np.ones(n)

    @ray.remote
    def produce():
        return "produced"

    inspector = Inspector.remote()
    small = ray.put(41)
    assert ray.get(inspector.describe.remote(small), timeout=GET_TIMEOUT) == (41, None)
    assert ray.get(inspector.describe.remote(produce.remote()), timeout=30) == ("produced", None)
    big = ray.put(np.ones(300_000))
    assert ray.get(inspector.describe.remote(big), timeout=GET_TIMEOUT) == (
        ("ndarray", 300_000.0),
        None,
    )
    # refs nested in a value arrive as refs
    assert ray.get(inspector.describe.remote(1, nested=[small]), timeout=GET_TIMEOUT) == (
        1,
        (True, 41),
    )
    # a large return value comes back whole
    assert float(ray.get(inspector.big.remote(250_000), timeout=GET_TIMEOUT).sum()) == 250_000.0


def test_actor_methods_submit_tasks_and_create_actors(ray_shared):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Parent:
        def __init__(self):
            self.child = Counter.remote(5)

        def squares(self, n):
            return ray.get([square.remote(i) for i in range(n)])

        def bump_child(self):
            return ray.get(self.child.increment.remote())

    parent = Parent.remote()
    assert ray.get(parent.squares.remote(4), timeout=GET_TIMEOUT) == [0, 1, 4, 9]
    assert ray.get(parent.bump_child.remote(), timeout=GET_TIMEOUT) == 6
    assert ray.get(parent.bump_child.remote(), timeout=GET_TIMEOUT) == 7


def test_method_num_returns(ray_shared):
    @ray.remote
    class Splitter:
        @ray.method(num_returns=2)
        def pair(self, x):
            return x, x + 1

        def triple(self, x):
            return x, x * 2, x * 3

        def single(self):
            return (1, 2)

    splitter = Splitter.remote()
    first, second = splitter.pair.remote(1)
    assert isinstance(first, ray.ObjectRef)
    assert ray.get([first, second], timeout=GET_TIMEOUT) == [1, 2]

    refs = splitter.triple.options(num_returns=3).remote(2)
    assert len(refs) == 3
    assert ray.get(list(refs), timeout=GET_TIMEOUT) == [2, 4, 6]

    ref = splitter.single.remote()
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == (1, 2)


def test_generator_method_with_num_returns(ray_shared):
    @ray.remote
    class Source:
        @ray.method(num_returns=3)
        def three(self):
            for i in range(3):
                yield f"item-{i}"

    refs = Source.remote().three.remote()
    assert len(refs) == 3
    assert ray.get(list(refs), timeout=GET_TIMEOUT) == ["item-0", "item-1", "item-2"]


def test_generator_methods_stream_their_items(ray_shared):
    """Ray >= 2.8: a generator method streams (an ObjectRefGenerator), sync or async,
    with num_returns="streaming" or with no num_returns at all."""

    @ray.remote
    class Source:
        def numbers(self, n):
            for i in range(n):
                yield i * 10

        async def words(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield f"word-{i}"

    source = Source.remote()
    explicit = source.numbers.options(num_returns="streaming").remote(3)
    assert [ray.get(ref, timeout=GET_TIMEOUT) for ref in explicit] == [0, 10, 20]
    streamed = source.words.options(num_returns="streaming").remote(2)
    assert [ray.get(ref, timeout=GET_TIMEOUT) for ref in streamed] == ["word-0", "word-1"]
    # the default for a generator method is to stream
    assert [ray.get(ref, timeout=GET_TIMEOUT) for ref in source.numbers.remote(2)] == [0, 10]
    assert [ray.get(ref, timeout=GET_TIMEOUT) for ref in source.words.remote(1)] == ["word-0"]


# ------------------------------------------------------------------------ resources


def test_default_actors_use_no_cpu_while_running(ray_shared):
    """num_cpus defaults to 1 to schedule and 0 to run: 5 actors on 2 CPUs all answer."""
    actors = [Counter.remote(i) for i in range(5)]
    try:
        assert ray.get([a.increment.remote() for a in actors], timeout=GET_TIMEOUT) == [
            1,
            2,
            3,
            4,
            5,
        ]

        # and tasks still find both CPUs
        @ray.remote(num_cpus=2)
        def whole_node():
            return "ran"

        assert ray.get(whole_node.remote(), timeout=GET_TIMEOUT) == "ran"
    finally:
        _kill_all(*actors)


def test_actor_with_num_cpus_holds_them(ray_shared):
    holders = [Counter.options(num_cpus=1).remote() for _ in range(2)]
    waiting = Counter.options(num_cpus=1).remote(7)
    try:
        assert ray.get([h.increment.remote() for h in holders], timeout=GET_TIMEOUT) == [1, 1]
        pending = waiting.increment.remote()
        ready, _ = ray.wait([pending], timeout=0.5)
        assert ready == [], "a third 1-CPU actor started on a 2-CPU cluster"
        wait_for_condition(
            lambda: ray.available_resources().get("CPU", 0) == 0,
            message=lambda: f"two 1-CPU actors hold no CPU: {ray.available_resources()}",
        )
        ray.kill(holders[0])
        assert ray.get(pending, timeout=GET_TIMEOUT) == 8
    finally:
        _kill_all(*holders, waiting)
    wait_for_condition(
        lambda: ray.available_resources().get("CPU", 0) == 2,
        message=lambda: f"killed actors kept their CPUs: {ray.available_resources()}",
    )


def test_actor_with_gpu(ray_shared):
    @ray.remote(num_gpus=1)
    class GpuUser:
        def devices(self):
            return [str(i) for i in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")

    user = GpuUser.remote()
    try:
        assert ray.get(user.devices.remote(), timeout=GET_TIMEOUT) == (["0"], "0")
    finally:
        ray.kill(user)


def test_actor_with_custom_resource_waits_for_it(ray_shared):
    @ray.remote(resources={"custom": 1})
    class Special:
        def ping(self):
            return "special"

    first = Special.remote()
    second = Special.remote()
    try:
        assert ray.get(first.ping.remote(), timeout=GET_TIMEOUT) == "special"
        pending = second.ping.remote()
        ready, _ = ray.wait([pending], timeout=0.5)
        assert ready == [], "two actors held the single 'custom' unit at once"
        ray.kill(first)
        assert ray.get(pending, timeout=GET_TIMEOUT) == "special"
    finally:
        _kill_all(first, second)


def test_memory_option(ray_shared):
    handle = Counter.options(memory=50 * 1024 * 1024).remote()
    # memory is a resource like any other: more than the node has never schedules
    too_big = Counter.options(memory=10**15).remote()
    try:
        assert ray.get(handle.increment.remote(), timeout=GET_TIMEOUT) == 1
        ready, _ = ray.wait([too_big.increment.remote()], timeout=0.5)
        assert ready == [], "an actor asking for a petabyte of memory was scheduled"
    finally:
        _kill_all(handle, too_big)


def test_scheduling_strategies(ray_shared):
    from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    node_id = ray.get_runtime_context().get_node_id()
    strategies = [
        "DEFAULT",
        "SPREAD",
        NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        NodeAffinitySchedulingStrategy(node_id=node_id, soft=True),
    ]
    actors = [Where.options(scheduling_strategy=s).remote() for s in strategies]
    assert ray.get([a.node.remote() for a in actors], timeout=GET_TIMEOUT) == [node_id] * 4


def test_runtime_env_env_vars_reach_actors(ray_shared):
    @ray.remote
    class Env:
        def read(self):
            return os.environ.get(INIT_ENV_VAR), os.environ.get(OPTIONS_ENV_VAR)

    assert ray.get(Env.remote().read.remote(), timeout=GET_TIMEOUT) == ("from-init", None)
    env = {"env_vars": {OPTIONS_ENV_VAR: "from-options"}}
    assert ray.get(Env.options(runtime_env=env).remote().read.remote(), timeout=30) == (
        "from-init",
        "from-options",
    )

    @ray.remote(runtime_env={"env_vars": {OPTIONS_ENV_VAR: "from-decorator"}})
    class Decorated:
        def read(self):
            return os.environ.get(OPTIONS_ENV_VAR)

    assert ray.get(Decorated.remote().read.remote(), timeout=GET_TIMEOUT) == "from-decorator"


# -------------------------------------------------------------------------- handles


def test_handle_passed_to_tasks(ray_shared):
    @ray.remote
    def bump(counter):
        return ray.get(counter.increment.remote())

    counter = Counter.remote()
    results = ray.get([bump.remote(counter) for _ in range(8)], timeout=GET_TIMEOUT)
    assert sorted(results) == list(range(1, 9))
    assert ray.get(counter.get.remote(), timeout=GET_TIMEOUT) == 8


def test_handle_passed_to_another_actor(ray_shared):
    @ray.remote
    class Caller:
        def __init__(self, target):
            self.target = target

        def call(self, by):
            return ray.get(self.target.increment.remote(by))

        def call_given(self, other, by):
            return ray.get(other.increment.remote(by))

    counter = Counter.remote()
    caller = Caller.remote(counter)
    assert ray.get(caller.call.remote(5), timeout=GET_TIMEOUT) == 5
    assert ray.get(caller.call_given.remote(counter, 2), timeout=GET_TIMEOUT) == 7
    assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 8


def test_handle_returned_from_task(ray_shared):
    @ray.remote
    def make_counter(start):
        counter = Counter.remote(start)
        ray.get(counter.increment.remote())
        return counter

    counter = ray.get(make_counter.remote(10), timeout=GET_TIMEOUT)
    assert isinstance(counter, ray.actor.ActorHandle)
    assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 12


def test_handle_nested_in_values_and_put(ray_shared):
    @ray.remote
    def bump_all(bundle):
        return [ray.get(c.increment.remote()) for c in bundle["counters"]]

    counters = [Counter.remote(0), Counter.remote(100)]
    assert ray.get(bump_all.remote({"counters": counters}), timeout=GET_TIMEOUT) == [1, 101]

    stored = ray.get(ray.put(counters), timeout=GET_TIMEOUT)
    assert ray.get([c.increment.remote() for c in stored], timeout=GET_TIMEOUT) == [2, 102]
    assert ray.get([c.get.remote() for c in counters], timeout=GET_TIMEOUT) == [2, 102]


def test_handle_equality_and_hash(ray_shared):
    counter = Counter.options(name="equality-counter").remote()
    try:
        again = ray.get_actor("equality-counter")
        assert again == counter
        assert hash(again) == hash(counter)
        assert len({counter, again}) == 1
        assert Counter.remote() != counter
    finally:
        ray.kill(counter)


# --------------------------------------------------------------------- named actors


def test_named_actor_get_actor(ray_shared):
    counter = Counter.options(name="named-counter").remote()
    try:
        ray.get(counter.increment.remote(), timeout=GET_TIMEOUT)
        found = ray.get_actor("named-counter")
        assert ray.get(found.increment.remote(), timeout=GET_TIMEOUT) == 2
        assert ray.get(counter.get.remote(), timeout=GET_TIMEOUT) == 2
    finally:
        ray.kill(counter)


def test_named_actor_found_from_a_task(ray_shared):
    @ray.remote
    def bump_by_name(name):
        return ray.get(ray.get_actor(name).increment.remote())

    counter = Counter.options(name="task-visible").remote()
    try:
        assert ray.get(bump_by_name.remote("task-visible"), timeout=GET_TIMEOUT) == 1
        assert ray.get(counter.get.remote(), timeout=GET_TIMEOUT) == 1
    finally:
        ray.kill(counter)


def test_taken_name_raises_value_error_naming_it(ray_shared):
    first = Counter.options(name="taken-name").remote()
    try:
        ray.get(first.get.remote(), timeout=GET_TIMEOUT)
        with pytest.raises(ValueError, match="taken-name"):
            Counter.options(name="taken-name").remote()
        # the first actor is untouched
        assert ray.get(first.increment.remote(), timeout=GET_TIMEOUT) == 1
        # the same name in another namespace is free
        other = Counter.options(name="taken-name", namespace="another-ns").remote(50)
        assert ray.get(other.increment.remote(), timeout=GET_TIMEOUT) == 51
        ray.kill(other)
    finally:
        ray.kill(first)


def test_get_actor_unknown_name_raises_value_error(ray_shared):
    with pytest.raises(ValueError, match="no-such-actor"):
        ray.get_actor("no-such-actor")
    with pytest.raises(ValueError) as info:
        ray.get_actor("no-such-actor", namespace="no-such-namespace")
    assert "no-such-actor" in str(info.value)
    assert "no-such-namespace" in str(info.value)


def test_get_if_exists(ray_shared):
    first = Counter.options(name="create-or-get", get_if_exists=True).remote(10)
    try:
        assert ray.get(first.increment.remote(), timeout=GET_TIMEOUT) == 11
        # a re-run of the same cell: the existing actor, its state and no error
        second = Counter.options(name="create-or-get", get_if_exists=True).remote(10)
        assert ray.get(second.increment.remote(), timeout=GET_TIMEOUT) == 12
        assert second == first
    finally:
        ray.kill(first)


def test_get_if_exists_needs_a_name(ray_shared):
    with pytest.raises(ValueError):
        Counter.options(get_if_exists=True).remote()


def test_named_actor_in_an_explicit_namespace(ray_shared):
    counter = Counter.options(name="ns-counter", namespace="explicit-ns").remote()
    try:
        assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 1
        found = ray.get_actor("ns-counter", namespace="explicit-ns")
        assert ray.get(found.increment.remote(), timeout=GET_TIMEOUT) == 2
        with pytest.raises(ValueError, match="ns-counter"):
            ray.get_actor("ns-counter")  # not in the job's namespace
    finally:
        ray.kill(counter)


def test_list_named_actors(ray_shared):
    here = Counter.options(name="listed-here").remote()
    there = Counter.options(name="listed-there", namespace="list-ns").remote()
    anonymous = Counter.remote()
    try:
        ray.get([here.get.remote(), there.get.remote(), anonymous.get.remote()], timeout=30)
        names = ray.util.list_named_actors()
        assert isinstance(names, list)
        assert "listed-here" in names
        assert "listed-there" not in names
        assert all(isinstance(n, str) for n in names)

        everywhere = ray.util.list_named_actors(all_namespaces=True)
        assert all(set(entry) == {"name", "namespace"} for entry in everywhere)
        namespace = ray.get_runtime_context().namespace
        assert {"name": "listed-here", "namespace": namespace} in everywhere
        assert {"name": "listed-there", "namespace": "list-ns"} in everywhere
    finally:
        ray.kill(here)
        ray.kill(there)
    wait_for_condition(
        lambda: "listed-here" not in ray.util.list_named_actors(),
        message="a killed actor is still listed",
    )


def test_name_is_released_when_the_actor_dies(ray_shared):
    first = Counter.options(name="reusable-name").remote(1)
    assert ray.get(first.get.remote(), timeout=GET_TIMEOUT) == 1
    ray.kill(first)
    _wait_until_name_free("reusable-name")
    second = Counter.options(name="reusable-name").remote(2)
    try:
        assert ray.get(ray.get_actor("reusable-name").get.remote(), timeout=GET_TIMEOUT) == 2
    finally:
        ray.kill(second)


def test_bad_names_and_lifetimes_raise_value_error(ray_shared):
    with pytest.raises(ValueError):
        Counter.options(name="").remote()
    with pytest.raises(ValueError, match="lifetime"):
        Counter.options(lifetime="forever").remote()


# ------------------------------------------------------------------------ bad input


def test_instantiating_an_actor_class_directly_raises_type_error(ray_shared):
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        Counter()


def test_unknown_method_raises_attribute_error_naming_the_class(ray_shared):
    counter = Counter.remote()
    with pytest.raises(AttributeError) as info:
        counter.no_such_method.remote()
    assert "no_such_method" in str(info.value)
    assert "Counter" in str(info.value)
    # the actor itself is fine
    assert ray.get(counter.increment.remote(), timeout=GET_TIMEOUT) == 1


def test_unknown_actor_option_raises_value_error_naming_it(ray_shared):
    with pytest.raises(ValueError, match="not_an_actor_option"):
        Counter.options(not_an_actor_option=1).remote()

    class Plain:
        pass

    with pytest.raises(ValueError, match="also_not_an_option"):
        ray.remote(also_not_an_option=1)(Plain).remote()


def test_exception_in_init_makes_every_call_raise_actor_died(ray_shared):
    @ray.remote
    class BrokenInit:
        def __init__(self):
            raise RuntimeError("constructor exploded 1234")

        def ping(self):
            return "unreachable"

    broken = BrokenInit.remote()  # creation itself does not raise in the driver
    for _ in range(2):
        with pytest.raises(ActorDiedError) as info:
            ray.get(broken.ping.remote(), timeout=GET_TIMEOUT)
        assert "constructor exploded 1234" in str(info.value)
        assert isinstance(info.value, RayActorError)


def test_exception_in_method_fails_that_call_only(ray_shared):
    class MethodError(Exception):
        pass

    @ray.remote
    class Fragile:
        def __init__(self):
            self.value = 0

        def add(self, x):
            self.value += x
            return self.value

        def fail(self, text):
            raise MethodError(text)

        def divide(self, x):
            return self.value / x

    fragile = Fragile.remote()
    assert ray.get(fragile.add.remote(3), timeout=GET_TIMEOUT) == 3
    with pytest.raises(MethodError) as info:
        ray.get(fragile.fail.remote("method failed 5678"), timeout=GET_TIMEOUT)
    assert isinstance(info.value, RayTaskError)
    assert "method failed 5678" in str(info.value)
    assert "fail" in str(info.value)
    # state kept, actor keeps serving
    assert ray.get(fragile.add.remote(4), timeout=GET_TIMEOUT) == 7
    with pytest.raises(ZeroDivisionError):
        ray.get(fragile.divide.remote(0), timeout=GET_TIMEOUT)
    assert ray.get(fragile.add.remote(0), timeout=GET_TIMEOUT) == 7


def test_kill_of_a_non_actor_raises(ray_shared):
    with pytest.raises((ValueError, TypeError)):
        ray.kill(ray.put(1))


def test_actor_exceptions_have_ray_names(ray_shared):
    assert issubclass(RayActorError, RayError)
    assert issubclass(ActorDiedError, RayActorError)
    assert issubclass(ActorUnavailableError, RayActorError)
    assert issubclass(PendingCallsLimitExceeded, RayError)
    for name in ("RayActorError", "ActorDiedError", "ActorUnavailableError"):
        assert getattr(ray.exceptions, name) is globals()[name]
    assert ray.exceptions.PendingCallsLimitExceeded is PendingCallsLimitExceeded
    assert callable(ray.actor.exit_actor)
    assert callable(ray.kill)
    assert callable(ray.get_actor)
    assert callable(ray.method)


def test_get_timeout_on_a_slow_method(ray_shared):
    @ray.remote
    class Slow:
        def nap(self, seconds):
            time.sleep(seconds)
            return seconds

    slow = Slow.remote()
    ref = slow.nap.remote(1.0)
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=0.1)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 1.0


# ------------------------------------------------------------------ runtime context


def test_runtime_context_actor_id(ray_shared):
    @ray.remote
    class WhoAmI:
        def actor_id(self):
            return ray.get_runtime_context().get_actor_id()

    @ray.remote
    def in_task():
        return ray.get_runtime_context().get_actor_id()

    assert ray.get_runtime_context().get_actor_id() is None
    assert ray.get(in_task.remote(), timeout=GET_TIMEOUT) is None

    a, b = WhoAmI.remote(), WhoAmI.remote()
    id_a, id_a_again, id_b = ray.get(
        [a.actor_id.remote(), a.actor_id.remote(), b.actor_id.remote()], timeout=GET_TIMEOUT
    )
    assert isinstance(id_a, str) and id_a
    int(id_a, 16)  # hex
    assert id_a == id_a_again
    assert id_a != id_b

"""Bad input at the public API: each mistake gets Ray's exception type and a clear message.

The auto-init tests come first: they need no cluster to be running, and the module's
shared cluster starts with the first test that asks for ``ray_shared``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

import aioray as ray
from aioray.exceptions import (
    ActorHandleNotFoundError,
    RayError,
    RaySystemError,
    RayTaskError,
    UnserializableException,
)

GET_TIMEOUT = 30
SERIALIZATION_ERRORS = (TypeError, RayError, ValueError)


# ------------------------------------------------------------------ no cluster yet


def test_auto_init_on_first_remote_call():
    assert not ray.is_initialized()

    @ray.remote
    def hello():
        return "auto"

    try:
        ref = hello.remote()
        assert ray.is_initialized()
        assert ray.get(ref, timeout=GET_TIMEOUT) == "auto"
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def test_auto_init_on_first_put():
    assert not ray.is_initialized()
    try:
        ref = ray.put("auto-put")
        assert ray.is_initialized()
        assert ray.get(ref, timeout=GET_TIMEOUT) == "auto-put"
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def test_init_auto_without_cluster_raises_connection_error():
    assert not ray.is_initialized()
    with pytest.raises(ConnectionError):
        ray.init(address="auto")
    assert not ray.is_initialized()


def test_kill_of_a_handle_from_a_previous_session():
    """Ray: ActorHandleNotFoundError (also a ValueError); the new session's actors live on."""

    @ray.remote(num_cpus=0)
    class A:
        def ping(self):
            return "pong"

    ray.init(num_cpus=1)
    try:
        old = A.remote()
        assert ray.get(old.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    finally:
        ray.shutdown()
    with pytest.raises(ActorHandleNotFoundError, match="not valid across Ray sessions"):
        ray.kill(old)
    assert not ray.is_initialized()  # nothing was started to say so
    ray.init(num_cpus=1)
    try:
        new = A.remote()
        with pytest.raises(ValueError, match=r"created in job .* but the current job is"):
            ray.kill(old)
        assert ray.get(new.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    finally:
        ray.shutdown()


def test_public_api_names():
    """`import aioray as ray` exposes Ray's public names (checked in a fresh interpreter)."""
    code = textwrap.dedent(
        """
        import aioray as ray
        names = [
            "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel",
            "get_runtime_context", "cluster_resources", "available_resources", "nodes",
            "ObjectRef", "exceptions",
        ]
        missing = [n for n in names if not hasattr(ray, n)]
        errors = [
            "RayError", "RayTaskError", "GetTimeoutError", "TaskCancelledError",
            "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "RaySystemError",
        ]
        missing += ["exceptions." + n for n in errors if not hasattr(ray.exceptions, n)]
        assert not missing, missing
        assert issubclass(ray.exceptions.GetTimeoutError, TimeoutError)
        for n in errors:
            assert issubclass(getattr(ray.exceptions, n), ray.exceptions.RayError), n
        assert not ray.is_initialized()
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_calling_remote_function_directly():
    @ray.remote
    def f(x):
        return x

    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        f(1)
    assert not ray.is_initialized(), "a rejected direct call must not start a cluster"


def test_unknown_option_in_decorator():
    with pytest.raises(ValueError, match="foo"):

        @ray.remote(foo=1)
        def f():
            return 1


def test_unknown_option_in_options():
    @ray.remote
    def f():
        return 1

    with pytest.raises(ValueError, match="foo"):
        f.options(foo=1)


@pytest.mark.parametrize(
    "option, value",
    [
        ("num_returns", -1),
        ("num_cpus", -1),
        ("num_gpus", -1),
        ("memory", -1),
        ("max_retries", -2),
    ],
)
def test_invalid_option_value(option, value):
    with pytest.raises(ValueError, match=option):

        @ray.remote(**{option: value})
        def f():
            return 1

    @ray.remote
    def g():
        return 1

    with pytest.raises(ValueError, match=option):
        g.options(**{option: value})


@pytest.mark.parametrize(
    "option, value",
    [
        ("num_cpus", "x"),
        ("num_gpus", [1]),
        ("memory", "1GB"),
        ("max_retries", 1.5),
        ("num_returns", "bad"),
        ("num_returns", 2.0),
        ("resources", "GPU"),
        ("name", 5),
        ("retry_exceptions", "yes"),
        ("scheduling_strategy", 3),
    ],
)
def test_option_of_the_wrong_type_is_type_error(option, value):
    """As Ray's option checks: a value of the wrong type is TypeError naming the option
    (a wrong value of the right type, e.g. a negative number, stays ValueError)."""
    with pytest.raises(TypeError, match=option):

        @ray.remote(**{option: value})
        def f():
            return 1

    @ray.remote
    def g():
        return 1

    with pytest.raises(TypeError, match=option):
        g.options(**{option: value})
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "option, value", [("max_restarts", 1.5), ("max_concurrency", "2"), ("namespace", 1)]
)
def test_actor_option_of_the_wrong_type_is_type_error(option, value):
    class A:
        pass

    with pytest.raises(TypeError, match=option):
        ray.remote(**{option: value})(A)
    with pytest.raises(TypeError, match=option):
        ray.remote(A).options(**{option: value})


def test_cpu_in_resources_is_rejected():
    with pytest.raises(ValueError, match=r"num_cpus|CPU"):

        @ray.remote(resources={"CPU": 1})
        def f():
            return 1


def test_async_def_remote_function_is_rejected():
    """Ray: "'async def' should not be used for remote tasks" (ValueError at decoration)."""
    with pytest.raises(ValueError, match="async"):

        @ray.remote
        async def f():
            return 1


# --------------------------------------------------------------- with a cluster


def test_unpicklable_argument_fails_at_remote(ray_shared):
    @ray.remote
    def f(x):
        return x

    with pytest.raises(SERIALIZATION_ERRORS, match=r"(?i)lock") as info:
        f.remote(threading.Lock())
    assert "lock" in str(info.value).lower()

    with pytest.raises(SERIALIZATION_ERRORS, match=r"(?i)lock"):
        f.remote(x=[threading.Lock()])

    # the cluster is unharmed
    assert ray.get(f.remote("fine"), timeout=GET_TIMEOUT) == "fine"


def test_unpicklable_put_fails(ray_shared):
    with pytest.raises(SERIALIZATION_ERRORS, match=r"(?i)lock"):
        ray.put(threading.Lock())
    assert ray.get(ray.put("fine"), timeout=GET_TIMEOUT) == "fine"


def test_unpicklable_function_fails_at_remote(ray_shared):
    lock = threading.Lock()

    @ray.remote
    def uses_lock():
        return lock.locked()

    with pytest.raises(SERIALIZATION_ERRORS, match=r"(?i)lock"):
        uses_lock.remote()


@pytest.mark.parametrize("bad", [123, "abc", None, [1, 2]], ids=["int", "str", "None", "list"])
def test_get_of_non_ref(ray_shared, bad):
    with pytest.raises(TypeError):
        ray.get(bad)


def test_get_of_list_with_non_ref(ray_shared):
    with pytest.raises(TypeError):
        ray.get([ray.put(1), 2])


def test_wait_of_non_list_or_non_refs(ray_shared):
    ref = ray.put(1)
    with pytest.raises(TypeError):
        ray.wait(ref)
    with pytest.raises(TypeError):
        ray.wait([1, 2])


def test_wait_on_an_empty_list_returns_two_empty_lists(ray_shared):
    """Ray: ``ray.wait([])`` is ``([], [])`` at once, whatever num_returns and timeout."""
    assert ray.wait([]) == ([], [])
    assert ray.wait([], num_returns=3, timeout=0) == ([], [])
    assert asyncio.run(ray.wait_async([])) == ([], [])


@pytest.mark.parametrize("bad", ["x", [1], b"1"], ids=["str", "list", "bytes"])
def test_timeout_of_the_wrong_type_names_the_parameter(ray_shared, bad):
    ref = ray.put(1)
    with pytest.raises(TypeError, match="timeout"):
        ray.get(ref, timeout=bad)
    with pytest.raises(TypeError, match="timeout"):
        ray.wait([ref], timeout=bad)
    with pytest.raises(TypeError, match="timeout"):
        asyncio.run(ray.get_async(ref, timeout=bad))
    with pytest.raises(TypeError, match="timeout"):
        asyncio.run(ray.wait_async([ref], timeout=bad))
    with pytest.raises(ValueError, match="timeout"):
        ray.get(ref, timeout=-1)


def test_numpy_numbers_are_accepted_as_timeout_and_num_returns(ray_shared):
    import numpy as np

    ref = ray.put(1)
    assert ray.get(ref, timeout=np.float64(5)) == 1
    assert ray.wait([ref], num_returns=np.int64(1), timeout=np.int32(5)) == ([ref], [])


@pytest.mark.parametrize("bad", ["x", 1.5, None], ids=["str", "float", "None"])
def test_wait_num_returns_of_the_wrong_type_names_the_parameter(ray_shared, bad):
    ref = ray.put(1)
    with pytest.raises(TypeError, match="num_returns"):
        ray.wait([ref], num_returns=bad)
    with pytest.raises(ValueError, match="num_returns"):
        ray.wait([ref], num_returns=0)


def test_put_of_object_ref(ray_shared):
    with pytest.raises(TypeError):
        ray.put(ray.put(1))


def test_cancel_of_non_ref(ray_shared):
    with pytest.raises(TypeError):
        ray.cancel(123)


def test_second_init_raises(ray_shared):
    with pytest.raises(RuntimeError):
        ray.init()
    with pytest.raises(RuntimeError):
        ray.init(num_cpus=1)
    assert ray.is_initialized()
    assert ray.get(ray.put("still up"), timeout=GET_TIMEOUT) == "still up"


def test_second_init_with_ignore_reinit_error(ray_shared):
    ray.init(ignore_reinit_error=True)
    assert ray.is_initialized()
    assert ray.cluster_resources()["CPU"] == 2, "no second cluster may be started"
    assert len(ray.nodes()) == 1

    @ray.remote
    def f():
        return "same cluster"

    assert ray.get(f.remote(), timeout=GET_TIMEOUT) == "same cluster"


def test_unpicklable_return_value_fails_at_get(ray_shared):
    @ray.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(RayError, match=r"(?i)lock"):
        ray.get(returns_lock.remote(), timeout=GET_TIMEOUT)


def test_exception_that_cannot_be_pickled(ray_shared):
    """As Ray: the cause is replaced by a RayError saying why; the RayTaskError keeps
    the original's text and traceback."""

    class NeedsTwoArgs(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}-{b}")
            self.lock = threading.Lock()  # makes the instance unpicklable

    @ray.remote
    def raises():
        raise NeedsTwoArgs("first", "second")

    with pytest.raises(RayTaskError, match="first-second") as info:
        ray.get(raises.remote(), timeout=GET_TIMEOUT)
    assert type(info.value.cause) is RayError
    assert "isn't serializable" in str(info.value.cause)
    assert "NeedsTwoArgs" in str(info.value.cause)


def test_exception_that_cannot_be_rebuilt_is_unserializable_exception(ray_shared):
    """Pickled by the worker, but its class's __init__ wants two arguments, so it cannot
    be rebuilt here: Ray's UnserializableException, carrying the original text and
    traceback, raised as a RayTaskError whose cause it is (an instance of both)."""

    class NeedsTwoArgs(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}-{b}")

    @ray.remote
    def raises_it():
        raise NeedsTwoArgs("first", "second")

    ref = raises_it.remote()
    for attempt in (lambda: ray.get(ref, timeout=GET_TIMEOUT), lambda: asyncio.run(_await(ref))):
        with pytest.raises(UnserializableException) as info:
            attempt()
        err = info.value
        assert isinstance(err, RayTaskError)
        assert isinstance(err.cause, UnserializableException)
        for text in (str(err), str(err.cause)):
            assert "NeedsTwoArgs: first-second" in text
            assert "raises_it" in text  # the traceback of the task
        assert "missing 1 required positional argument" in str(err.cause)


async def _await(ref):
    return await ref


def test_exception_that_can_be_rebuilt_is_also_its_own_class(ray_shared):
    class MyError(Exception):
        def __init__(self, code, text="default"):
            super().__init__(code, text)
            self.code = code

    @ray.remote
    def raises_mine():
        raise MyError(7, "seven")

    with pytest.raises(MyError) as info:
        ray.get(raises_mine.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, RayTaskError)
    assert not isinstance(info.value, UnserializableException)
    assert info.value.code == 7 and info.value.args == (7, "seven")
    assert type(info.value.cause).__name__ == "MyError"


def test_return_value_that_cannot_be_unpickled_is_ray_system_error(ray_shared):
    """Ray: a value whose unpickling fails on the reader is RaySystemError, carrying
    the original error and where it was raised."""

    def fail_to_rebuild(text):
        raise ValueError(text)

    class Unreadable:
        def __reduce__(self):
            return (fail_to_rebuild, ("cannot rebuild this value",))

    @ray.remote
    def returns_it(n):
        return Unreadable() if n < 0 else [Unreadable(), bytes(n)]

    small, large = returns_it.remote(-1), returns_it.remote(1 << 20)  # inline, shm
    for ref in (small, large):
        for attempt in (
            lambda r=ref: ray.get(r, timeout=GET_TIMEOUT),
            lambda r=ref: asyncio.run(_await(r)),
            lambda r=ref: asyncio.run(ray.get_async([r])),
        ):
            with pytest.raises(RaySystemError, match="cannot rebuild this value") as info:
                attempt()
            assert isinstance(info.value.client_exc, ValueError)
            assert "fail_to_rebuild" in info.value.traceback_str
    with pytest.raises(RaySystemError):
        ray.get(ray.put(Unreadable()), timeout=GET_TIMEOUT)


def test_wrong_number_of_returns(ray_shared):
    @ray.remote(num_returns=3)
    def two():
        return 1, 2

    refs = two.remote()
    with pytest.raises((ValueError, RayError)):
        ray.get(refs, timeout=GET_TIMEOUT)

"""Bad input at the public API: each mistake gets Ray's exception type and a clear message.

The auto-init tests come first: they need no cluster to be running, and the module's
shared cluster starts with the first test that asks for ``ray_shared``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

import aioray as ray
from aioray.exceptions import RayError, RayTaskError

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


def test_exception_that_cannot_be_rebuilt(ray_shared):
    """An exception class with a custom __init__ still surfaces as a RayTaskError."""

    class NeedsTwoArgs(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}-{b}")
            self.lock = threading.Lock()  # makes the instance unpicklable too

    @ray.remote
    def raises():
        raise NeedsTwoArgs("first", "second")

    with pytest.raises(RayTaskError, match="first-second"):
        ray.get(raises.remote(), timeout=GET_TIMEOUT)


def test_wrong_number_of_returns(ray_shared):
    @ray.remote(num_returns=3)
    def two():
        return 1, 2

    refs = two.remote()
    with pytest.raises((ValueError, RayError)):
        ray.get(refs, timeout=GET_TIMEOUT)

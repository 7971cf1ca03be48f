"""End-to-end tests of Ray's smaller API names: the runtime context, ids, ObjectRef's
id methods, exceptions raised where Ray raises them, and ray.util's helpers."""

from __future__ import annotations

import pytest

import aioray as ray
from aioray import exceptions

GET_TIMEOUT = 60


def test_runtime_context_in_driver(ray_shared):
    ctx = ray.get_runtime_context()
    assert ctx.get_task_name() is None
    assert ctx.get_task_function_name() is None
    assert ctx.get_actor_name() is None
    assert ctx.get_actor_id() is None
    assert ctx.get_placement_group_id() is None
    assert ctx.should_capture_child_tasks_in_placement_group is False
    assert ctx.gcs_address == ray_shared.address_info["gcs_address"]
    assert ctx.get_session_name()
    assert ctx.get_node_labels() == {}
    assert ctx.namespace
    with pytest.raises(AssertionError, match="only available when the process is a worker"):
        ctx.get_assigned_resources()
    with pytest.raises(RuntimeError, match="only available in an actor"):
        ctx.current_actor  # noqa: B018


def test_runtime_context_in_task(ray_shared):
    @ray.remote(num_cpus=0.5)
    def where():
        ctx = ray.get_runtime_context()
        return (
            ctx.get_task_name(),
            ctx.get_task_function_name(),
            ctx.get_actor_name(),
            ctx.get_assigned_resources(),
            ctx.get_accelerator_ids(),
            ctx.is_canceled(),
            ctx.get_worker_id(),
        )

    name, fname, actor_name, res, acc, canceled, worker = ray.get(
        where.remote(), timeout=GET_TIMEOUT
    )
    assert name.endswith("where")
    assert fname == f"{__name__}.{name}"
    assert actor_name is None
    assert res == {"CPU": 0.5}
    assert acc == {"GPU": []}
    assert canceled is False
    assert len(worker) == 32

    @ray.remote
    def default():
        return ray.get_runtime_context().get_assigned_resources()

    assert ray.get(default.remote(), timeout=GET_TIMEOUT) == {"CPU": 1.0}


def test_runtime_context_in_actor(ray_shared):
    @ray.remote(num_cpus=0.25)
    class A:
        def info(self):
            ctx = ray.get_runtime_context()
            return (
                ctx.get_actor_name(),
                ctx.get_task_name(),
                ctx.get_assigned_resources(),
                ctx.was_current_actor_reconstructed,
                ctx.get_actor_id(),
            )

        def me(self):
            return ray.get_runtime_context().current_actor

    unnamed = A.remote()
    name, task_name, res, reconstructed, aid = ray.get(unnamed.info.remote(), timeout=GET_TIMEOUT)
    assert name == ""
    assert task_name.endswith("A.info")
    assert res == {"CPU": 0.25}
    assert reconstructed is False
    assert aid == unnamed._actor_id_hex
    assert ray.get(unnamed.me.remote(), timeout=GET_TIMEOUT) == unnamed
    named = A.options(name="parity_named").remote()
    assert ray.get(named.info.remote(), timeout=GET_TIMEOUT)[0] == "parity_named"


def test_ids(ray_shared):
    node = ray.NodeID.from_hex(ray.get_runtime_context().get_node_id())
    assert node.hex() == ray.get_runtime_context().get_node_id()
    assert ray.NodeID(node.binary()) == node and hash(ray.NodeID(node.binary())) == hash(node)
    assert ray.NodeID.nil().is_nil() and not node.is_nil()
    assert ray.JobID.from_int(7).int() == 7 and ray.JobID.size() == 4
    assert repr(ray.ActorID.nil()).startswith("ActorID(ff")
    with pytest.raises(ValueError, match="must be 20 bytes"):
        ray.TaskID(b"short")
    with pytest.raises(ValueError, match="not hex"):
        ray.NodeID.from_hex("zz")


def test_object_ref_ids(ray_shared):
    @ray.remote
    def f():
        return 1

    @ray.remote
    def inside():
        ctx = ray.get_runtime_context()
        ref = ray.put(1)
        return ctx.get_job_id(), ctx.get_task_id(), ref.job_id().hex(), f.remote().task_id()

    ref = f.remote()
    assert isinstance(ref.task_id(), ray.TaskID)
    assert ref.hex().startswith(ref.task_id().hex())
    assert ref.job_id().hex() == ray.get_runtime_context().get_job_id()
    assert ref.task_id().job_id() == ref.job_id()
    ref2 = inside.remote()
    job, task, put_job, child = ray.get(ref2, timeout=GET_TIMEOUT)
    assert task == ref2.task_id().hex()  # the task's own id is its returns' task id
    assert job == put_job == child.job_id().hex() == ref2.job_id().hex()
    same = ray.ObjectRef.from_hex(ref.hex())
    assert same == ref
    assert ray.get(ref, timeout=GET_TIMEOUT) == 1
    assert ray.ObjectRef.nil().is_nil()


OTHER_JOB = """
import sys
import aioray as ray

ray.init(address=sys.argv[1], log_to_driver=False)


@ray.remote
def f():
    return ray.put(2).hex()


print(ray.get_runtime_context().get_job_id(), ray.put(1).hex(), f.remote().hex(),
      ray.get(f.remote(), timeout=60))
"""


def test_object_ref_job_id_is_read_from_the_id(ray_shared, tmp_path):
    """A ref made by another job names that job, wherever its id is read."""
    import subprocess
    import sys

    script = tmp_path / "other_job.py"
    script.write_text(OTHER_JOB)
    address = ray_shared.address_info["gcs_address"]
    proc = subprocess.run(
        [sys.executable, str(script), address], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    other_job, *hexes = proc.stdout.split()
    assert other_job != ray.get_runtime_context().get_job_id()
    for h in hexes:  # a put, a task's return, a put inside that job's task
        ref = ray.ObjectRef.from_hex(h)
        assert ref.job_id().hex() == other_job
        assert ref.task_id().job_id().hex() == other_job


def test_get_of_an_object_its_owner_freed_is_a_reference_counting_assertion(ray_shared):
    """Ray's OBJECT_DELETED: a reference the owner never counted (rebuilt from the id and
    the owner's address) finds the object gone there."""
    from conftest import wait_for_condition

    from aioray._private.owner import worker_context

    ref = ray.put("soon gone")
    oid, owner = ref.binary(), ref.owner_address
    del ref
    cw = worker_context.core_worker
    wait_for_condition(lambda: oid not in cw.owned, message="the put was never freed")

    @ray.remote
    def read(oid, owner):
        return ray.get(ray.ObjectRef(oid, tuple(owner)), timeout=GET_TIMEOUT)

    with pytest.raises(exceptions.ReferenceCountingAssertionError, match="already been deleted"):
        ray.get(read.remote(oid, owner), timeout=GET_TIMEOUT)


def test_a_ref_pickled_out_of_band_pins_its_object(ray_shared):
    """As Ray (by default): plain cloudpickle of a ref keeps its object for good."""
    import asyncio

    import cloudpickle

    from aioray._private.owner import worker_context

    ref = ray.put("kept")
    oid, data = ref.binary(), cloudpickle.dumps(ref)
    del ref
    cw = worker_context.core_worker
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), cw.loop).result(GET_TIMEOUT)  # frees ran
    assert oid in cw.owned
    assert ray.get(cloudpickle.loads(data), timeout=GET_TIMEOUT) == "kept"


OUT_OF_BAND_REFUSED = """
import pickle
import sys

import cloudpickle

import aioray as ray

ray.init(address=sys.argv[1], log_to_driver=False)
ref = ray.put(1)
for dumps in (pickle.dumps, cloudpickle.dumps):
    try:
        dumps(ref)
    except ray.exceptions.OufOfBandObjectRefSerializationException as e:
        assert f"It is not allowed to serialize ray.ObjectRef {ref.hex()}" in str(e), e
    else:
        raise AssertionError("pickled out of band")


@ray.remote
def first(refs):
    return ray.get(refs[0])


assert ray.get(first.remote([ref]), timeout=60) == 1  # nested in an argument: in band
print("ok")
"""


def test_out_of_band_pickling_refused_when_ray_says_so(ray_shared, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "refused.py"
    script.write_text(OUT_OF_BAND_REFUSED)
    env = {**os.environ, "RAY_allow_out_of_band_object_ref_serialization": "0"}
    proc = subprocess.run(
        [sys.executable, str(script), ray_shared.address_info["gcs_address"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_object_ref_cancel_without_a_wait(ray_shared):
    ref = ray.put(3)
    assert ref.cancel() is False  # nothing waits on it: nothing to cancel
    assert ray.get(ref, timeout=GET_TIMEOUT) == 3


def test_named_actor_conflict_raises_actor_already_exists(ray_shared):
    @ray.remote
    class B:
        pass

    first = B.options(name="parity_taken").remote()
    with pytest.raises(exceptions.ActorAlreadyExistsError) as info:
        B.options(name="parity_taken").remote()
    ns = ray.get_runtime_context().namespace
    assert str(info.value) == (  # Ray's words
        f"The name parity_taken (namespace={ns}) is already taken. Please use a different "
        f"name or get the existing actor using ray.get_actor('parity_taken', namespace='{ns}')"
    )
    with pytest.raises(ValueError):  # (still a ValueError, as before the class existed)
        B.options(name="parity_taken").remote()
    del first


def test_exception_hierarchy():
    assert issubclass(exceptions.ObjectFetchTimedOutError, exceptions.ObjectLostError)
    assert issubclass(exceptions.ReferenceCountingAssertionError, AssertionError)
    assert issubclass(exceptions.AuthenticationError, ConnectionError)
    # Ray's bases, in Ray's order
    for cls in (exceptions.ActorAlreadyExistsError, exceptions.ActorHandleNotFoundError):
        assert cls.__bases__ == (ValueError, exceptions.RayError)
    assert issubclass(
        exceptions.StreamingGeneratorReplayInconsistentError, exceptions.RaySystemError
    )
    assert str(exceptions.NodeDiedError("the node died")) == "the node died"
    from aioray._private.wire import auth

    assert auth.AuthenticationError is exceptions.AuthenticationError
    e = exceptions.UnserializableException("Traceback: boom")
    assert "boom" in str(e) and e.original_stack_trace == "Traceback: boom"
    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), exceptions.RayError), name


def test_unpicklable_closure_gives_the_serializability_report(ray_shared):
    import threading

    lock = threading.Lock()

    @ray.remote
    def uses_lock():
        return lock.locked()

    with pytest.raises(TypeError, match="Could not serialize the function") as info:
        uses_lock.remote()
    assert "FailTuple(lock [obj=<unlocked _thread.lock" in str(info.value)


def test_unpicklable_argument_gives_the_serializability_report(ray_shared):
    import threading

    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

    @ray.remote
    def f(x):
        return x

    with pytest.raises(TypeError, match="Could not serialize the arguments") as info:
        f.remote(Holder())
    assert "FailTuple(lock [obj=<unlocked _thread.lock" in str(info.value)


def test_util_helpers(ray_shared):
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert "parity_listed" not in ray.util.list_named_actors()

    @ray.remote
    class C:
        pass

    c = C.options(name="parity_listed").remote()
    assert "parity_listed" in ray.util.list_named_actors()
    ns = ray.get_runtime_context().namespace
    assert {"name": "parity_listed", "namespace": ns} in ray.util.list_named_actors(
        all_namespaces=True
    )
    del c


def test_registered_serializer_reaches_tasks(ray_shared):
    import threading

    class Unpicklable:
        def __init__(self, n):
            self.n = n
            self.lock = threading.Lock()

    ray.util.register_serializer(
        Unpicklable, serializer=lambda u: u.n, deserializer=lambda n: ("rebuilt", n)
    )
    try:

        @ray.remote
        def echo(x):
            return x

        assert ray.get(echo.remote(Unpicklable(5)), timeout=GET_TIMEOUT) == ("rebuilt", 5)
    finally:
        ray.util.deregister_serializer(Unpicklable)


# ------------------------------------------------------------------ signatures at .remote()


def test_wrong_argument_count_fails_at_remote(ray_shared):
    @ray.remote
    def one(x):
        return x

    with pytest.raises(TypeError, match="too many positional arguments"):
        one.remote(1, 2)
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        one.options(num_cpus=0).remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'y'"):
        one.remote(1, y=1)
    assert ray.get([one.remote(1), one.remote(x=2)], timeout=GET_TIMEOUT) == [1, 2]

    @ray.remote
    def flexible(a, b=2, *rest, c, **kw):
        return a + b + c + len(rest) + len(kw)

    with pytest.raises(TypeError, match="missing a required argument: 'c'"):
        flexible.remote(1)
    assert ray.get(flexible.remote(1, 2, 3, 4, c=5, z=6), timeout=GET_TIMEOUT) == 11


def test_wrong_argument_count_fails_at_actor_remote(ray_shared):
    @ray.remote
    class Acc:
        def __init__(self, start):
            self.total = start

        def add(self, n, *, times=1):
            self.total += n * times
            return self.total

        @staticmethod
        def static(a):
            return a

    with pytest.raises(TypeError, match="missing a required argument: 'start'"):
        Acc.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        Acc.options(name=None).remote(1, 2)
    acc = Acc.remote(10)
    with pytest.raises(TypeError, match="too many positional arguments"):
        acc.add.remote(1, 2)
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'nope'"):
        acc.add.remote(1, nope=2)
    assert ray.get(acc.add.remote(1, times=3), timeout=GET_TIMEOUT) == 13
    assert ray.get(acc.static.remote(5), timeout=GET_TIMEOUT) == 5
    with pytest.raises(TypeError, match="too many positional arguments"):
        acc.static.remote(5, 6)
    acc2 = Acc.options(name="parity_sig").remote(0)
    looked_up = ray.get_actor("parity_sig")  # a handle rebuilt from the GCS checks too
    with pytest.raises(TypeError, match="too many positional arguments"):
        looked_up.add.remote(1, 2)
    del acc2, looked_up


def test_dir_of_actor_handle_lists_methods(ray_shared):
    @ray.remote
    class D:
        def alpha(self):
            pass

        def beta(self):
            pass

    d = D.remote()
    assert {"alpha", "beta"} <= set(dir(d))


# ------------------------------------------------------------------ remote tracebacks


def test_task_traceback_shows_user_file_and_source_only(ray_shared):
    def _divide(x):
        return 1 / x  # the source line a remote traceback shows

    @ray.remote
    def boom(x):
        return _divide(x)

    with pytest.raises(ZeroDivisionError) as info:
        ray.get(boom.remote(0), timeout=GET_TIMEOUT)
    text = str(info.value)
    assert f'File "{__file__}"' in text
    assert "return 1 / x  # the source line a remote traceback shows" in text
    assert "<dynamic-code>" not in text
    assert "worker.py" not in text and "aioray" not in text.split("Traceback", 1)[1]


def test_actor_traceback_shows_user_file_and_source_only(ray_shared):
    def _divide(x):
        return 1 / x

    @ray.remote
    class Fails:
        def call(self):
            return _divide(0)

        async def acall(self):
            return _divide(0)

    a = Fails.remote()
    for ref in (a.call.remote(), a.acall.remote()):
        with pytest.raises(ZeroDivisionError) as info:
            ray.get(ref, timeout=GET_TIMEOUT)
        text = str(info.value).split("Traceback", 1)[1]
        assert f'File "{__file__}"' in text and "return _divide(0)" in text
        assert "actor_host.py" not in text and "worker.py" not in text


def test_runtime_context_in_async_actor_calls(ray_shared):
    @ray.remote
    class Async:
        async def info(self, delay):
            import asyncio

            ctx = ray.get_runtime_context()
            before = ctx.get_task_id()
            await asyncio.sleep(delay)  # another call runs meanwhile on this loop
            return before, ctx.get_task_id(), ctx.get_task_name()

    a = Async.remote()
    (b1, a1, name), (b2, a2, _) = ray.get(
        [a.info.remote(0.2), a.info.remote(0.0)], timeout=GET_TIMEOUT
    )
    assert b1 == a1 and b2 == a2 and b1 != b2 and b1 is not None
    assert name.endswith("Async.info")

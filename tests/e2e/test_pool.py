"""``aioray.util.multiprocessing.Pool`` against the stdlib's ``multiprocessing.Pool`` on the
same inputs: results, exceptions, callbacks, lifecycle errors; and what only actors do
(initializer state, maxtasksperchild, the serializability report)."""

from __future__ import annotations

import multiprocessing
import operator
import os
import threading
import time

import pytest

from aioray.util.multiprocessing import Pool

GET_TIMEOUT = 60


@pytest.fixture(scope="module")
def std_pool():
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def pool(ray_shared):
    p = Pool(2)
    yield p
    p.terminate()


def outcome(fn, *args):
    """What a call gives: ("ok", value) or ("error", class, message)."""
    try:
        return ("ok", fn(*args))
    except Exception as e:
        return ("error", type(e), str(e))


SAME_CASES = [
    ("map", (abs, [-3, -2, -1, 0, 1])),
    ("map", (abs, [])),
    ("map", (abs, range(-50, 50), 7)),
    ("starmap", (operator.mul, [(1, 2), (3, 4), (5, 6)])),
    ("starmap", (operator.truediv, [(1, 1), (1, 0), (2, 1)])),  # an exception
    ("map", (int, ["1", "x", "3"])),  # ValueError, with int's message
    ("apply", (divmod, (17, 5))),
    ("apply", (divmod, (1, 0))),
]


@pytest.mark.parametrize(("method", "args"), SAME_CASES)
def test_same_results_and_exceptions_as_the_stdlib(pool, std_pool, method, args):
    assert outcome(getattr(pool, method), *args) == outcome(getattr(std_pool, method), *args)


def test_async_and_iterator_forms_match_the_stdlib(pool, std_pool):
    for p in (pool, std_pool):
        assert p.map_async(abs, [-1, -2]).get(GET_TIMEOUT) == [1, 2]
        assert p.starmap_async(pow, [(2, 3), (3, 2)]).get(GET_TIMEOUT) == [8, 9]
        assert list(p.imap(abs, range(-6, 0), 2)) == [6, 5, 4, 3, 2, 1]
        assert sorted(p.imap_unordered(abs, range(-6, 0))) == [1, 2, 3, 4, 5, 6]
        result = p.apply_async(divmod, (9, 4))
        assert result.get(GET_TIMEOUT) == (2, 1) and result.ready() and result.successful()
        it = p.imap(int, ["1", "x", "3"])
        assert next(it) == 1
        with pytest.raises(ValueError, match="invalid literal"):
            next(it)
        assert next(it) == 3  # the iterator goes on past a failed item, as the stdlib's


def test_callbacks_and_timeouts(pool):
    got: list[object] = []
    done = threading.Event()

    def keep(value):
        got.append(value)
        done.set()

    pool.map_async(abs, [-1, -2], callback=keep)
    assert done.wait(GET_TIMEOUT) and got == [[1, 2]]
    done.clear()
    pool.apply_async(operator.truediv, (1, 0), error_callback=keep)
    assert done.wait(GET_TIMEOUT) and isinstance(got[-1], ZeroDivisionError)
    slow = pool.apply_async(time.sleep, (2,))
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.05)
    with pytest.raises(ValueError, match="not ready"):
        slow.successful()
    assert slow.get(GET_TIMEOUT) is None


def test_initializer_runs_in_each_process(ray_shared):
    def init(value):
        os.environ["AIORAY_POOL_INIT"] = value

    def read(_):
        return os.environ.get("AIORAY_POOL_INIT")

    with Pool(2, initializer=init, initargs=("set",)) as p:
        assert p.map(read, range(8), 1) == ["set"] * 8


def test_maxtasksperchild_replaces_the_process(ray_shared):
    def pid(_):
        return os.getpid()

    with Pool(1, maxtasksperchild=1) as p:
        assert len(set(p.map(pid, range(3), 1))) == 3
    with Pool(1) as p:
        assert len(set(p.map(pid, range(3), 1))) == 1


def test_lifecycle_errors_match_the_stdlib(ray_shared):
    ctx = multiprocessing.get_context("spawn")
    for make in (lambda: Pool(1), lambda: ctx.Pool(1)):
        p = make()
        with pytest.raises(ValueError, match="Pool is still running"):
            p.join()
        p.close()
        with pytest.raises(ValueError, match="Pool not running"):
            p.map(abs, [1])
        p.join()
        p.terminate()
        with pytest.raises(ValueError, match="Pool not running"):
            p.apply(abs, (1,))
        with pytest.raises(ValueError, match="Pool not running"):
            p.__enter__()


def test_work_submitted_before_close_finishes(ray_shared):
    p = Pool(1)
    result = p.map_async(abs, [-1, -2, -3])
    p.close()
    p.join()
    assert result.get(GET_TIMEOUT) == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"processes": 0}, ValueError, "Number of processes must be at least 1"),
        ({"initializer": 3}, TypeError, "initializer must be a callable"),
        ({"maxtasksperchild": 0}, ValueError, "maxtasksperchild must be a positive int or None"),
    ],
)
def test_bad_arguments_match_the_stdlib(ray_shared, kwargs, error, message):
    with pytest.raises(error, match=message):
        Pool(**kwargs)
    with pytest.raises(error, match=message):
        multiprocessing.get_context("spawn").Pool(**kwargs)


def test_unpicklable_function_gives_the_serializability_report(pool):
    lock = threading.Lock()

    def uses_lock(x):
        return lock.locked()

    with pytest.raises(TypeError, match="Could not serialize") as info:
        pool.apply_async(uses_lock, (1,))
    assert "FailTuple(lock [obj=<unlocked _thread.lock" in str(info.value)


def test_each_call_runs_once_when_one_raises(ray_shared, tmp_path):
    def touch(i):
        with open(tmp_path / f"{i}", "a") as f:
            f.write("x")
        if i == 1:
            raise KeyError(i)
        return i

    with Pool(1) as p:
        assert [outcome(next, it) for it in [p.imap(touch, range(3), 3)] * 3] == [
            ("ok", 0),
            ("error", KeyError, "1"),
            ("ok", 2),
        ]
    assert [(tmp_path / f"{i}").read_text() for i in range(3)] == ["x", "x", "x"]


def test_unpicklable_function_in_a_map_gives_the_report(pool):
    lock = threading.Lock()

    def uses_lock(x):
        return lock.locked()

    with pytest.raises(TypeError, match="Could not serialize") as info:
        pool.map(uses_lock, range(100))  # (the function goes through the object store)
    assert "FailTuple(lock [obj=<unlocked _thread.lock" in str(info.value)

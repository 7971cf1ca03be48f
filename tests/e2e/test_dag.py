"""``aioray.dag``: bind and execute over tasks and actors, InputNode's forms,
MultiOutputNode, and values flowing between tasks as refs (not through the driver)."""

from __future__ import annotations

import pytest

import aioray as ray
from aioray.dag import ClassMethodNode, FunctionNode, InputNode, MultiOutputNode

GET_TIMEOUT = 60


@ray.remote
def add(a, b):
    return a + b


@ray.remote
def is_value(x):
    return not isinstance(x, ray.ObjectRef)  # an upstream ref arrives resolved


@ray.remote
class Counter:
    def __init__(self, start):
        self.total = start

    def inc(self, n):
        self.total += n
        return self.total


def test_function_dag_with_positional_inputs(ray_shared):
    with InputNode() as inp:
        first = add.bind(inp[0], inp[1])
        dag = add.bind(first, first)  # one node feeding two arguments runs once
    assert isinstance(dag, FunctionNode)
    ref = dag.execute(1, 2)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 6
    assert ray.get(dag.execute(10, 20), timeout=GET_TIMEOUT) == 60  # re-runnable


def test_input_node_whole_keyword_and_attribute(ray_shared):
    with InputNode() as inp:
        whole = add.bind(inp, 1)
    assert ray.get(whole.execute(41), timeout=GET_TIMEOUT) == 42
    with InputNode() as inp:
        by_key = add.bind(inp.x, inp["y"])
    assert ray.get(by_key.execute(x=1, y=2), timeout=GET_TIMEOUT) == 3
    with InputNode() as inp:
        of_one = add.bind(inp["a"], inp["b"])  # one dict argument: its items
    assert ray.get(of_one.execute({"a": 5, "b": 6}), timeout=GET_TIMEOUT) == 11


def test_actor_dag_and_multi_output(ray_shared):
    with InputNode() as inp:
        counter = Counter.bind(100)
        first = counter.inc.bind(inp)
        second = counter.inc.bind(first)  # the same actor: 100+1, then 101+101
        dag = MultiOutputNode([first, second, is_value.bind(first)])
    assert isinstance(first, ClassMethodNode)
    refs = dag.execute(1)
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs, timeout=GET_TIMEOUT) == [101, 202, True]
    assert ray.get(dag.execute(1), timeout=GET_TIMEOUT)[:2] == [101, 202]  # a new actor


def test_bind_on_a_live_handle_and_options(ray_shared):
    handle = Counter.remote(0)
    with InputNode() as inp:
        dag = handle.inc.bind(add.options(num_cpus=0).bind(inp, inp))
    assert ray.get(dag.execute(2), timeout=GET_TIMEOUT) == 4
    assert ray.get(dag.execute(3), timeout=GET_TIMEOUT) == 10  # the same actor
    node = add.bind(1, 2).options(num_cpus=0)
    assert ray.get(node.execute(), timeout=GET_TIMEOUT) == 3


def test_dag_bad_input(ray_shared):
    with pytest.raises(ValueError, match="non-empty list"):
        MultiOutputNode([])
    with InputNode() as inp:
        dag = add.bind(inp[5], 1)
    with pytest.raises(IndexError):
        dag.execute(1, 2)  # no sixth argument
    with pytest.raises(TypeError, match="too many positional arguments"):
        add.bind(1, 2, 3).execute()  # the signature is checked when the node runs


def test_collective_import_says_it_is_not_available():
    with pytest.raises(ImportError, match=r"ray\.util\.collective is not available"):
        import aioray.util.collective  # noqa: F401

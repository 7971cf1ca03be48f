"""Pure parts of Ray's API names: ids, label strategies, the serializability report and
custom serializers (no cluster)."""

from __future__ import annotations

import io
import pickle
import threading

import cloudpickle
import pytest

import aioray as ray
from aioray.util import (
    deregister_serializer,
    inspect_serializability,
    register_serializer,
)
from aioray.util.scheduling_strategies import (
    DoesNotExist,
    Exists,
    In,
    NodeLabelSchedulingStrategy,
    NotIn,
)

_LOCK = threading.Lock()


def test_ids_round_trip_and_pickle() -> None:
    tid = ray.TaskID.from_random()
    assert ray.TaskID.from_hex(tid.hex()) == tid
    assert pickle.loads(pickle.dumps(tid)) == tid
    aid = ray.ActorID.from_random()
    assert ray.NodeID(aid.binary()) != aid  # another kind of id is never equal


def test_task_and_object_ids_carry_their_job_id() -> None:
    from aioray._private.wire import ids

    gen = ids.IdGenerator(b"w" * 16)
    job = ray.JobID.from_int(7)
    tid = gen.task_id(job.binary())
    assert gen.task_id(job.binary()) != tid  # a new id each time, same job
    assert len(tid) == ray.TaskID.size() == 20  # (Ray's is 24: its unique part is longer)
    assert ray.TaskID(tid).job_id() == job
    oid = ids.ObjectID(ids.object_id(tid, 3))
    assert oid.task_id() == ray.TaskID(tid) and oid.job_id() == job
    assert ray.TaskID(gen.task_id(ray.JobID.from_int(8).binary())).job_id().int() == 8


def test_label_strategy_wire_form_and_bad_input() -> None:
    from aioray._private.core.scheduling_strategies import strategy_to_wire

    s = NodeLabelSchedulingStrategy({"zone": In("a", "b"), "x": Exists()}, soft={"y": NotIn("1")})
    assert strategy_to_wire(s) == (  # (tuples here, arrays on the wire)
        "LABEL",
        [("zone", "in", ["a", "b"]), ("x", "exists", [])],
        [("y", "not_in", ["1"])],
    )
    assert strategy_to_wire(NodeLabelSchedulingStrategy({"g": DoesNotExist()}))[1] == [
        ("g", "does_not_exist", [])
    ]
    with pytest.raises(ValueError, match="cannot both be empty"):
        NodeLabelSchedulingStrategy({})
    with pytest.raises(ValueError, match="In, NotIn, Exists or DoesNotExist"):
        NodeLabelSchedulingStrategy({"zone": "a"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one value"):
        In()
    with pytest.raises(ValueError, match="must be strings"):
        In(1)  # type: ignore[arg-type]


def test_inspect_serializability_names_the_offending_global() -> None:
    def uses_lock() -> bool:
        return _LOCK.locked()

    out = io.StringIO()
    ok, failures = inspect_serializability(uses_lock, name="uses_lock", print_file=out)
    assert ok is False
    assert [f.name for f in failures] == ["_LOCK"]
    assert "FailTuple(_LOCK [obj=<unlocked _thread.lock" in out.getvalue()
    assert inspect_serializability(lambda: 1, print_file=io.StringIO()) == (True, set())


def test_inspect_serializability_names_the_offending_attribute() -> None:
    class Holder:
        def __init__(self) -> None:
            self.fine = 1
            self.lock = threading.Lock()

    ok, failures = inspect_serializability(Holder(), print_file=io.StringIO())
    assert not ok and [f.name for f in failures] == ["lock"]


class _Custom:
    def __init__(self, x: int) -> None:
        self.x = x
        self.lock = threading.Lock()  # plain pickling fails


def test_register_and_deregister_serializer() -> None:
    register_serializer(_Custom, serializer=lambda c: c.x, deserializer=lambda x: _Custom(x * 2))
    try:
        assert pickle.loads(cloudpickle.dumps(_Custom(21))).x == 42
    finally:
        deregister_serializer(_Custom)
    with pytest.raises(TypeError):
        cloudpickle.dumps(_Custom(1))
    with pytest.raises(ValueError, match="No serializer is registered"):
        deregister_serializer(_Custom)

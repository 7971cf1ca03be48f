"""The checks handlers run on a body from the wire (aioray/_private/wire/checks.py): a body
of the wrong shape, type or range is refused with an error naming the method and field."""

from __future__ import annotations

from typing import Any

import pytest

from aioray._private.wire import checks

KV_PUT: list[checks.Field] = [
    ("namespace", str),
    ("key", bytes),
    ("value", bytes),
    ("overwrite", bool),
]


def test_a_well_formed_array_is_returned_as_it_is() -> None:
    body = ["ns", b"k", b"v", True]
    assert checks.array("kv_put", body, KV_PUT) is body
    assert checks.array("kv_put", ("ns", b"k", b"v", False), KV_PUT) == ("ns", b"k", b"v", False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["ns", b"k", 1.5, True], "kv_put: value must be bytes, got float"),
        (["ns", "k", b"v", True], "kv_put: key must be bytes, got str"),
        ([None, b"k", b"v", True], "kv_put: namespace must be str, got NoneType"),
        (["ns", b"k", b"v", 1], "kv_put: overwrite must be bool, got int"),
        (["ns", b"k", [b"v"], True], "kv_put: value must be bytes, got an array of 1"),
        (["ns", b"k", b"v"], "kv_put takes [namespace, key, value, overwrite], got an array of 3"),
        ({"ns": "x"}, "kv_put takes [namespace, key, value, overwrite], got dict"),
        (b"ns", "kv_put takes [namespace, key, value, overwrite], got bytes"),
    ],
)
def test_an_array_of_the_wrong_shape_or_type_is_refused_naming_the_field(
    body: Any, message: str
) -> None:
    with pytest.raises(TypeError) as e:
        checks.array("kv_put", body, KV_PUT)
    assert str(e.value) == message


def test_a_bool_is_not_an_int_and_a_field_may_allow_several_types() -> None:
    fields: list[checks.Field] = [("lease id", int), ("reason", (str, type(None)))]
    assert checks.array("m", [3, None], fields) == [3, None]
    assert checks.array("m", [3, "why"], fields) == [3, "why"]
    for wrong in ([True, None], [3.0, None]):  # (3.0 and True hash as 3 and 1 in a table)
        with pytest.raises(TypeError, match="m: lease id must be int"):
            checks.array("m", wrong, fields)
    with pytest.raises(TypeError, match="m: reason must be str or NoneType, got bytes"):
        checks.array("m", [3, b"why"], fields)


def test_resources_are_floats_by_name() -> None:
    assert checks.resources("m", "res", {"CPU": 1, "GPU": 0.5, "x": 0}) == {
        "CPU": 1.0,
        "GPU": 0.5,
        "x": 0.0,
    }
    assert type(checks.resources("m", "res", {"CPU": 2})["CPU"]) is float


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"CPU": float("nan")}, ValueError, "m: res['CPU'] must be a finite amount >= 0, got nan"),
        ({"CPU": float("inf")}, ValueError, "must be a finite amount >= 0, got inf"),
        ({"CPU": -1}, ValueError, "m: res['CPU'] must be a finite amount >= 0, got -1"),
        ({"CPU": "1"}, ValueError, "must be a finite amount >= 0, got '1'"),
        ({"CPU": True}, ValueError, "must be a finite amount >= 0, got True"),
        ({"CPU": None}, ValueError, "must be a finite amount >= 0, got None"),
        ({b"CPU": 1}, TypeError, "m: res has a resource name that is not a string: b'CPU'"),
        ([["CPU", 1]], TypeError, "m: res must be a map of resource amounts, got an array of 1"),
        (None, TypeError, "m: res must be a map of resource amounts, got NoneType"),
    ],
)
def test_a_resource_map_of_the_wrong_type_or_amount_is_refused(
    value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as e:
        checks.resources("m", "res", value)
    assert message in str(e.value)

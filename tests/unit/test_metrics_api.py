"""aioray.util.metrics: Ray 2.60's validation case by case; aggregation in a process and
in the node's exporter (no cluster)."""

from __future__ import annotations

import asyncio
import pickle
import warnings
from typing import Any

import pytest
from aioray.daemons.raylet import user_metrics
from aioray.daemons.raylet.user_metrics import UserMetrics
from prometheus_text import parse

from aioray._private.core.metrics_registry import REGISTRY, MetricsReporter, Registry, TaskCounts
from aioray._private.wire.prometheus import Exposition
from aioray.util.metrics import Counter, Gauge, Histogram


@pytest.fixture(autouse=True)
def _fresh_registry() -> None:
    REGISTRY.take_report()  # points of earlier tests are not this test's


def test_empty_name_is_a_value_error() -> None:
    for cls in (Counter, Gauge):
        with pytest.raises(ValueError, match="Empty name is not allowed"):
            cls("")
    with pytest.raises(ValueError, match="Empty name is not allowed"):
        Histogram("", boundaries=[1.0])


def test_invalid_name_warns_and_is_not_exported() -> None:
    with pytest.warns(UserWarning, match="Invalid metric name: 1bad-name. Metric will be"):
        c = Counter("1bad-name", tag_keys=("a",))
    c.inc(1.0)  # discarded: not even the missing tag is checked, as in Ray
    assert "1bad-name" not in REGISTRY.definitions
    assert REGISTRY.take_report() == {}


def test_valid_names_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Counter("ok_name:sub", "d")
        Gauge("_private")


def test_tag_keys_must_be_a_tuple_of_str() -> None:
    with pytest.raises(TypeError, match="tag_keys should be a tuple type, got: <class 'list'>"):
        Counter("tk1", tag_keys=["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Tag keys must be str, got <class 'int'>"):
        Gauge("tk2", tag_keys=(1,))  # type: ignore[arg-type]


def test_missing_tag_value_is_a_value_error() -> None:
    c = Counter("missing_tag", tag_keys=("a", "b"))
    with pytest.raises(ValueError, match=r"Missing value for tag key\(s\): a,b\."):
        c.inc()
    with pytest.raises(ValueError, match=r"Missing value for tag key\(s\): b\."):
        c.inc(1, tags={"a": "x"})
    c.set_default_tags({"b": "y"})
    c.inc(2, tags={"a": "x"})  # the default fills b
    assert REGISTRY.take_report()["c"] == [["missing_tag", ["x", "y"], 2.0]]


def test_tag_values_must_be_str() -> None:
    g = Gauge("tag_types", tag_keys=("a",))
    with pytest.raises(TypeError, match="Tag values must be str, got <class 'int'>"):
        g.set(1, tags={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="Tag values must be str, got <class 'int'>"):
        g.set_default_tags({"a": 1})  # type: ignore[dict-item]


def test_set_default_tags_rejects_unknown_keys_and_returns_self() -> None:
    g = Gauge("defaults", tag_keys=("a",))
    with pytest.raises(ValueError, match=r"Unrecognized tag key b\."):
        g.set_default_tags({"b": "x"})
    assert g.set_default_tags({"a": "x"}) is g
    assert g.info == {
        "name": "defaults",
        "description": "",
        "tag_keys": ("a",),
        "default_tags": {"a": "x"},
    }


def test_values_must_be_numbers() -> None:
    with pytest.raises(TypeError, match="value must be int or float, got <class 'str'>"):
        Counter("num_c").inc("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value must be int or float"):
        Gauge("num_g").set("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value must be int or float"):
        Histogram("num_h", boundaries=[1.0]).observe(None)  # type: ignore[arg-type]
    Gauge("num_g").set(None)  # a no-op, as in Ray
    assert "g" not in REGISTRY.take_report()


def test_counter_inc_must_be_positive() -> None:
    c = Counter("positive")
    with pytest.raises(ValueError, match="value must be >0, got -1"):
        c.inc(-1)
    with pytest.raises(ValueError, match="value must be >0, got 0"):
        c.inc(0)


def test_histogram_boundaries() -> None:
    with pytest.raises(ValueError, match="boundaries argument should be provided"):
        Histogram("hb1")
    with pytest.raises(ValueError, match="boundaries argument should be provided"):
        Histogram("hb2", boundaries=[])
    with pytest.raises(ValueError, match=r"Invalid `boundaries` argument at index 1, \[1, 0\]"):
        Histogram("hb3", boundaries=[1, 0])
    h = Histogram("hb4", "d", boundaries=[1, 2])
    assert h.info["boundaries"] == [1, 2]


def test_pickles_as_ray_does() -> None:
    c = pickle.loads(pickle.dumps(Counter("pc", "desc", ("a",))))
    assert c.info["name"] == "pc" and c.info["tag_keys"] == ("a",)
    h = pickle.loads(pickle.dumps(Histogram("ph", "d", [1.0], ("a",))))
    assert h.boundaries == [1.0]


def test_local_aggregation_counts_deltas_and_le_buckets() -> None:
    reg = Registry()
    reg.define("h", "histogram", "", ("k",), [1.0, 2.0])
    for v in (0.5, 1.0, 1.5, 5.0):  # 1.0 falls in the le="1" bucket
        reg.observe("h", ("x",), v)
    reg.define("c", "counter", "", ())
    reg.inc("c", (), 1.0)
    reg.inc("c", (), 2.0)
    report = reg.take_report()
    assert report["d"][0] == ["h", "histogram", "", ["k"], [1.0, 2.0]]
    assert report["h"] == [["h", ["x"], [2, 1, 1], 8.0, 4]]
    assert report["c"] == [["c", [], 3.0]]
    assert reg.take_report() == {}  # deltas: reported once


def test_task_counts_report_running_finished_failed_when_changed() -> None:
    counts = TaskCounts()
    counts.started("f", b"\x01")
    report: dict[str, object] = {}
    counts.collect(report)
    assert report["t"] == [["RUNNING", "f", "01", 1]]
    counts.ended("f", b"\x01", failed=False)
    counts.started("g", b"\x01")
    counts.ended("g", b"\x01", failed=True)
    report = {}
    counts.collect(report)
    assert sorted(report["t"]) == [  # type: ignore[call-overload]
        ["FAILED", "g", "01", 1],
        ["FINISHED", "f", "01", 1],
        ["RUNNING", "f", "01", 0],
        ["RUNNING", "g", "01", 0],
    ]
    report = {}
    counts.collect(report)
    assert report == {}  # nothing changed: nothing sent


def test_a_task_blocked_in_get_or_wait_is_counted_in_rays_state_then_running_again() -> None:
    counts = TaskCounts()
    counts.started("f", b"\x01")
    counts.blocked("RUNNING_IN_RAY_GET")
    report: dict[str, Any] = {}
    counts.collect(report)
    assert sorted(report["t"]) == [["RUNNING", "f", "01", 0], ["RUNNING_IN_RAY_GET", "f", "01", 1]]
    counts.blocked(None)
    report = {}
    counts.collect(report)  # resumed: the blocked row is reported again, at 0
    assert sorted(report["t"]) == [["RUNNING", "f", "01", 1], ["RUNNING_IN_RAY_GET", "f", "01", 0]]
    counts.blocked("RUNNING_IN_RAY_WAIT")
    counts.ended("f", b"\x01", failed=False)  # (a task that ends blocked: not blocked any more)
    report = {}
    counts.collect(report)
    assert sorted(report["t"]) == [
        ["FINISHED", "f", "01", 1],
        ["RUNNING", "f", "01", 0],
        ["RUNNING_IN_RAY_GET", "f", "01", 0],
    ]


def _render(user: UserMetrics) -> dict[Any, float]:
    out = Exposition()
    user.render(out, user.snapshot())
    return parse(out.text())[1]


def test_node_aggregates_reports_of_several_processes(caplog: pytest.LogCaptureFixture) -> None:
    user = UserMetrics([("SessionName", "s1"), ("NodeAddress", "10.0.0.1")])
    define = [
        ["req", "counter", "requests", ["route"], []],
        ["lat", "histogram", "latency", ["route"], [1.0, 2.0]],
        ["depth", "gauge", "depth", ["NodeAddress"], []],  # a user tag named as ours wins
    ]
    for worker in range(2):  # two processes report the same series
        user.apply(
            {
                "d": define,
                "c": [["req", ["/a"], 2.0]],
                "h": [["lat", ["/a"], [1, 0, 1], 3.5, 2]],
                "g": [["depth", ["mine"], float(worker)]],
            }
        )
    user.apply({"d": [["req", "gauge", "other", [], []]], "g": [["req", [], 1.0]]})
    assert "redefined" in caplog.text  # the first definition wins; the other's points drop
    s = _render(user)
    extra = (("SessionName", "s1"), ("NodeAddress", "10.0.0.1"))
    assert s[("ray_req_total", (("route", "/a"), *extra))] == 4.0
    assert s[("ray_req", (("route", "/a"), *extra))] == 4.0
    assert s[("ray_lat_bucket", (("route", "/a"), *extra, ("le", "1.0")))] == 2.0
    assert s[("ray_lat_bucket", (("route", "/a"), *extra, ("le", "+Inf")))] == 4.0
    assert s[("ray_lat_sum", (("route", "/a"), *extra))] == 7.0
    assert s[("ray_depth", (("NodeAddress", "mine"), ("SessionName", "s1")))] == 1.0  # last set
    user.apply({"c": [["req", ["/a"], 1.0]]})  # a cached series renders its new value
    assert _render(user)[("ray_req_total", (("route", "/a"), *extra))] == 5.0


def test_counter_gauge_twin_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(user_metrics, "EXPORT_COUNTER_AS_GAUGE", False)
    user = UserMetrics([])
    user.apply({"d": [["c", "counter", "", [], []]], "c": [["c", [], 1.0]]})
    assert list(_render(user)) == [("ray_c_total", ())]


async def test_reporter_sends_points_recorded_before_it_and_again_after_a_restart() -> None:
    c = Counter("before_init")
    c.inc(3)  # e.g. at import time, before aioray.init()
    sent: list[dict[str, Any]] = []
    reporter = MetricsReporter(asyncio.get_running_loop(), sent.append)
    reporter.close()  # at shutdown: the last report
    assert ["before_init", [], 3.0] in sent[0]["c"]
    assert any(d[0] == "before_init" for d in sent[0]["d"])
    c.inc(1)
    sent.clear()
    reporter = MetricsReporter(asyncio.get_running_loop(), sent.append)  # init again
    reporter.close()
    assert ["before_init", [], 1.0] in sent[0]["c"]
    assert any(d[0] == "before_init" for d in sent[0]["d"])  # the new raylet hears it


def test_a_name_defined_twice_differently_warns() -> None:
    Counter("twice", tag_keys=("a",))
    Counter("twice", tag_keys=("a",))  # the same again: fine (a task defining it per call)
    with pytest.warns(UserWarning, match="'twice' is already defined as a counter"):
        Gauge("twice")

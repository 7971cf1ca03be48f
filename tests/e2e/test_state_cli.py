"""``aioray list|get|summary|timeline|logs`` (the state CLI) and ``aioray.timeline()``
against a real cluster: Ray's flags and formats, bad input, and the Chrome trace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray import cli
from aioray.state_cli import table, to_yaml
from aioray.util import state

FAST = {"_system_config": {"task_events_report_interval_ms": 50}}


@ray.remote
def work(i: int) -> int:
    print(f"working on {i}")
    return i


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def finished(n: int) -> list[state.TaskState]:
    rows = state.list_tasks(filters=[("name", "=", "work")], limit=1000)
    done = [t for t in rows if t.state == "FINISHED" and t.worker_pid]
    return done if len(done) == n else []


@pytest.mark.parametrize("ray_start", [FAST], indirect=True)
def test_list_get_summary_and_timeline(ray_start: Any, capsys: Any, tmp_path: Any) -> None:
    ray.get([work.remote(i) for i in range(3)])
    rows = wait_for_condition(lambda: finished(3), 20)
    capsys.readouterr()  # (the tasks' prints)
    code, out, _ = run(capsys, "list", "tasks", "-f", "name=work", "-f", "state!=FAILED")
    assert code == 0 and out.splitlines()[0].split()[:4] == [
        "TASK_ID",
        "ATTEMPT_NUMBER",
        "NAME",
        "STATE",
    ]
    assert sum(line.split()[2] == "work" for line in out.splitlines()[1:]) == 3
    code, out, _ = run(capsys, "list", "tasks", "--format", "json", "--limit", "2", "--detail")
    listed = json.loads(out)
    assert code == 0 and len(listed) == 2 and "events" in listed[0]
    code, out, _ = run(capsys, "get", "tasks", rows[0].task_id)
    assert code == 0 and f"task_id: {rows[0].task_id}" in out and "- state: RUNNING" in out
    code, out, _ = run(capsys, "summary", "tasks")
    assert code == 0 and "total_tasks: 3" in out and "FINISHED: 3" in out
    code, out, _ = run(capsys, "list", "placement-groups")
    assert code == 0 and out.strip() == "(no rows)"
    code, out, _ = run(capsys, "list", "nodes", "--format", "yaml")
    assert code == 0 and "is_head_node: true" in out and "state: ALIVE" in out
    # aioray.timeline(): Chrome trace events, one row per node and per worker
    path = tmp_path / "trace.json"
    ray.timeline(str(path))
    events = json.loads(path.read_text())
    kinds = {e["ph"] for e in events}
    assert kinds == {"M", "X"}
    runs = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in runs) == ["task::work"] * 3
    assert all(e["dur"] >= 0 and e["tid"] in {r.worker_pid for r in rows} for e in runs)
    names = {e["name"] for e in events if e["ph"] == "M"}
    assert names == {"process_name", "thread_name"}
    code, out, _ = run(capsys, "timeline", "-o", str(tmp_path / "cli.json"))
    assert code == 0 and json.loads((tmp_path / "cli.json").read_text()) == events
    # logs of the worker that ran a task, by task id and by pid
    code, out, _ = run(capsys, "logs", "--task-id", rows[0].task_id)
    assert code == 0 and "working on" in out
    code, out, _ = run(capsys, "logs", "--pid", str(rows[0].worker_pid), "-n", "1")
    assert code == 0 and out.count("\n") == 1


@pytest.mark.parametrize("ray_start", [FAST], indirect=True)
def test_bad_input_names_the_valid_choices(ray_start: Any, capsys: Any) -> None:
    code, _, err = run(capsys, "list", "taks")
    assert code == 1 and "Valid choices: tasks, actors, placement-groups" in err
    code, _, err = run(capsys, "list", "actors", "-f", "colour=red")
    assert code == 1 and "Supported filter columns: actor_id, class_name" in err
    code, _, err = run(capsys, "list", "actors", "-f", "state")
    assert code == 1 and "expected key=value" in err
    code, _, err = run(capsys, "list", "tasks", "--limit", "20000")
    assert code == 1 and "between 1 and 10000" in err
    code, _, err = run(capsys, "summary", "nodes")
    assert code == 1 and "Valid choices: tasks, actors, objects" in err
    code, _, err = run(capsys, "get", "actors", "ab" * 16)
    assert code == 1 and "no actor" in err
    code, _, err = run(capsys, "list", "nodes", "--address", "127.0.0.1:9", "--timeout", "2")
    assert code == 1 and "127.0.0.1:9" in err
    code, _, err = run(capsys, "logs", "--pid", str(os.getpid() + 10**6))
    assert code == 1 and "no live worker" in err


def test_table_fits_and_yaml_quotes() -> None:
    rows = [{"a": "x" * 300, "b": "short"}]
    assert all(len(line) <= 160 for line in table(rows, ["a", "b"]).splitlines())
    assert to_yaml({"k": "true", "n": None, "l": [1, {"x": "a: b"}]}) == (
        'k: "true"\nn: null\nl:\n  - 1\n  - x: "a: b"'
    )


@ray.remote
def hold(seconds: float) -> None:
    import time

    time.sleep(seconds)


@pytest.mark.parametrize("ray_start", [FAST], indirect=True)
def test_status_shows_pending_and_infeasible_demand(ray_start: Any, capsys: Any) -> None:
    address = ray_start.address_info["gcs_address"]
    capsys.readouterr()
    code, out, _ = run(capsys, "status", "--address", address)
    assert code == 0 and "Demands:\n (no resource demands)" in out
    busy = [hold.remote(60) for _ in range(3)]  # 2 CPUs: the third waits
    never = hold.options(num_gpus=1).remote(0)  # no GPU anywhere
    wanted = [
        r" \{'CPU': 1.0\}: [1-9]\d*\+ pending tasks/actors\n",  # (leases asked: at least 1)
        r" \{'CPU': 1.0, 'GPU': 1.0\}: 1\+ pending tasks/actors \(infeasible",
    ]

    def shows_demand() -> bool:
        out = run(capsys, "status", "--address", address)[1]
        return all(re.search(pattern, out) for pattern in wanted)

    wait_for_condition(shows_demand, 20)
    ray.cancel(never)
    for ref in busy:
        ray.cancel(ref, force=True)


def _python(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``python *argv`` in a process of its own (no driver here), with ``env`` over this
    one's environment less the address variables."""
    base = {k: v for k, v in os.environ.items() if k not in ("AIORAY_ADDRESS", "RAY_ADDRESS")}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, env={**base, **env}
    )


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return _python(env, "-m", "aioray.cli", *argv)


def test_no_address_means_the_environment_s_cluster(ray_start: Any) -> None:
    # A cluster started by init() is no 'aioray start' cluster: "auto" alone does not
    # find it, so each command below finds it through the variable only (as Ray's).
    gcs = ray_start.address_info["gcs_address"]
    node_id = ray.get_runtime_context().get_node_id()
    listed = _cli({"RAY_ADDRESS": gcs}, "list", "nodes", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [n["node_id"] for n in json.loads(listed.stdout)] == [node_id]
    summary = _cli({"AIORAY_ADDRESS": gcs}, "summary", "actors")
    assert summary.returncode == 0 and "total_actors: 0" in summary.stdout, summary.stderr
    status = _cli({"RAY_ADDRESS": gcs}, "status")
    assert status.returncode == 0 and f"Cluster at {gcs}: 1 alive node" in status.stdout
    # AIORAY_ADDRESS wins over RAY_ADDRESS; --address over both.
    both = {"AIORAY_ADDRESS": "127.0.0.1:9", "RAY_ADDRESS": gcs}
    refused = _cli(both, "list", "nodes", "--timeout", "5")
    assert refused.returncode == 1 and "127.0.0.1:9" in refused.stderr
    assert _cli(both, "list", "nodes", "--address", gcs).returncode == 0
    # The State API from Python, RAY_ADDRESS naming the dashboard (Ray users set it so).
    script = "from aioray.util import state; print([n.node_id for n in state.list_nodes()])"
    api = _python({"RAY_ADDRESS": f"http://{ray_start.dashboard_url}"}, "-c", script)
    assert api.returncode == 0 and api.stdout.strip() == str([node_id]), api.stderr

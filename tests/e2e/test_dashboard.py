"""The dashboard on a local cluster: started on its first request, the token, the Jobs API and
routes, the State API routes, log confinement, the Origin check, the port fallback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import psutil
import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.node import node
from aioray._private.wire import auth
from aioray.job_submission import JobStatus, JobSubmissionClient

RAY_SHARED_INIT_KWARGS = {"num_cpus": 2}


def call(
    url: str,
    path: str,
    method: str = "GET",
    body: Any = None,
    token: str | None = "",
    **headers: str,
) -> tuple[int, str]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    if token == "":
        token = auth.cluster_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_port_taken_falls_forward() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock = node._listen_from("127.0.0.1", port)
        try:
            assert sock.getsockname()[1] > port
        finally:
            sock.close()


def test_init_returns_the_url(ray_start: Any) -> None:
    assert ray_start.dashboard_url.startswith("127.0.0.1:")
    assert ray_start.dashboard_url in ray_start._repr_html_()


def _dashboard_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.cmdline()[1:3] == ["-m", "aioray.dashboard"]
    ]


def test_the_dashboard_starts_on_its_first_request(ray_start: Any) -> None:
    """init() prints the URL at once but starts no dashboard process: the GCS holds the
    port and starts it when a first connection waits (an unvisited cluster never pays
    its memory, and init() never waits for its imports); it then serves that request."""
    assert _dashboard_processes() == []
    status, text = call("http://" + ray_start.dashboard_url, "/api/version")
    assert status == 200 and json.loads(text)["aioray_version"]
    (dashboard,) = _dashboard_processes()
    assert "aioray.daemons.gcs" in " ".join(dashboard.parent().cmdline())


@pytest.fixture(scope="module")
def url(ray_shared: Any) -> str:
    assert ray_shared.dashboard_url
    return "http://" + ray_shared.dashboard_url


def test_health_is_public_and_the_rest_needs_the_token(url: str) -> None:
    assert call(url, "/api/healthz", token=None) == (200, "success")
    status, text = call(url, "/api/v0/nodes", token=None)
    assert status == 401 and "no cluster token" in text
    status, text = call(url, "/api/jobs/", token="wrong")
    assert status == 401 and "a wrong cluster token" in text
    assert call(url, "/api/version")[0] == 200


def test_nodes_route_in_rays_envelope_with_filters(url: str) -> None:
    status, text = call(url, "/api/v0/nodes?limit=10")
    body = json.loads(text)
    assert status == 200 and body["result"] is True
    data = body["data"]["result"]
    assert data["total"] == 1 and data["result"][0]["state"] == "ALIVE"
    q = "/api/v0/nodes?filter_keys=state&filter_predicates=%3D&filter_values=dead"
    data = json.loads(call(url, q)[1])["data"]["result"]
    assert (data["total"], data["num_filtered"], data["result"]) == (1, 0, [])
    status, text = call(url, "/api/v0/nodes?filter_keys=nope&filter_predicates=%3D&filter_values=x")
    assert status == 400 and "filter column 'nope' is not supported for nodes" in text
    status, text = call(url, "/api/v0/nodes?limit=0")
    assert status == 400 and "limit" in text


def test_cluster_views(url: str) -> None:
    [target] = json.loads(call(url, "/api/prometheus/sd")[1])
    assert target["targets"][0].endswith(str(ray.nodes()[0]["MetricsExportPort"]))
    summary = json.loads(call(url, "/nodes?view=summary")[1])["data"]["summary"]
    assert summary[0]["raylet"]["state"] == "ALIVE"
    usage = json.loads(call(url, "/api/cluster_status")[1])["data"]["clusterStatus"]
    assert usage["loadMetricsReport"]["usage"]["CPU"][1] == 2
    version = json.loads(call(url, "/api/version")[1])
    assert version["version"] == "4" and version["ray_version"] >= "1.9"  # Ray's client check
    summary = json.loads(call(url, "/api/v0/actors/summarize")[1])["data"]["result"]
    assert {"total", "num_after_truncation", "num_filtered"} <= set(summary)
    assert "cluster" in summary["result"]["node_id_to_summary"]
    assert call(url, "/api/gcs_healthz") == (200, "success")


def v0(url: str, path: str) -> Any:
    status, text = call(url, "/api/v0/" + path)
    assert status == 200, text
    body = json.loads(text)
    assert body["result"] is True
    return body["data"]["result"]


@ray.remote
def dash_ok() -> int:
    return 1


@ray.remote
def dash_boom() -> None:
    raise ValueError("dashboard-boom")


def test_tasks_listed_filtered_at_the_source_summarized_and_traced(url: str) -> None:
    ray.get([dash_ok.remote() for _ in range(3)])
    with pytest.raises(ValueError):
        ray.get(dash_boom.remote())
    q = "tasks?detail=true&filter_keys=state&filter_predicates=%3D&filter_values=FAILED"

    # The owner's report brings the name, the executors' the states and the error
    # message: any may reach the GCS first (each process flushes its events on its own
    # interval), so wait until all four tasks are known as they ended.
    def all_reported() -> bool:
        nodes = v0(url, "tasks/summarize")["result"]["node_id_to_summary"]
        ok = nodes.get("cluster", {}).get("summary", {}).get("dash_ok", {})
        ok = ok.get("state_counts", {}).get("FINISHED")
        failed = v0(url, q)["result"]
        return ok == 3 and any(t["error_message"] and t["func_or_class_name"] for t in failed)

    wait_for_condition(all_reported, timeout=30)
    failed = v0(url, q)
    assert {t["func_or_class_name"] for t in failed["result"]} == {"dash_boom"}
    assert "dashboard-boom" in failed["result"][0]["error_message"]
    assert failed["total"] >= 4 and failed["num_after_truncation"] >= failed["num_filtered"]
    named = v0(url, "tasks?limit=2&filter_keys=name&filter_predicates=%3D&filter_values=dash_ok")
    assert named["num_filtered"] == 3 and len(named["result"]) == 2  # filtered, then limited
    summary = v0(url, "tasks/summarize")["result"]["node_id_to_summary"]["cluster"]
    assert summary["summary"]["dash_ok"]["state_counts"]["FINISHED"] == 3
    assert summary["summary"]["dash_boom"]["state_counts"]["FAILED"] == 1
    status, text = call(url, "/api/v0/tasks/timeline?download=1")
    events = json.loads(text)
    assert status == 200 and any(e["name"] == "task::dash_ok" and e["ph"] == "X" for e in events)
    status, text = call(url, "/api/v0/tasks?filter_keys=state&filter_predicates=~&filter_values=x")
    assert status == 400 and "Unsupported filter predicate '~'" in text
    status, text = call(url, "/api/v0/tasks?limit=20000")
    assert status == 400 and "limit must be an integer between 1 and 10000" in text


def test_workers_objects_and_their_summary(url: str) -> None:
    ref = ray.put(b"x" * 1000)
    workers = v0(url, "workers?filter_keys=worker_type&filter_predicates=%3D&filter_values=DRIVER")
    assert workers["num_filtered"] >= 1
    assert all(w["worker_type"] == "DRIVER" for w in workers["result"])
    objects = v0(
        url, f"objects?filter_keys=object_id&filter_predicates=%3D&filter_values={ref.hex()}"
    )
    assert [o["object_id"] for o in objects["result"]] == [ref.hex()]
    summary = v0(url, "objects/summarize")["result"]["node_id_to_summary"]["cluster"]
    assert summary["total_objects"] >= 1 and summary["summary_by"] == "callsite"
    del ref


def test_job_runs_joins_the_cluster_and_succeeds(url: str) -> None:
    client = JobSubmissionClient(url)  # the token found from the local session
    joins = "python -c 'import aioray; aioray.init(); print(len(aioray.nodes()))'"
    entry = f"echo hello-$GREETING; {joins}"
    sid = client.submit_job(entrypoint=entry, runtime_env={"env_vars": {"GREETING": "x"}})
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=60)
    info = client.get_job_info(sid)
    assert info.status == JobStatus.SUCCEEDED, client.get_job_logs(sid)
    assert info.driver_exit_code == 0 and info.end_time >= info.start_time
    assert set(info.driver_info or {}) == {"id", "node_ip_address", "pid"}  # Ray's DriverInfo
    assert info.job_id == info.driver_info["id"]  # its driver's job id, as Ray's JobDetails
    assert client.get_job_logs(sid) == "hello-x\n1\n"
    assert sid in [j.submission_id for j in client.list_jobs()]
    assert client.delete_job(sid)
    with pytest.raises(RuntimeError, match=f"404: Job {sid} does not exist"):
        client.get_job_info(sid)


def test_entrypoint_resources_go_to_the_supervisor(url: str) -> None:
    client = JobSubmissionClient(url)
    sid = client.submit_job(entrypoint="echo counted", entrypoint_num_cpus=1)
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=60)
    assert client.get_job_info(sid).entrypoint_num_cpus == 1
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED
    # A resource no node has: the job waits PENDING, as in Ray, until stopped.
    waiting = client.submit_job(entrypoint="true", entrypoint_resources={"unicorn": 1})
    assert client.get_job_status(waiting) == JobStatus.PENDING
    assert client.stop_job(waiting)
    assert client.get_job_status(waiting) == JobStatus.STOPPED


def test_missing_entrypoint_fails_with_the_shell_message(url: str) -> None:
    client = JobSubmissionClient(url)
    sid = client.submit_job(entrypoint="no-such-command-xyz")
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=60)
    assert client.get_job_status(sid) == JobStatus.FAILED
    assert "no-such-command-xyz: not found" in client.get_job_logs(sid)


def test_stop_job_terms_its_process_group(url: str) -> None:
    client = JobSubmissionClient(url)
    sid = client.submit_job(entrypoint="echo started; sleep 600 & sleep 600")
    wait_for_condition(lambda: "started" in client.get_job_logs(sid), timeout=60)
    assert client.stop_job(sid)
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=30)
    info = client.get_job_info(sid)
    assert info.status == JobStatus.STOPPED, (info.message, info.error_type)
    assert not client.stop_job(sid)


def test_bad_submissions_name_the_field(url: str) -> None:
    cases = [
        (b"{not json", "not valid JSON"),
        ({"entrypoint": ""}, "'entrypoint'"),
        ({"entrypoint": "x", "runtime_env": {"working_dir": "."}}, "working_dir"),
        ({"entrypoint": "x", "entrypoint_num_cpus": "two"}, "'entrypoint_num_cpus'"),
        ({"entrypoint": "x", "metadata": {"a": 1}}, "'metadata'"),
    ]
    for body, field in cases:
        status, text = call(url, "/api/jobs/", "POST", body)
        assert status == 400 and field in text, (body, status, text)
    assert call(url, "/api/jobs/nope")[0] == 404


def test_state_changes_check_origin(url: str) -> None:
    status, text = call(
        url, "/api/jobs/", "POST", {"entrypoint": "true"}, Origin="http://evil.example"
    )
    assert status == 403 and "Origin" in text


def test_log_routes_stay_inside_the_log_directory(url: str) -> None:
    status, text = call(url, "/api/v0/logs")
    assert status == 200 and "gcs" in json.loads(text)["data"]["result"]
    assert call(url, "/api/v0/logs/file?filename=gcs.log")[0] == 200
    for evil in ("../token", "../../../../etc/passwd", "/etc/passwd", "..%2Ftoken"):
        status, _ = call(url, f"/api/v0/logs/file?filename={evil}")
        assert status == 404, evil


def test_log_stream_follows_a_file(url: str, ray_shared: Any) -> None:
    path = os.path.join(ray_shared["session_dir"], "logs", "stream-test.log")
    with open(path, "w") as f:
        f.write("old\n")
    req = urllib.request.Request(
        url + "/api/v0/logs/stream?filename=stream-test.log&lines=10",
        headers={"Authorization": f"Bearer {auth.cluster_token()}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.readline() == b"old\n"
        with open(path, "a") as f:
            f.write("new\n")
        assert r.readline() == b"new\n"  # appended after the request began
    assert call(url, "/api/v0/logs/stream?filename=../auth_token")[0] == 404


def test_kill_actor_route(url: str) -> None:
    @ray.remote
    class Sleeper:
        def ping(self) -> int:
            return 1

    a = Sleeper.remote()
    ray.get(a.ping.remote())
    aid = a._actor_id.hex()
    status, _ = call(url, f"/api/actors/{aid}/kill", "POST")
    assert status == 200

    def dead() -> bool:
        rows = json.loads(
            call(
                url,
                f"/api/v0/actors?filter_keys=actor_id&filter_predicates=%3D&filter_values={aid}",
            )[1]
        )["data"]["result"]["result"]
        return rows[0]["state"] == "DEAD"

    wait_for_condition(dead, timeout=30)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioray.cli", "job", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_job_cli_submit_follows_logs_and_manages_jobs(url: str) -> None:
    proc = run_cli(
        "submit", "--address", url, "--submission-id", "cli-job", "--metadata-json",
        '{"owner": "me"}', "--runtime-env-json", '{"env_vars": {"WHO": "cli"}}',
        "--", "echo", "hi-$WHO",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Job 'cli-job' submitted successfully" in proc.stdout
    assert "hi-cli" in proc.stdout and "Job 'cli-job' succeeded" in proc.stdout
    status = run_cli("status", "--address", url, "cli-job")
    assert "Status for job 'cli-job': SUCCEEDED" in status.stdout
    assert run_cli("logs", "--address", url, "cli-job").stdout == "hi-cli\n"
    assert "cli-job" in run_cli("list", "--address", url).stdout
    assert JobSubmissionClient(url).get_job_info("cli-job").metadata == {"owner": "me"}
    again = run_cli("submit", "--address", url, "--submission-id", "cli-job", "--", "true")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert run_cli("delete", "--address", url, "cli-job").returncode == 0
    missing = run_cli("status", "--address", url, "cli-job")
    assert missing.returncode == 1 and "Job cli-job does not exist" in missing.stderr


def test_job_cli_bad_input(url: str, tmp_path: Any) -> None:
    wd = run_cli("submit", "--address", url, "--working-dir", str(tmp_path / "nope"), "--", "true")
    assert wd.returncode == 1 and "does not exist" in wd.stderr
    empty = run_cli("submit", "--address", url, "--no-wait")
    assert empty.returncode == 1 and "give the command to run after --" in empty.stderr
    failed = run_cli("submit", "--address", url, "--", "exit 3")
    assert failed.returncode == 1 and "failed" in failed.stdout


def write(path: Any, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_job_cli_working_dir_is_uploaded_and_is_the_jobs_cwd(url: str, tmp_path: Any) -> None:
    project = tmp_path / "project"
    write(project / "helper.py", "GREETING = 'hello from helper'\n")
    write(project / "script.py", "import os, helper\nprint(helper.GREETING, os.getcwd())\n")
    # Submitted from elsewhere: only the uploaded package can provide helper.py.
    proc = subprocess.run(
        [sys.executable, "-m", "aioray.cli", "job", "submit", "--address", url,
         "--submission-id", "wd-job", "--working-dir", str(project), "--", "python", "script.py"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = JobSubmissionClient(url)
    info = client.get_job_info("wd-job")
    assert info.status == JobStatus.SUCCEEDED
    greeting, cwd = (
        client.get_job_logs("wd-job").split()[-4:-1],
        client.get_job_logs("wd-job").split()[-1],
    )
    assert greeting == ["hello", "from", "helper"] and cwd != str(project)
    assert info.runtime_env["working_dir"].startswith("gcs://_aioray_pkg_")


def test_job_py_modules_and_the_package_routes(url: str, tmp_path: Any) -> None:
    write(tmp_path / "mymod" / "__init__.py", "VALUE = 42\n")
    client = JobSubmissionClient(url)
    sid = client.submit_job(
        entrypoint="python -c 'import mymod; print(mymod.VALUE)'",
        runtime_env={"py_modules": [str(tmp_path / "mymod")]},
    )
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=60)
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, client.get_job_logs(sid)
    assert client.get_job_logs(sid) == "42\n"
    [uri] = client.get_job_info(sid).runtime_env["py_modules"]
    assert call(url, "/api/packages/" + uri.replace("://", "/"))[0] == 200  # uploaded once
    missing = "gcs/_aioray_pkg_" + "0" * 32 + ".zip"
    assert call(url, "/api/packages/" + missing)[0] == 404
    for bad in ("gcs/..%2Ftoken", "s3/_aioray_pkg_" + "0" * 32 + ".zip", "gcs/x.zip"):
        status, text = call(url, "/api/packages/" + bad, "PUT", b"data")
        assert status == 400 and "is not a package URI" in text, (bad, status, text)
    status, text = call(url, "/api/jobs/", "POST", {
        "entrypoint": "true", "runtime_env": {"working_dir": "gcs://" + missing[4:]}})  # fmt: skip
    assert status == 400 and "was not uploaded to this cluster" in text
    # Uploaded through the route, it is accepted.
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("run.sh", "echo from-upload\n")
    assert call(url, "/api/packages/" + missing, "PUT", buf.getvalue())[0] == 200
    assert call(url, "/api/packages/" + missing)[0] == 200
    sid = client.submit_job(
        entrypoint="sh run.sh", runtime_env={"working_dir": "gcs://" + missing[4:]}
    )
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=60)
    assert client.get_job_logs(sid) == "from-upload\n"


def test_job_pip_env_is_the_entrypoints_python(url: str, tmp_path: Any) -> None:
    from test_runtime_env import build_wheel  # offline: pip installs a wheel built here

    build_wheel("jobtinypkg", "1.0", {"jobtinypkg/__init__.py": "ANSWER = 'job-1.0'\n"}, tmp_path)
    options = ["--no-index", "--find-links", str(tmp_path)]
    client = JobSubmissionClient(url)
    sid = client.submit_job(
        entrypoint="python -c 'import jobtinypkg; print(jobtinypkg.ANSWER)'",
        runtime_env={"pip": {"packages": ["jobtinypkg==1.0"], "pip_install_options": options}},
    )
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=120)
    assert client.get_job_logs(sid) == "job-1.0\n"
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED


def test_a_job_whose_runtime_env_fails_is_failed_with_the_env_error(url: str) -> None:
    from test_runtime_env import NO_SUCH_PACKAGE

    bad = {"pip": {"packages": [NO_SUCH_PACKAGE], "pip_install_options": ["--no-index"]}}
    client = JobSubmissionClient(url)
    sid = client.submit_job(entrypoint="echo never", runtime_env=bad)
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=50)
    info = client.get_job_info(sid)
    assert info.status == JobStatus.FAILED and info.error_type == "RUNTIME_ENV_SETUP_FAILURE"
    assert "runtime_env setup failed" in info.message and "No matching distribution" in info.message
    assert info.end_time is not None and client.get_job_logs(sid) == ""


def test_a_jobs_driver_inherits_the_jobs_runtime_env(url: str, tmp_path: Any) -> None:
    project = tmp_path / "project"
    write(project / "helper.py", "VALUE = 'from the working_dir'\n")
    write(project / "script.py", (
        "import os, aioray\n"
        "aioray.init()\n"
        "@aioray.remote\n"
        "def probe():\n"
        "    import helper\n"
        "    return os.environ.get('ONLY_IN_THE_JOB'), helper.VALUE\n"
        "print(*aioray.get(probe.remote()), sep='|')\n"
    ))  # fmt: skip
    client = JobSubmissionClient(url)
    sid = client.submit_job(
        entrypoint="python script.py",
        runtime_env={"working_dir": str(project), "env_vars": {"ONLY_IN_THE_JOB": "yes"}},
    )
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=50)
    logs = client.get_job_logs(sid)
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, logs
    assert logs.splitlines()[-1] == "yes|from the working_dir"


def test_jobs_are_the_drivers_and_the_submissions_each_once(url: str, ray_shared: Any) -> None:
    from aioray.util import state

    client = JobSubmissionClient(url)
    sid = client.submit_job(entrypoint="python -c 'import aioray; aioray.init()'")
    wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=50)
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED, client.get_job_logs(sid)
    gone = "import aioray; aioray.init(); print(aioray.get_runtime_context().get_job_id())"
    env = {**os.environ, "AIORAY_ADDRESS": ray_shared.address_info["gcs_address"]}
    ended_id = subprocess.run(
        [sys.executable, "-c", gone],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
        env=env,
    ).stdout.split()[-1]
    this_id = ray.get_runtime_context().get_job_id()

    def ended() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = v0(url, "jobs?limit=100&detail=true")["result"]
        return rows if any(r["job_id"] == ended_id and r["end_time"] for r in rows) else []

    rows = wait_for_condition(ended, 30)  # a driver's end reaches the GCS as its connection ends
    drivers = {r["job_id"]: r for r in rows if r["type"] == "DRIVER"}
    (submitted,) = [r for r in rows if r["submission_id"] == sid]
    assert submitted["type"] == "SUBMISSION" and submitted["status"] == "SUCCEEDED"
    assert submitted["job_id"] and submitted["job_id"] not in drivers  # its driver: listed once
    assert submitted["driver_info"]["id"] == submitted["job_id"]
    mine = drivers[this_id]
    assert (mine["status"], mine["end_time"], mine["submission_id"]) == ("RUNNING", None, None)
    assert mine["driver_info"]["pid"] == str(os.getpid()) and mine["start_time"] > 0
    gone_row = drivers[ended_id]
    assert gone_row["status"] == "SUCCEEDED" and gone_row["end_time"] >= gone_row["start_time"]
    assert "aioray.init()" in gone_row["entrypoint"]
    assert not [r for r in drivers.values() if "aioray.dashboard" in r["entrypoint"]]
    # The Jobs API lists the same jobs, drivers too (Ray's GET /api/jobs/).
    listed = {j.job_id or j.submission_id: j for j in client.list_jobs()}
    assert set(listed) == {r["job_id"] or r["submission_id"] for r in rows}
    assert (listed[this_id].type, listed[this_id].submission_id) == ("DRIVER", None)
    assert listed[this_id].status == JobStatus.RUNNING
    assert listed[this_id].driver_info == mine["driver_info"]
    assert listed[ended_id].status == JobStatus.SUCCEEDED and listed[ended_id].end_time
    assert listed[submitted["job_id"]].submission_id == sid
    # The State API and the CLI give the same rows.
    (row,) = state.list_jobs(filters=[("submission_id", "=", sid)])
    assert (row.job_id, row.type) == (submitted["job_id"], "SUBMISSION")
    cli = subprocess.run(
        [sys.executable, "-m", "aioray.cli", "list", "jobs", "-f", "type=DRIVER", "--format",
         "json", "--address", env["AIORAY_ADDRESS"]], capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert {r["job_id"] for r in json.loads(cli.stdout)} == set(drivers)
    # Ray's GET /api/jobs/{id} takes a job id as well as a submission id.
    assert client.get_job_info(this_id).type == "DRIVER"
    assert client.get_job_info(this_id).job_id == this_id
    assert client.get_job_info(submitted["job_id"]).submission_id == sid
    with pytest.raises(RuntimeError, match="404: Job 0badc0de does not exist"):
        client.get_job_info("0badc0de")


def test_the_client_finds_the_dashboard_as_rays_does(
    url: str, ray_shared: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$RAY_ADDRESS overrides the address given (a submitted job's driver has it: the GCS's
    address); a GCS ``host:port`` names its dashboard through the GCS's KV (Ray's key)."""
    from aioray.experimental import internal_kv
    from aioray.job_submission import sdk

    gcs = ray_shared.address_info["gcs_address"]
    assert internal_kv._internal_kv_get("dashboard", namespace="dashboard") == url[7:].encode()
    monkeypatch.delenv("AIORAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", gcs)
    client = JobSubmissionClient("http://127.0.0.1:1")  # overridden, as in Ray
    assert client.get_address() == url
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(node, "local_dashboard_of", lambda gcs_address: None)  # a remote head
    assert JobSubmissionClient(gcs).get_address() == url
    assert sdk.dashboard_address(url[7:]) == url[7:]  # a dashboard's own host:port, as before

"""``aioray job submit|status|logs|stop|delete|list``: Ray's ``ray job`` CLI over
``JobSubmissionClient`` (the dashboard's REST routes)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from aioray.job_submission import JobStatus, JobSubmissionClient

POLL_S = 0.5


def add_parser(sub: Any) -> None:
    job = sub.add_parser("job", help="submit and manage jobs (like ray job)")
    verbs = job.add_subparsers(dest="verb", required=True)
    submit = verbs.add_parser("submit", help="submit a shell command: aioray job submit -- CMD")
    _address(submit)
    submit.add_argument("--submission-id", "--job-id", dest="submission_id")
    submit.add_argument(
        "--working-dir", help="a local directory to upload and run the entrypoint in"
    )
    submit.add_argument("--runtime-env", help="a JSON (or YAML-free JSON) runtime_env file")
    submit.add_argument("--runtime-env-json", help="runtime_env as JSON")
    submit.add_argument("--metadata-json", help="metadata as a JSON object of strings")
    submit.add_argument("--entrypoint-num-cpus", type=float)
    submit.add_argument("--entrypoint-num-gpus", type=float)
    submit.add_argument("--entrypoint-memory", type=int)
    submit.add_argument("--entrypoint-resources", help="JSON object of resource to amount")
    submit.add_argument("--no-wait", action="store_true", help="do not follow the logs")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- the command to run")
    for verb, text in (
        ("status", "a job's status"),
        ("stop", "stop a job"),
        ("delete", "forget an ended job"),
    ):
        p = verbs.add_parser(verb, help=text)
        _address(p)
        p.add_argument("job_id")
        if verb == "stop":
            p.add_argument("--no-wait", action="store_true")
    logs = verbs.add_parser("logs", help="a job's output")
    _address(logs)
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    _address(verbs.add_parser("list", help="every job"))


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="the dashboard, http://host:8265")


def _json(option: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise SystemExit(f"aioray job: {option} is not valid JSON: {e}") from None


def _runtime_env(a: argparse.Namespace) -> dict[str, Any] | None:
    if a.runtime_env:
        with open(a.runtime_env) as f:
            env = _json("--runtime-env", f.read())
    else:
        env = _json("--runtime-env-json", a.runtime_env_json)
    if a.working_dir:  # overrides the runtime env's, as in Ray
        env = {**(env or {}), "working_dir": a.working_dir}
    return env


def cmd_job(a: argparse.Namespace) -> int:
    try:
        client = JobSubmissionClient(a.address)
        return int(_VERBS[a.verb](client, a))
    except (RuntimeError, ConnectionError, ValueError) as e:
        print(f"aioray job {a.verb}: {e}", file=sys.stderr)
        return 1


def _submit(client: JobSubmissionClient, a: argparse.Namespace) -> int:
    entrypoint = a.entrypoint[1:] if a.entrypoint[:1] == ["--"] else a.entrypoint
    if not entrypoint:
        raise ValueError("give the command to run after --, e.g. aioray job submit -- python x.py")
    sid = client.submit_job(
        entrypoint=" ".join(entrypoint),
        submission_id=a.submission_id,
        runtime_env=_runtime_env(a),
        metadata=_json("--metadata-json", a.metadata_json),
        entrypoint_num_cpus=a.entrypoint_num_cpus,
        entrypoint_num_gpus=a.entrypoint_num_gpus,
        entrypoint_memory=a.entrypoint_memory,
        entrypoint_resources=_json("--entrypoint-resources", a.entrypoint_resources),
    )
    print(f"Job '{sid}' submitted successfully")
    if a.no_wait:
        print(f"Query the status with: aioray job status {sid}")
        return 0
    _follow(client, sid)
    status = client.get_job_status(sid)
    print(f"Job '{sid}' {status.value.lower()}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def _follow(client: JobSubmissionClient, sid: str) -> None:
    async def tail() -> None:
        async for text in client.tail_job_logs(sid):
            sys.stdout.write(text)
            sys.stdout.flush()

    asyncio.run(tail())
    while not client.get_job_status(sid).is_terminal():
        time.sleep(POLL_S)


def _status(client: JobSubmissionClient, a: argparse.Namespace) -> int:
    info = client.get_job_info(a.job_id)
    print(f"Status for job '{a.job_id}': {info.status}")
    print(f"Status message: {info.message}")
    return 0


def _logs(client: JobSubmissionClient, a: argparse.Namespace) -> int:
    if a.follow:
        _follow(client, a.job_id)
    else:
        sys.stdout.write(client.get_job_logs(a.job_id))
    return 0


def _stop(client: JobSubmissionClient, a: argparse.Namespace) -> int:
    stopped = client.stop_job(a.job_id)
    print(f"Job '{a.job_id}' {'stopping' if stopped else 'had already ended'}")
    return 0


def _delete(client: JobSubmissionClient, a: argparse.Namespace) -> int:
    client.delete_job(a.job_id)
    print(f"Job '{a.job_id}' deleted successfully")
    return 0


def _list(client: JobSubmissionClient, a: argparse.Namespace) -> int:
    for j in client.list_jobs():
        print(f"{j.submission_id}  {j.status!s:<10} {j.entrypoint}")
    return 0


_VERBS = {
    "submit": _submit,
    "status": _status,
    "logs": _logs,
    "stop": _stop,
    "delete": _delete,
    "list": _list,
}

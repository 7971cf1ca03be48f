"""Ray's own clients against an aioray head: Ray's ``JobSubmissionClient`` (submit,
status, info, list, logs, stop, delete, tail) and ``ray job`` / ``ray list`` /
``ray summary`` CLIs. Ray lives in a separate virtualenv (never a dependency):

    python -m venv /tmp/rayvenv && /tmp/rayvenv/bin/pip install ray requests aiohttp pydantic
    python benchmarks/ray_client_conformance.py --ray-venv /tmp/rayvenv

Exits 0 when every check passes; prints each outcome. Skips (exit 0) without Ray.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import aioray as ray
from aioray._private.wire import auth
from aioray.util import placement_group

SDK_CHECKS = textwrap.dedent(
    """
    import asyncio, sys, time
    from ray.job_submission import JobSubmissionClient, JobStatus
    url, token = sys.argv[1], sys.argv[2]
    c = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
    def wait(sid, want):
        for _ in range(600):
            if c.get_job_status(sid) == want:
                return
            time.sleep(0.1)
        raise AssertionError(f"{sid} never {want}")
    sid = c.submit_job(entrypoint="echo from-ray", runtime_env={"env_vars": {"A": "1"}},
                       metadata={"k": "v"})
    wait(sid, JobStatus.SUCCEEDED)
    assert c.get_job_logs(sid) == "from-ray\\n"
    assert c.get_job_info(sid).metadata == {"k": "v"}
    assert sid in [j.submission_id for j in c.list_jobs()]
    long = c.submit_job(entrypoint="sleep 60")
    wait(long, JobStatus.RUNNING)
    assert c.stop_job(long)
    wait(long, JobStatus.STOPPED)
    assert c.delete_job(sid)
    async def tail():
        s = c.submit_job(entrypoint="echo a; sleep 0.5; echo b")
        return "".join([x async for x in c.tail_job_logs(s)])
    assert asyncio.run(tail()) == "a\\nb\\n"
    print("JobSubmissionClient: submit/status/info/list/logs/stop/delete/tail OK")
    """
)


def run(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ray-venv", default=os.environ.get("RAY_VENV", ""))
    a = p.parse_args()
    python = os.path.join(a.ray_venv, "bin", "python")
    if not a.ray_venv or not os.path.exists(python):
        print("Ray's virtualenv not given (--ray-venv): skipped")
        return 0
    ctx = ray.init(num_cpus=2)
    failures = 0
    try:

        @ray.remote
        class A:
            def ping(self) -> int:
                return 1

        actor = A.options(name="named-a").remote()
        ray.get(actor.ping.remote())
        pg = placement_group([{"CPU": 1}], name="pg1")
        ray.get(pg.ready())
        url, token = f"http://{ctx.dashboard_url}", auth.cluster_token() or ""
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        checks = [
            ("JobSubmissionClient", [python, "-c", SDK_CHECKS, url, token], "OK"),
            (
                "ray job submit",
                [os.path.join(a.ray_venv, "bin", "ray"), "job", "submit", "--address", url,
                 "--headers", f'{{"Authorization": "Bearer {token}"}}', "--", "echo", "hi"],
                "succeeded",
            ),
        ]  # fmt: skip
        for what, expect in [
            ("actors", "named-a"),
            ("nodes", "ALIVE"),
            ("placement-groups", "pg1"),
            ("jobs", "SUCCEEDED"),
        ]:
            checks.append(
                (
                    f"ray list {what}",
                    [os.path.join(a.ray_venv, "bin", "ray"), "list", what, "--address", url],
                    expect,
                )
            )
        ray_bin = os.path.join(a.ray_venv, "bin", "ray")
        checks.append(("ray summary actors", [ray_bin, "summary", "actors", "--address", url], "A"))
        for name, cmd, expect in checks:
            code, out = run(cmd, env)
            ok = code == 0 and expect in out
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'}  {name}" + ("" if ok else f"\n{out[-2000:]}"))
    finally:
        ray.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""``JobSupervisor``: the actor that runs one job's entrypoint (Ray's JobSupervisor).

Detached, in the ``_aioray_jobs`` namespace, on the head, in the job's runtime env
(cwd: its working_dir). It runs the entrypoint in a shell in its own process group,
with ``AIORAY_ADDRESS``/``RAY_ADDRESS`` set so that ``aioray.init()`` inside joins
this cluster, output appended to the job's log file.
It writes the job's record (RUNNING, then the outcome) to the GCS's KV store. Stop:
SIGTERM to the group, SIGKILL after ``grace_s``. When the job ends, the actor exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from aioray import actor
from aioray._private.owner import worker_context
from aioray.dashboard import job_store
from aioray.experimental import internal_kv
from aioray.job_submission.models import JobStatus

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # The shell dies with its supervisor's worker, whatever kills that worker.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class JobSupervisor:
    """Runs one entrypoint and records its progress (a threaded actor: run and stop)."""

    def __init__(self, submission_id: str, log_path: str, env: dict[str, str]) -> None:
        self.submission_id = submission_id
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.started = threading.Event()
        self.stopped = threading.Event()  # stop() has answered: the actor may exit

    def _update(self, **fields: Any) -> None:
        k = job_store.key(self.submission_id)
        record = job_store.decode(internal_kv._internal_kv_get(k, namespace=job_store.NAMESPACE))
        record = {**(record or {}), **fields}
        internal_kv._internal_kv_put(k, job_store.encode(record), namespace=job_store.NAMESPACE)

    def run(self, entrypoint: str) -> str:
        """Run the entrypoint to its end; the job's final status."""
        record = job_store.decode(
            internal_kv._internal_kv_get(
                job_store.key(self.submission_id), namespace=job_store.NAMESPACE
            )
        )
        if record is not None and record.get("status") == "STOPPED":  # stopped while PENDING
            self.started.set()
            actor.exit_actor()
        env = {**os.environ, **self.env}
        # ``python`` in the entrypoint is this worker's interpreter: the job's pip env's
        # when it has one. The cwd is this worker's: the job's extracted working_dir.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                entrypoint,
                shell=True,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop signals all of it
                preexec_fn=_die_with_parent,
            )
        cw = worker_context.core_worker
        node_ip, node_id = (cw.node_ip, cw.node_id.hex()) if cw is not None else ("", None)
        self._update(
            status="RUNNING",
            message="Job is currently running.",
            driver_info={"id": "", "node_ip_address": node_ip, "pid": str(self.proc.pid)},
            driver_node_id=node_id,
        )
        self.started.set()
        code = self.proc.wait()
        if self.stopping:
            status, message = JobStatus.STOPPED, "Job was intentionally stopped."
        elif code == 0:
            status, message = JobStatus.SUCCEEDED, "Job finished successfully."
        else:
            status, message = (
                JobStatus.FAILED,
                f"Job entrypoint command failed with exit code {code}",
            )
        error = "JOB_ENTRYPOINT_COMMAND_ERROR" if status == JobStatus.FAILED else None
        end = int(time.time() * 1000)
        self._update(
            status=str(status),
            message=message,
            end_time=end,
            driver_exit_code=code,
            error_type=error,
        )
        if self.stopping:
            self.stopped.wait(30)  # let stop()'s reply out before the actor exits
        actor.exit_actor()
        return str(status)  # not reached: exit_actor raises

    def stop(self, grace_s: float = 3.0) -> bool:
        """SIGTERM to the job's process group, SIGKILL after ``grace_s``."""
        self.started.wait(30)
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        self.stopping = True
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            threading.Timer(0.5, self.stopped.set).start()  # after this reply is sent
        return True

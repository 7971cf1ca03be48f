"""``JobManager``: the dashboard's side of jobs (Ray's JobManager): records in the
GCS KV, one ``JobSupervisor`` actor per running job, logs in the head's log dir."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aioray
from aioray._private.core.runtime_env import JOB_CONFIG_ENV
from aioray._private.core.scheduling_strategies import NodeAffinitySchedulingStrategy
from aioray._private.node import runtime_env_packaging as packaging
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire import auth, job_records
from aioray.dashboard import job_store
from aioray.dashboard.cluster_link import ClusterLink
from aioray.dashboard.job_supervisor import JobSupervisor
from aioray.exceptions import ActorDiedError, RuntimeEnvSetupError
from aioray.job_submission.models import JobDetails, JobStatus

STOP_GRACE_S = 3.0  # Ray's default wait before SIGKILL


class JobNotFound(LookupError):
    """No job has that submission id (Ray's message)."""

    def __init__(self, submission_id: str) -> None:
        super().__init__(f"Job {submission_id} does not exist.")


class JobManager:
    """Submits, reads, stops and deletes jobs for the REST routes."""

    def __init__(self, link: ClusterLink, session_dir: str) -> None:
        self.link = link
        self.logs_dir = os.path.join(session_dir, "logs")
        self._starting: set[asyncio.Task[None]] = set()
        # Jobs this manager was asked to stop: their supervisor's death is no failure. (A
        # stop of a job still PENDING writes STOPPED and kills the supervisor; one that had
        # started the entrypoint meanwhile may have written RUNNING over it.)
        self._stopped: set[str] = set()

    def __repr__(self) -> str:
        return f"<JobManager {self.link.gcs_address}>"

    def log_path(self, submission_id: str) -> str:
        return os.path.join(self.logs_dir, f"job-driver-{submission_id}.log")

    async def _put(self, record: dict[str, Any], overwrite: bool = True) -> bool:
        body = [job_store.NAMESPACE, job_store.key(record["submission_id"]), None, overwrite]
        body[2] = job_store.encode(record)
        return bool(await self.link.gcs("kv_put", body))

    async def get(self, submission_id: str) -> JobDetails:
        raw = await self.link.gcs("kv_get", [job_store.NAMESPACE, job_store.key(submission_id)])
        record = job_store.decode(raw)
        if record is None:
            raise JobNotFound(submission_id)
        return JobDetails.from_json(record)

    async def find(self, job_or_submission_id: str) -> JobDetails:
        """A job by its submission id or its job id, as ``list`` has it (Ray's ``GET
        /api/jobs/{id}`` takes either: a driver that was not submitted has only a job id,
        and a submission's row carries its driver's job id once the driver started)."""
        for job in await self.list():
            if job_or_submission_id in (job.submission_id, job.job_id):
                return job
        raise JobNotFound(job_or_submission_id)

    async def list(self) -> list[JobDetails]:
        """Every job as Ray's ``GET /api/jobs/`` lists them: the submitted ones (type
        SUBMISSION) and the drivers that were not submitted (type DRIVER, no submission
        id), each once; the GCS merges them, as for the State API's ``list_jobs``."""
        rows = await self.link.gcs("state_list_all_jobs")
        return sorted((JobDetails.from_json(r) for r in rows), key=lambda j: j.start_time or 0)

    async def submit(self, req: dict[str, Any]) -> str:
        """Record the job PENDING, then start its supervisor; ValueError if the id is taken."""
        sid = req["submission_id"] or f"raysubmit_{os.urandom(8).hex()}"
        runtime_env = req.get("runtime_env") or {}
        for uri in packaging.package_uris(runtime_env):
            if await self.link.gcs("kv_get", [packaging.KV_NAMESPACE, uri.encode()]) is None:
                raise ValueError(
                    f"runtime_env package {uri} was not uploaded to this cluster "
                    f"(PUT /api/packages/gcs/<name>, as JobSubmissionClient does)"
                )
        details = JobDetails(
            entrypoint=req["entrypoint"],
            submission_id=sid,
            status=JobStatus.PENDING,
            message="Job has not started yet.",
            start_time=int(time.time() * 1000),
            metadata=req.get("metadata") or {},
            runtime_env=runtime_env,
            entrypoint_num_cpus=req.get("entrypoint_num_cpus"),
            entrypoint_num_gpus=req.get("entrypoint_num_gpus"),
            entrypoint_memory=req.get("entrypoint_memory"),
            entrypoint_resources=req.get("entrypoint_resources"),
        )
        if not await self._put(details.to_json(), overwrite=False):
            raise ValueError(
                f"Job with submission_id {sid} already exists. "
                "Please use a different submission_id."
            )
        env = {
            **runtime_env.get("env_vars", {}),
            "AIORAY_ADDRESS": self.link.gcs_address,
            "RAY_ADDRESS": self.link.gcs_address,
            job_records.SUBMISSION_ID_ENV: sid,
            # The job's driver runs in the job's env: aioray.init() reads it from here.
            JOB_CONFIG_ENV: json.dumps({"runtime_env": runtime_env, "metadata": details.metadata}),
        }
        token = auth.cluster_token()
        if token:
            env[auth.TOKEN_ENV] = token
        # Not awaited: a supervisor that waits for resources keeps the job PENDING
        # without holding the request (actor creation blocks until it is placed).
        task = asyncio.create_task(self._start(details, env))  # details carry the runtime_env
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        return sid

    async def _start(self, details: JobDetails, env: dict[str, str]) -> None:
        try:
            run = await self.link.run(self._start_supervisor, details, env)
        except Exception as e:
            await self._put(
                {
                    **details.to_json(),
                    "status": "FAILED",
                    "message": f"Failed to start the job supervisor: {e}",
                    "error_type": "JOB_SUPERVISOR_ACTOR_START_FAILURE",
                }
            )
            return
        await self._watch(str(details.submission_id), run)

    async def _watch(self, submission_id: str, run: ObjectRef) -> None:
        """Await the supervisor's ``run`` (it ends with the job). Its actor exits then, so the
        call raises even after a normal end; a job not yet terminal failed: its runtime env
        could not be set up (Ray's RUNTIME_ENV_SETUP_FAILURE), or its supervisor died."""
        try:
            await run
            return
        except RuntimeEnvSetupError as e:
            message, error_type = f"runtime_env setup failed: {e}", "RUNTIME_ENV_SETUP_FAILURE"
        except Exception as e:
            message, error_type = f"Job supervisor actor died: {e}", "JOB_SUPERVISOR_ACTOR_DIED"
        finally:
            stopped = submission_id in self._stopped
            self._stopped.discard(submission_id)
        try:
            details = await self.get(submission_id)
        except JobNotFound:
            return  # deleted meanwhile
        if details.status.is_terminal():
            return
        if stopped:  # its supervisor was killed or died as it was stopped: as asked
            ended = {"status": "STOPPED", "message": "Job was intentionally stopped."}
        else:
            ended = {"status": "FAILED", "message": message, "error_type": error_type}
        await self._put({**details.to_json(), **ended, "end_time": int(time.time() * 1000)})

    def _start_supervisor(self, details: JobDetails, env: dict[str, str]) -> ObjectRef:
        sid = str(details.submission_id)
        options: dict[str, Any] = {
            "name": job_store.supervisor_name(sid),
            "namespace": job_store.NAMESPACE,
            "lifetime": "detached",
            "max_concurrency": 4,
            "num_cpus": details.entrypoint_num_cpus or 0,
            "num_gpus": details.entrypoint_num_gpus or 0,
            "resources": details.entrypoint_resources or {},
        }
        # The supervisor runs in the job's env (Ray's way): its worker's cwd is the
        # extracted working_dir, its PYTHONPATH has the packages, its python the
        # pip env's; the entrypoint inherits all three.
        env_fields = {k: v for k, v in (details.runtime_env or {}).items() if k != "env_vars"}
        if env_fields:
            options["runtime_env"] = env_fields
        if not (
            details.entrypoint_num_cpus
            or details.entrypoint_num_gpus
            or details.entrypoint_resources
        ):
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                self.link.node_id(), soft=False
            )
        supervisor = (
            aioray.remote(JobSupervisor).options(**options).remote(sid, self.log_path(sid), env)
        )
        return supervisor.run.remote(details.entrypoint)

    async def stop(self, submission_id: str) -> bool:
        details = await self.get(submission_id)
        if details.status.is_terminal():
            return False
        self._stopped.add(submission_id)
        if details.status == JobStatus.PENDING:  # its supervisor may wait for resources
            # STOPPED first: the supervisor's death is then no failure (``_watch``).
            stopped = {"status": "STOPPED", "message": "Job was stopped before it started."}
            await self._put({**details.to_json(), **stopped, "end_time": int(time.time() * 1000)})
            await self.link.run(self._kill_supervisor, submission_id)
            return True
        return bool(await self.link.run(self._stop, submission_id))

    def _kill_supervisor(self, submission_id: str) -> None:
        try:
            name = job_store.supervisor_name(submission_id)
            aioray.kill(aioray.get_actor(name, job_store.NAMESPACE))
        except ValueError:
            pass

    def _stop(self, submission_id: str) -> bool:
        try:
            supervisor = aioray.get_actor(
                job_store.supervisor_name(submission_id), job_store.NAMESPACE
            )
        except ValueError:
            return False
        try:
            return bool(aioray.get(supervisor.stop.remote(STOP_GRACE_S), timeout=STOP_GRACE_S + 30))
        except ActorDiedError:  # the job ended (and its supervisor with it) meanwhile
            return True

    async def delete(self, submission_id: str) -> bool:
        """Forget an ended job; ValueError while it runs (as Ray)."""
        details = await self.get(submission_id)
        if not details.status.is_terminal():
            raise ValueError(
                f"Attempted to delete job with submission_id {submission_id}, but the job is "
                f"not in a terminal state (status {details.status}); stop it first."
            )
        await self.link.gcs("kv_del", [job_store.NAMESPACE, job_store.key(submission_id)])
        try:
            os.unlink(self.log_path(submission_id))
        except FileNotFoundError:
            pass
        return True

    def read_logs(self, submission_id: str, offset: int = 0) -> tuple[str, int]:
        """The log from byte ``offset`` on, and the offset after it."""
        try:
            with open(self.log_path(submission_id), "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return "", offset
        return data.decode(errors="replace"), offset + len(data)

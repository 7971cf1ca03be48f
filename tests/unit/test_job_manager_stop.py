"""A job stopped as its supervisor starts it ends STOPPED, not FAILED (dashboard/
job_manager.py). Stopping a PENDING job writes STOPPED and kills its supervisor; a
supervisor that had just started the entrypoint may write RUNNING over it before it dies
(CI saw FAILED once). Without a cluster: a fake link holds the GCS's KV."""

from __future__ import annotations

from typing import Any

from aioray.dashboard import job_store
from aioray.dashboard.job_manager import JobManager
from aioray.exceptions import ActorDiedError
from aioray.job_submission import JobDetails, JobStatus

SID = "raysubmit_test"


class FakeLink:
    """The dashboard's ClusterLink, reduced to the GCS's KV and a run that does nothing."""

    gcs_address = "fake:0"

    def __init__(self) -> None:
        self.kv: dict[tuple[str, bytes], bytes] = {}
        self.ran: list[str] = []

    async def gcs(self, method: str, body: Any) -> Any:
        if method == "kv_put":
            namespace, key, value, overwrite = body
            if not overwrite and (namespace, key) in self.kv:
                return False
            self.kv[(namespace, key)] = value
            return True
        assert method == "kv_get", method
        return self.kv.get((body[0], body[1]))

    async def run(self, fn: Any, *args: Any) -> Any:
        self.ran.append(fn.__name__)  # (killing the supervisor, asking it to stop)
        return True


def write(link: FakeLink, status: JobStatus) -> None:
    record = JobDetails(entrypoint="sleep 600", submission_id=SID, status=status).to_json()
    link.kv[(job_store.NAMESPACE, job_store.key(SID))] = job_store.encode(record)


async def died() -> None:
    raise ActorDiedError("the supervisor was killed")


async def test_a_job_stopped_while_its_supervisor_started_it_ends_stopped() -> None:
    link = FakeLink()
    manager = JobManager(link, "/nonexistent")  # type: ignore[arg-type]
    write(link, JobStatus.PENDING)
    assert await manager.stop(SID)
    assert link.ran == ["_kill_supervisor"]
    write(link, JobStatus.RUNNING)  # the supervisor's update, read before the stop's write
    await manager._watch(SID, died())  # type: ignore[arg-type]
    details = await manager.get(SID)
    assert details.status == JobStatus.STOPPED, details.message
    assert details.error_type is None


async def test_a_supervisor_that_dies_unasked_fails_its_job() -> None:
    link = FakeLink()
    manager = JobManager(link, "/nonexistent")  # type: ignore[arg-type]
    write(link, JobStatus.RUNNING)
    await manager._watch(SID, died())  # type: ignore[arg-type]
    details = await manager.get(SID)
    assert details.status == JobStatus.FAILED
    assert details.error_type == "JOB_SUPERVISOR_ACTOR_DIED"

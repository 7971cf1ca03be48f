"""Ray's job data model: ``JobStatus``, ``JobDetails`` (the fields of Ray's), and the
submit request's validation, shared by the client, the REST routes and the supervisor."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from aioray._private.core import runtime_env as _runtime_env


class JobStatus(str, enum.Enum):
    """A submitted job's state, as Ray's (PENDING → RUNNING → a terminal state)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        """Whether the job is done: STOPPED, SUCCEEDED or FAILED (it will not change again)."""
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclasses.dataclass
class JobDetails:
    """One job as ``GET /api/jobs/{id}`` answers it (Ray's ``JobDetails``)."""

    entrypoint: str
    type: str = "SUBMISSION"
    job_id: str | None = None
    submission_id: str | None = None
    driver_info: dict[str, Any] | None = None
    status: JobStatus = JobStatus.PENDING
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None  # ms since the epoch
    end_time: int | None = None
    metadata: dict[str, str] | None = None
    runtime_env: dict[str, Any] | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """This job's fields as a JSON-ready dict, ``status`` as its string."""
        out = dataclasses.asdict(self)
        out["status"] = str(self.status)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobDetails:
        """JobDetails from the REST API's JSON dict; unknown keys are ignored, ``status`` defaults
        to PENDING."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["status"] = JobStatus(fields.get("status", "PENDING"))
        return cls(**fields)


JobInfo = JobDetails  # Ray's older name for the same record

# Packaged fields arrive as package URIs: the client uploads local directories first.
PACKAGED_FIELDS = ("working_dir", "py_modules")
_NUMBERS = ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory")


def check_submit_request(body: Any) -> dict[str, Any]:
    """The submit request's fields, checked; ValueError names the field that is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    entrypoint = body.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise ValueError("'entrypoint' must be a non-empty string (the shell command to run)")
    sid = body.get("submission_id") or body.get("job_id")
    if sid is not None and (not isinstance(sid, str) or not sid or "/" in sid):
        raise ValueError("'submission_id' must be a non-empty string without '/'")
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"'{name}' must be a number, got {value!r}")
        if value is not None and value < 0:
            raise ValueError(f"'{name}' must be >= 0, got {value!r}")
    _check_str_dict(body, "metadata")
    resources = body.get("entrypoint_resources")
    if resources is not None and not (
        isinstance(resources, dict)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in resources.values())
    ):
        raise ValueError("'entrypoint_resources' must be an object of resource name to amount")
    env = check_runtime_env(body.get("runtime_env"))
    return {**body, "entrypoint": entrypoint, "submission_id": sid, "runtime_env": env}


def check_runtime_env(runtime_env: Any) -> dict[str, Any]:
    """A submitted job's runtime env, checked and normalized (the runtime_env rules);
    ``working_dir``/``py_modules`` must be uploaded packages (``gcs://...``): a local
    path means nothing on the head, so the client packages and uploads it first."""
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise ValueError("'runtime_env' must be a JSON object")
    for field in PACKAGED_FIELDS:
        value = runtime_env.get(field)
        paths = value if field == "py_modules" and isinstance(value, list) else [value]
        for path in paths:
            if path is not None and not str(path).startswith(_runtime_env.URI_SCHEME):
                raise ValueError(
                    f"'runtime_env.{field}' must be an uploaded package URI "
                    f"({_runtime_env.URI_SCHEME}...), got {path!r}: JobSubmissionClient and "
                    f"'aioray job submit' package and upload a local directory"
                )
    try:
        return _runtime_env.normalize(runtime_env)
    except (TypeError, ValueError) as e:
        raise ValueError(f"'runtime_env': {e}") from None


def _check_str_dict(body: dict[str, Any], name: str, where: str = "") -> None:
    value = body.get(name)
    if value is not None and not (
        isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise ValueError(f"'{where}{name}' must be an object of string to string")

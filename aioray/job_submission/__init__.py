"""Ray's job submission API (``ray.job_submission``): submit a shell command to a cluster
through its dashboard, follow it, stop it."""

from __future__ import annotations

from aioray.job_submission.models import JobDetails, JobInfo, JobStatus
from aioray.job_submission.sdk import JobSubmissionClient

__all__ = ["JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient"]

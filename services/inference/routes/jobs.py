"""`/v1/jobs`: submit, read and cancel offline batch jobs run by the Celery workers.

The routes only translate HTTP; the job logic is `services.jobs.service.JobService`,
which `create_app` puts on `app.state.jobs` (tests override `get_jobs`). Handlers are plain
`def`: listing a bucket and talking to Redis block, so they run in the thread pool (the
dependency is `async`: it only reads `app.state`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from services.jobs.records import JobRequest, JobStatus
from services.jobs.service import JobService
from shared.errors import JobsUnavailable

from ..auth import Caller, JobsCaller
from ..ratelimit import JobSubmitter

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


async def get_jobs(request: Request) -> JobService:
    jobs: JobService | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise JobsUnavailable("this API instance was started without batch jobs")
    return jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]


@router.post(
    "",
    status_code=202,
    summary="Submit a batch job: segment every image under a prefix (or in a list)",
    responses={
        202: {"description": "Queued; poll the URL in the Location header"},
        **{status: {"description": title, **_PROBLEM} for status, title in (
            (400, "The body is not JSON"),
            (401, "No or unknown API key"), (403, "Key lacks `jobs`; storage rule refused"),
            (404, "Unknown model version or stage"), (409, "Output in use by another job"),
            (413, "Too many images"), (422, "Bad URIs, no images, colliding outputs"),
            (429, "Too many submissions from this key; see Retry-After"),
            (503, "Job store or queue unreachable"))},
    },
)
def submit_job(body: JobRequest, jobs: JobsDep, response: Response,
               caller: JobSubmitter) -> JobStatus:
    status = jobs.submit(body, submitted_by=caller.id)
    response.headers["Location"] = f"/v1/jobs/{status.job_id}"
    return status


@router.get(
    "/{job_id}",
    summary="A job's state, progress, first per-item errors and manifest URI",
    responses={404: {"description": "Unknown, expired or another caller's job", **_PROBLEM},
               503: {"description": "Job store unreachable", **_PROBLEM}},
)
def get_job(job_id: str, jobs: JobsDep, caller: JobsCaller) -> JobStatus:
    return jobs.status(job_id, viewer(caller))


@router.delete(
    "/{job_id}",
    summary="Cancel a job: chunks that have not started are skipped",
    responses={404: {"description": "Unknown, expired or another caller's job", **_PROBLEM},
               503: {"description": "Job store unreachable", **_PROBLEM}},
)
def cancel_job(job_id: str, jobs: JobsDep, caller: JobsCaller) -> JobStatus:
    return jobs.cancel(job_id, viewer(caller))


def viewer(caller: Caller) -> str | None:
    """Callers see their own jobs; an `admin` key sees every job."""
    return None if caller.may("admin") else caller.id

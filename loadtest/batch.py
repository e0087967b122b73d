"""Batch jobs end to end: from `POST /v1/jobs` to `succeeded`, through a real worker.

The clock covers everything a user waits for: planning the job, the queue, reading the images,
the model, writing masks and manifests, and the job record reaching `succeeded`. It stops at the
record's own `updated_at` of that final state, not when the poller noticed it, so the status
requests can be few: each one costs the API (on the same cores as the worker) CPU that the job
would otherwise have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class JobRun:
    job_id: str
    state: str
    images: int
    failed: int
    seconds: float

    @property
    def per_second(self) -> float:
        return (self.images - self.failed) / self.seconds if self.seconds else 0.0


def write_inputs(folder: Path, blobs: list[bytes], count: int) -> Path:
    """`count` image files in `folder`, cycling through `blobs`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"pet-{i:05d}.jpg").write_bytes(blobs[i % len(blobs)])
    return folder


def run_job(api_url: str, input_prefix: str, output_prefix: str, *, chunk_size: int,
            timeout: float = 600.0, poll_seconds: float = 0.25) -> JobRun:
    with httpx.Client(base_url=api_url, timeout=30.0) as client:
        started, submitted = time.perf_counter(), time.time()
        job = _follow(client, _submit(client, input_prefix, output_prefix, chunk_size),
                      started, timeout, poll_seconds, lambda job: None)
        seconds = datetime.fromisoformat(job["updated_at"]).timestamp() - submitted
    totals = job["totals"]
    return JobRun(job["job_id"], job["state"], int(totals["images"]), int(totals["failed"]),
                  seconds)


def _submit(client: httpx.Client, input_prefix: str, output_prefix: str,
            chunk_size: int) -> dict[str, Any]:
    answer = client.post("/v1/jobs", json={"input": input_prefix, "output": output_prefix,
                                           "chunk_size": chunk_size})
    if answer.status_code != 202:
        raise RuntimeError(f"job refused ({answer.status_code}): {answer.text}")
    job: dict[str, Any] = answer.json()
    return job


def _follow(client: httpx.Client, job: dict[str, Any], started: float, timeout: float,
            poll_seconds: float, each: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Poll the job until it finishes, calling `each` with every state seen; a reply other
    than 200 (the API busy) is polled again, up to `timeout`."""
    while job["state"] not in FINISHED:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"job {job['job_id']} still {job['state']} after {timeout}s")
        each(job)
        time.sleep(poll_seconds)
        reply = client.get(f"/v1/jobs/{job['job_id']}")
        if reply.status_code == 200:
            job = reply.json()
    return job


@dataclass(frozen=True)
class Recovery:
    job_id: str
    state: str
    images: int
    failed: int
    seconds: float
    """POST to `succeeded`, with the kill in the middle."""
    kill_to_done: float
    """From the SIGKILL to `succeeded`."""
    killed_at_done: int
    """Images done when the worker was killed."""


def run_job_with_kill(api_url: str, input_prefix: str, output_prefix: str, *, chunk_size: int,
                      kill: Callable[[], None], kill_after: int, timeout: float = 900.0,
                      poll_seconds: float = 0.05) -> Recovery:
    """Like `run_job`, but `kill()` (SIGKILL the worker, start its replacement) runs once
    `kill_after` images are done.

    A job's `done` moves when a chunk is recorded, so the worker dies a poll after one: while
    it takes, leases or runs the next chunk. Whichever it was, the job must finish within about
    one lease (the reaper's expired leases, or its restore of chunk messages taken but never
    started); kills inside a chunk are the integration tests' (`test_durable_jobs.py`)."""
    killed: float | None = None
    killed_at = 0

    def kill_once(job: dict[str, Any]) -> None:
        nonlocal killed, killed_at
        if killed is None and job["totals"]["done"] >= kill_after:
            killed, killed_at = time.perf_counter(), int(job["totals"]["done"])
            kill()

    with httpx.Client(base_url=api_url, timeout=30.0) as client:
        started = time.perf_counter()
        job = _follow(client, _submit(client, input_prefix, output_prefix, chunk_size),
                      started, timeout, poll_seconds, kill_once)
        done = time.perf_counter()
    if killed is None:
        raise RuntimeError(f"job {job['job_id']} finished before the worker could be killed")
    totals = job["totals"]
    return Recovery(job["job_id"], job["state"], int(totals["images"]), int(totals["failed"]),
                    done - started, done - killed, killed_at)

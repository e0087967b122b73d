"""`python -m services.jobs.cli`: submit, watch and cancel batch jobs through the HTTP API.

    submit INPUT OUTPUT [--wait]   INPUT is a URI prefix, or @FILE with one image URI per line
    status JOB_ID [--json]
    wait JOB_ID                    progress bar until the job finishes, then a summary
    cancel JOB_ID

Exit codes: 0 done (or queued, without --wait), 1 the job failed (with --strict: or any image
failed), 2 the API refused the request or is unreachable, 3 the job was cancelled, 4 `wait`
timed out. Progress goes to stderr, so `status --json` output stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

DEFAULT_API = "http://localhost:8080"
FINISHED = {"succeeded", "failed", "cancelled"}
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELLED, EXIT_TIMEOUT = 0, 1, 2, 3, 4

Job = dict[str, Any]


class ApiError(Exception):
    """The API answered with a problem (or not at all)."""


class JobsClient:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def _call(self, method: str, path: str, **kwargs: Any) -> Job:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the API at {self.http.base_url}: {exc}") from exc
        if response.is_error:
            try:
                problem = response.json()
                message = f"{problem.get('title', 'error')}: {problem.get('detail', '')}"
            except ValueError:
                message = response.text[:200]
            raise ApiError(f"HTTP {response.status_code} {message}")
        body: Job = response.json()
        return body

    def submit(self, body: dict[str, Any]) -> Job:
        return self._call("POST", "/v1/jobs", json=body)

    def status(self, job_id: str) -> Job:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> Job:
        return self._call("DELETE", f"/v1/jobs/{job_id}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.jobs.cli",
                                     description="maskfleet batch jobs")
    parser.add_argument("--api-url", default=DEFAULT_API, help=f"default {DEFAULT_API}")
    parser.add_argument("--api-key-file", type=Path, default=None,
                        help="file holding an API key with the `jobs` scope (production); "
                             "read once, sent as Authorization: Bearer, never printed")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="submit a job")
    submit.add_argument("input", help="URI prefix of the images, or @FILE listing image URIs")
    submit.add_argument("output", help="URI prefix for the masks and the manifest")
    submit.add_argument("--model-version", type=int)
    submit.add_argument("--model-stage", choices=["production", "candidate"])
    submit.add_argument("--chunk-size", type=int)
    submit.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty output (only where the API allows it)")
    submit.add_argument("--wait", action="store_true", help="follow progress until done")

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    wait = commands.add_parser("wait", help="follow a job with a progress bar until it ends")
    wait.add_argument("job_id")

    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")

    for sub in (submit, wait):
        sub.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
        sub.add_argument("--timeout", type=float, default=None, help="give up after seconds")
        sub.add_argument("--strict", action="store_true",
                         help="exit 1 when any image failed, not only when the job did")
    return parser.parse_args(argv)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    source: str | list[str] = args.input
    if args.input.startswith("@"):
        text = sys.stdin.read() if args.input == "@-" else Path(args.input[1:]).read_text()
        source = [line.strip() for line in text.splitlines() if line.strip()]
    body: dict[str, Any] = {"input": source, "output": args.output}
    if args.overwrite:
        body["overwrite"] = True
    for field in ("model_version", "model_stage", "chunk_size"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    return body


def follow(client: JobsClient, job: Job, console: Console, *, interval: float,
           timeout: float | None) -> Job | None:
    """Poll with a progress bar until the job finishes; None when `timeout` runs out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("[red]{task.fields[failed]} failed"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(job["state"], total=job["totals"]["images"], failed=0)
        while True:
            totals = job["totals"]
            progress.update(task, completed=totals["done"], failed=totals["failed"],
                            description=f"{job['job_id'][:8]} {job['state']}")
            if job["state"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(interval)
            job = client.status(job["job_id"])


def summary(job: Job, console: Console) -> None:
    table = Table(title=f"job {job['job_id']}", show_header=False)
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job["state"], "")
    totals = job["totals"]
    rows = [
        ("state", f"[{colour}]{job['state']}[/]" if colour else job["state"]),
        ("model", f"{job['model']['name']} v{job['model']['version']}"),
        ("images", str(totals["images"])), ("done", str(totals["done"])),
        ("failed", str(totals["failed"])),
        ("chunks", f"{job['chunks']['done']}/{job['chunks']['total']}"),
        ("output", job["output"]), ("manifest", job.get("manifest") or "-"),
    ]
    if job.get("error"):
        rows.append(("error", job["error"]))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if job["errors"]:
        errors = Table("input", "code", "detail", title="per-item errors (first ones)")
        for item in job["errors"][:20]:
            errors.add_row(item["input"], item["code"], item["detail"])
        console.print(errors)


def exit_code(job: Job | None, strict: bool) -> int:
    if job is None:
        return EXIT_TIMEOUT
    if job["state"] == "failed" or (strict and job["totals"]["failed"]):
        return EXIT_FAILED
    if job["state"] == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK


def run(args: argparse.Namespace, client: JobsClient, out: Console, err: Console) -> int:
    if args.command == "status":
        job = client.status(args.job_id)
        if args.json:
            out.print_json(json.dumps(job))
        else:
            summary(job, out)
        return exit_code(job, False) if job["state"] in FINISHED else EXIT_OK
    if args.command == "cancel":
        job = client.cancel(args.job_id)
        summary(job, out)
        return EXIT_OK
    if args.command == "submit":
        job = client.submit(request_body(args))
        err.print(f"submitted job [bold]{job['job_id']}[/]: {job['totals']['images']} images "
                  f"in {job['chunks']['total']} chunks, model v{job['model']['version']}")
        if not args.wait:
            out.print(job["job_id"])
            return EXIT_OK
    else:
        job = client.status(args.job_id)
    final = follow(client, job, err, interval=args.interval, timeout=args.timeout)
    if final is None:
        err.print(f"[yellow]gave up waiting for job {job['job_id']}[/]")
        return EXIT_TIMEOUT
    summary(final, out)
    return exit_code(final, args.strict)


def main(argv: Sequence[str] | None = None, http: httpx.Client | None = None) -> int:
    """Entry point; tests pass an `http` client (e.g. Starlette's TestClient)."""
    args = parse_args(argv)
    out, err = Console(), Console(stderr=True)
    headers = {}
    if args.api_key_file is not None:
        headers["Authorization"] = f"Bearer {args.api_key_file.read_text().strip()}"
    client = http or httpx.Client(base_url=args.api_url, timeout=30.0, headers=headers)
    try:
        return run(args, JobsClient(client), out, err)
    except ApiError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_REFUSED
    except OSError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_REFUSED
    finally:
        if http is None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())

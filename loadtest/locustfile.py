"""Locust scenarios for a deployed maskfleet: size a cluster, watch it under a realistic mix.

    locust -f loadtest/locustfile.py --headless -u 50 -r 5 -t 5m --host https://maskfleet.example

Three kinds of users share the run (weights 6 : 3 : 1):
- `LiveSegmentUser`: `POST /v1/segment` with a mix of sizes (320x240 to 1024x768) and formats
  (JPEG, PNG); every request carries unique bytes (a random JPEG comment or PNG text chunk, the
  pixels unchanged), so each one misses the cache and runs the model.
- `RepeatSegmentUser`: the same few images again and again, as clients retrying or re-opening
  a picture do: after the first time they are cache hits (`X-Cache: hit`); the hit ratio is
  printed at the end.
- `BatchJobUser`: submits a batch job (`POST /v1/jobs`) over `--batch-input`, polls it until it
  ends and reports the whole job as a `JOB` line (its time is submission to `succeeded`). It
  stays idle unless `--batch-input` and `--batch-output` are given, because the input must be a
  prefix the workers can read (`gs://...`).

Images come from `--images-dir` (your own JPEG/PNG files) or are generated (synthetic pets).
The host may carry a path prefix (`--host https://edge.example/model-a`).
"""

from __future__ import annotations

import itertools
import random
import struct
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.exception import StopUser

SIZES = ((320, 240), (500, 375), (500, 375), (640, 480), (800, 600), (1024, 768))
"""Generated mix; 500x375 (Oxford-IIIT Pet's usual size) twice as often."""
REPEATED = 4
"""Distinct images the repeating users cycle through (so the cache holds all of them)."""
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Image:
    name: str
    data: bytes
    content_type: str


@dataclass
class Shared:
    """What every user of this Locust process reads: the images and the cache tallies."""

    images: list[Image] = field(default_factory=list)
    hits: int = 0
    repeats: int = 0
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))
    job_counter: itertools.count[int] = field(default_factory=itertools.count)


SHARED = Shared()


def _options(parser: Any) -> None:
    group = parser.add_argument_group("maskfleet")
    group.add_argument("--images-dir", default="", help="JPEG/PNG files to send (default: "
                       "generated synthetic pets of several sizes)")
    group.add_argument("--batch-input", default="", help="prefix (gs://bucket/images) the "
                       "workers read for batch jobs; empty: BatchJobUser stays idle")
    group.add_argument("--batch-output", default="", help="prefix receiving each job's masks "
                       "under <prefix>/locust-<run>/<n>/")
    group.add_argument("--batch-chunk-size", type=int, default=64)
    group.add_argument("--batch-poll-seconds", type=float, default=2.0)
    group.add_argument("--batch-timeout-seconds", type=float, default=1800.0)


def _load_images(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    folder = getattr(options, "images_dir", "") if options else ""
    SHARED.images = images_from(Path(folder)) if folder else generated_images()


def _cache_summary(environment: Environment, **_: Any) -> None:
    if SHARED.repeats:
        print(f"maskfleet: {SHARED.hits} of {SHARED.repeats} repeated images were cache hits "
              f"({100 * SHARED.hits / SHARED.repeats:.1f}%)")


# Locust's EventHook.add_listener is untyped.
events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_load_images)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_cache_summary)  # type: ignore[no-untyped-call]


def images_from(folder: Path) -> list[Image]:
    kinds = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
    found = [Image(p.name, p.read_bytes(), kinds[p.suffix.lower()])
             for p in sorted(folder.iterdir()) if p.suffix.lower() in kinds]
    if not found:
        raise SystemExit(f"no .jpg/.jpeg/.png files in {folder}")
    return found


def generated_images() -> list[Image]:
    """Synthetic pets at the sizes of `SIZES`, mostly JPEG, every fourth one PNG."""
    from loadtest.images import pet_image

    out = []
    for i, size in enumerate(SIZES):
        fmt = "PNG" if i % 4 == 3 else "JPEG"
        out.append(Image(f"pet-{i}-{size[0]}x{size[1]}.{fmt.lower()}", pet_image(i, size, fmt),
                         f"image/{fmt.lower()}"))
    return out


def unique_bytes(image: Image) -> bytes:
    """The same pixels under a new SHA-256: a JPEG comment or a PNG text chunk with a nonce."""
    nonce = uuid.uuid4().hex.encode()
    data = image.data
    if data.startswith(b"\xff\xd8"):
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(nonce) + 2) + nonce + data[2:]
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        body = b"tEXt" + b"nonce\x00" + nonce
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:33] + chunk + data[33:]  # after the signature and IHDR
    return data


def _body(data: bytes) -> str:
    """FastHttpSession sends bytes unchanged; only its type hint says `str`."""
    return cast(str, data)


class LiveSegmentUser(FastHttpUser):
    """Fresh images: the model path (decode, batch, PNG) on every request."""

    weight = 6
    wait_time = between(0.5, 2.0)

    @task
    def segment_fresh(self) -> None:
        image = random.choice(SHARED.images)
        with self.client.post("/v1/segment", data=_body(unique_bytes(image)),
                              headers={"Content-Type": image.content_type},
                              name="/v1/segment [fresh]", catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status {answer.status_code}: {(answer.text or '')[:200]}")
            elif not (answer.content or b"").startswith(b"\x89PNG"):
                answer.failure("the answer is not a PNG mask")


class RepeatSegmentUser(FastHttpUser):
    """The same few images again: served from the Redis cache after the first time."""

    weight = 3
    wait_time = between(0.2, 1.0)

    @task
    def segment_repeat(self) -> None:
        image = SHARED.images[random.randrange(min(REPEATED, len(SHARED.images)))]
        with self.client.post("/v1/segment", data=_body(image.data),
                              headers={"Content-Type": image.content_type},
                              name="/v1/segment [repeat]", catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status {answer.status_code}: {(answer.text or '')[:200]}")
                return
            SHARED.repeats += 1
            SHARED.hits += (answer.headers or {}).get("x-cache") == "hit"


class BatchJobUser(FastHttpUser):
    """One batch job at a time: submit, poll until it ends, report it as one `JOB` line."""

    weight = 1
    wait_time = between(5.0, 15.0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.input = getattr(options, "batch_input", "") if options else ""
        self.output = getattr(options, "batch_output", "") if options else ""
        if not (self.input and self.output):
            raise StopUser()  # no prefix the workers can read: leave batch jobs out
        self.chunk_size = options.batch_chunk_size
        self.poll_seconds = options.batch_poll_seconds
        self.timeout = options.batch_timeout_seconds

    @task
    def run_job(self) -> None:
        output = f"{self.output.rstrip('/')}/locust-{SHARED.run_id}/{next(SHARED.job_counter)}"
        started = time.perf_counter()
        with self.client.post("/v1/jobs", json={"input": self.input, "output": output,
                                                "chunk_size": self.chunk_size},
                              name="/v1/jobs", catch_response=True) as answer:
            if answer.status_code != 202:
                answer.failure(f"status {answer.status_code}: {(answer.text or '')[:200]}")
                return
            job = answer.json()
        while job["state"] not in FINISHED:
            if time.perf_counter() - started > self.timeout:
                self._report(job, started, f"still {job['state']} after {self.timeout}s")
                return
            time.sleep(self.poll_seconds)  # gevent-patched: other users keep running
            with self.client.get(f"/v1/jobs/{job['job_id']}", name="/v1/jobs/{id}",
                                 catch_response=True) as answer:
                if answer.status_code != 200:
                    answer.failure(f"status {answer.status_code}")
                    return
                job = answer.json()
        self._report(job, started, None if job["state"] == "succeeded" else
                     f"job {job['state']}: {job.get('error')}")

    def _report(self, job: dict[str, Any], started: float, problem: str | None) -> None:
        """The job as one Locust request: its time is submission to the end state."""
        totals = job.get("totals", {})
        self.environment.events.request.fire(
            request_type="JOB", name="batch job (submit to end)",
            response_time=1000 * (time.perf_counter() - started),
            response_length=int(totals.get("images", 0)),
            exception=RuntimeError(problem) if problem else None, context={})

"""A real Prometheus scrapes a running API and worker: the dashboards and alerts work on what
the services actually export, not only on what docs/metrics.md promises.

Prometheus (Debian's package, `make install`) runs on a free port with a 1 s scrape interval
and the chart's alert rules loaded. Traffic is sent in rounds until the key panels show data:
Prometheus only computes a rate from two scrapes that straddle new traffic, and series created
on the first request start at their first value, so one burst is never enough. Every wait polls
with a deadline (tests.servers.wait_until).
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from observability.dashboards import load, render
from observability.dashboards.targets import PanelQuery, panel_queries, substitute
from tests.servers import REPO, Server, free_port, http_ok, running, wait_until

pytestmark = pytest.mark.integration

RULES = REPO / "charts" / "maskfleet" / "rules" / "maskfleet.rules.yaml"
# Panels that must show numbers after traffic (dashboard uid, panel title).
KEY_PANELS = [
    ("maskfleet-overview", "Request rate"),
    ("maskfleet-overview", "Latency p95"),
    ("maskfleet-overview", "Batch size"),
    ("maskfleet-overview", "Cache hit ratio"),
    ("maskfleet-batch", "Images processed"),
    ("maskfleet-ab", "Traffic share by role"),  # the role join on maskfleet_model_ready works
]
JOB_STATES_DONE = {"succeeded", "failed", "cancelled"}
START_TIMEOUT = 300.0  # TensorFlow import and model warm-up on two shared cores
TRAFFIC_TIMEOUT = 240.0
# Its own Redis database: leftovers of other tests in the shared Redis stay out of this queue.
REDIS_DB = 11


@dataclass
class Prometheus:
    """Just enough of the Prometheus HTTP API for the test."""

    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    def query(self, expr: str) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get(f"{self.url}/api/v1/query",
                                               params={"query": expr}).json()
        return body

    def values(self, expr: str) -> list[float]:
        body = self.query(expr)
        assert body["status"] == "success", body
        data = body["data"]
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(sample["value"][1]) for sample in data["result"]]

    def targets_up(self) -> int:
        return sum(1 for value in self.values("up") if value == 1)


def start_prometheus(tmp_path: Path, targets: dict[str, int], log: Path) -> Server:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}
            for job, target in targets.items()
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `make install` (installs Debian's prometheus)")
    argv = [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return Server(argv, port, log=log).start(
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), timeout=60)


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    """A small noisy image; a new seed is a new cache key."""
    rng = random.Random(seed)
    pixels = bytes(rng.randrange(256) for _ in range(48 * 40 * 3))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (48, 40), pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def job_request(inputs: str, output: str) -> dict[str, Any]:
    """Body of POST /v1/jobs: an input URI prefix, an output URI prefix, a chunk size."""
    return {"input": inputs, "output": output, "chunk_size": 2}


@dataclass
class Traffic:
    """Rounds of live requests and batch jobs, each round new enough to move every rate."""

    api: str
    bucket: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60.0))
    round: int = 0
    job_id: str | None = None
    jobs: int = 0
    statuses: list[int] = field(default_factory=list)

    def segment(self, body: bytes, content_type: str = "image/png") -> int:
        response = self.client.post(f"{self.api}/v1/segment", content=body,
                                    headers={"Content-Type": content_type})
        return response.status_code

    def live_round(self) -> None:
        """Concurrent new images (misses, batches > 1), a repeat (a hit), a bad request (4xx)."""
        self.round += 1
        images = [image_bytes(self.round * 100 + i) for i in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            self.statuses += pool.map(self.segment, images)
        self.statuses.append(self.segment(images[0]))
        self.statuses.append(self.segment(b"this is not an image"))

    def job_round(self) -> None:
        """Submit a small job once the previous one has finished."""
        from shared.storage import join, storage_for

        if self.job_id is not None:
            state = self.client.get(f"{self.api}/v1/jobs/{self.job_id}").json()["state"]
            if state not in JOB_STATES_DONE:
                return
        self.jobs += 1
        inputs = join(self.bucket, "in", str(self.jobs)) + "/"
        storage = storage_for(self.bucket)
        for i in range(3):
            storage.write(join(inputs, f"img{i}.png"), image_bytes(10_000 * self.jobs + i),
                          "image/png")
        response = self.client.post(
            f"{self.api}/v1/jobs",
            json=job_request(inputs, join(self.bucket, "out", str(self.jobs)) + "/"))
        assert response.status_code == 202, response.text
        self.job_id = str(response.json()["job_id"])


def panel(uid: str, title: str, dashboards: list[dict[str, Any]]) -> list[PanelQuery]:
    found = [q for model in dashboards for q in panel_queries(model)
             if q.dashboard == uid and q.panel == title]
    assert found, f"no panel {title!r} in {uid}"
    return found


def has_data(prometheus: Prometheus, queries: list[PanelQuery]) -> bool:
    """At least one query of the panel returns a finite, positive sample."""
    return any(value > 0 and math.isfinite(value)
               for q in queries for value in prometheus.values(substitute(q.expr)))


@pytest.fixture
def stack(redis_server: Server, tiny_model_repo: Path, gcs_bucket: str, tmp_path: Path,
          logs_dir: Path) -> Iterator[tuple[Prometheus, Traffic]]:
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    shared_env = {
        "MASKFLEET_MODEL_REPOSITORY": str(tiny_model_repo),
        "MASKFLEET_CACHE_REDIS_URL": redis_url,
        "MASKFLEET_STATE_REDIS_URL": redis_url,
        "MASKFLEET_LOG_LEVEL": "WARNING",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    api_port, api_metrics_port, worker_port = free_port(), free_port(), free_port()
    api = Server(
        [sys.executable, "-m", "services.inference"], api_port, log=logs_dir / "scrape-api.log",
        env={**shared_env, "MASKFLEET_PORT": str(api_port), "MASKFLEET_HOST": "127.0.0.1",
             "MASKFLEET_METRICS_PORT": str(api_metrics_port),  # as in the chart: its own port
             "MASKFLEET_JOB_INPUT_PREFIXES": gcs_bucket,
             "MASKFLEET_JOB_OUTPUT_PREFIXES": gcs_bucket,
             "MASKFLEET_ROLE": "stable", "MASKFLEET_BATCH_MAX_WAIT_MS": "20",
             "MASKFLEET_CACHE_DIR": str(tmp_path / "api-cache")})
    worker = Server(
        [str(Path(sys.executable).with_name("celery")), "-A", "services.worker.app", "worker",
         "--pool=solo", "--concurrency=1", "-Q", "maskfleet", "--loglevel=WARNING"],
        worker_port, log=logs_dir / "scrape-worker.log",
        env={**shared_env, "MASKFLEET_WORKER_METRICS_PORT": str(worker_port),
             "MASKFLEET_JOB_INPUT_PREFIXES": gcs_bucket,
             "MASKFLEET_CACHE_DIR": str(tmp_path / "worker-cache")})
    with contextlib.ExitStack() as stack:
        api_url = f"http://127.0.0.1:{api_port}"
        stack.enter_context(running(api.start(ready=lambda: http_ok(f"{api_url}/readyz"),
                                              timeout=START_TIMEOUT)))
        stack.enter_context(running(worker.start(
            ready=lambda: http_ok(f"http://127.0.0.1:{worker_port}/metrics"),
            timeout=START_TIMEOUT)))
        server = stack.enter_context(running(start_prometheus(
            tmp_path, {"maskfleet-inference": api_metrics_port, "maskfleet-worker": worker_port},
            logs_dir / "scrape-prometheus.log")))
        prometheus = Prometheus(f"http://127.0.0.1:{server.port}")
        wait_until(lambda: prometheus.targets_up() == 2, 60, "Prometheus to scrape API and worker")
        yield prometheus, Traffic(api_url, gcs_bucket)


def test_dashboards_work_against_a_real_prometheus(stack: tuple[Prometheus, Traffic]) -> None:
    prometheus, traffic = stack
    dashboards = [load(text) for text in render().values()]
    key_panels = {key: panel(*key, dashboards) for key in KEY_PANELS}
    waiting: list[tuple[str, str]] = list(key_panels)
    problems: list[str] = []  # wait_until swallows exceptions: keep them for the failure

    def traffic_shows_on_key_panels() -> bool:
        try:
            traffic.live_round()
            traffic.job_round()
            waiting[:] = [key for key, queries in key_panels.items()
                          if not has_data(prometheus, queries)]
        except Exception as error:
            problems[:] = [repr(error)]
            raise
        return not waiting

    try:
        wait_until(traffic_shows_on_key_panels, TRAFFIC_TIMEOUT, "key panels to show data")
    except TimeoutError as error:
        raise AssertionError(
            f"no data on {waiting} after {traffic.round} rounds and {traffic.jobs} jobs; "
            f"statuses seen: {sorted(set(traffic.statuses))}; last error: {problems}; "
            f"logs: scrape-*.log") from error
    assert 200 in traffic.statuses

    failures = {}
    for model in dashboards:
        for q in panel_queries(model):
            body = prometheus.query(substitute(q.expr))
            if body.get("status") != "success":
                failures[f"{q.dashboard} / {q.panel} / {q.ref_id}"] = body.get("error")
    assert failures == {}

    # The alert rules evaluate on the real series without errors (no many-to-many matches,
    # no type errors); whether they fire is promtool's job (tests/observability).
    def rules_evaluated() -> bool:
        groups = prometheus.client.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
        health = [rule["health"] for group in groups for rule in group["rules"]]
        return bool(health) and "unknown" not in health

    wait_until(rules_evaluated, 30, "Prometheus to evaluate the alert rules")
    groups = prometheus.client.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
    broken = {rule["name"]: rule.get("lastError") for group in groups
              for rule in group["rules"] if rule["health"] != "ok"}
    assert broken == {}

"""Helpers for the inference integration tests (no tests here; the name keeps it among them).

The API runs as users run it: `python -m services.inference` in its own process, configured by
MASKFLEET_* variables, on a free loopback port, ready once /readyz answers 200.
"""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Server, free_port, http_ok


def start_api(repo: Path, workdir: Path, redis_url: str, *, ready_path: str = "/readyz",
              **settings: object) -> Server:
    """The API as a process; started once `ready_path` answers 200 (/healthz: not waiting for
    a model)."""
    port = free_port()
    env = {
        "MASKFLEET_MODEL_REPOSITORY": str(repo),
        "MASKFLEET_CACHE_DIR": str(workdir / "model-cache"),
        "MASKFLEET_CACHE_REDIS_URL": redis_url,
        "MASKFLEET_STATE_REDIS_URL": redis_url,
        "MASKFLEET_HOST": "127.0.0.1",
        "MASKFLEET_PORT": str(port),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # batch jobs may use the session's temporary folders (the storage rules name them)
        "MASKFLEET_JOB_INPUT_PREFIXES": str(workdir.parent),
        "MASKFLEET_JOB_OUTPUT_PREFIXES": str(workdir.parent),
        **{f"MASKFLEET_{k.upper()}": str(v) for k, v in settings.items()},
    }
    server = Server([sys.executable, "-m", "services.inference"], port, env=env,
                    log=workdir / f"api-{port}.log")
    return server.start(ready=lambda: http_ok(f"http://127.0.0.1:{port}{ready_path}"), timeout=120)


def url(server: Server, path: str = "") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def photo(seed: int, size: tuple[int, int] = (96, 72), fmt: str = "JPEG") -> bytes:
    """A distinct image per seed (so each is a cache miss unless repeated)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


def segment(client: httpx.Client, server: Server, image: bytes, content_type: str = "image/jpeg",
            **params: str) -> httpx.Response:
    return client.post(url(server, "/v1/segment"), content=image, params=params,
                       headers={"Content-Type": content_type})


def mask_of(response: httpx.Response) -> np.ndarray:
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def assert_trimap(mask: np.ndarray, width: int, height: int) -> None:
    assert mask.shape == (height, width)
    assert set(np.unique(mask).tolist()) <= {1, 2, 3}


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample from the server's /metrics (0 when absent)."""
    text = httpx.get(url(server, "/metrics"), timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def batches_larger_than_one(server: Server, version: str) -> float:
    total = metric(server, "maskfleet_batch_size_count", version=version)
    singles = metric(server, "maskfleet_batch_size_bucket", version=version, le="1.0")
    return total - singles


class SteadyClients:
    """`clients` threads calling /v1/segment with a new image each time until `stop()`,
    recording each answer's `X-Model-Version` per client, and every failure.

    What the version-swap tests watch: which versions each client saw, in what order, and that
    no call failed while the server swapped.
    """

    def __init__(self, server: Server, clients: int, first_seed: int) -> None:
        self.seen: list[list[str]] = [[] for _ in range(clients)]
        self.failures: list[str] = []
        self._server = server
        self._first_seed = first_seed
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._load, args=(i,), daemon=True)
                         for i in range(clients)]

    def __enter__(self) -> SteadyClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _load(self, index: int) -> None:
        with httpx.Client(timeout=30) as client:
            seed = self._first_seed + index * 100_000
            while not self._stop.is_set():
                seed += 1  # a new image each time: every answer is computed, none cached
                try:
                    answer = segment(client, self._server, photo(seed, (64, 48)))
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text}")
                else:
                    self.seen[index].append(answer.headers["x-model-version"])

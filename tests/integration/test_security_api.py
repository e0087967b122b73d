"""The API in production mode as a hostile caller meets it: a uvicorn process, keys from a real
keys file written by `maskfleet-keys` (hashed), a real Redis, the GCS API of the emulator.

Every route group answers 401 / 403 / 200 as docs/security.md says; feedback cannot be forged,
replayed or sent by another key; feedback and job submission are rate limited per key; jobs
record who submitted them and are visible to that key (and admin keys) only; /metrics, /docs
and /openapi.json are not on the API port; the access log names key ids, never keys.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.storage import storage_for
from tests.integration.test_inference_support import photo, start_api, url
from tests.servers import Server, free_port, running, start_redis, wait_until

pytestmark = pytest.mark.integration

REDIS_DB = 9
REDIS_PASSWORD = "security-api-redis"
KEYS = {  # id -> scopes
    "client": "infer,feedback",
    "other-client": "infer,feedback",
    "reader": "infer",
    "labeller": "feedback",
    "batch": "jobs",
    "batch-2": "jobs",
    "ops": "admin,jobs",
    "burst": "infer,feedback,jobs",
}
FEEDBACK_BURST = 6
"""Every attempt counts, refused ones included (forgeries are attempts too)."""
JOBS_BURST = 2


@dataclass
class Api:
    server: Server
    keys: dict[str, str]
    metrics_port: int
    log: Path
    bucket: str

    def url(self, path: str) -> str:
        return url(self.server, path)

    def auth(self, key_id: str, header: str = "bearer") -> dict[str, str]:
        key = self.keys[key_id]
        return {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}


def create_key(keys_file: Path, key_id: str, scopes: str) -> str:
    """As an operator does: the key is printed once, the file keeps its digest."""
    done = subprocess.run([sys.executable, "-m", "shared.auth", "create", "--file",
                           str(keys_file), "--id", key_id, "--scopes", scopes],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, gcs_emulator: Server,
        tiny_model_repo: Path) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("secure-api")
    keys_file = workdir / "keys.json"
    keys = {key_id: create_key(keys_file, key_id, scopes) for key_id, scopes in KEYS.items()}
    from google.cloud import storage as gcs

    bucket = "security-api"
    client = gcs.Client()
    if not client.bucket(bucket).exists():
        client.create_bucket(bucket)
    metrics_port = free_port()
    # production refuses a Redis without a password: this one requires it
    with running(start_redis(log=workdir / "redis.log", password=REDIS_PASSWORD)) as redis_server:
        server = start_api(
            tiny_model_repo, workdir, f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
            environment="production", api_keys_file=keys_file, metrics_port=metrics_port,
            feedback_uri=f"gs://{bucket}/data/feedback", feedback_burst=FEEDBACK_BURST,
            feedback_rate_per_minute=1, jobs_burst=JOBS_BURST, jobs_rate_per_minute=1,
            job_input_prefixes=f"gs://{bucket}/incoming",
            job_output_prefixes=f"gs://{bucket}/results",
            stage_poll_seconds=0, cache_enabled="false", log_level="INFO",
            state_redis_password=REDIS_PASSWORD)
        with running(server):
            yield Api(server, keys, metrics_port, next(workdir.glob("api-*.log")), bucket)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask, mode="L").save(out, format="PNG")
    return out.getvalue()


def segment(http: httpx.Client, api: Api, key_id: str | None, image: bytes,
            **headers: str) -> httpx.Response:
    auth = api.auth(key_id) if key_id else {}
    return http.post(api.url("/v1/segment"), content=image,
                     headers={"Content-Type": "image/jpeg", **auth, **headers})


def feedback(http: httpx.Client, api: Api, key_id: str | None, token: str,
             mask: np.ndarray) -> httpx.Response:
    auth = api.auth(key_id) if key_id else {}
    return http.post(api.url("/v1/feedback"), params={"feedback_token": token},
                     content=png(mask), headers={"Content-Type": "image/png", **auth})


def assert_problem(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == code


def test_probes_are_public_and_nothing_else_is(http: httpx.Client, api: Api) -> None:
    for path in ("/", "/healthz", "/readyz"):
        assert http.get(api.url(path)).status_code == 200, path
    for method, path in (("POST", "/v1/segment"), ("POST", "/v1/feedback"),
                         ("POST", "/v1/jobs"), ("GET", "/v1/jobs/" + "0" * 32),
                         ("GET", "/v1/jobs/" + "0" * 32 + "/items"),
                         ("GET", "/v1/jobs/" + "0" * 32 + "/items/0/mask"),
                         ("GET", "/v2"), ("GET", "/v2/health/ready"), ("GET", "/v2/models/unet"),
                         ("POST", "/v2/models/unet/infer")):
        answer = http.request(method, api.url(path))
        assert_problem(answer, 401, "unauthenticated")
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_unknown_or_malformed_keys_are_401(http: httpx.Client, api: Api) -> None:
    image = photo(1, (40, 30))
    for headers in ({"Authorization": "Bearer mfk_not-a-key"}, {"X-API-Key": "mfk_nope"},
                    {"Authorization": f"Basic {api.keys['reader']}"},
                    {"Authorization": "Bearer"}):
        answer = http.post(api.url("/v1/segment"), content=image,
                           headers={"Content-Type": "image/jpeg", **headers})
        assert_problem(answer, 401, "unauthenticated")
        assert "www-authenticate" in answer.headers


def test_each_scope_opens_its_route_group_only(http: httpx.Client, api: Api) -> None:
    image = photo(2, (40, 30))
    for header in ("bearer", "x-api-key"):  # tritonclient and curl can send either
        answer = http.post(api.url("/v1/segment"), content=image,
                           headers={"Content-Type": "image/jpeg", **api.auth("reader", header)})
        assert answer.status_code == 200, answer.text
    assert_problem(segment(http, api, "labeller", image), 403, "forbidden")
    assert_problem(segment(http, api, "batch", image), 403, "forbidden")
    assert http.get(api.url("/v2/models/unet"), headers=api.auth("reader")).status_code == 200
    assert_problem(http.get(api.url("/v2/models/unet"), headers=api.auth("batch")), 403,
                   "forbidden")
    token = segment(http, api, "client", photo(3, (40, 30))).headers["x-feedback-token"]
    refused = feedback(http, api, "reader", token, np.ones((30, 40), np.uint8))
    assert_problem(refused, 403, "forbidden")
    job = {"input": f"gs://{api.bucket}/incoming/", "output": f"gs://{api.bucket}/results/x"}
    assert_problem(http.post(api.url("/v1/jobs"), json=job, headers=api.auth("reader")), 403,
                   "forbidden")


def test_tritonclient_sends_its_key_in_a_header(api: Api) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(f"127.0.0.1:{api.server.port}")
    try:
        pixels = np.zeros((1, 8, 8, 3), np.uint8)
        request = triton.InferInput("images", list(pixels.shape), "UINT8")
        request.set_data_from_numpy(pixels, binary_data=True)
        result = client.infer("unet", [request], headers=api.auth("reader"))
        assert result.as_numpy("mask").shape == (1, 8, 8)
        with pytest.raises(InferenceServerException):
            client.infer("unet", [request])
    finally:
        client.close()


def test_feedback_cannot_be_forged_replayed_or_sent_by_another_key(http: httpx.Client,
                                                                   api: Api) -> None:
    image = photo(4, (40, 30))
    answer = segment(http, api, "client", image, **{"X-Request-Id": "my-own-id-123456789"})
    assert answer.status_code == 200, answer.text
    token = answer.headers["x-feedback-token"]
    served = np.asarray(Image.open(io.BytesIO(answer.content)))

    forged = feedback(http, api, "client", "my-own-id-123456789", served)  # client-chosen id
    assert_problem(forged, 404, "feedback_token_unknown")
    stolen = feedback(http, api, "other-client", token, served)  # another key's answer
    assert_problem(stolen, 404, "feedback_token_unknown")

    accepted = feedback(http, api, "client", token, served)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["iou"] == 1.0
    assert_problem(feedback(http, api, "client", token, served), 409,
                   "feedback_already_received")
    again = segment(http, api, "client", image)  # same answer served again: a new token...
    assert again.headers["x-feedback-token"] != token
    replay = feedback(http, api, "client", again.headers["x-feedback-token"], served)
    assert_problem(replay, 409, "feedback_already_received")  # ...but still one correction
    other = segment(http, api, "other-client", image)
    assert_problem(feedback(http, api, "other-client", other.headers["x-feedback-token"],
                            served), 409, "feedback_already_received")
    stored = storage_for(f"gs://{api.bucket}").list(f"gs://{api.bucket}/data/feedback/")
    assert len([uri for uri in stored if "/trimaps/" in uri]) == 1


def test_feedback_and_job_submission_are_rate_limited_per_key(http: httpx.Client,
                                                               api: Api) -> None:
    codes = []
    for seed in range(FEEDBACK_BURST + 1):
        answer = segment(http, api, "burst", photo(100 + seed, (40, 30)))
        mask = np.asarray(Image.open(io.BytesIO(answer.content)))
        sent = feedback(http, api, "burst", answer.headers["x-feedback-token"], mask)
        codes.append(sent.status_code)
        if sent.status_code == 429:
            assert_problem(sent, 429, "rate_limited")
            assert 1 <= int(sent.headers["retry-after"]) <= 60
    assert codes == [200] * FEEDBACK_BURST + [429]
    # another key still has its own bucket
    answer = segment(http, api, "other-client", photo(120, (40, 30)))
    mask = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert feedback(http, api, "other-client", answer.headers["x-feedback-token"],
                    mask).status_code == 200

    storage_for(f"gs://{api.bucket}").write(f"gs://{api.bucket}/incoming/rl/a.jpg",
                                            photo(5, (16, 16)))
    job_codes = []
    for n in range(JOBS_BURST + 1):
        job = {"input": f"gs://{api.bucket}/incoming/rl/",
               "output": f"gs://{api.bucket}/results/rate-{n}"}
        submitted = http.post(api.url("/v1/jobs"), json=job, headers=api.auth("burst"))
        job_codes.append(submitted.status_code)
    assert job_codes == [202] * JOBS_BURST + [429]


def test_jobs_record_their_submitter_and_only_it_or_admin_reads_them(http: httpx.Client,
                                                                     api: Api) -> None:
    storage_for(f"gs://{api.bucket}").write(f"gs://{api.bucket}/incoming/own/a.jpg",
                                            photo(6, (16, 16)))
    job = {"input": f"gs://{api.bucket}/incoming/own/", "output": f"gs://{api.bucket}/results/own"}
    submitted = http.post(api.url("/v1/jobs"), json=job, headers=api.auth("batch"))
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["submitted_by"] == "batch"
    location = api.url(submitted.headers["location"])
    assert http.get(location, headers=api.auth("batch")).json()["submitted_by"] == "batch"
    assert_problem(http.get(location, headers=api.auth("batch-2")), 404, "job_not_found")
    assert_problem(http.delete(location, headers=api.auth("batch-2")), 404, "job_not_found")
    assert_problem(http.get(f"{location}/items", headers=api.auth("batch-2")), 404,
                   "job_not_found")
    assert http.get(location, headers=api.auth("ops")).status_code == 200


def test_metrics_and_docs_are_not_on_the_api_port(http: httpx.Client, api: Api) -> None:
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert http.get(api.url(path), headers=api.auth("ops")).status_code == 404
    scraped = http.get(f"http://127.0.0.1:{api.metrics_port}/metrics")
    assert scraped.status_code == 200
    assert "maskfleet_http_requests_total" in scraped.text


def test_the_access_log_names_key_ids_never_keys(http: httpx.Client, api: Api) -> None:
    answer = segment(http, api, "reader", photo(7, (40, 30)),
                     **{"X-Request-Id": "access-log-probe-1"})
    assert answer.status_code == 200

    def logged() -> dict[str, object] | None:
        for line in api.log.read_text().splitlines():
            if "access-log-probe-1" in line and line.startswith("{"):
                entry: dict[str, object] = json.loads(line)
                if entry.get("msg") == "request":
                    return entry
        return None

    wait_until(lambda: logged() is not None, 10, "the access log line")
    entry = logged()
    assert entry is not None
    assert (entry["caller"], entry["status"], entry["route"]) == ("reader", 200, "/v1/segment")
    text = api.log.read_text()
    assert not any(key in text for key in api.keys.values())
    assert "anonymous" not in json.dumps([e for e in text.splitlines() if "open to" in e])

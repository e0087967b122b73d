"""The inference API as a real uvicorn process with a real Redis and a real SavedModel:
segmentation, the cache, batching, bad input, Open Inference Protocol v2 and metrics."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from tests.integration.test_inference_support import (
    CONTENT_TYPES,
    assert_trimap,
    batches_larger_than_one,
    mask_of,
    metric,
    photo,
    segment,
    start_api,
    url,
)
from tests.servers import Server, running

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def api(tiny_model_repo: Path, redis_server: Server,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("api")
    server = start_api(tiny_model_repo, workdir, f"redis://127.0.0.1:{redis_server.port}/0",
                       batch_max_wait_ms=20, max_body_bytes=2 * 1024 * 1024,
                       max_pixels=4_000_000, role="canary", stage_poll_seconds=0)
    with running(server):
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        yield http


@pytest.mark.parametrize(("fmt", "size"), [("JPEG", (500, 375)), ("PNG", (90, 120))])
def test_an_image_comes_back_as_a_trimap_at_its_own_resolution(api, client, fmt, size):
    answer = segment(client, api, photo(1, size, fmt), CONTENT_TYPES[fmt])
    assert answer.status_code == 200
    assert answer.headers["x-model-version"] == "1/savedmodel"
    assert answer.headers["x-cache"] == "miss"
    assert answer.headers["x-request-id"]
    assert_trimap(mask_of(answer), *size)


def test_multipart_upload_with_a_json_answer(api, client):
    image = photo(2, (64, 40), "PNG")
    answer = client.post(url(api, "/v1/segment"), params={"format": "json"},
                         files={"image": ("pet.png", image, "image/png")})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["model"], body["version"], body["width"], body["height"]) == ("unet", 1, 64, 40)
    assert body["request_id"] == answer.headers["x-request-id"]
    assert sum(body["class_fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert_trimap(mask, 64, 40)


def test_a_repeat_is_a_cache_hit_with_identical_bytes(api, client):
    image = photo(3)
    first, second = segment(client, api, image), segment(client, api, image)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content
    as_json = segment(client, api, image, format="json").json()
    assert as_json["cached"] is True
    assert base64.b64decode(as_json["mask_png"]) == first.content
    assert metric(api, "maskfleet_cache_hits_total") >= 2


def test_concurrent_requests_share_model_calls(api, client):
    before = batches_larger_than_one(api, "1")
    start = threading.Barrier(12)

    def one(seed: int) -> httpx.Response:
        image = photo(1000 + seed)
        start.wait()
        return segment(client, api, image)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(12)))
    assert [a.status_code for a in answers] == [200] * 12
    assert batches_larger_than_one(api, "1") > before


GIF = Image.new("RGB", (8, 8))
TRUNCATED = photo(4, (200, 200))[:400]
BIG_PNG = Image.new("RGB", (2500, 2000))  # 5 M pixels, a few KB as PNG


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("case", "path", "body", "content_type", "status", "code"), [
    ("empty", "/v1/segment", b"", "image/jpeg", 400, "empty_body"),
    ("not an image", "/v1/segment", b"%PDF-1.7 definitely", "image/jpeg", 422, "invalid_image"),
    ("truncated", "/v1/segment", TRUNCATED, "image/jpeg", 422, "invalid_image"),
    ("gif", "/v1/segment", encoded(GIF, "GIF"), "image/png", 415, "unsupported_media_type"),
    ("wrong type", "/v1/segment", photo(5), "application/json", 415, "unsupported_media_type"),
    ("too many bytes", "/v1/segment", b"\xff" * (3 * 1024 * 1024), "image/jpeg", 413,
     "payload_too_large"),
    ("too many pixels", "/v1/segment", encoded(BIG_PNG, "PNG"), "image/png", 413,
     "too_many_pixels"),
    ("malformed multipart", "/v1/segment", b"--b\r\nnot headers at all",
     "multipart/form-data; boundary=b", 400, "malformed_multipart"),
    ("multipart without image", "/v1/segment",
     b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n',
     "multipart/form-data; boundary=b", 400, "missing_image"),
    ("malformed v2 json", "/v2/models/unet/infer", b'{"inputs": [{"name": ', "application/json",
     400, "invalid_inference_request"),
    ("v2 wrong datatype", "/v2/models/unet/infer",
     b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]}',
     "application/json", 400, "invalid_inference_request"),
    ("unknown model", "/v2/models/resnet/infer", b"{}", "application/json", 404,
     "model_not_found"),
    ("unknown version", "/v2/models/unet/versions/2/infer", b"{}", "application/json", 404,
     "version_not_found"),
])
def test_each_kind_of_bad_input_gets_its_own_problem(api, client, case, path, body, content_type,
                                                     status, code):
    answer = client.post(url(api, path), content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status, f"{case}: {answer.text}"
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert (problem["status"], problem["code"]) == (status, code)
    assert problem["detail"]
    assert problem["title"]
    assert problem["request_id"] == answer.headers["x-request-id"]
    assert "Traceback" not in answer.text


def test_v2_json_round_trip_with_pixels_and_with_encoded_images(api, client):
    pixels = np.random.default_rng(6).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    request = {"id": "kserve-1", "inputs": [{"name": "images", "shape": [2, 30, 40, 3],
                                             "datatype": "UINT8",
                                             "data": pixels.ravel().tolist()}]}
    answer = client.post(url(api, "/v2/models/unet/infer"), json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("kserve-1", "unet", "1")
    (mask,) = body["outputs"]
    assert (mask["name"], mask["datatype"], mask["shape"]) == ("mask", "UINT8", [2, 30, 40])
    assert set(mask["data"]) <= {1, 2, 3}

    jpeg = photo(7, (50, 20))
    request = {"id": "kserve-2", "inputs": [{"name": "image_bytes", "shape": [1],
                                             "datatype": "BYTES",
                                             "data": [base64.b64encode(jpeg).decode()]}]}
    body = client.post(url(api, "/v2/models/unet/versions/1/infer"), json=request).json()
    (mask,) = body["outputs"]
    assert mask["shape"] == [1, 20, 50]
    # the same image through /v1 gives the same mask
    v1_mask = mask_of(segment(client, api, jpeg))
    np.testing.assert_array_equal(np.array(mask["data"], np.uint8).reshape(20, 50), v1_mask)


def test_tritonclient_works_unchanged(api):
    client = triton.InferenceServerClient(f"127.0.0.1:{api.port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("unet")
        assert not client.is_model_ready("unet", "2")
        assert client.get_model_metadata("unet")["versions"] == ["1"]

        pixels = np.random.default_rng(8).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
        tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)  # binary tensor extension, as by default
        result = client.infer("unet", [tensor], request_id="t-1")
        assert result.get_response()["id"] == "t-1"
        masks = result.as_numpy("mask")
        assert masks.shape == (3, 24, 32)
        assert set(np.unique(masks).tolist()) <= {1, 2, 3}

        images = np.array([photo(9, (40, 30)), photo(10, (20, 60), "PNG")], dtype=np.object_)
        tensor = triton.InferInput("image_bytes", [2], "BYTES")
        tensor.set_data_from_numpy(images)
        result = client.infer("unet", [tensor],
                              outputs=[triton.InferRequestedOutput("mask_png")])
        sizes = [Image.open(io.BytesIO(png)).size for png in result.as_numpy("mask_png")]
        assert sizes == [(40, 30), (20, 60)]

        with pytest.raises(triton.InferenceServerException, match="version 5"):
            client.infer("unet", [tensor], model_version="5")
    finally:
        client.close()


def test_metrics_name_the_served_model_and_count_traffic(api, client):
    segment(client, api, photo(11))
    labels = {"model": "unet", "version": "1", "stage": "production", "role": "canary"}
    assert metric(api, "maskfleet_model_info", **labels) == 1
    assert metric(api, "maskfleet_model_ready", model="unet", role="canary") == 1
    assert metric(api, "maskfleet_model_eval_metric", model="unet", version="1",
                  metric="mean_iou") == pytest.approx(0.6)
    assert metric(api, "maskfleet_model_load_seconds", model="unet", version="1") > 0
    assert metric(api, "maskfleet_http_requests_total", route="/v1/segment", method="POST",
                  status="200", version="1") >= 1
    assert metric(api, "maskfleet_http_request_duration_seconds_count", route="/v1/segment",
                  method="POST", status="200", version="1") >= 1
    assert metric(api, "maskfleet_model_inference_seconds_count", version="1") >= 1
    assert metric(api, "maskfleet_batch_queue_seconds_count", version="1") >= 1

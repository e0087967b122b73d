"""OIP v2 over gRPC: tritonclient.grpc (sync and asyncio), unchanged, against the real API
process (`python -m services.inference`), which serves REST and gRPC from one data plane."""

from __future__ import annotations

import asyncio
import io
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image
from tritonclient.utils import InferenceServerException

from services.inference.grpc_v2 import grpc_predict_v2_pb2 as pb
from services.inference.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.integration.test_inference_support import metric, photo, start_api, url
from tests.integration.test_security_api import create_key
from tests.servers import Server, free_port, port_open, wait_until

pytestmark = pytest.mark.integration
ROUTE = "/inference.GRPCInferenceService/ModelInfer"


def start_grpc_api(repo: Path, workdir: Path, redis_url: str, **settings: object) -> Server:
    server = start_api(repo, workdir, redis_url, grpc_port=free_port(), **settings)
    server.grpc_port = int(server.env["MASKFLEET_GRPC_PORT"])  # type: ignore[attr-defined]
    return server


def target(server: Server) -> str:
    return f"127.0.0.1:{server.grpc_port}"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def api(tiny_model_repo: Path, redis_server: Server,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_grpc_api(tiny_model_repo, tmp_path_factory.mktemp("grpc"),
                            f"redis://127.0.0.1:{redis_server.port}/0",
                            max_body_bytes=2 * 1024 * 1024, role="canary")
    yield server
    server.stop()


@pytest.fixture
def client(api: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(target(api)) as c:
        yield c


def pixels_of(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(photo(seed, size))).convert("RGB"))


def uint8_input(images: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return tensor


def bytes_input(blobs: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("image_bytes", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return tensor


def outputs(*names: str) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n) for n in names]


def rest_mask(api: Server, image: bytes) -> np.ndarray:
    answer = httpx.post(url(api, "/v1/segment"), content=image,
                        headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(answer.content)))


def test_health_and_metadata_as_tritonclient_reads_them(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("unet")
    assert client.is_model_ready("unet", "1")
    assert not client.is_model_ready("unet", "7")
    assert not client.is_model_ready("cat")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "maskfleet"
    assert "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("unet", as_json=True)
    assert model["versions"] == ["1"]
    assert {i["name"]: i["datatype"] for i in model["inputs"]} == \
        {"images": "UINT8", "image_bytes": "BYTES"}
    assert {o["name"] for o in model["outputs"]} == {"mask", "mask_png"}
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("cat")
    assert error.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model" in error.value.message()


def test_uint8_pixels_give_the_masks_rest_gives(api, client):
    images = np.stack([pixels_of(1), pixels_of(2)])
    result = client.infer("unet", [uint8_input(images)], request_id="px-1",
                          outputs=outputs("mask", "mask_png"))
    answer = result.get_response(as_json=True)
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("unet", "1", "px-1")
    masks = result.as_numpy("mask")
    assert masks.shape == (2, 30, 40)
    assert masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) <= {1, 2, 3}
    pngs = result.as_numpy("mask_png")
    for mask, png in zip(masks, pngs, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), mask)
    # the same pixels sent as a lossless PNG over REST give the same mask
    png_image = io.BytesIO()
    Image.fromarray(images[0]).save(png_image, format="PNG")
    rest = httpx.post(url(api, "/v1/segment"), content=png_image.getvalue(),
                      headers={"Content-Type": "image/png"}, timeout=30)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rest.content))), masks[0])


def test_encoded_images_as_bytes_of_any_size(api, client):
    blobs = [photo(3, (50, 20)), photo(4, (24, 36))]
    result = client.infer("unet", [bytes_input(blobs)], outputs=outputs("mask_png"))
    pngs = result.as_numpy("mask_png")
    assert [np.asarray(Image.open(io.BytesIO(p))).shape for p in pngs] == [(20, 50), (36, 24)]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(pngs[0]))),
                                  rest_mask(api, blobs[0]))
    default = client.infer("unet", [bytes_input(blobs[:1])])  # no outputs named: `mask`
    assert default.as_numpy("mask").shape == (1, 20, 50)
    assert default.as_numpy("mask_png") is None


def test_typed_contents_are_read_like_raw_contents(api):
    images = pixels_of(5)[np.newaxis]
    blob = photo(6, (32, 32))
    with grpc.insecure_channel(target(api)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        typed = pb.ModelInferRequest(model_name="unet", inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="images", datatype="UINT8", shape=list(images.shape),
                contents=pb.InferTensorContents(uint_contents=images.ravel().tolist()))])
        raw = pb.ModelInferRequest(model_name="unet", raw_input_contents=[images.tobytes()],
                                   inputs=[pb.ModelInferRequest.InferInputTensor(
                                       name="images", datatype="UINT8",
                                       shape=list(images.shape))])
        answers = [stub.ModelInfer(r, timeout=30) for r in (typed, raw)]
        assert answers[0].raw_output_contents == answers[1].raw_output_contents
        assert list(answers[0].outputs[0].shape) == [1, 30, 40]
        encoded = stub.ModelInfer(pb.ModelInferRequest(
            model_name="unet",
            inputs=[pb.ModelInferRequest.InferInputTensor(
                name="image_bytes", datatype="BYTES", shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[blob]))],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="mask")]), timeout=30)
        mask = np.frombuffer(encoded.raw_output_contents[0], np.uint8).reshape(32, 32)
        np.testing.assert_array_equal(mask, rest_mask(api, blob))
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(pb.ModelInferRequest(model_name="unet", inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="images", datatype="UINT8", shape=[1, 2, 2, 3],
                    contents=pb.InferTensorContents(uint_contents=[300] * 12))]), timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "0 to 255" in error.value.details()
        assert ("maskfleet-error-code", "invalid_inference_request") in \
            error.value.trailing_metadata()


def test_request_id_and_version_come_back_in_the_trailers(api):
    images = pixels_of(14)[np.newaxis]
    request = pb.ModelInferRequest(model_name="unet", raw_input_contents=[images.tobytes()],
                                   inputs=[pb.ModelInferRequest.InferInputTensor(
                                       name="images", datatype="UINT8",
                                       shape=list(images.shape))])
    with grpc.insecure_channel(target(api)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(request, timeout=30,
                                                 metadata=(("x-request-id", "trace-9"),))
        trailers = dict(call.trailing_metadata())
        assert trailers["x-request-id"] == "trace-9"
        assert trailers["x-model-version"] == f"1/{answer.parameters['variant'].string_param}"
        assert answer.id == "trace-9"
        _, call = stub.ServerLive.with_call(pb.ServerLiveRequest(), timeout=10)
        assert len(dict(call.trailing_metadata())["x-request-id"]) == 32  # a new id
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(pb.ModelInferRequest(model_name="cat"), timeout=10,
                            metadata=(("x-request-id", "trace-10"),))
        assert dict(error.value.trailing_metadata())["x-request-id"] == "trace-10"


@pytest.mark.parametrize(("tensor", "code", "fragment"), [
    (lambda: triton.InferInput("x", [1, 2], "FP32"), "INVALID_ARGUMENT", "datatype"),
    (lambda: uint8_input(np.zeros((1, 4, 4), np.uint8)), "INVALID_ARGUMENT", "[N, H, W, 3]"),
    (lambda: bytes_input([b"not an image"]), "INVALID_ARGUMENT", "image"),
    (lambda: uint8_input(np.zeros((1, 1000, 1000, 3), np.uint8)), "RESOURCE_EXHAUSTED",
     "larger than max"),
])
def test_bad_requests_get_a_status_and_a_reason(client, tensor, code, fragment):
    built = tensor()
    if built.datatype() == "FP32":
        built.set_data_from_numpy(np.zeros((1, 2), np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("unet", [built])
    assert error.value.status() == f"StatusCode.{code}"
    assert fragment in error.value.message()


def test_request_metrics_count_grpc_calls_with_their_protocol(api, client):
    client.infer("unet", [uint8_input(pixels_of(7)[np.newaxis])])
    with pytest.raises(InferenceServerException):
        client.infer("cat", [uint8_input(pixels_of(7)[np.newaxis])])
    assert metric(api, "maskfleet_http_requests_total", route=ROUTE, protocol="grpc",
                  status="200", version="1", method="POST") >= 1
    assert metric(api, "maskfleet_http_requests_total", route=ROUTE, protocol="grpc",
                  status="404") >= 1
    assert metric(api, "maskfleet_http_request_duration_seconds_count", route=ROUTE,
                  protocol="grpc", status="200") >= 1


def test_grpc_health_follows_readiness(api):
    with grpc.insecure_channel(target(api)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_asyncio_client_works_unchanged(api):
    async def run() -> tuple[bool, np.ndarray]:
        async with triton_aio.InferenceServerClient(target(api)) as c:
            ready = await c.is_model_ready("unet")
            result = await c.infer("unet", [bytes_input([photo(8, (20, 16))])],
                                   outputs=[triton_aio.InferRequestedOutput("mask")])
            return ready, result.as_numpy("mask")

    ready, mask = asyncio.run(run())
    assert ready
    assert mask.shape == (1, 16, 20)



# --- API keys: metadata carries them, as tritonclient's `headers=` sends -----------------------

@pytest.fixture(scope="module")
def keyed_api(tiny_model_repo: Path, redis_server: Server,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("grpc-keys")
    keys_file = workdir / "keys.json"
    keys = {key_id: create_key(keys_file, key_id, scopes)
            for key_id, scopes in {"reader": "infer", "batch": "jobs"}.items()}
    server = start_grpc_api(tiny_model_repo, workdir, f"redis://127.0.0.1:{redis_server.port}/0",
                            api_keys_file=keys_file, ready_path="/healthz")
    # started before the model is warm: a Watch stream (no Check) follows it to SERVING
    seen = watch_until_serving(server)
    assert seen[-1] == health_pb2.HealthCheckResponse.SERVING
    assert set(seen) <= {health_pb2.HealthCheckResponse.SERVING,
                         health_pb2.HealthCheckResponse.NOT_SERVING}
    yield server, keys
    server.stop()


def watch_until_serving(server: Server) -> list[int]:
    seen = []
    with grpc.insecure_channel(target(server)) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=90)
        for answer in stream:
            seen.append(answer.status)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                stream.cancel()
                break
    return seen


def test_api_keys_travel_as_metadata(keyed_api):
    server, keys = keyed_api
    tensor = [bytes_input([photo(13, (20, 20))])]
    with triton.InferenceServerClient(target(server)) as c:
        for call in (lambda **h: c.infer("unet", tensor, **h),
                     lambda **h: c.is_server_ready(**h),
                     lambda **h: c.get_model_metadata("unet", **h)):
            with pytest.raises(InferenceServerException) as error:
                call()
            assert error.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as error:
                call(headers={"authorization": "Bearer not-a-key"})
            assert error.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as error:
                call(headers={"authorization": f"Bearer {keys['batch']}"})
            assert error.value.status() == "StatusCode.PERMISSION_DENIED"
            assert "`infer` scope" in error.value.message()
        for headers in ({"authorization": f"Bearer {keys['reader']}"},
                        {"x-api-key": keys["reader"]}):
            result = c.infer("unet", tensor, headers=headers)
            assert result.as_numpy("mask").shape == (1, 20, 20)
    assert metric(server, "maskfleet_http_requests_total", route=ROUTE, protocol="grpc",
                  status="401") >= 2


# --- the same guarantees as REST: deadlines, shedding, budgets, drain -------------------------

@pytest.fixture(scope="module")
def slow_api(tiny_model_repo: Path, redis_server: Server,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A long batch wait for arrivals parks requests in the batcher, so they are surely in
    flight; a budget
    of 3000 pixels in flight admits two 40x30 images at once and sheds a third."""
    server = start_grpc_api(tiny_model_repo, tmp_path_factory.mktemp("grpc-slow"),
                            f"redis://127.0.0.1:{redis_server.port}/0",
                            batch_max_wait_ms=1500, batch_wait="always", batch_max_size=64,
                            max_inflight_pixels=3000,
                            max_request_pixels=3000, cache_enabled="false", max_pixels=250_000,
                            stage_poll_seconds=0)
    yield server
    server.stop()


def infer_request(seed: int) -> pb.ModelInferRequest:
    images = pixels_of(seed)[np.newaxis]
    return pb.ModelInferRequest(model_name="unet", raw_input_contents=[images.tobytes()],
                                inputs=[pb.ModelInferRequest.InferInputTensor(
                                    name="images", datatype="UINT8", shape=list(images.shape))])


def test_client_timeout_is_the_request_deadline(slow_api):
    with triton.InferenceServerClient(target(slow_api)) as c:
        with pytest.raises(InferenceServerException) as error:
            c.infer("unet", [uint8_input(pixels_of(9)[np.newaxis])], client_timeout=0.4)
        assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        # the server dropped the work when the caller's deadline passed, and counted it: as a
        # 504 when its own copy of the deadline fired first, as a 499 when gRPC cancelled the
        # call first (both are at 0.4 s, so which one wins is a race)
        def dropped() -> float:
            return sum(metric(slow_api, "maskfleet_http_requests_total", route=ROUTE,
                              protocol="grpc", status=status) for status in ("504", "499"))

        wait_until(lambda: dropped() >= 1, 30, "a dropped gRPC call")
        # the OIP `timeout` parameter (microseconds) shortens it too, answered by the server
        with pytest.raises(InferenceServerException) as error:
            c.infer("unet", [uint8_input(pixels_of(9)[np.newaxis])], timeout=300_000)
        assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "deadline" in error.value.message()


def test_overload_is_shed_with_retry_info(slow_api):
    with grpc.insecure_channel(target(slow_api)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelInfer.future(infer_request(seed), timeout=30) for seed in range(4)]
        shed, served = [], 0
        for call in calls:
            try:
                call.result()
                served += 1
            except grpc.RpcError as error:
                shed.append(error)
    assert served >= 1
    assert shed, "a third image beyond the pixel budget must be refused"
    for error in shed:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("maskfleet-error-code", "overloaded") in error.trailing_metadata()
        status = rpc_status.from_call(error)
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert info.retry_delay.seconds == 1
    assert metric(slow_api, "maskfleet_requests_shed_total", reason="pixel_budget") >= 1


def test_pixel_budget_is_enforced_before_decoding(slow_api):
    with triton.InferenceServerClient(target(slow_api)) as c:
        with pytest.raises(InferenceServerException) as error:
            c.infer("unet", [uint8_input(np.zeros((1, 600, 600, 3), np.uint8))])
        assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "250000 pixels" in error.value.message()
        with pytest.raises(InferenceServerException) as error:
            c.infer("unet", [bytes_input([photo(10, (700, 500))])])
        assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_sigterm_lets_grpc_calls_in_flight_finish(slow_api):
    """Runs last on this server: it stops it."""
    def one(seed: int) -> tuple[np.ndarray, float]:
        with triton.InferenceServerClient(target(slow_api)) as c:
            result = c.infer("unet", [uint8_input(pixels_of(seed)[np.newaxis])],
                             client_timeout=30)
            return result.as_numpy("mask"), time.monotonic()

    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(one, seed) for seed in (11, 12)]
        wait_until(lambda: metric(slow_api, "maskfleet_http_requests_in_flight") == 2, 30,
                   "both calls in flight")
        terminated = time.monotonic()
        slow_api.signal(signal.SIGTERM)
        results = [future.result() for future in pending]
    for mask, finished in results:
        assert mask.shape == (1, 30, 40)
        assert finished > terminated
    assert slow_api.proc is not None
    assert slow_api.proc.wait(30) in (0, -signal.SIGTERM)
    assert not port_open(slow_api.grpc_port)  # type: ignore[attr-defined]

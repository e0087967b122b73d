"""OIP v2 over gRPC at the edges of a call's and a server's life, with tritonclient.grpc and
grpcio against the real API process: a deadline that passes while the call waits behind other
work, a server that has no model yet, a pod that drains and shuts down.

Kept out of `test_grpc_api.py` (and of the Makefile's HELM_TESTS group) because each test
needs a server configured for it: one codec thread behind long decodes, an empty model
repository, a drain marker.
"""

from __future__ import annotations

import io
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image
from tritonclient.utils import InferenceServerException

from services.inference.grpc_v2 import grpc_predict_v2_pb2 as pb
from services.inference.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from services.models.cli import main as models_cli
from tests.integration.test_grpc_api import (
    bytes_input,
    infer_request,
    pixels_of,
    start_grpc_api,
    target,
    uint8_input,
)
from tests.integration.test_inference_support import metric, photo
from tests.servers import Server, wait_until

pytestmark = pytest.mark.integration
SERVICE = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(server: Server, service: str = SERVICE) -> int:
    with grpc.insecure_channel(target(server)) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(answer.status)


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """What `call` raised (None if it returned) and how long it took, in seconds."""
    started = time.monotonic()
    try:
        call()
    except (InferenceServerException, grpc.RpcError) as error:
        return error, time.monotonic() - started
    return None, time.monotonic() - started


def status_of(error: BaseException | None) -> str:
    if isinstance(error, InferenceServerException):
        return str(error.status())
    if isinstance(error, grpc.RpcError):
        return str(error.code())
    return "OK"


# --- a deadline bounds every wait: here, the wait for the one codec thread --------------------

REQUEST_TIMEOUT = 2.0
"""The server's own request deadline (MASKFLEET_REQUEST_TIMEOUT_SECONDS) in `codec_api`."""
SLACK = 1.5
"""How long past its deadline a call may take to end: answering, scheduling on a busy 2-core
machine. The blocker below keeps the codec thread for several times longer than that."""
BLOCKER_IMAGES = 64
BLOCKER_SIDE = 3000


def large_png(side: int = BLOCKER_SIDE) -> bytes:
    """A PNG that takes ~0.1 s of CPU to decode (a JPEG would decode at 1/8 scale)."""
    y, x = np.mgrid[0:side, 0:side]
    pixels = np.stack([(x * 7 + y) % 256, (y * 3) % 256, (x ^ y) & 255], -1).astype(np.uint8)
    pixels[::7, ::5] = np.random.default_rng(0).integers(0, 256, pixels[::7, ::5].shape,
                                                         dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def codec_api(tiny_model_repo: Path, redis_server: Server,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One codec thread, and limits that admit one request of 64 large PNGs: decoding it keeps
    that thread busy for several seconds, far past every deadline below."""
    server = start_grpc_api(tiny_model_repo, tmp_path_factory.mktemp("grpc-codec"),
                            f"redis://127.0.0.1:{redis_server.port}/0",
                            codec_threads=1, request_timeout_seconds=REQUEST_TIMEOUT,
                            max_body_bytes=128 * 1024 * 1024,
                            max_request_pixels=BLOCKER_IMAGES * 9_000_000,
                            max_inflight_pixels=BLOCKER_IMAGES * 9_000_000 + 1_000_000,
                            # the blocker's 64 images being decoded count against the batch
                            # queue; room for the calls behind it, which must wait, not be shed
                            batch_max_queue_images=2 * BLOCKER_IMAGES,
                            cache_enabled="false", stage_poll_seconds=0)
    yield server
    server.stop()


def typed_pixels_request(seed: int) -> pb.ModelInferRequest:
    """UINT8 pixels as typed `uint_contents`: the one input the server parses on a codec
    thread, so this call waits for that thread before anything else."""
    images = pixels_of(seed)[np.newaxis]
    return pb.ModelInferRequest(model_name="unet", inputs=[
        pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="UINT8", shape=list(images.shape),
            contents=pb.InferTensorContents(uint_contents=images.ravel().tolist()))])


def model_images(server: Server) -> float:
    return metric(server, "maskfleet_batch_size_sum")


def test_a_deadline_ends_calls_queued_behind_long_decodes(codec_api: Server) -> None:
    blocker = pb.ModelInferRequest(
        model_name="unet", raw_input_contents=[b"".join(
            len(png).to_bytes(4, "little") + png for png in [large_png()] * BLOCKER_IMAGES)],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image_bytes", datatype="BYTES",
                                                      shape=[BLOCKER_IMAGES])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="mask_png")])
    images_before = model_images(codec_api)
    dropped_before = metric(codec_api, "maskfleet_deadline_exceeded_total")
    with grpc.insecure_channel(target(codec_api)) as channel, \
            triton.InferenceServerClient(target(codec_api)) as client, \
            ThreadPoolExecutor(4) as pool:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        sent = time.monotonic()
        first = stub.ModelInfer.future(blocker)  # no client deadline: the server's applies
        ended: list[float] = []
        first.add_done_callback(lambda _: ended.append(time.monotonic()))
        # its pixels count as in flight in the same event-loop step that hands its decode job
        # (64 full PNG decodes, seconds) to the one codec thread, after its headers were read:
        # from then on every later job waits behind that decode
        wait_until(lambda: metric(codec_api, "maskfleet_pixels_in_flight")
                   >= BLOCKER_IMAGES * BLOCKER_SIDE ** 2, 30,
                   "the 64-image request's decode to reach the codec thread")
        probes: dict[str, tuple[float, Future[tuple[BaseException | None, float]]]] = {
            # waits for the codec thread to parse its typed contents; the server's deadline
            "typed contents, server deadline": (REQUEST_TIMEOUT, pool.submit(
                timed, lambda: stub.ModelInfer(typed_pixels_request(1)))),
            # parsed at once, then waits for the thread to decode; the server's deadline
            "BYTES, server deadline": (REQUEST_TIMEOUT, pool.submit(
                timed, lambda: client.infer("unet", [bytes_input([photo(2, (40, 30))])]))),
            # the OIP `timeout` parameter (µs): the server ends it, no client deadline
            "BYTES, timeout parameter": (0.5, pool.submit(
                timed, lambda: client.infer("unet", [bytes_input([photo(3, (40, 30))])],
                                            timeout=500_000))),
            # the client's gRPC deadline: the server drops the call's work when it passes
            "UINT8, client deadline": (0.5, pool.submit(
                timed, lambda: client.infer("unet", [uint8_input(pixels_of(4)[np.newaxis])],
                                            client_timeout=0.5))),
        }
        for name, (deadline, future) in probes.items():
            error, took = future.result()
            assert status_of(error) == "StatusCode.DEADLINE_EXCEEDED", (name, error)
            assert took < deadline + SLACK, f"{name}: ended {took:.2f} s after it was sent"
            if "client" not in name:  # the server's own answer, not the client giving up
                assert "deadline" in str(error), (name, error)
        with pytest.raises(grpc.RpcError) as error:
            first.result()
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert ended[0] - sent < REQUEST_TIMEOUT + 2 * SLACK  # its upload included

        # the work of every call that ended was dropped: once the codec thread is free again,
        # the model has run no image but those of the one-image calls that waited for it
        attempts = []

        def served() -> bool:
            attempts.append(1)
            return client.infer("unet", [uint8_input(pixels_of(5)[np.newaxis])],
                                client_timeout=30).as_numpy("mask") is not None

        wait_until(served, 120, "a call after the long decode ended")
    assert 1 <= model_images(codec_api) - images_before <= len(attempts)
    # the blocker and the three calls the server itself ended (the fourth was the client's)
    assert metric(codec_api, "maskfleet_deadline_exceeded_total") - dropped_before >= 4


# --- a server that has no model yet ------------------------------------------------------------

def test_a_server_still_loading_answers_unavailable_with_retry_info(
        tiny_model_repo: Path, redis_server: Server, tmp_path: Path) -> None:
    repository = tmp_path / "models"  # nothing published yet: the holder keeps looking
    api = start_grpc_api(repository, tmp_path, f"redis://127.0.0.1:{redis_server.port}/0",
                         ready_path="/healthz", stage_poll_seconds=1, retry_after_seconds=3,
                         cache_enabled="false")
    try:
        assert health(api, "") == NOT_SERVING
        assert health(api) == NOT_SERVING
        with triton.InferenceServerClient(target(api)) as client:
            assert client.is_server_live()
            assert not client.is_server_ready()
            assert not client.is_model_ready("unet")
            with pytest.raises(InferenceServerException) as refused:
                client.infer("unet", [uint8_input(pixels_of(6)[np.newaxis])])
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            assert "still loading" in str(refused.value.message())
        with grpc.insecure_channel(target(api)) as channel, \
                pytest.raises(grpc.RpcError) as error:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(7), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(error.value.trailing_metadata())
        assert trailers["maskfleet-error-code"] == "model_not_ready"
        assert trailers["retry-after"] == "3"
        info = error_details_pb2.RetryInfo()
        assert rpc_status.from_call(error.value).details[0].Unpack(info)
        assert info.retry_delay.seconds == 3

        # once a version is published the same server serves it, no restart
        assert models_cli(["--repository", str(repository), "import",
                           str(tiny_model_repo / "unet" / "2"), "--stage", "production"]) == 0
        wait_until(lambda: health(api) == SERVING, 60, "SERVING once the model loaded")
        with triton.InferenceServerClient(target(api)) as client:
            assert client.is_server_ready()
            result = client.infer("unet", [uint8_input(pixels_of(8)[np.newaxis])])
            assert result.as_numpy("mask").shape == (1, 30, 40)
    finally:
        api.stop()


# --- a pod that drains, then shuts down --------------------------------------------------------

def refused_on_a_new_connection(api: Server, seed: int, refusals: list[str]) -> bool:
    """A new call on a new connection (served until the gRPC server stops); a refusal's status
    goes into `refusals`."""
    with triton.InferenceServerClient(target(api)) as late:
        try:
            late.infer("unet", [uint8_input(pixels_of(seed)[np.newaxis])], client_timeout=10)
        except InferenceServerException as error:
            refusals.append(str(error.status()))
            return True
    return False


def test_a_draining_pod_turns_not_serving_then_refuses_new_calls(
        tiny_model_repo: Path, redis_server: Server, tmp_path: Path) -> None:
    """The chart's preStop hook writes the drain marker: health turns NOT_SERVING at once (gRPC
    health-checking clients and Gateways stop picking the pod) while calls that still arrive
    on connections already open are served, as over REST. SIGTERM then closes the door: calls
    in flight finish, new ones end UNAVAILABLE, which gRPC clients retry elsewhere."""
    marker = tmp_path / "draining"
    api = start_grpc_api(tiny_model_repo, tmp_path, f"redis://127.0.0.1:{redis_server.port}/0",
                         drain_file=marker, batch_max_wait_ms=1500, batch_wait="always",
                         batch_max_size=64,
                         cache_enabled="false", stage_poll_seconds=0)
    try:
        assert health(api) == SERVING
        with grpc.insecure_channel(target(api)) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=60)
            assert next(watch).status == SERVING
            marker.write_text("preStop")
            assert health(api) == NOT_SERVING
            assert health(api, "") == NOT_SERVING
            assert next(watch).status == NOT_SERVING  # a Watch stream hears it unasked
            watch.cancel()

        with triton.InferenceServerClient(target(api)) as client, ThreadPoolExecutor(1) as pool:
            # still served while draining: a straggler must not fail
            assert client.infer("unet", [uint8_input(pixels_of(9)[np.newaxis])]) \
                .as_numpy("mask").shape == (1, 30, 40)
            # a call parked in the batcher (1.5 s batch wait) when SIGTERM arrives
            in_flight = pool.submit(lambda: client.infer(
                "unet", [uint8_input(pixels_of(10)[np.newaxis])], client_timeout=30))
            wait_until(lambda: metric(api, "maskfleet_http_requests_in_flight") == 1, 30,
                       "the call in flight")
            api.signal(signal.SIGTERM)
            refusals: list[str] = []
            wait_until(lambda: refused_on_a_new_connection(api, 11, refusals), 30,
                       "a new call refused during shutdown")
            assert refusals == ["StatusCode.UNAVAILABLE"]
            assert in_flight.result().as_numpy("mask").shape == (1, 30, 40)
        assert api.proc is not None
        assert api.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        api.stop()


def test_sigterm_drains_grpc_beside_http_not_after_it(
        tiny_model_repo: Path, redis_server: Server, tmp_path: Path) -> None:
    """uvicorn runs the app's shutdown only once its HTTP requests are done. Had gRPC waited for
    that, it would take new calls for as long as a slow upload lasts, then drain for as long
    again, past the pod's grace period (which counts one shutdown timeout). Here an HTTP
    request is still uploading when SIGTERM arrives: a new gRPC call is refused meanwhile, and
    the upload is still answered once it completes."""
    api = start_grpc_api(tiny_model_repo, tmp_path, f"redis://127.0.0.1:{redis_server.port}/0",
                         cache_enabled="false", stage_poll_seconds=0,
                         body_timeout_seconds=120, shutdown_timeout_seconds=60)
    try:
        body = photo(13, (40, 30))
        head = (f"POST /v1/segment HTTP/1.1\r\nHost: maskfleet\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", api.port), timeout=60) as upload:
            upload.sendall(head + body[:16])  # the rest of the body comes after SIGTERM
            wait_until(lambda: metric(api, "maskfleet_http_requests_in_flight") == 1, 30,
                       "the upload in flight")
            api.signal(signal.SIGTERM)
            refusals: list[str] = []
            wait_until(lambda: refused_on_a_new_connection(api, 14, refusals), 30,
                       "a new gRPC call refused while the upload is in flight")
            # a call racing the stop itself may end CANCELLED; from then on the port is shut
            assert refusals[0] in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")
            assert refused_on_a_new_connection(api, 15, refusals)
            assert refusals[1] == "StatusCode.UNAVAILABLE"
            upload.sendall(body[16:])
            reply = b""
            while chunk := upload.recv(65536):
                reply += chunk
        status_line, _, rest = reply.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 200 OK", reply[:300]
        assert rest.split(b"\r\n\r\n", 1)[1].startswith(b"\x89PNG")
        assert api.proc is not None
        assert api.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        api.stop()

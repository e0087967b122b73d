"""The gRPC server reads request messages as REST reads bodies: authenticated first, within the
body budget shared with REST, and within `MASKFLEET_BODY_TIMEOUT_SECONDS`.

Each caller here opens a call and never sends its message (a request-streaming call on the
unary method: on the wire, a unary call whose message never comes). grpcio itself would read
every such message whole before any handler ran, 1000 calls at once, anonymous ones too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.inference.grpc_v2 import grpc_predict_v2_pb2 as pb
from tests.integration.test_grpc_api import infer_request, start_grpc_api, target
from tests.integration.test_inference_support import metric
from tests.integration.test_security_api import create_key
from tests.servers import Server, wait_until

pytestmark = pytest.mark.integration
ROUTE = "/inference.GRPCInferenceService/ModelInfer"
MESSAGE = 1024 * 1024
BODY_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def api(tiny_model_repo: Path, redis_server: Server,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """Room for two messages of the largest size at once; a key with the `infer` scope."""
    workdir = tmp_path_factory.mktemp("grpc-receive")
    keys_file = workdir / "keys.json"
    key = create_key(keys_file, "reader", "infer")
    server = start_grpc_api(tiny_model_repo, workdir, f"redis://127.0.0.1:{redis_server.port}/0",
                            api_keys_file=keys_file, max_body_bytes=MESSAGE,
                            max_body_bytes_in_flight=2 * MESSAGE,
                            body_timeout_seconds=BODY_TIMEOUT)
    yield server, key
    server.stop()


class Silent:
    """A call opened on ModelInfer whose message is never sent (until `release`)."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._release = threading.Event()
        call = channel.stream_unary(
            ROUTE, request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString)
        self.future = call.future(self._nothing(), metadata=metadata, timeout=60)

    def _nothing(self) -> Iterator[pb.ModelInferRequest]:
        """The call's requests: none; it ends (half-closes) without one once released."""
        self._release.wait(60)
        yield from ()

    def release(self) -> None:
        self._release.set()

    def error(self, timeout: float = 30) -> grpc.RpcError:
        try:
            self.future.result(timeout=timeout)
        except grpc.RpcError as error:
            return error
        raise AssertionError("the call succeeded")


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_an_anonymous_call_is_refused_before_its_message_is_read(api):
    server, _ = api
    with grpc.insecure_channel(target(server)) as channel:
        silent = Silent(channel)
        try:  # answered while the message is still unsent
            assert silent.error(timeout=BODY_TIMEOUT).code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            silent.release()
    assert metric(server, "maskfleet_http_requests_total", route=ROUTE, protocol="grpc",
                  status="401") >= 1


def test_a_message_not_sent_within_the_body_timeout_ends_the_call(api):
    server, key = api
    with grpc.insecure_channel(target(server)) as channel:
        started = time.monotonic()
        silent = Silent(channel, bearer(key))
        try:
            error = silent.error()
        finally:
            silent.release()
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "not received within" in (error.details() or "")
        assert time.monotonic() - started < 20  # the server ended it, not the client's 60 s


def test_calls_beyond_the_body_budget_are_shed_with_retry_info(api):
    """Two silent calls hold the whole budget (room for two of the largest messages): a third
    call waits a moment for room, then is shed; once they end, calls are served again."""
    server, key = api
    with grpc.insecure_channel(target(server)) as channel:
        holders = [Silent(channel, bearer(key)) for _ in range(2)]
        wait_until(lambda: metric(server, "maskfleet_body_bytes_in_flight") >= 2 * MESSAGE,
                   BODY_TIMEOUT, "both silent calls holding their reservation")
        try:
            stub_call = channel.unary_unary(
                ROUTE, request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString)
            with pytest.raises(grpc.RpcError) as shed:
                stub_call(infer_request(3), metadata=bearer(key), timeout=30)
            assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ("maskfleet-error-code", "overloaded") in shed.value.trailing_metadata()
            info = error_details_pb2.RetryInfo()
            assert rpc_status.from_call(shed.value).details[0].Unpack(info)
        finally:
            for holder in holders:
                holder.release()
        for holder in holders:
            holder.error()
        answer = stub_call(infer_request(4), metadata=bearer(key), timeout=30)
        assert "mask" in [output.name for output in answer.outputs]
    assert metric(server, "maskfleet_body_bytes_in_flight") == 0
    assert metric(server, "maskfleet_requests_shed_total", reason="body_budget") >= 1


def test_health_checks_are_read_within_the_budget_too(api):
    server, _ = api
    with grpc.insecure_channel(target(server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

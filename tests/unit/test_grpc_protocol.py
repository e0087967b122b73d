"""The gRPC transport's fixed parts: stubs generated from the checked-in .proto, the wire names
tritonclient calls, and the one mapping of errors to gRPC status codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc.service_pb2 as triton_pb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.inference.grpc_v2 import grpc_predict_v2_pb2 as pb
from services.inference.grpc_v2.status import ERROR_CODE_KEY, RETRY_AFTER_KEY, to_status
from shared import errors

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def test_checked_in_stubs_are_what_the_proto_generates(tmp_path):
    subprocess.run([str(REPO / "scripts/gen_grpc.sh")], check=True, cwd=REPO,
                   env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    for name in GENERATED:
        fresh = (tmp_path / "services/inference/grpc_v2" / name).read_text()
        committed = (REPO / "services/inference/grpc_v2" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make protos`"


def test_messages_match_tritons_field_for_field():
    """Same package, service, methods, message names and field numbers as the protocol
    tritonclient was generated from: what makes the bytes on the wire compatible."""
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        _same_fields(message, triton_pb.DESCRIPTOR.message_types_by_name[name])


def _same_fields(ours, theirs) -> None:
    for field in ours.fields:
        other = theirs.fields_by_name[field.name]
        assert (field.number, field.type) == (other.number, other.type), field.full_name
    for nested in ours.nested_types:
        _same_fields(nested, theirs.nested_types_by_name[nested.name])


@pytest.mark.parametrize(("error", "code", "retry"), [
    (errors.InvalidInferenceRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT, False),
    (errors.InvalidImage("bad"), grpc.StatusCode.INVALID_ARGUMENT, False),
    (errors.ModelNotFound("x"), grpc.StatusCode.NOT_FOUND, False),
    (errors.TooManyPixels("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, False),
    (errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (errors.ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.Draining("x"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED, False),
    (errors.MaskfleetError("x"), grpc.StatusCode.INTERNAL, False),
])
def test_errors_map_to_one_status_each(error, code, retry):
    status = to_status(error, retry_after_seconds=3)
    assert status.code == code
    assert status.details == error.detail
    trailers = dict(status.trailing_metadata)
    assert trailers[ERROR_CODE_KEY] == error.code
    assert (RETRY_AFTER_KEY in trailers) == retry
    decoded = rpc_status.from_call(_Call(status))
    infos = [d for d in decoded.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == int(retry)
    if retry:
        info = error_details_pb2.RetryInfo()
        infos[0].Unpack(info)
        assert info.retry_delay.seconds == 3


class _Call:
    """What `rpc_status.from_call` reads from a finished call."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata

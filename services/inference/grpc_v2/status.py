"""The one mapping of maskfleet errors to gRPC status codes (REST's is `..errors`).

Keyed on the error's HTTP status, so every error of `shared.errors` (and any added later) has a
gRPC code, chosen as gRPC's own guidance and Triton/KServe servers do:

| HTTP | gRPC | when |
|---|---|---|
| 400, 415, 422, 431 | INVALID_ARGUMENT | malformed tensors, wrong shapes or datatypes, bad images |
| 401 | UNAUTHENTICATED | no or unknown API key |
| 403 | PERMISSION_DENIED | the key lacks the scope |
| 404 | NOT_FOUND | unknown model or version |
| 405 | UNIMPLEMENTED | |
| 408, 504 | DEADLINE_EXCEEDED | the request deadline passed; queued work was dropped |
| 409 | ABORTED | |
| 413 | RESOURCE_EXHAUSTED | request over a size or pixel limit (no retry info: do not retry) |
| 429, 503 `overloaded` | RESOURCE_EXHAUSTED + RetryInfo | shed: a bounded queue or budget is full |
| 502, other 503 | UNAVAILABLE + RetryInfo | model loading, draining, storage down |
| 500 | INTERNAL | |

Every status carries the error's stable code in the `maskfleet-error-code` trailer, and
retryable ones a `google.rpc.RetryInfo` detail (plus a `retry-after` trailer in seconds, as
REST's header), which gRPC clients and Envoy read to back off.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shared.errors import MaskfleetError, Overloaded

ERROR_CODE_KEY = "maskfleet-error-code"
RETRY_AFTER_KEY = "retry-after"

_BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.INVALID_ARGUMENT,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
RETRYABLE = {429, 502, 503}


def code_for(error: MaskfleetError) -> grpc.StatusCode:
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if error.status in _BY_STATUS:
        return _BY_STATUS[error.status]
    return (grpc.StatusCode.INVALID_ARGUMENT if 400 <= error.status < 500
            else grpc.StatusCode.INTERNAL)


def to_status(error: MaskfleetError, *, retry_after_seconds: int) -> grpc.Status:
    """The status a call that failed with `error` ends with (code, message, details)."""
    code = code_for(error)
    details: list[any_pb2.Any] = []
    trailers: list[tuple[str, str]] = [(ERROR_CODE_KEY, error.code)]
    if error.status in RETRYABLE:
        retry_after_seconds = int(getattr(error, "retry_after", None) or retry_after_seconds) \
            if error.status == 429 else retry_after_seconds
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=retry_after_seconds))
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
        trailers.append((RETRY_AFTER_KEY, str(retry_after_seconds)))
    message = status_pb2.Status(code=_rpc_code(code), message=error.detail, details=details)
    status = rpc_status.to_status(message)
    return _WithTrailers(status.code, status.details,
                         tuple(status.trailing_metadata) + tuple(trailers))


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = code.value[0]
    assert code_pb2.Code.Name(value)
    return value


class _WithTrailers(grpc.Status):  # type: ignore[misc]
    """`grpc.Status` is an abstract attribute holder; this is the concrete one."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing_metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata

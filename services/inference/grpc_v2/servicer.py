"""`inference.GRPCInferenceService` as a thin translation of protobuf to `..dataplane` and back.

Every call goes through `Servicer._call`, the gRPC counterpart of REST's middleware and error
handler: request id (the caller's `x-request-id` metadata or a new one, echoed in the trailing
metadata), authentication (every method needs the `infer` scope, as every /v2 route does: the
API key travels as `authorization: Bearer <key>` or `x-api-key` metadata, which is what
tritonclient's `headers=` sends; only `grpc.health.v1` is open, for probes; `receive.py`
already refused a call without a valid key before reading its message), metrics (the
same series as REST with `protocol="grpc"`) and the one mapping of errors to statuses
(`status.py`). The request deadline is the earliest of the server's, the caller's gRPC
deadline (`tritonclient`'s `client_timeout`) and the OIP `timeout` parameter, fixed before
any work starts, so every wait of the call (a codec thread, the batch queue) ends with
DEADLINE_EXCEEDED when it passes and the queued work is dropped, exactly as with REST's
`X-Request-Timeout`.

Tensors arrive as `raw_input_contents` (what tritonclient sends) or typed `contents`
(`uint_contents` for UINT8, `bytes_contents` for BYTES); either is turned into the raw layout
and checked by the same `oip.to_input` as REST. Outputs always leave as
`raw_output_contents`, as Triton answers.

Per-call cost (measured under load, docs/grpc.md): the request id and model version travel in
the trailing metadata, which leaves with the answer and its status in one batch; sending
initial metadata separately cost a completion-queue round trip per call (~65 µs of CPU, a
quarter of grpcio's own per-call cost). Raw tensors are checked on the event loop: grpcio
has already parsed the message there, and what is left (slicing the bytes, reading shapes)
costs less than the hop to a codec thread; typed contents, which need a pass over every
value, still go to the codec pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np

from shared.errors import DeadlineExceeded, InvalidInferenceRequest, MaskfleetError

from ..admission import OIP_TIMEOUT, oip_timeout
from ..dataplane import DataPlane, InferRequest, InferResponse
from ..metrics import ApiMetrics
from ..oip import (
    BYTES,
    UINT8,
    Budget,
    InferInput,
    choose_outputs,
    serialize_bytes,
    tensor_input,
)
from ..oip import to_input as check_input
from . import grpc_predict_v2_pb2 as pb
from . import grpc_predict_v2_pb2_grpc as pb_grpc
from .status import to_status

T = TypeVar("T")
SERVICE = "inference.GRPCInferenceService"
PROTOCOL = "grpc"
REQUEST_ID_KEY = "x-request-id"
MODEL_VERSION_KEY = "x-model-version"
"""Trailing metadata `<version>/<variant>`, as REST's X-Model-Version header."""
VARIANT = "variant"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLIENT_CLOSED = 499

Authorize = Callable[[Mapping[str, str]], str]
"""Metadata -> the caller's id, or `Unauthenticated` / `Forbidden` (the `infer` scope)."""

log = logging.getLogger(__name__)


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: ApiMetrics, *, retry_after_seconds: int,
                 authorize: Authorize | None = None) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._retry_after = retry_after_seconds
        self._authorize = authorize

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerLiveResponse:
        async def run(_: str, __: str | None) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=self._dataplane.live())
        return await self._call("ServerLive", context, run)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerReadyResponse:
        async def run(_: str, __: str | None) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self._dataplane.ready())
        return await self._call("ServerReady", context, run)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelReadyResponse:
        async def run(_: str, __: str | None) -> pb.ModelReadyResponse:
            ready = self._dataplane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready)
        return await self._call("ModelReady", context, run)

    async def ServerMetadata(
            self, request: pb.ServerMetadataRequest,
            context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerMetadataResponse:
        async def run(_: str, __: str | None) -> pb.ServerMetadataResponse:
            meta = self._dataplane.server_metadata()
            return pb.ServerMetadataResponse(name=meta.name, version=meta.version,
                                             extensions=list(meta.extensions))
        return await self._call("ServerMetadata", context, run)

    async def ModelMetadata(
            self, request: pb.ModelMetadataRequest,
            context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelMetadataResponse:
        async def run(_: str, __: str | None) -> pb.ModelMetadataResponse:
            meta = self._dataplane.model_metadata(request.name, request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta.name, versions=list(meta.versions), platform=meta.platform,
                inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
                        for t in meta.inputs],
                outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
                         for t in meta.outputs])
        return await self._call("ModelMetadata", context, run)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelInferResponse:
        async def run(request_id: str, caller: str | None) -> pb.ModelInferResponse:
            dataplane = self._dataplane
            deadline = dataplane.deadline(context.time_remaining())
            if OIP_TIMEOUT in request.parameters:  # bounds the parsing wait too
                deadline = deadline.tightened(oip_timeout(
                    {OIP_TIMEOUT: _parameter(request.parameters[OIP_TIMEOUT])}))
            version = request.model_version or None
            dataplane.served(request.model_name, version)
            if _typed_only(request):
                parsed = await dataplane.decode(parse_infer, request, deadline=deadline)
            else:
                parsed = parse_infer(request, max_images=dataplane.max_images,
                                     budget=dataplane.budget)
            return await dataplane.infer(
                InferRequest(request.model_name, version, parsed, deadline, request_id,
                             caller=caller),
                render_infer)
        return await self._call("ModelInfer", context, run)

    async def _call(self, method: str, context: grpc.aio.ServicerContext[Any, Any],
                    run: Callable[[str, str | None], Awaitable[T]]) -> T:
        metadata = metadata_of(context)
        request_id = request_id_of(metadata)
        m = self._metrics
        m.http_in_flight.inc()
        started = time.perf_counter()
        status, version, variant = 500, "none", "none"
        try:
            caller = None if self._authorize is None else self._authorize(metadata)
            result = await run(request_id, caller)
            status = 200
            if isinstance(result, pb.ModelInferResponse):
                version, variant = result.model_version, _variant(result)
                context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),
                                               (MODEL_VERSION_KEY, f"{version}/{variant}")))
            else:
                context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            return result
        except MaskfleetError as error:
            status = error.status
            self._log(error, method, request_id)
            await self._abort(context, error, request_id)
            raise  # abort_with_status raises; this keeps type checkers honest
        except asyncio.CancelledError:
            # gRPC cancels the handler when the caller's deadline passes or it goes away
            expired = context.time_remaining() is not None and context.time_remaining() <= 0
            status = DeadlineExceeded.status if expired else CLIENT_CLOSED
            if expired:
                m.deadline_exceeded.inc()
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
            await self._abort(context, MaskfleetError("the server failed; see its logs"),
                              request_id)
            raise
        finally:
            m.http_in_flight.dec()
            count_call(m, f"/{SERVICE}/{method}", status, started, version, variant)

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], error: MaskfleetError,
                     request_id: str) -> None:
        """End the call with `error`'s status, the request id among its trailing metadata."""
        answer = to_status(error, retry_after_seconds=self._retry_after)
        answer.trailing_metadata = (*answer.trailing_metadata, (REQUEST_ID_KEY, request_id))
        await context.abort_with_status(answer)

    def _log(self, error: MaskfleetError, method: str, request_id: str) -> None:
        level = (logging.DEBUG if error.status == 503 else
                 logging.ERROR if error.status >= 500 else logging.INFO)
        log.log(level, "request failed", extra={
            "status": error.status, "code": error.code, "detail": error.detail,
            "request_id": request_id, "path": f"/{SERVICE}/{method}", "protocol": PROTOCOL})


def count_call(metrics: ApiMetrics, route: str, status: int, started: float,
               version: str = "none", variant: str = "none") -> None:
    """A call in the request metrics, as REST's middleware counts a request."""
    labels = (route, "POST", str(status), version, variant, PROTOCOL)
    metrics.http_requests.labels(*labels).inc()
    metrics.http_duration.labels(*labels).observe(time.perf_counter() - started)


def metadata_of(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """Text metadata as a dict (keys are lower case on the wire; `-bin` values skipped)."""
    return {key: value for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)}


def request_id_of(metadata: Mapping[str, str]) -> str:
    incoming = metadata.get(REQUEST_ID_KEY)
    # 32 random hex digits, as REST's request ids
    return incoming if incoming and _VALID_ID.match(incoming) else os.urandom(16).hex()


def _typed_only(request: pb.ModelInferRequest) -> bool:
    """The tensor came as typed `contents`: turning those into raw bytes is a pass over every
    value, codec-pool work; raw contents only need slicing and shape checks."""
    return not request.raw_input_contents


def parse_infer(request: pb.ModelInferRequest, *, max_images: int,
                budget: Budget) -> InferInput:
    """A `ModelInferRequest` -> the validated input REST's parser also produces."""
    if len(request.inputs) != 1:
        raise InvalidInferenceRequest(
            f"send exactly one input tensor (UINT8 pixels or BYTES images); got "
            f"{len(request.inputs)}")
    if request.raw_input_contents and len(request.raw_input_contents) != 1:
        raise InvalidInferenceRequest("raw_input_contents must hold one entry per input")
    tensor = request.inputs[0]
    raw = request.raw_input_contents[0] if request.raw_input_contents else _typed(tensor)
    parameters = {key: _parameter(value) for key, value in request.parameters.items()}
    outputs = choose_outputs([(o.name, True) for o in request.outputs], True)
    meta = tensor_input(tensor.name, list(tensor.shape), tensor.datatype)
    return check_input(meta, raw, request_id=request.id or None, parameters=parameters,
                       outputs=outputs, max_images=max_images, budget=budget)


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes | None:
    """Typed `contents` in the raw layout; None when the tensor has none."""
    contents = tensor.contents
    if tensor.datatype == UINT8 and contents.uint_contents:
        values = np.fromiter(contents.uint_contents, dtype=np.uint32,
                             count=len(contents.uint_contents))
        if values.max() > 255:
            raise InvalidInferenceRequest("UINT8 contents must hold integers from 0 to 255")
        return values.astype(np.uint8).tobytes()
    if tensor.datatype == BYTES and contents.bytes_contents:
        return serialize_bytes(list(contents.bytes_contents))
    return None


def _parameter(value: pb.InferParameter) -> bool | int | str | None:
    choice = value.WhichOneof("parameter_choice")
    result: bool | int | str | None = getattr(value, choice) if choice else None
    return result


def _variant(response: pb.ModelInferResponse) -> str:
    """The runtime build that answered, carried in the response's `variant` parameter."""
    return response.parameters[VARIANT].string_param if VARIANT in response.parameters else "none"


def render_infer(answer: InferResponse) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=answer.model, model_version=str(answer.version),
                                     id=answer.id)
    response.parameters[VARIANT].string_param = answer.variant
    for tensor in answer.outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.raw)
    return response

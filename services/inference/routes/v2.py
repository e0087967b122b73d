"""Open Inference Protocol v2 over REST (KServe/Triton), so standard clients work unchanged.

A thin translation of HTTP to `..dataplane` and back: JSON bodies (with Triton's binary tensor
extension) to `InferRequest`, answers to JSON, errors to problem+json through the app's one
handler (`..errors`). The gRPC transport (`..grpc`) translates the same calls.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from shared.errors import UnsupportedMediaType

from ..admission import TIMEOUT_HEADER, header_timeout
from ..auth import RequireScope
from ..body import read_body
from ..dataplane import InferRequest, InferResponse, ModelMetadata
from ..deps import DataPlaneDep, RequestIdDep
from ..oip import HEADER_LENGTH, InferenceRequest, parse_request, render_json

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"],
                   dependencies=[Depends(RequireScope("infer"))])
"""Every /v2 route, metadata and health included, needs `infer`: only /healthz and /readyz
are public (Kubernetes probes use those)."""

_TITLES = {400: "Malformed inference request (JSON, tensor shapes or data)",
           404: "Unknown model or version", 413: "Too many bytes, images or pixels",
           415: "Compressed body", 422: "Undecodable image, bad X-Request-Timeout",
           503: "Model not loaded yet, or the server is at capacity (Retry-After)",
           504: "The request deadline passed"}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` substituted in place: OpenAPI resolves `$ref`
    against the whole document, where `#/$defs/...` does not exist."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": _TITLES[status],
                     "content": {"application/problem+json": {}}} for status in statuses}


_INFER_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(InferenceRequest.model_json_schema())},
    "application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "Triton's binary tensor extension: the JSON header (its length in "
                       "the Inference-Header-Content-Length header), then raw tensor bytes"}},
}}}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The outputs (`mask` and/or `mask_png`); binary data follows the "
                         "JSON header when asked for",
          "content": {"application/json": {}, "application/octet-stream": {}}},
    **_problems(400, 404, 413, 415, 422, 503, 504)}


@router.get("", summary="Server metadata")
async def server_metadata(dataplane: DataPlaneDep) -> dict[str, Any]:
    meta = dataplane.server_metadata()
    return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}


@router.get("/health/live", summary="Server liveness")
async def live(dataplane: DataPlaneDep) -> dict[str, bool]:
    return {"live": dataplane.live()}


@router.get("/health/ready", summary="Server readiness (503 until the model is warm)",
            responses=_problems(503))
async def ready(dataplane: DataPlaneDep) -> dict[str, bool]:
    dataplane.require_ready()
    return {"ready": True}


def _metadata(meta: ModelMetadata) -> dict[str, Any]:
    def tensors(group: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in group]

    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": tensors(meta.inputs), "outputs": tensors(meta.outputs),
            "parameters": meta.parameters}


@router.get("/models/{name}", summary="Model metadata",
            responses=_problems(404, 503))
async def model_metadata(name: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    return _metadata(dataplane.model_metadata(name, None))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata",
            responses=_problems(404, 503))
async def version_metadata(name: str, version: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    return _metadata(dataplane.model_metadata(name, version))


@router.get("/models/{name}/ready", summary="Model readiness",
            responses=_problems(404, 503))
async def model_ready(name: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    served = dataplane.served(name, None)
    return {"name": served.name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness",
            responses=_problems(404, 503))
async def version_ready(name: str, version: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    served = dataplane.served(name, version)
    return {"name": served.name, "ready": True}


@router.post("/models/{name}/infer", summary="Inference", response_class=Response,
             openapi_extra=_INFER_BODY, responses=_INFER_RESPONSES)
async def infer(name: str, request: Request, dataplane: DataPlaneDep,
                request_id: RequestIdDep) -> Response:
    return await _infer(request, name, None, dataplane, request_id)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version",
             response_class=Response, openapi_extra=_INFER_BODY, responses=_INFER_RESPONSES)
async def infer_version(name: str, version: str, request: Request, dataplane: DataPlaneDep,
                        request_id: RequestIdDep) -> Response:
    return await _infer(request, name, version, dataplane, request_id)


async def _infer(request: Request, name: str, version: str | None, dataplane: DataPlaneDep,
                 request_id: str) -> Response:
    deadline = dataplane.deadline(header_timeout(request.headers.get(TIMEOUT_HEADER)))
    dataplane.served(name, version)  # 404/503 before reading a body that cannot be served
    if request.headers.get("content-encoding", "identity") != "identity":
        raise UnsupportedMediaType("compressed request bodies are not accepted")
    body = await read_body(request, dataplane.max_request_bytes)
    parsed = await dataplane.decode(parse_request, body, request.headers.get(HEADER_LENGTH),
                                    deadline=deadline)
    del body
    content, headers = await dataplane.infer(
        InferRequest(name, version, parsed, deadline, request_id,
                     caller=getattr(request.state, "caller", None)),
        _render)
    media = "application/octet-stream" if HEADER_LENGTH in headers else "application/json"
    return Response(content, media_type=media, headers=headers)


def _render(answer: InferResponse) -> tuple[bytes, dict[str, str]]:
    content, headers = render_json(model=answer.model, version=answer.version,
                                   request_id=answer.id, tensors=answer.outputs,
                                   binary=answer.binary)
    headers["X-Model-Version"] = f"{answer.version}/{answer.variant}"
    return content, headers

"""Open Inference Protocol v2 (KServe/Triton REST), so standard clients work unchanged.

One model is served: `MASKFLEET_MODEL_NAME` at the version currently loaded. Other names, and
versions other than the loaded one, are 404. Tensor rules live in `..oip`.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter, Request, Response

from shared.errors import ModelNotFound, UnsupportedMediaType, VersionNotFound

from ..admission import TIMEOUT_HEADER, Deadline, header_timeout, oip_timeout
from ..body import read_body
from ..deps import HolderDep, RequestIdDep, SegmenterDep, SettingsDep
from ..model_holder import ModelHolder, ServedModel
from ..oip import (
    BYTES,
    HEADER_LENGTH,
    MASK,
    MASK_PNG,
    UINT8,
    Budget,
    InferInput,
    build_response,
    check_budget,
    parse_request,
)
from ..pipeline import MaskBatch, Segmenter
from ..settings import InferenceSettings

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

EXTENSIONS = ["binary_tensor_data"]


def _server_version() -> str:
    try:
        return metadata.version("maskfleet")
    except metadata.PackageNotFoundError:
        return "0"


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "maskfleet", "version": _server_version(), "extensions": EXTENSIONS}


@router.get("/health/live", summary="Server liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness (503 until the model is warm)")
async def ready(holder: HolderDep) -> dict[str, bool]:
    holder.require()
    return {"ready": True}


def _served(holder: ModelHolder, settings: InferenceSettings, name: str,
            version: str | None) -> ServedModel:
    if name != settings.model_name:
        raise ModelNotFound(f"unknown model {name!r}; this server serves "
                            f"{settings.model_name!r}")
    served = holder.require()
    if version is not None and version != str(served.version):
        raise VersionNotFound(f"{name} version {version} is not loaded here; "
                              f"version {served.version} is")
    return served


def _model_metadata(served: ServedModel) -> dict[str, Any]:
    return {
        "name": served.name,
        "versions": [str(served.version)],
        "platform": "tensorflow_savedmodel",
        "inputs": [
            {"name": "images", "datatype": UINT8, "shape": [-1, -1, -1, 3]},
            {"name": "image_bytes", "datatype": BYTES, "shape": [-1]},
        ],
        "outputs": [
            {"name": MASK, "datatype": UINT8, "shape": [-1, -1, -1]},
            {"name": MASK_PNG, "datatype": BYTES, "shape": [-1]},
        ],
        "parameters": {"stage": served.stage, "input_size": served.input_size,
                       "note": "send exactly one input: UINT8 pixels or BYTES encoded images"},
    }


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: str, holder: HolderDep, settings: SettingsDep) -> dict[str, Any]:
    return _model_metadata(_served(holder, settings, name, None))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata")
async def version_metadata(name: str, version: str, holder: HolderDep,
                           settings: SettingsDep) -> dict[str, Any]:
    return _model_metadata(_served(holder, settings, name, version))


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(name: str, holder: HolderDep, settings: SettingsDep) -> dict[str, Any]:
    served = _served(holder, settings, name, None)
    return {"name": served.name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness")
async def version_ready(name: str, version: str, holder: HolderDep,
                        settings: SettingsDep) -> dict[str, Any]:
    served = _served(holder, settings, name, version)
    return {"name": served.name, "ready": True}


@router.post("/models/{name}/infer", summary="Inference", response_class=Response)
async def infer(name: str, request: Request, holder: HolderDep, segmenter: SegmenterDep,
                settings: SettingsDep, request_id: RequestIdDep) -> Response:
    return await _infer(request, name, None, holder, segmenter, settings, request_id)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version",
             response_class=Response)
async def infer_version(name: str, version: str, request: Request, holder: HolderDep,
                        segmenter: SegmenterDep, settings: SettingsDep,
                        request_id: RequestIdDep) -> Response:
    return await _infer(request, name, version, holder, segmenter, settings, request_id)


async def _infer(request: Request, name: str, version: str | None, holder: ModelHolder,
                 segmenter: Segmenter, settings: InferenceSettings,
                 request_id: str) -> Response:
    deadline = Deadline.within(settings.request_timeout_seconds).tightened(
        header_timeout(request.headers.get(TIMEOUT_HEADER)))
    _served(holder, settings, name, version)
    if request.headers.get("content-encoding", "identity") != "identity":
        raise UnsupportedMediaType("compressed request bodies are not accepted")
    body = await read_body(request, settings.max_body_bytes)
    budget = _budget(settings)
    parsed = await segmenter.codec(
        parse_request, body, request.headers.get(HEADER_LENGTH), deadline=deadline,
        max_images=settings.max_images_per_request, budget=budget)
    del body
    deadline = deadline.tightened(oip_timeout(parsed.parameters))
    async with segmenter.within(deadline):
        batch: MaskBatch
        if parsed.pixels is not None:
            n, height, width = parsed.pixels.shape[:3]
            with segmenter.admit(n * height * width):
                batch = await segmenter.segment_pixels(parsed.pixels, deadline)
                content, headers = await _answer(segmenter, batch, parsed, request_id, deadline)
        else:
            assert parsed.encoded is not None
            images = await segmenter.probe(parsed.encoded, deadline)
            total = check_budget([i.size for i in images], parsed.outputs, budget)
            with segmenter.admit(total):
                batch = await segmenter.segment_encoded(parsed.encoded, images, deadline)
                content, headers = await _answer(segmenter, batch, parsed, request_id, deadline)
    if version is not None and version != str(batch.version):
        raise VersionNotFound(f"version {version} was replaced by {batch.version} while the "
                              f"request ran")
    headers["X-Model-Version"] = str(batch.version)
    media = "application/octet-stream" if HEADER_LENGTH in headers else "application/json"
    return Response(content, media_type=media, headers=headers)


async def _answer(segmenter: Segmenter, batch: MaskBatch, parsed: InferInput, request_id: str,
                  deadline: Deadline) -> tuple[bytes, dict[str, str]]:
    """The answer is built on the bounded codec pool: serialising masks costs as much as
    decoding images."""
    return await segmenter.codec(
        build_response, deadline=deadline, model=batch.model, version=batch.version,
        request_id=parsed.id or request_id, masks=batch.masks, outputs=parsed.outputs)


def _budget(settings: InferenceSettings) -> Budget:
    return Budget(image_pixels=settings.max_pixels,
                  request_pixels=settings.max_request_pixels,
                  mask_pixels=settings.max_mask_output_pixels,
                  json_mask_pixels=settings.max_json_mask_pixels)

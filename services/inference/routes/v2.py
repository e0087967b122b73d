"""Open Inference Protocol v2 (KServe/Triton REST), so standard clients work unchanged.

One model is served: `MASKFLEET_MODEL_NAME` at the version currently loaded. Other names, and
versions other than the loaded one, are 404. Tensor rules live in `..oip`.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from shared.errors import ModelNotFound, UnsupportedMediaType, VersionNotFound

from ..body import read_body
from ..deps import HolderDep, RequestIdDep, SegmenterDep, SettingsDep
from ..model_holder import ModelHolder, ServedModel
from ..oip import BYTES, HEADER_LENGTH, MASK, MASK_PNG, UINT8, build_response, parse_request
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
    _served(holder, settings, name, version)
    if request.headers.get("content-encoding", "identity") != "identity":
        raise UnsupportedMediaType("compressed request bodies are not accepted")
    body = await read_body(request, settings.max_body_bytes)
    parsed = await run_in_threadpool(
        parse_request, body, request.headers.get(HEADER_LENGTH),
        max_images=settings.max_images_per_request, max_pixels=settings.max_pixels)
    batch: MaskBatch
    if parsed.pixels is not None:
        batch = await segmenter.segment_pixels(parsed.pixels)
    else:
        assert parsed.encoded is not None
        batch = await segmenter.segment_encoded(parsed.encoded)
    if version is not None and version != str(batch.version):
        raise VersionNotFound(f"version {version} was replaced by {batch.version} while the "
                              f"request ran")
    content, headers = await run_in_threadpool(
        build_response, model=batch.model, version=batch.version,
        request_id=parsed.id or request_id, masks=batch.masks, outputs=parsed.outputs)
    headers["X-Model-Version"] = str(batch.version)
    media = "application/octet-stream" if HEADER_LENGTH in headers else "application/json"
    return Response(content, media_type=media, headers=headers)

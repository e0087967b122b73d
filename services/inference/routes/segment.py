"""`POST /v1/segment`: an image in, its trimap mask out (PNG by default, or JSON)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import Field, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams

from shared.errors import InvalidRequest, StageNotServed

from ..admission import TIMEOUT_HEADER, Deadline, header_timeout
from ..auth import Caller, InferCaller, RequireScope
from ..body import IMAGE_FIELD, read_image
from ..deps import SegmentParts, SegmentPartsDep
from ..errors import PROBLEM_JSON
from ..feedback import ServedMask
from ..feedback.served import new_token
from ..pipeline import MaskAnswer
from ..schemas import SegmentAnswer
from ..settings import InferenceSettings


class ServedDirectly(APIRoute):
    """`/v1/segment` as FastAPI documents it (from `segment`'s signature), served by `serve`.

    The busiest route skips FastAPI's per-request handling of the declared parameters (solving
    the dependencies, validating the query, checking the endpoint's result): on a bare app it
    costs ~85 us of the event loop's CPU per request, against ~18 us for a plain handler. `serve`
    reads the same parameters with the same pydantic rules and raises what FastAPI would
    (401/403 before 422), so callers and the OpenAPI contract see no difference.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return serve


router = APIRouter(tags=["segment"], route_class=ServedDirectly)
_INFER = RequireScope("infer")
_FORMAT: TypeAdapter[Literal["png", "json"]] = TypeAdapter(Literal["png", "json"])
_STAGE: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(max_length=32)])
_KEEP: TypeAdapter[bool] = TypeAdapter(bool)

FEEDBACK_TOKEN = "X-Feedback-Token"
FEEDBACK_KEPT = "X-Feedback-Kept"
"""`durable` when the answer is kept in storage for days, `short` when only in the Redis log."""


async def serve(request: Request) -> Response:
    """`segment`'s parameters read directly (`ServedDirectly`), then `answer`."""
    caller = await _INFER(request)
    query = request.query_params
    keep = _query(query, "keep", _KEEP)
    return await answer(request, request.app.state.segment_parts, caller,
                        _query(query, "format", _FORMAT), _query(query, "stage", _STAGE),
                        bool(keep))


def _query(query: QueryParams, name: str, adapter: TypeAdapter[Any]) -> Any:
    value = query.get(name)
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        reason = exc.errors()[0].get("msg", "invalid")
        raise InvalidRequest(f"query.{name}: {reason}") from None


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "image/jpeg": _BINARY,
    "image/png": _BINARY,
    "multipart/form-data": {"schema": {
        "type": "object", "required": [IMAGE_FIELD],
        "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}},
}}}
_PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {}}}


@router.post(
    "/v1/segment",
    summary="Segment one image into a pet/background/border trimap",
    response_class=Response,
    openapi_extra=_REQUEST_BODY,
    responses={
        200: {"description": "The mask as PNG (values 1 pet, 2 background, 3 border) at the "
                             "input's resolution, or JSON with `format=json`",
              "content": {"image/png": {}, "application/json": {
                  "schema": SegmentAnswer.model_json_schema()}}},
        **{status: {"description": title, **_PROBLEM} for status, title in (
            (400, "Empty body, malformed multipart"), (401, "No or unknown API key"),
            (403, "The key lacks the `infer` scope"), (413, "Too many bytes or pixels"),
            (404, "`stage` not served by this API"), (415, "Not JPEG/PNG"),
            (422, "Undecodable or truncated image, bad X-Request-Timeout"),
            (503, "Model not loaded, or the server is at capacity (Retry-After)"),
            (504, "The request deadline passed"))},
    },
)
async def segment(
    request: Request,
    parts: SegmentPartsDep,
    caller: InferCaller,
    format: Annotated[Literal["png", "json"] | None, Query(
        description="`json` for metadata and a base64 mask; default PNG unless the Accept "
                    "header asks for application/json")] = None,
    stage: Annotated[str | None, Query(
        max_length=32,
        description="Ask for a second stage this API also serves (`MASKFLEET_COMPARE_STAGE`, "
                    "for the web page's compare view); 404 for any other stage. In a "
                    "cluster, reach the canary with the gateway's variant header instead.")
    ] = None,
    keep: Annotated[bool, Query(
        description="Keep this answer durably (storage, `MASKFLEET_FEEDBACK_KEEP_TTL_SECONDS`, "
                    "7 days by default) so that its correction may come hours later")] = False,
) -> Response:
    # FastAPI builds the OpenAPI operation from this signature; requests reach `serve` (see
    # `ServedDirectly`), which reads the same parameters and calls `answer` as this would
    return await answer(request, parts, caller, format, stage, keep)


async def answer(request: Request, parts: SegmentParts, caller: Caller,
                 format: str | None, stage: str | None, keep: bool) -> Response:
    """The answer to one /v1/segment request, its parameters already read and checked."""
    settings, segmenter, compare = parts.settings, parts.segmenter, parts.compare
    request_id: str = request.state.request_id
    if stage is not None and stage != _own_stage(settings):
        if stage not in compare:
            raise StageNotServed(f"this API serves {_own_stage(settings)!r}"
                                 + "".join(f" and {s!r}" for s in compare)
                                 + f", not {stage!r}")
        segmenter = compare[stage]
    deadline = Deadline.within(settings.request_timeout_seconds).tightened(
        header_timeout(request.headers.get(TIMEOUT_HEADER)))
    image = await read_image(request, settings.max_body_bytes)
    answer = await segmenter.segment(image, deadline)
    drawn = new_token()
    served = ServedMask(drawn, caller.id, request_id, answer.model, answer.version, image,
                        answer.image_sha256, answer.mask.png, answer.cached, answer.variant)
    logged = parts.served_log.remember(served)
    durable = parts.kept.keep(served, asked=keep)
    token = drawn if logged or durable else None
    headers = {"X-Model-Version": f"{answer.version}/{answer.variant}",
               "X-Cache": "hit" if answer.cached else "miss"}
    if token is not None:
        headers[FEEDBACK_TOKEN] = token
        headers[FEEDBACK_KEPT] = "durable" if durable else "short"
    if _wants_json(format, request.headers.get("accept", "")):
        body = _as_json(answer, request_id, token).model_dump_json()
        return Response(body, media_type="application/json", headers=headers)
    return Response(answer.mask.png, media_type="image/png", headers=headers)


def _own_stage(settings: InferenceSettings) -> str:
    return "pinned" if settings.model_version is not None else settings.model_stage


def _wants_json(format: str | None, accept: str) -> bool:
    if format is not None:
        return format == "json"
    return "application/json" in accept and "image/png" not in accept


def _as_json(answer: MaskAnswer, request_id: str, token: str | None) -> SegmentAnswer:
    mask = answer.mask
    return SegmentAnswer(
        model=answer.model, version=answer.version, width=mask.width, height=mask.height,
        class_fractions=mask.fractions, mask_png=base64.b64encode(mask.png).decode(),
        cached=answer.cached, request_id=request_id, feedback_token=token)

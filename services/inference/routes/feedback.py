"""`POST /v1/feedback`: a corrected mask for an earlier /v1/segment answer.

Two ways to send it, as /v1/segment takes images:
- raw PNG body (`Content-Type: image/png`) with the answer's token in the query:
  `curl --data-binary @fixed.png -H 'Content-Type: image/png' '.../v1/feedback?feedback_token=T'`
- multipart with a `feedback_token` field and a `mask` file:
  `curl -F feedback_token=T -F mask=@fixed.png .../v1/feedback`
The token may also travel in the `X-Feedback-Token` header, as /v1/segment sent it; when it is
given more than once, every copy must agree.
The token is the `X-Feedback-Token` header of the /v1/segment response (`feedback_token` in
its JSON form), drawn by the server: a client cannot name an answer it was not served. It is
bound to the caller (API key) that received the answer. The mask is a trimap PNG (1 pet,
2 background, 3 border) at the image's resolution, i.e. the served mask's size. Each key's
corrections are rate limited (429 with Retry-After).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.datastructures import Headers, UploadFile

from shared.errors import (
    EmptyBody,
    InvalidRequest,
    UnsupportedMediaType,
)

from ..body import MULTIPART, media_type, parse_multipart, read_body
from ..deps import FeedbackDep, SettingsDep
from ..errors import PROBLEM_JSON
from ..feedback import FeedbackReceipt
from ..ratelimit import FeedbackSender

router = APIRouter(tags=["feedback"])

ID_FIELD, MASK_FIELD = "feedback_token", "mask"
RAW_MASK_TYPES = frozenset({"image/png", "application/octet-stream"})
_VALID_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
"""The shape of the tokens /v1/segment hands out (URL-safe base64)."""

_REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": [ID_FIELD, MASK_FIELD],
        "properties": {ID_FIELD: {"type": "string"},
                       MASK_FIELD: {"type": "string", "format": "binary"}}}},
}}}
_PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {}}}


@router.post(
    "/v1/feedback",
    summary="Send a corrected mask for an earlier /v1/segment answer",
    openapi_extra=_REQUEST_BODY,
    responses={status: {"description": title, **_PROBLEM} for status, title in (
        (400, "Empty body, malformed multipart"),
        (401, "No or unknown API key"), (403, "The key lacks the `feedback` scope"),
        (404, "No answer kept for that token: unknown, another caller's, or expired"),
        (409, "That answer already received a correction"), (413, "Too many bytes"),
        (415, "Not PNG or multipart"),
        (422, "Missing or invalid token; mask not a trimap PNG of the served size"),
        (429, "Too many corrections from this key; see Retry-After"),
        (502, "Storing the pair failed"), (503, "The feedback store (Redis) is unavailable"))},
)
async def feedback(
    request: Request,
    corrections: FeedbackDep,
    settings: SettingsDep,
    caller: FeedbackSender,
    feedback_token: Annotated[str | None, Query(
        description="`X-Feedback-Token` of the /v1/segment response being corrected")] = None,
    x_feedback_token: Annotated[str | None, Header(
        description="The same token as a header (instead of the query or form)")] = None,
) -> FeedbackReceipt:
    if feedback_token and x_feedback_token and feedback_token != x_feedback_token:
        raise InvalidRequest(f"{ID_FIELD} differs between the query and X-Feedback-Token")
    target, mask = await read_correction(request, settings.max_body_bytes,
                                         feedback_token or x_feedback_token)
    return await corrections.receive(target, caller.id, mask)


async def read_correction(request: Request, limit: int,
                          query_id: str | None) -> tuple[str, bytes]:
    """The request id and the mask bytes, from a raw PNG body or a multipart form."""
    kind = media_type(request.headers)
    if kind not in RAW_MASK_TYPES and kind != MULTIPART:
        raise UnsupportedMediaType(
            f"content type {kind or '(none)'!r} is not accepted; send image/png with "
            f"?{ID_FIELD}=..., or multipart/form-data with `{ID_FIELD}` and `{MASK_FIELD}`")
    body = await read_body(request, limit)
    form_id = None
    if kind == MULTIPART:
        form_id, body = await _form(request.headers, body)
    if query_id is not None and form_id is not None and query_id != form_id:
        raise InvalidRequest(f"{ID_FIELD} differs between the query and the form")
    target = form_id or query_id
    if not target:
        raise InvalidRequest(f"{ID_FIELD}: required (the X-Feedback-Token of the /v1/segment "
                             "response being corrected)")
    if not _VALID_ID.match(target):
        raise InvalidRequest(f"{ID_FIELD}: not a token maskfleet hands out")
    if not body:
        raise EmptyBody("the mask is empty (0 bytes)")
    return target, body


async def _form(headers: Headers, body: bytes) -> tuple[str | None, bytes]:
    form = await parse_multipart(headers, body, max_files=2, max_fields=8)
    try:
        field, part = form.get(ID_FIELD), form.get(MASK_FIELD)
        if not isinstance(part, UploadFile):
            raise InvalidRequest(f"send the mask as a file part named `{MASK_FIELD}` "
                                 f"(curl -F {MASK_FIELD}=@fixed.png)")
        return (field if isinstance(field, str) else None), await part.read()
    finally:
        await form.close()

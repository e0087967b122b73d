"""JSON bodies of the /v1 and health endpoints (also documented in the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SegmentAnswer(BaseModel):
    """`POST /v1/segment?format=json`: the mask plus what a client wants to know about it."""

    model: str
    version: int
    width: int
    height: int
    class_fractions: dict[str, float] = Field(
        description="Share of the image's pixels per trimap class (pet, background, border)")
    mask_png: str = Field(description="The trimap mask (values 1/2/3) as base64-encoded PNG")
    cached: bool
    request_id: str
    feedback_token: str | None = Field(
        default=None, description="Send it with a corrected mask to /v1/feedback (also the "
                                  "X-Feedback-Token header); null when the answer was not kept "
                                  "for feedback")


class ServedVersion(BaseModel):
    name: str
    version: int | None = Field(description="The version being served; null while none is")
    stage: str


class Root(BaseModel):
    """`GET /`: what answers here. Always 200, so load balancers that health-check `/` by
    default (GKE's Gateway does) see a live backend; readiness is `/readyz`'s job."""

    name: str
    version: str = Field(description="Version of the maskfleet software")
    model: ServedVersion
    links: dict[str, str] = Field(description="Where to go next, relative to this server")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model: str
    version: int
    stage: str

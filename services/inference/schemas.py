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


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model: str
    version: int
    stage: str

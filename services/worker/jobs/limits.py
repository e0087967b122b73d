"""Bounds on what one batch job may ask for, shared by the API (submission) and the worker."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class JobLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    default_chunk_size: int = Field(default=64, ge=1)
    """Images per chunk when the request does not say; a chunk is the unit of redelivery."""

    max_chunk_size: int = Field(default=1000, ge=1)
    """Largest chunk a request may ask for; a bigger chunk costs more when redelivered."""

    max_images: int = Field(default=100_000, ge=1)
    """Most images one job may name; bounds the Redis record and the manifest."""

    max_errors: int = Field(default=100, ge=0)
    """Per-item errors kept in the job record; the manifest has every one of them."""

    ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """How long a finished job stays queryable before Redis forgets it."""

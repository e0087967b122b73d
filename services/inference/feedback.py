"""What /v1/segment keeps about each answer, so feedback can refer back to it later.

`POST /v1/feedback` (issue 8) receives a corrected mask for an earlier request id; to store it
for retraining and to score the served mask (IoU per version) it needs that request's image,
the mask that was served and the version that served it. The segment route hands every answer
to a `ServedLog`; today's `NoServedLog` forgets them. Issue 8 replaces it in `create_app` with
one that keeps them (e.g. in Redis with a TTL, keyed by request id) and adds the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ServedMask:
    request_id: str
    model: str
    version: int
    image: bytes
    image_sha256: str
    mask_png: bytes
    cached: bool


class ServedLog(Protocol):
    async def remember(self, served: ServedMask) -> None: ...


class NoServedLog:
    """Keeps nothing until feedback exists."""

    async def remember(self, served: ServedMask) -> None:
        return None

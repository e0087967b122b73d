"""`/v1/jobs/{id}/items`: a succeeded job's items, and each item's input image and mask.

What the web page's batch view opens: the list (paged) and, per item, the two files to draw the
mask over its input. The logic is `services.jobs.items`; handlers are plain `def` because
reading the manifest and the files blocks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from services.jobs.items import JobItems, Which, item_file, items

from ..auth import JobsCaller
from ..deps import SettingsDep
from .jobs import JobsDep, viewer

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
MAX_PAGE = 500


@router.get(
    "/{job_id}/items",
    summary="A succeeded job's items (input, mask, size, class fractions, error), paged",
    responses={401: {"description": "No or unknown API key", **_PROBLEM},
               403: {"description": "The key lacks the `jobs` scope", **_PROBLEM},
               404: {"description": "Unknown job, or another caller's", **_PROBLEM},
               409: {"description": "The job has not succeeded (no manifest yet)", **_PROBLEM}},
)
def list_items(
    job_id: str, jobs: JobsDep, caller: JobsCaller,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> JobItems:
    return items(jobs.status(job_id, viewer(caller)), offset, limit)


STORED_FILE_HEADERS = {
    "Cache-Control": "private, max-age=300",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}
"""The bytes are whatever the caller stored under an image's name: a browser opening one
directly must take it as the declared image and nothing else (no sniffing into HTML, no
script, no origin of ours if it were rendered anyway)."""


@router.get(
    "/{job_id}/items/{index}/{which}",
    summary="Item `index`'s input image or output mask (PNG), as stored",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}},
               401: {"description": "No or unknown API key", **_PROBLEM},
               403: {"description": "The key lacks the `jobs` scope", **_PROBLEM},
               404: {"description": "Unknown job or item, another caller's, or no mask",
                     **_PROBLEM},
               409: {"description": "The job has not succeeded", **_PROBLEM},
               413: {"description": "The file is larger than the body limit", **_PROBLEM},
               422: {"description": "The manifest points outside the job", **_PROBLEM}},
)
def item(
    job_id: str, jobs: JobsDep, settings: SettingsDep, caller: JobsCaller,
    index: Annotated[int, Path(ge=0)], which: Which,
) -> Response:
    data, content_type = item_file(jobs.status(job_id, viewer(caller)), index, which,
                                   settings.max_body_bytes, policy=jobs.policy)
    return Response(data, media_type=content_type, headers=STORED_FILE_HEADERS)

"""Routes of the web page: `/ui` (the files) and `/ui/config.json` (what this API offers).

Every answer under /ui carries a Content-Security-Policy that allows only this origin's own
scripts, styles, images and API calls: no inline script, no eval, no third-party hosts, no
framing. The page needs nothing else, so a script injected through a crafted file name or API
answer has nowhere to load from and nowhere to send a key to.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ..deps import CompareSegmentersDep, HolderDep, SettingsDep

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
"""`no-cache` makes browsers revalidate (ETag) so an upgraded API never runs an old script."""

router = APIRouter(tags=["ui"], include_in_schema=False)


class ModelInfo(BaseModel):
    name: str
    version: int
    stage: str


class CompareInfo(BaseModel):
    stage: str | None = Field(description="A second stage this API serves with `?stage=`")
    header: str = Field(description="Header the gateway (HTTPRoute) routes variants by")
    stable: str
    canary: str


class KeepInfo(BaseModel):
    enabled: bool = Field(description="`/v1/segment?keep=true` keeps an answer in storage")
    ttl_seconds: int = Field(description="How long a kept answer can receive its correction")


class PageConfig(BaseModel):
    """`GET /ui/config.json`: what the page shows and offers, for this API instance."""

    model: ModelInfo | None
    compare: CompareInfo
    keep: KeepInfo


class SecuredStatic(StaticFiles):
    """The package's static files, each answer with the page's security headers."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


@router.get("/ui", response_class=RedirectResponse)
async def ui_root() -> RedirectResponse:
    # relative, so /model-a/ui lands on /model-a/ui/ behind the chart's path prefixes
    return RedirectResponse("ui/", status_code=308, headers=SECURITY_HEADERS)


@router.get("/ui/config.json")
async def page_config(holder: HolderDep, settings: SettingsDep,
                      compare: CompareSegmentersDep) -> Response:
    served = holder.current
    config = PageConfig(
        model=ModelInfo(name=served.name, version=served.version, stage=served.stage)
        if served else None,
        compare=CompareInfo(stage=next(iter(compare), None), header=settings.ui_variant_header,
                            stable=settings.ui_variant_values[0],
                            canary=settings.ui_variant_values[1]),
        keep=KeepInfo(enabled=True, ttl_seconds=settings.feedback_keep_ttl_seconds),
    )
    return Response(config.model_dump_json(), media_type="application/json",
                    headers=SECURITY_HEADERS)


def install_ui(app: FastAPI) -> None:
    """Add the page's routes and files to `app`."""
    app.include_router(router)
    app.mount("/ui", SecuredStatic(directory=STATIC_DIR, html=True), name="ui")

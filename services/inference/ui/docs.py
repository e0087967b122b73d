"""`/docs`: Swagger UI from assets installed with the package, so it works offline.

FastAPI's built-in page loads Swagger UI from a public CDN and is blank wherever the browser
cannot reach it. The assets (Swagger UI 5, which reads the OpenAPI 3.1 FastAPI writes) come
from the `fastapi-offline` package, pinned in the `api` extra; only its static files are used.
They are served under `/docs-assets/`, and every URL on the page is relative, so it also works
behind the chart's path prefixes (`/model-a/docs`). ReDoc is not served.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs for `app.openapi_url`; create the app with `docs_url=None`."""
    app.mount(f"/{ASSETS}", StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    openapi = (app.openapi_url or "/openapi.json").lstrip("/")
    title = f"{app.title} - API docs"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi, title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png")

    app.docs_url = "/docs"  # after FastAPI's own setup, which would have served the CDN page

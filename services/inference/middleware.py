"""Per-request context: the X-Request-Id and the HTTP metrics, as one pure ASGI middleware.

Pure ASGI (no BaseHTTPMiddleware) because it runs on every request of a latency-bound API.
The `route` label is the matched path template, so /v2/models/{name}/infer stays one series;
`version` is the X-Model-Version the endpoint answered with ("none" for non-model routes).
Scrapes of /metrics are not counted, so watching the API does not change what it reports.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ApiMetrics

REQUEST_ID = "x-request-id"
MODEL_VERSION = "x-model-version"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED = "unmatched"
SCRAPE_PATH = "/metrics"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status, version = 500, "none"

        async def send_with_id(message: Message) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID] = request_id
                version = headers.get(MODEL_VERSION, version)
            await send(message)

        if scope["path"] == SCRAPE_PATH:
            await self.app(scope, receive, send_with_id)
            return
        m = self.metrics
        m.http_in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            m.http_in_flight.dec()
            route = getattr(scope.get("route"), "path", UNMATCHED)
            labels = (route, scope["method"], str(status), version)
            m.http_requests.labels(*labels).inc()
            m.http_duration.labels(*labels).observe(time.perf_counter() - started)


def _incoming_id(scope: Scope) -> str | None:
    """Keep a caller's (or the ingress') id when it is safe to log and echo."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_ID.match(text) else None
    return None


class StripPathPrefix:
    """Serve `/model-a/v1/segment` as `/v1/segment`, so the path-based Ingress needs no
    controller-specific rewrite annotation."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = tuple(p.rstrip("/") for p in prefixes if p.strip("/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix in self.prefixes:
                if path == prefix or path.startswith(prefix + "/"):
                    scope = {**scope, "path": path[len(prefix):] or "/",
                             "raw_path": (path[len(prefix):] or "/").encode()}
                    break
        await self.app(scope, receive, send)

"""Per-request context: the X-Request-Id, the HTTP metrics and client disconnects, as one pure
ASGI middleware.

Once a request's body has been read, a watcher waits for the client to go away; if it does
before the answer is sent, the request's task is cancelled, which drops its queued codec and
model work (the batcher skips abandoned items). Such requests are counted with status 499,
nginx's "client closed request".

Pure ASGI (no BaseHTTPMiddleware) because it runs on every request of a latency-bound API.
The `route` label is the matched path template, so /v2/models/{name}/infer stays one series;
`version` and `variant` come from the X-Model-Version the endpoint answered with
(`<version>/<variant>`, "none" for non-model routes).
Scrapes of /metrics are not counted, so watching the API does not change what it reports.
With `access_log` each request also leaves one JSON line naming its caller: the key id the
auth dependency put on `request.state.caller` (never the key), or `-` for public routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import BodyBudget
from .metrics import ApiMetrics

REQUEST_ID = "x-request-id"
MODEL_VERSION = "x-model-version"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED = "unmatched"
SCRAPE_PATH = "/metrics"
CLIENT_CLOSED = 499
"""nginx's status for a request whose client closed the connection before the answer."""
PROTOCOL = "http"
"""The `protocol` label of REST requests (gRPC calls are counted as `grpc`)."""

access = logging.getLogger("maskfleet.access")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # 32 random hex digits; a UUID object per request cost ~15 us of the event loop
        request_id = _incoming_id(scope) or os.urandom(16).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status, version = 500, "none"
        task = asyncio.current_task()
        watcher: asyncio.Task[None] | None = None
        answered = gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not answered and task is not None:
                gone = True
                task.cancel()

        async def receive_and_watch() -> Message:
            nonlocal watcher
            message = await receive()
            if (watcher is None and message["type"] == "http.request"
                    and not message.get("more_body", False)):
                watcher = asyncio.create_task(watch_disconnect())
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, version, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID] = request_id
                version = headers.get(MODEL_VERSION, version)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        if scope["path"] == SCRAPE_PATH:
            await self.app(scope, receive, send_with_id)
            return
        m = self.metrics
        m.http_in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive_and_watch, send_with_id)
        except asyncio.CancelledError:
            if not gone or task is None:
                raise
            task.uncancel()  # we cancelled it: the request ends here, quietly
            status = CLIENT_CLOSED
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            m.http_in_flight.dec()
            route = getattr(scope.get("route"), "path", UNMATCHED)
            version, _, variant = version.partition("/")
            labels = (route, scope["method"], str(status), version, variant or "none", PROTOCOL)
            elapsed = time.perf_counter() - started
            m.http_requests.labels(*labels).inc()
            m.http_duration.labels(*labels).observe(elapsed)
            if self.access_log and access.isEnabledFor(logging.INFO):
                access.info("request", extra={
                    "request_id": request_id, "method": scope["method"], "route": route,
                    "status": status, "duration_ms": round(elapsed * 1000, 2),
                    "caller": state.get("caller", "-")})


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


class BodyTooLarge(HTTPException):
    """Raised from `receive` so that every reader (our own, FastAPI's JSON parsing, which
    re-raises HTTP exceptions) stops at the limit; rendered as a 413 problem."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body exceeds the {limit} bytes this route accepts")
        self.limit = limit


class BodiesOverBudget(HTTPException):
    """Raised from `receive` (like `BodyTooLarge`) when the bodies being received together
    would pass the process's budget; rendered as a 503 problem with Retry-After."""

    def __init__(self, budget: int) -> None:
        super().__init__(503, f"the server is receiving {budget} bytes of request bodies "
                              "already; retry shortly")


class BodyLimit:
    """The body limits of every route, enforced while the body streams in.

    A declared Content-Length over the limit fails the first read; a chunked or lying body
    fails the read that crosses it, so no more than `limit` bytes are ever buffered. Routes
    under a prefix in `limits` get that limit (JSON-only routes take far less than images).

    Bodies are held whole until their request ends, so one limit per request does not bound
    memory: `budget` (shared with gRPC's messages, `admission.BodyBudget`) bounds the bytes
    of all requests at once; a read that would pass it fails with 503, and a request's bytes
    count until its response is sent.
    """

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int],
                 budget: BodyBudget) -> None:
        self.app = app
        self.default = default
        self.limits = sorted(limits.items(), key=lambda kv: -len(kv[0]))
        self.budget = budget

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        seen = counted = 0

        async def limited() -> Message:
            nonlocal seen, counted
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                seen += size
                if seen > limit:
                    raise BodyTooLarge(limit)
                if not self.budget.take(size):
                    raise BodiesOverBudget(self.budget.capacity)
                counted += size
            return message

        try:
            await self.app(scope, limited, send)
        finally:
            self.budget.give(counted)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None

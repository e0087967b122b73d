"""Every error leaves the API as `application/problem+json` (RFC 9457), never as a traceback.

One handler renders `shared.errors.MaskfleetError`; FastAPI's validation errors, Starlette's
404/405 and anything unexpected are first turned into one of those. Under /v2 the body also
carries `error`, the field Open Inference Protocol clients (tritonclient) read.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match

from shared.errors import (
    DeadlineExceeded,
    InvalidRequest,
    MaskfleetError,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    RouteNotFound,
)

from .middleware import BodiesOverBudget

PROBLEM_JSON = "application/problem+json"
CLIENT_CLOSED = 499
"""nginx's status for a request whose client closed the connection before the answer."""

log = logging.getLogger(__name__)


def problem_response(request: Request, error: MaskfleetError) -> Response:
    """The single rendering of an error: stable `code`, human `detail`, the request id."""
    request_id = getattr(request.state, "request_id", None)
    body: dict[str, object] = {
        "type": f"urn:maskfleet:error:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "request_id": request_id,
    }
    if request.url.path.startswith("/v2"):
        body["error"] = error.detail
    # 503 while loading or draining is routine (probes poll it); other 5xx mean a failure
    # as is a deadline the client chose itself (504)
    level = (logging.DEBUG if error.status == 503 else
             logging.INFO if isinstance(error, DeadlineExceeded) else
             logging.ERROR if error.status >= 500 else logging.INFO)
    log.log(level, "request failed", extra={"status": error.status, "code": error.code,
                                            "detail": error.detail, "request_id": request_id,
                                            "path": request.url.path})
    # set here too, not only by the RequestContext middleware: Starlette sends the answer to
    # an unhandled exception from outside every user middleware
    headers = {"X-Request-Id": request_id} if request_id else {}
    headers.update(error.headers)
    if isinstance(error, Overloaded):
        settings = getattr(request.app.state, "settings", None)
        headers["Retry-After"] = str(getattr(settings, "retry_after_seconds",
                                             error.retry_after))
    return Response(json.dumps(body), status_code=error.status, media_type=PROBLEM_JSON,
                    headers=headers)


async def _maskfleet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MaskfleetError)
    return problem_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', 'invalid')}"
                       for e in list(exc.errors())[:5])
    return problem_response(request, InvalidRequest(detail or None))


_PHRASES = {status.value: status.phrase for status in HTTPStatus}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: MaskfleetError
    if exc.status_code == 404:
        error = RouteNotFound(f"no endpoint at {request.url.path}")
    elif exc.status_code == 405:
        allowed = _allowed_methods(request)
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; "
                                 f"allowed: {', '.join(allowed)}")
        response = problem_response(request, error)
        response.headers["Allow"] = ", ".join(allowed)
        return response
    elif exc.status_code == 413:  # middleware.BodyLimit
        error = PayloadTooLarge(str(exc.detail))
    elif isinstance(exc, BodiesOverBudget):
        error = Overloaded(str(exc.detail))
    else:
        error = MaskfleetError(str(exc.detail))
        error.status, error.code = exc.status_code, f"http_{exc.status_code}"
        error.title = _PHRASES.get(exc.status_code, "Error")  # not the base class's 500 title
    response = problem_response(request, error)
    response.headers.update(exc.headers or {})
    return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's own 405 names only the first
    route whose path matched, while GET and DELETE /v1/jobs/{id} are two routes."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client went away while its body was read (or was cut off for being too slow):
    nobody will read an answer, so none is rendered; 499 is what the metrics record."""
    log.debug("client disconnected", extra={"path": request.url.path,
                                            "request_id": getattr(request.state,
                                                                  "request_id", None)})
    return Response(status_code=CLIENT_CLOSED)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc,
              extra={"request_id": getattr(request.state, "request_id", None)})
    return problem_response(request, MaskfleetError("the server failed; see its logs"))


def install_error_handlers(app: FastAPI) -> None:
    document_problems(app)
    app.add_exception_handler(MaskfleetError, _maskfleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "title", "status", "detail", "code"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                   "status": {"type": "integer"}, "detail": {"type": "string"},
                   "code": {"type": "string"},
                   "request_id": {"type": ["string", "null"]},
                   "error": {"type": "string", "description": "Under /v2: the detail again, "
                             "where Open Inference Protocol clients read it"}}}


def document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document say what `install_error_handlers` does: every 4xx/5xx is
    `application/problem+json`. FastAPI documents its own 422 `HTTPValidationError` JSON for
    every route with parameters, which this API never sends."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, summary=app.summary,
                               description=app.description, routes=app.routes)
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    if status[:1] in ("4", "5"):
                        response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}
        for unused in ("HTTPValidationError", "ValidationError"):
            document.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]

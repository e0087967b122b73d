"""uvicorn's HTTP protocol with the guards it lacks: a request-head size limit and read
timeouts for the head and the body.

uvicorn (with httptools) buffers a request head of any size and waits for a head or a body
forever: one client can hold a 64 MiB header in memory, and a few hundred sockets sending a
byte now and then keep connections and requests open indefinitely. These guards sit in the
transport, before any ASGI code runs, so they also hold when the application is busy:
- a head larger than `max_header_bytes` gets 431 and the connection is closed, checked on
  every read before the parser sees it (so also the read that completes the head), and at
  most one read beyond the limit is ever buffered;
- a request head not complete within `header_timeout_seconds` of its first byte gets 408
  and the connection is closed;
- a new connection that sends nothing is closed (silently) after `idle_timeout`, the same
  keep-alive timeout uvicorn applies between requests, since load balancers open backend
  connections ahead of the requests they will carry;
- a body not complete within `body_timeout_seconds` after its head gets 408 and is closed.
An idle keep-alive connection is closed by uvicorn's own `timeout_keep_alive`. The gateway in
front adds its own limits (docs/admission.md, "Gateway settings"); these hold without it.

Beyond `limit_concurrency` connections and requests uvicorn answers 503 itself, in plain
text; here that answer is the API's problem+json 503 with `Retry-After`, like every other
refusal, so clients and dashboards see one kind of "at capacity". So is its 400 for a request
the HTTP parser refuses (bad framing, methods, versions, header syntax).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from shared.errors import (
    HeaderTooLarge,
    InvalidInput,
    MaskfleetError,
    Overloaded,
    RequestTimeout,
)

RETRY_AFTER_SECONDS = 1


def guarded_protocol(*, max_header_bytes: int, header_timeout: float, body_timeout: float,
                     idle_timeout: float) -> type[asyncio.Protocol]:
    """An `HttpToolsProtocol` subclass with the limits baked in, for `uvicorn.Config(http=)`."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0
            self._head_done = False
            self._tail = b""  # the last bytes of the head so far: its end may span two reads
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm(idle_timeout, None)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._head_done:
                if self._head_bytes == 0:  # the first byte of a head: its clock starts
                    self._arm(header_timeout, RequestTimeout(
                        f"no complete request head within {header_timeout:g} s"))
                if self._head_bytes + _head_in(self._tail, data) > max_header_bytes:
                    self._refuse(HeaderTooLarge(
                        f"the request head exceeds {max_header_bytes} bytes"))
                    return
                self._head_bytes += len(data)
                self._tail = (self._tail + data[-3:])[-3:]
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._head_done = True
            self._head_bytes = 0
            self._tail = b""
            self._arm(body_timeout, RequestTimeout(
                f"the request body was not received within {body_timeout:g} s"))
            super().on_headers_complete()

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            if app is service_unavailable:  # uvicorn's own plain-text 503
                app = _over_capacity
            super()._start_asgi_task(cycle, app)

        def on_message_complete(self) -> None:
            self._disarm()
            self._head_done = False
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to what its parser refuses, as a problem (then closed)."""
            self._refuse(InvalidInput(f"the HTTP request is malformed: {msg}"))

        def _arm(self, seconds: float, error: MaskfleetError | None) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._refuse, error)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _refuse(self, error: MaskfleetError | None) -> None:
            """Answer `error` (unless a response already started, or there is no error: an
            idle connection) and close the connection."""
            self._disarm()
            if self.transport is None or self.transport.is_closing():
                return
            if error is not None and (self.cycle is None or not self.cycle.response_started):
                self.transport.write(_problem_bytes(error))
            if self.cycle is not None:
                self.cycle.disconnected = True  # the application stops reading and sending
            self.transport.close()

    return GuardedHttpToolsProtocol


def _head_in(tail: bytes, data: bytes) -> int:
    """How many bytes of `data` belong to the request head: up to its blank line when this
    read holds it (`tail` is the head's last bytes so far: the line may span two reads), else
    all of them. No copy of `data` on the request path: only its first three bytes join."""
    across = (tail + data[:3]).find(b"\r\n\r\n")
    if across >= 0:
        return across + 4 - len(tail)
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 4


def _problem_body(error: MaskfleetError, request_id: str) -> bytes:
    return json.dumps({"type": f"urn:maskfleet:error:{error.code}", "title": error.title,
                       "status": error.status, "detail": error.detail, "code": error.code,
                       "request_id": request_id}).encode()


def _problem_bytes(error: MaskfleetError) -> bytes:
    request_id = uuid.uuid4().hex
    body = _problem_body(error, request_id)
    reason = {400: b"Bad Request", 408: b"Request Timeout",
              431: b"Request Header Fields Too Large"}.get(
        error.status, b"Error")
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\n"
            b"content-length: %d\r\nx-request-id: %s\r\nconnection: close\r\n\r\n"
            % (error.status, reason, len(body), request_id.encode()))
    return head + body


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The answer beyond `limit_concurrency`, before the application sees the request."""
    error = Overloaded("the server is at its connection and request limit; retry shortly")
    request_id = uuid.uuid4().hex
    body = _problem_body(error, request_id)
    await send({"type": "http.response.start", "status": error.status, "headers": [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        (b"x-request-id", request_id.encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})

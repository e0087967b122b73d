"""A forwarding HTTP proxy in front of the GCS emulator that holds chosen objects' requests.

To stop a worker at a known point inside a chunk, a job names a held object as one of its
images: the worker's request for it waits in the proxy until the test releases it. (A local
FIFO used to serve, but workers now refuse anything that is not a regular file.) Only workers
talk through the proxy (their `STORAGE_EMULATOR_HOST`); the test reaches the emulator directly.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from tests.servers import free_port, wait_until

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class HoldingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self._upstream = upstream_port
        self._held: dict[str, threading.Event] = {}  # object name -> released
        self._waiting: dict[str, int] = {}  # object name -> requests waiting now
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test's own log is enough."""

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def do_PUT(self) -> None:
                proxy._forward(self)

            def do_PATCH(self) -> None:
                proxy._forward(self)

            def do_DELETE(self) -> None:
                proxy._forward(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self, name: str) -> None:
        """Requests naming object `name` wait until `release(name)`."""
        with self._lock:
            self._held[name] = threading.Event()

    def release(self, name: str, timeout: float) -> None:
        """Once a request for `name` is waiting (a worker is reading it), let it through."""
        wait_until(lambda: self._waiting.get(name, 0) > 0, timeout, f"a worker reading {name}")
        self._held[name].set()

    def close(self) -> None:
        for event in self._held.values():
            event.set()
        self._server.shutdown()
        self._server.server_close()

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        path = unquote(handler.path)
        held = next((n for n in self._held if f"/{n}" in path and not self._held[n].is_set()),
                    None)
        if held is not None:
            with self._lock:
                self._waiting[held] = self._waiting.get(held, 0) + 1
            self._held[held].wait()
            with self._lock:
                self._waiting[held] -= 1
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self._upstream, timeout=60)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            with contextlib.suppress(OSError):  # a killed worker is no longer listening
                handler.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        handler.send_header(key, value)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
        finally:
            upstream.close()

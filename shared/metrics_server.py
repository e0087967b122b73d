"""/metrics on a port of its own, with bounded threads and timeouts.

prometheus_client's `start_http_server` runs one thread per connection, without limit or read
timeout, in the serving process: 2000 sockets that send half a request held 2000 threads, and
when they closed, each thread rendered /metrics (EOF completes the request), so the GIL went to
the scrapes and API requests waited a minute. Here at most `MAX_THREADS` connections are
served at once (the kernel's listen backlog holds the rest), and a connection that sends
nothing for `READ_TIMEOUT_SECONDS` is dropped. Prometheus scrapes one connection at a time per
target, so the bound never slows a real scrape.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

MAX_THREADS = 4
READ_TIMEOUT_SECONDS = 5.0


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT_SECONDS  # per socket read or write

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _BoundedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    address_family = socket.AF_INET
    request_queue_size = 128  # waiting connections queue in the kernel, not in threads

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_THREADS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # the accept loop waits here while every slot is busy
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or hung up is no news (socketserver prints a traceback)."""

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _BoundedServer6(_BoundedServer):
    address_family = socket.AF_INET6


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve `registry` at http://host:port/metrics from a daemon thread; returns the server
    (`shutdown()` then `server_close()` to stop it)."""
    server_class = _BoundedServer6 if ":" in host else _BoundedServer
    server = make_server(host, port, make_wsgi_app(registry), server_class,
                         handler_class=_Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
    return server

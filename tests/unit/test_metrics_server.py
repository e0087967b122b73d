"""The metrics port holds a bounded number of threads, whatever its clients do."""

from __future__ import annotations

import socket
import threading
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from shared.metrics_server import MAX_THREADS, serve_metrics
from tests.servers import free_port, wait_until


def test_half_sent_requests_hold_at_most_a_few_threads_and_scrapes_still_answer() -> None:
    """prometheus_client's own server started a thread per connection: 2000 sockets sending
    half a request held 2000 threads in the API's process."""
    registry = CollectorRegistry()
    Counter("probe_total", "A counter to find in the scrape", registry=registry).inc()
    port = free_port()
    server = serve_metrics(registry, "127.0.0.1", port)
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        for sock in idle:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        wait_until(lambda: threading.active_count() >= before + MAX_THREADS, 10,
                   "the first connections taken")
        assert threading.active_count() <= before + MAX_THREADS
    finally:
        for sock in idle:
            sock.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as answer:
        assert answer.status == 200
        assert b"probe_total 1.0" in answer.read()
    server.shutdown()
    server.server_close()

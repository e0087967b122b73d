"""`python -m services.inference`: one uvicorn process serving the API.

uvicorn owns SIGTERM/SIGINT: it stops accepting connections, lets in-flight requests finish
(up to `shutdown_timeout_seconds`), then runs the app's lifespan shutdown. The gRPC server
starts its own drain when uvicorn's shutdown begins, so both transports drain at once within
that one timeout (the chart's grace period counts it once). On Kubernetes the preStop hook has
already made /readyz and gRPC health fail and waited for the endpoint removal to propagate (see
`drain.py`), so no new request arrives after the listeners close.
"""

from __future__ import annotations

import gc
import logging
import socket
import sys
from collections.abc import Callable

import uvicorn
from pydantic import ValidationError

from shared.cpu import size_tensorflow_threads
from shared.logging import configure_logging

from .app import create_app
from .server import guarded_protocol
from .settings import InferenceSettings


def main() -> None:
    try:
        settings = InferenceSettings()
    except ValidationError as exc:
        configure_logging()
        logging.getLogger(__name__).error("invalid settings", extra={"errors": exc.errors()})
        sys.exit(2)
    configure_logging(settings.log_level)
    size_tensorflow_threads(settings.cpu_limit)  # before the model's first op
    app = create_app(settings)
    _freeze_heap()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=round(settings.shutdown_timeout_seconds),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        limit_concurrency=settings.limit_concurrency,
        http=guarded_protocol(max_header_bytes=settings.max_header_bytes,
                              header_timeout=settings.header_timeout_seconds,
                              body_timeout=settings.body_timeout_seconds,
                              idle_timeout=settings.keep_alive_timeout_seconds),
    )
    grpc_server = app.state.grpc
    _Server(config, on_shutdown=grpc_server.begin_stop if grpc_server else _nothing).run()


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_shutdown` (on the event loop) when its shutdown begins."""

    def __init__(self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets=sockets)


def _nothing() -> None:
    """No gRPC server: nothing to start draining."""


def _freeze_heap() -> None:
    """Hide the ~350k objects the imports leave (TensorFlow, Keras, FastAPI) from the collector.

    They live as long as the process, yet every full collection walked them again: a pause of
    250+ ms with the event loop stopped, the p99 spikes under load. Request garbage is still
    collected as before; only what exists now (after one last collection) is frozen.
    """
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    main()

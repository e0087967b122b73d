"""`python -m services.inference`: one uvicorn process serving the API.

uvicorn owns SIGTERM/SIGINT: it stops accepting connections, lets in-flight requests finish
(up to `shutdown_timeout_seconds`), then runs the app's lifespan shutdown.
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from shared.logging import configure_logging

from .app import create_app
from .settings import InferenceSettings


def main() -> None:
    try:
        settings = InferenceSettings()
    except ValidationError as exc:
        configure_logging()
        logging.getLogger(__name__).error("invalid settings", extra={"errors": exc.errors()})
        sys.exit(2)
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=round(settings.shutdown_timeout_seconds),
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()

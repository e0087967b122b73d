"""Leave Redis alone for a while after an error.

The result cache and the feedback log both talk to Redis on the request path; after a failure
each skips Redis for `retry_seconds`, so a dead Redis costs one timeout per interval instead of
one per request, and Redis is used again by itself once the interval is over.
"""

from __future__ import annotations

import logging
import time


class RedisBackoff:
    def __init__(self, retry_seconds: float, what: str, log: logging.Logger) -> None:
        self.retry_seconds = retry_seconds
        self._what = what
        self._log = log
        self._until = 0.0

    @property
    def open(self) -> bool:
        """True when Redis may be tried."""
        return time.monotonic() >= self._until

    def trip(self, action: str, exc: BaseException) -> None:
        self._until = time.monotonic() + self.retry_seconds
        self._log.warning(f"{self._what} unavailable", extra={
            "action": action, "error": type(exc).__name__, "detail": str(exc),
            "bypass_seconds": self.retry_seconds})

"""JSON logs on stdout, configured once per process."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from shared.errors import clip

_RESERVED = set(vars(logging.makeLogRecord({})))
MAX_FIELD_CHARS = 1024
"""Fields often echo input (a path, a library's message quoting a body): one line stays
readable and bounded whatever a caller sends."""
MAX_TRACEBACK_CHARS = 8192


class JsonFormatter(logging.Formatter):
    """One JSON object per line so that log shippers need no parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": clip(record.getMessage()),
        }
        entry.update({k: _bounded(v) for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = clip(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS)
        return json.dumps(entry, default=_bounded_str)


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple, dict)) and len(str(value)) > MAX_FIELD_CHARS:
        return clip(str(value))
    return value


def _bounded_str(value: object) -> str:
    return clip(str(value))


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines to stdout (services), or to `stream` (CLIs whose stdout is their output)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("absl", "tensorflow", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

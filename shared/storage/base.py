"""The one storage interface, addressed by URI."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    """Object storage as maskfleet needs it: whole objects, addressed by full URIs."""

    def read(self, uri: str) -> bytes: ...

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None: ...

    def exists(self, uri: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every object URI under `prefix` (recursive, sorted)."""
        ...

    def delete(self, uri: str) -> None: ...

    def download_tree(self, prefix: str, dest: Path) -> Path:
        """Copy every object under the `prefix` folder into `dest`, keeping relative paths."""
        ...


def join(base: str, *parts: str) -> str:
    """Join URI parts with single slashes (works for gs://, file:// and paths)."""
    out = base.rstrip("/")
    for part in parts:
        if part:
            out = f"{out}/{part.strip('/')}"
    return out


def folder(uri: str) -> str:
    """A prefix that only matches objects inside the folder `uri`."""
    return uri.rstrip("/") + "/"


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]

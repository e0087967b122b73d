"""The one storage interface, addressed by URI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from shared.errors import OutsideFolder

ReadCheck = Callable[[str], None]
"""Called with where a read really lands (the path the kernel opened for a local file, with
every symlink followed; the URI on GCS); raises to refuse the read."""


class Storage(Protocol):
    """Object storage as maskfleet needs it: whole objects, addressed by full URIs."""

    def read(self, uri: str) -> bytes: ...

    def read_checked(self, uri: str, max_bytes: int, check: ReadCheck | None = None) -> bytes:
        """The object's bytes, refusing (`PayloadTooLarge`) one above `max_bytes` before more
        than `max_bytes + 1` of it is read, and whatever `check` refuses."""
        ...

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None: ...

    def write_within(self, root: str, uri: str, data: bytes,
                     content_type: str | None = None) -> None:
        """Write `uri`, which must lie inside the folder `root`, so that it cannot land outside
        it even if a folder on the way is swapped for a link meanwhile (`OutsideFolder`)."""
        ...

    def exists(self, uri: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every object URI under `prefix` (recursive, sorted)."""
        ...

    def walk(self, prefix: str) -> Iterator[str]:
        """The object URIs under `prefix` as `list` finds them, one at a time and in no set
        order, so a caller that needs only some of them (the first, or a bounded number)
        stops the listing there instead of holding all of them."""
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


def relative_parts(root: str, uri: str) -> list[str]:
    """The path components of `uri` below the folder `root` (at least one); `OutsideFolder`
    if `uri` is not spelled as a plain path inside it (no `.`, `..` or empty segments)."""
    base = root.rstrip("/") + "/"
    parts = uri.removeprefix(base).split("/") if uri.startswith(base) else []
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise OutsideFolder(f"{uri[:300]!r} is not a plain path inside {root[:300]!r}")
    return parts

"""Local disk behind the storage interface (plain paths and file:// URIs)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from shared.errors import ObjectNotFound

_SCHEME = "file://"


class LocalStorage:
    """Writes are atomic (temp file + rename), so readers never see half an object."""

    @staticmethod
    def _path(uri: str) -> Path:
        return Path(uri.removeprefix(_SCHEME))

    @staticmethod
    def _uri_like(template: str, path: Path) -> str:
        return f"{_SCHEME}{path}" if template.startswith(_SCHEME) else str(path)

    def read(self, uri: str) -> bytes:
        try:
            return self._path(uri).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no object at {uri}") from exc

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def list(self, prefix: str) -> list[str]:
        raw = prefix.removeprefix(_SCHEME)
        is_folder = raw.endswith("/") or Path(raw).is_dir()
        base = Path(raw) if is_folder else Path(raw).parent
        if not base.is_dir():
            return []
        found = (
            p for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".") and (is_folder or str(p).startswith(raw))
        )
        return sorted(self._uri_like(prefix, p) for p in found)

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def download_tree(self, prefix: str, dest: Path) -> Path:
        src = self._path(prefix)
        if not src.is_dir():
            raise ObjectNotFound(f"no folder at {prefix}")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest

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
        """Object-store semantics, as on GCS: every file whose URI starts with `prefix`.

        URIs come back spelled like `prefix` (`./var/x/...` stays `./var/x/...`), so callers
        can strip the prefix they passed; hidden files (in-flight atomic writes) are skipped.
        """
        scheme = _SCHEME if prefix.startswith(_SCHEME) else ""
        raw = prefix.removeprefix(_SCHEME)
        head, sep, stem = raw.rpartition("/")
        base_text = head + sep
        base = Path(base_text or ".")
        if not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            relative = path.relative_to(base).as_posix()
            if relative.startswith(stem) and not path.name.startswith(".") and path.is_file():
                found.append(f"{scheme}{base_text}{relative}")
        return sorted(found)

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

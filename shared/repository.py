"""The model repository: `<root>/<model>/<version>/` (TF Serving layout) plus stage pointers.

A version is visible only once its `COMPLETE` marker exists; the marker is written after every
other file, so a publish that crashes half-way leaves nothing a reader would load. This does
not rely on GCS generation preconditions (the emulator ignores them). Version numbers are
never reused, even after a crashed publish, so caches keyed by version stay correct.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shared.errors import ModelNotFound, ObjectNotFound, VersionNotFound
from shared.settings import Stage
from shared.storage import Storage, folder, join, storage_for

MARKER = "COMPLETE"
METADATA = "metadata.json"
STAGES = "stages"

log = logging.getLogger(__name__)


class VersionMetadata(BaseModel):
    """What we know about a version: how it was made and how good it was."""

    model: str
    version: int
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset_fingerprint: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    parent_version: int | None = None


class StagePointer(BaseModel):
    version: int
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ModelRepository:
    def __init__(self, root: str, storage: Storage | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage = storage or storage_for(root)

    def _uri(self, model: str, *parts: str) -> str:
        return join(self.root, model, *parts)

    def _numbered(self, model: str) -> dict[int, set[str]]:
        """Version number -> names of the files directly inside that version folder."""
        base = folder(self._uri(model))
        found: dict[int, set[str]] = {}
        for uri in self.storage.list(base):
            head, _, rest = uri.removeprefix(base).partition("/")
            if head.isdigit() and rest:
                found.setdefault(int(head), set()).add(rest)
        return found

    def versions(self, model: str) -> list[int]:
        """Complete versions, oldest first."""
        return sorted(v for v, files in self._numbered(model).items() if MARKER in files)

    def models(self) -> list[str]:
        names = {u.removeprefix(folder(self.root)).split("/", 1)[0] for u in
                 self.storage.list(folder(self.root))}
        return sorted(n for n in names if self.versions(n))

    def is_complete(self, model: str, version: int) -> bool:
        return self.storage.exists(self._uri(model, str(version), MARKER))

    def metadata(self, model: str, version: int) -> VersionMetadata:
        if not self.is_complete(model, version):
            raise VersionNotFound(f"{model} has no version {version}")
        raw = self.storage.read(self._uri(model, str(version), METADATA))
        return VersionMetadata.model_validate_json(raw)

    def publish(self, model: str, saved_model: Path, metadata: VersionMetadata) -> int:
        """Upload a SavedModel as the next version; the marker goes last."""
        numbered = self._numbered(model)
        version = max(numbered, default=0) + 1
        prefix = self._uri(model, str(version))
        for path in sorted(p for p in saved_model.rglob("*") if p.is_file()):
            self.storage.write(join(prefix, path.relative_to(saved_model).as_posix()),
                               path.read_bytes())
        stamped = metadata.model_copy(update={"model": model, "version": version})
        self.storage.write(join(prefix, METADATA), stamped.model_dump_json(indent=2).encode(),
                           "application/json")
        self.storage.write(join(prefix, MARKER), b"", "text/plain")
        log.info("published version", extra={"model": model, "version": version})
        return version

    def stage(self, model: str, stage: Stage | str) -> int | None:
        """The version a stage points to, or None when unset or pointing at nothing loadable."""
        try:
            raw = self.storage.read(self._uri(model, STAGES, f"{stage}.json"))
        except ObjectNotFound:
            return None
        version = StagePointer.model_validate_json(raw).version
        return version if self.is_complete(model, version) else None

    def set_stage(self, model: str, stage: Stage | str, version: int) -> None:
        if not self.is_complete(model, version):
            raise VersionNotFound(f"{model} has no version {version}")
        pointer = StagePointer(version=version).model_dump_json().encode()
        self.storage.write(self._uri(model, STAGES, f"{stage}.json"), pointer, "application/json")

    def clear_stage(self, model: str, stage: Stage | str) -> None:
        self.storage.delete(self._uri(model, STAGES, f"{stage}.json"))

    def resolve(self, model: str, *, version: int | None = None,
                stage: Stage | str = "production") -> int:
        """A pinned version if given (it must exist), else the stage's version."""
        if version is not None:
            if not self.is_complete(model, version):
                raise VersionNotFound(f"{model} has no version {version}")
            return version
        resolved = self.stage(model, stage)
        if resolved is None:
            raise ModelNotFound(f"{model} has no version at stage {stage!r}")
        return resolved

    def download(self, model: str, version: int, cache_dir: Path) -> Path:
        """Copy a version into `cache_dir/<model>/<version>` once; later calls reuse it."""
        target = cache_dir / model / str(version)
        if (target / MARKER).exists():
            return target
        if not self.is_complete(model, version):
            raise VersionNotFound(f"{model} has no version {version}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
        try:
            self.storage.download_tree(self._uri(model, str(version)), staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target



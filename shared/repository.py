"""The model repository: `<root>/<model>/<version>/` (TF Serving layout) plus stage pointers.

A version is visible only once its `COMPLETE` marker exists; the marker is written after every
other file, so a publish that crashes half-way leaves nothing a reader would load. Variants
(`<version>/variants/<name>/`, see `shared.model.variants`) follow the same rule: published with
the version they go before its marker; added later (`add_variants`) their files go first and
`metadata.json`, which is what lists them, is rewritten last (one object write, atomic). This does
not rely on GCS generation preconditions (the emulator ignores them). Version numbers are
never reused, even after a crashed publish, so caches keyed by version stay correct.

Two publishers (two manual training runs, an import beside a run) never share a version
folder: each claims the next number by writing a uniquely named claim object into it and then
listing the folder; whoever finds anything besides its own claim backs off and takes a later
number. GCS lists are strongly consistent, so of two claims the later one always sees the
earlier: at most one publisher owns a number, with no lock service and no preconditions.

Stage pointers remember the versions they named before, so a stage can be rolled back.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shared.errors import ModelNotFound, ObjectNotFound, PublishConflict, VersionNotFound
from shared.model.variants import VARIANTS_DIR, VariantRecord
from shared.settings import Stage
from shared.storage import Storage, folder, join, storage_for

MARKER = "COMPLETE"
METADATA = "metadata.json"
STAGES = "stages"
CLAIM_PREFIX = "CLAIMED-BY-"
CLAIM_ATTEMPTS = 30
HISTORY_LENGTH = 20
KEEP_DOWNLOADED = 2
"""Downloaded versions kept per model: the one being served and the one before it (a swap
back, or a worker's second pinned version, needs no second download)."""

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
    variants: dict[str, VariantRecord] = Field(default_factory=dict)
    """Optimized builds that passed the accuracy gate, by name (`<version>/variants/<name>/`)."""


class StagePointer(BaseModel):
    version: int
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    previous: list[int] = Field(default_factory=list)
    """Versions this stage named before, oldest first (at most 20): what a rollback returns to."""


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

    def publish(self, model: str, saved_model: Path, metadata: VersionMetadata,
                variants: Path | None = None) -> int:
        """Upload a SavedModel (and the variant folders under `variants`, one per name listed
        in `metadata.variants`) as the next free version; the marker goes last."""
        missing = [n for n in metadata.variants if variants is None or not (variants / n).is_dir()]
        if missing:
            raise ValueError(f"variants {missing} are listed but have no folder to publish")
        version, claim = self._claim(model)
        prefix = self._uri(model, str(version))
        ours = {MARKER, METADATA}
        for path in sorted(p for p in saved_model.rglob("*") if p.is_file()):
            relative = path.relative_to(saved_model).as_posix()
            if relative in ours or relative.startswith((CLAIM_PREFIX, VARIANTS_DIR + "/")):
                continue  # a version folder imported as is: its marker must not go first
            self.storage.write(join(prefix, relative), path.read_bytes())
        for name in sorted(metadata.variants):
            assert variants is not None
            self._upload(variants / name, join(prefix, VARIANTS_DIR, name))
        stamped = metadata.model_copy(update={"model": model, "version": version})
        self.storage.write(join(prefix, METADATA), stamped.model_dump_json(indent=2).encode(),
                           "application/json")
        self.storage.write(join(prefix, MARKER), b"", "text/plain")
        self.storage.delete(claim)
        log.info("published version", extra={"model": model, "version": version})
        return version

    def _upload(self, source: Path, prefix: str) -> None:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            self.storage.write(join(prefix, path.relative_to(source).as_posix()),
                               path.read_bytes())

    def add_variants(self, model: str, version: int, variants: Path,
                     records: dict[str, VariantRecord]) -> VersionMetadata:
        """Publish variants of an existing version: their files first, then the metadata that
        lists them, so a reader never sees a listed variant whose files are incomplete."""
        metadata = self.metadata(model, version)
        prefix = self._uri(model, str(version))
        for name in sorted(records):
            self._upload(variants / name, join(prefix, VARIANTS_DIR, name))
        updated = metadata.model_copy(update={"variants": {**metadata.variants, **records}})
        self.storage.write(join(prefix, METADATA), updated.model_dump_json(indent=2).encode(),
                           "application/json")
        log.info("published variants", extra={"model": model, "version": version,
                                              "variants": sorted(records)})
        return updated

    def _claim(self, model: str) -> tuple[int, str]:
        """The next version number nobody else is writing, and the URI of our claim on it."""
        token = f"{CLAIM_PREFIX}{secrets.token_hex(8)}"
        for _ in range(CLAIM_ATTEMPTS):
            version = max(self._numbered(model), default=0) + 1
            claim = self._uri(model, str(version), token)
            self.storage.write(claim, f"{os.getpid()}\n".encode(), "text/plain")
            present = self.storage.list(folder(self._uri(model, str(version))))
            if present == [claim]:
                return version, claim
            self.storage.delete(claim)
            log.info("version number taken by another publisher; trying the next",
                     extra={"model": model, "version": version})
            time.sleep(random.uniform(0.0, 0.2))  # jitter, not cryptography
        raise PublishConflict(f"{model}: no free version number after {CLAIM_ATTEMPTS} tries")

    def stage(self, model: str, stage: Stage | str) -> int | None:
        """The version a stage points to, or None when unset or pointing at nothing loadable."""
        pointer = self._pointer(model, stage)
        if pointer is None:
            return None
        return pointer.version if self.is_complete(model, pointer.version) else None

    def _pointer(self, model: str, stage: Stage | str) -> StagePointer | None:
        try:
            raw = self.storage.read(self._uri(model, STAGES, f"{stage}.json"))
        except ObjectNotFound:
            return None
        return StagePointer.model_validate_json(raw)

    def history(self, model: str, stage: Stage | str) -> list[int]:
        """Versions the stage named before its current one, oldest first."""
        pointer = self._pointer(model, stage)
        return [] if pointer is None else list(pointer.previous)

    def set_stage(self, model: str, stage: Stage | str, version: int) -> None:
        if not self.is_complete(model, version):
            raise VersionNotFound(f"{model} has no version {version}")
        current = self._pointer(model, stage)
        previous = [] if current is None else list(current.previous)
        if current is not None and current.version != version:
            previous.append(current.version)
        self._write_pointer(model, stage, StagePointer(
            version=version, previous=previous[-HISTORY_LENGTH:]))

    def rollback_stage(self, model: str, stage: Stage | str) -> int | None:
        """Point the stage back at the newest earlier version that still exists.

        Returns that version, or None when the stage has no earlier one (it is left as is).
        """
        current = self._pointer(model, stage)
        if current is None:
            return None
        previous = list(current.previous)
        while previous:
            version = previous.pop()
            if version != current.version and self.is_complete(model, version):
                self._write_pointer(model, stage,
                                    StagePointer(version=version, previous=previous))
                return version
        return None

    def _write_pointer(self, model: str, stage: Stage | str, pointer: StagePointer) -> None:
        self.storage.write(self._uri(model, STAGES, f"{stage}.json"),
                           pointer.model_dump_json().encode(), "application/json")

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

    def download(self, model: str, version: int, cache_dir: Path,
                 keep: int = KEEP_DOWNLOADED) -> Path:
        """Copy a version into `cache_dir/<model>/<version>` once; later calls reuse it.

        Each call marks the version as used; beyond `keep` versions of this model, the least
        recently used are deleted, so a long-lived pod's /tmp does not fill up with every
        version it ever served. (A loaded SavedModel no longer needs its files.)
        """
        target = cache_dir / model / str(version)
        if (target / MARKER).exists():
            target.touch()
            _prune(target.parent, keep)
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
        target.touch()
        _prune(target.parent, keep)
        return target

    def download_variant(self, model: str, version: int, variant: str, cache_dir: Path) -> Path:
        """Make sure a variant added after the version was downloaded is in the local copy."""
        target = self.download(model, version, cache_dir) / VARIANTS_DIR / variant
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(dir=target.parent.parent, prefix=f".{variant}-"))
        try:
            self.storage.download_tree(self._uri(model, str(version), VARIANTS_DIR, variant),
                                       staging)
            if not any(staging.iterdir()):
                raise ModelNotFound(f"{model} version {version} has no variant {variant!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # another process won the rename: theirs is as good
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _prune(model_dir: Path, keep: int) -> None:
    """Delete all but the `keep` most recently used version folders (in-flight ones are hidden
    `.N-*` folders and never touched)."""
    versions = [p for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()]
    versions.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for stale in versions[max(1, keep):]:
        shutil.rmtree(stale, ignore_errors=True)
        log.info("pruned downloaded version", extra={"path": str(stale)})

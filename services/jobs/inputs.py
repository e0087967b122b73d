"""From a job request to the exact list of images and where each mask goes.

Rules (all refused with a reason, before anything is queued):
- URIs are `gs://bucket/...`; absolute local paths and `file://` only when local URIs are
  allowed (development), so an API caller cannot make a worker read or write its own disk.
- A prefix is listed as a folder; only `.jpg`, `.jpeg` and `.png` objects are kept, and
  nothing already under the output folder (re-running a job never segments its own masks).
  The listing stops at the first image beyond `max_images`, so a huge prefix costs the API
  no more memory than the largest job it accepts.
- A mask is `<output>/<path below the prefix, extension replaced by .png>` for prefix jobs
  and `<output>/<file stem>.png` for lists; two inputs writing one mask are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.jobs.confinement import escapes
from services.jobs.records import InputSummary
from shared.errors import (
    InvalidJob,
    JobTooLarge,
    NoImagesFound,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from shared.storage import Storage, basename, folder, join, storage_for

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ResolvedInputs:
    uris: list[str]
    base: str | None
    summary: InputSummary


def check_uri(uri: str, *, allow_local: bool, what: str) -> str:
    """Refuse URIs a worker could not (or must not) use; return the URI unchanged."""
    if not uri or _UNSAFE.search(uri):
        raise InvalidJob(f"{what} {uri!r} is empty or has control characters")
    if uri.startswith("gs://"):
        bucket = uri.removeprefix("gs://").split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise InvalidJob(f"{what} {uri!r} does not name a valid bucket")
    elif "://" in uri and not uri.startswith("file://"):
        raise InvalidJob(f"{what} {uri!r}: only gs:// URIs are supported")
    elif not allow_local:
        raise InvalidJob(f"{what} {uri!r}: local paths are refused here; use a gs:// URI")
    elif not uri.removeprefix("file://").startswith("/"):
        raise InvalidJob(f"{what} {uri!r}: local paths must be absolute")
    if any(part == ".." for part in uri.split("/")):
        raise InvalidJob(f"{what} {uri!r} must not contain '..'")
    return uri


def is_image(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_SUFFIXES)


def mask_uri(input_uri: str, output: str, base: str | None) -> str:
    """Where the mask of `input_uri` is written."""
    relative = input_uri.removeprefix(base) if base else basename(input_uri)
    stem = relative.rsplit(".", 1)[0]
    return join(output, f"{stem}.png")


def resolve_inputs(
    source: str | Sequence[str], output: str, *, allow_local: bool, max_images: int,
    storage: Callable[[str], Storage] = storage_for,
) -> ResolvedInputs:
    """The job's images in a stable order, checked as the module docstring says."""
    check_uri(output, allow_local=allow_local, what="output")
    out_folder = folder(output)
    if isinstance(source, str):
        resolved = _list_prefix(source, out_folder, allow_local=allow_local, storage=storage,
                                max_images=max_images)
    else:
        resolved = _explicit(source, out_folder, allow_local=allow_local)
        if len(resolved.uris) > max_images:
            raise JobTooLarge(f"the job names {len(resolved.uris)} images; at most "
                              f"{max_images} are allowed per job")
    _refuse_collisions(resolved, output)
    return resolved


def _list_prefix(
    prefix: str, out_folder: str, *, allow_local: bool, storage: Callable[[str], Storage],
    max_images: int,
) -> ResolvedInputs:
    check_uri(prefix, allow_local=allow_local, what="input")
    base = folder(prefix)
    uris: list[str] = []
    try:
        for uri in storage(base).walk(base):
            if is_image(uri) and not uri.startswith(out_folder):
                uris.append(uri)
                if len(uris) > max_images:
                    raise JobTooLarge(f"{base} holds more than {max_images} images; at most "
                                      f"{max_images} are allowed per job")
    except ObjectNotFound as exc:
        raise NoImagesFound(f"input {prefix}: {exc.detail}") from exc
    except StorageUnavailable:
        raise  # passing: the caller gets 503 and may retry
    except StorageError as exc:
        raise InvalidJob(f"cannot list input {prefix}: {exc.detail}") from exc
    uris.sort()
    if not uris:
        raise NoImagesFound(f"no .jpg, .jpeg or .png objects under {base} (outside the "
                            f"output {out_folder})")
    return ResolvedInputs(uris, base, InputSummary(kind="prefix", prefix=base))


def _explicit(source: Sequence[str], out_folder: str, *, allow_local: bool) -> ResolvedInputs:
    uris = list(dict.fromkeys(source))
    if not uris:
        raise NoImagesFound("the input list is empty")
    for uri in uris:
        check_uri(uri, allow_local=allow_local, what="input")
        if not is_image(uri):
            raise InvalidJob(f"input {uri!r} is not a .jpg, .jpeg or .png object")
        if uri.startswith(out_folder):
            raise InvalidJob(f"input {uri!r} is inside the output folder {out_folder}; its "
                             "mask could overwrite it")
    return ResolvedInputs(uris, None, InputSummary(kind="list"))


def _refuse_collisions(resolved: ResolvedInputs, output: str) -> None:
    seen: dict[str, str] = {}
    for uri in resolved.uris:
        target = mask_uri(uri, output, resolved.base)
        if escapes(target, output):
            continue  # a per-item error when its chunk runs (services.jobs.chunk)
        if target in seen:
            raise InvalidJob(f"inputs {seen[target]!r} and {uri!r} would both write {target}")
        seen[target] = uri


def chunk_count(images: int, chunk_size: int) -> int:
    return -(-images // chunk_size)

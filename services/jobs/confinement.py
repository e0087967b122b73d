"""Where a batch job may read and write: configured prefixes, checked on normalised URIs.

A job runs with the worker's storage identity, which can reach more than any one caller should
(the dataset, the feedback pairs, the model repository). So every job URI is normalised first
and then checked against the settings, before anything is queued:

- normalisation: one round of percent-decoding (a second `%xx` is refused: double encoding is
  only ever an attack), `//` and `.` segments dropped, `..` resolved lexically (refused if it
  climbs out of the bucket); local paths are resolved with `os.path.realpath`, which also
  follows symlinks, so a link inside an allowed folder cannot lead out of it;
- inputs only under `job_input_prefixes`, outputs only under `job_output_prefixes`;
- never an output in, above or below a protected prefix (the model repository, the dataset and
  its feedback prefix, `job_protected_prefixes`), whatever the other settings say;
- local paths only outside production, and then only under configured local folders;
- `"overwrite": true` only under `job_overwrite_prefixes`; without it the output folder must be
  empty (checked by the service, which lists it).
Each refusal is a 403 whose `code` names the rule. Mask names derived from a listing that would
land outside the output folder (an object name with `..`) become per-item errors instead
(`escapes_output`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from services.jobs.settings import JobSettings
from shared.errors import InvalidJob, MaskfleetError, StorageNotAllowed
from shared.storage.base import Storage, relative_parts

GS = "gs://"
FILE = "file://"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")


class InputNotAllowed(StorageNotAllowed):
    code = "input_not_allowed"
    title = "Jobs may not read there"


class OutputNotAllowed(StorageNotAllowed):
    code = "output_not_allowed"
    title = "Jobs may not write there"


class OutputProtected(StorageNotAllowed):
    code = "output_protected"
    title = "The output overlaps data no job may write"


class LocalPathsNotAllowed(StorageNotAllowed):
    code = "local_paths_not_allowed"
    title = "Local paths are refused here"


class OverwriteNotAllowed(StorageNotAllowed):
    code = "overwrite_not_allowed"
    title = "Overwriting is not allowed under that output prefix"


class OutputNotEmpty(StorageNotAllowed):
    code = "output_exists"
    title = "The output already holds objects and the job may not overwrite them"


def is_local(uri: str) -> bool:
    return not uri.startswith(GS) and ("://" not in uri or uri.startswith(FILE))


def normalise(uri: str) -> str:
    """The one spelling of a URI a caller sent, which every check and every read/write uses
    (see module doc)."""
    if not uri or _CONTROL.search(uri):
        raise InvalidJob(f"{uri!r} is empty or has control characters")
    try:
        decoded = unquote(uri, errors="strict")
    except UnicodeDecodeError:
        raise InvalidJob(f"{uri!r} percent-encodes bytes that are not UTF-8") from None
    if _ENCODED.search(decoded):
        raise InvalidJob(f"{uri!r} is percent-encoded twice")
    return spelled(decoded, uri)


def spelled(name: str, uri: str | None = None) -> str:
    """`name` with `//` and `.` dropped and `..` resolved (lexically in a bucket, by
    `realpath` on disk), as `normalise` does after decoding. A name that storage listed or that
    was built from a listed one is taken as it is spelled: `50%25off.jpg` is a file of that
    name, not a second encoding. `uri` is what error messages quote (default `name`)."""
    quoted = name if uri is None else uri
    if not name or _CONTROL.search(name):
        raise InvalidJob(f"{quoted!r} is empty or has control characters")
    if name.startswith(GS):
        bucket, _, path = name.removeprefix(GS).partition("/")
        if not bucket or bucket in (".", ".."):
            raise InvalidJob(f"{quoted!r} does not name a bucket")
        parts: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise InvalidJob(f"{quoted!r} climbs out of its bucket")
                parts.pop()
                continue
            parts.append(part)
        return GS + "/".join([bucket, *parts])
    if "://" in name and not name.startswith(FILE):
        raise InvalidJob(f"{quoted!r}: only gs:// URIs (and local paths in local mode) are "
                         "supported")
    return os.path.realpath(name.removeprefix(FILE))


def under(uri: str, prefix: str) -> bool:
    """`uri` is `prefix` or inside the folder `prefix` (both normalised)."""
    uri, prefix = uri.rstrip("/"), prefix.rstrip("/")
    return uri == prefix or uri.startswith(prefix + "/")


def overlaps(a: str, b: str) -> bool:
    return under(a, b) or under(b, a)


def escapes(target: str, output: str) -> bool:
    """A mask URI (from a listed object name, so `spelled`, not decoded) that would not land
    inside `output`.

    Resolving a local path asks the disk, which may fail (a folder removed meanwhile, a name
    too long): such a mask escapes too, so the item fails and not the whole job. The write
    itself is confined again (`write_under`); this check only refuses early."""
    try:
        return spelled(target) != target.rstrip("/") or not under(target, output)
    except (InvalidJob, OSError, ValueError):
        return True


@dataclass(frozen=True)
class StoragePolicy:
    """The configured prefixes, normalised once; `check_*` raise the rule that refuses."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    overwrite: tuple[str, ...]
    protected: tuple[str, ...]
    allow_local: bool

    @classmethod
    def build(cls, *, inputs: Iterable[str], outputs: Iterable[str], overwrite: Iterable[str],
              protected: Iterable[str], allow_local: bool) -> StoragePolicy:
        def clean(prefixes: Iterable[str], keep_local: bool) -> tuple[str, ...]:
            return tuple(normalise(p) for p in prefixes
                         if p and (keep_local or not is_local(p)))

        # protected prefixes keep their local entries: refusing is always safe
        return cls(clean(inputs, allow_local), clean(outputs, allow_local),
                   clean(overwrite, allow_local), clean(protected, True), allow_local)

    def _local_allowed(self, uri: str, what: str) -> None:
        if is_local(uri) and not self.allow_local:
            raise LocalPathsNotAllowed(f"{what} {uri!r}: local paths are refused outside local "
                                       "mode; use a gs:// URI under an allowed prefix")

    def check_input(self, uri: str) -> str:
        self._local_allowed(uri, "input")
        found = normalise(uri)
        if not any(under(found, p) for p in self.inputs):
            raise InputNotAllowed(f"input {uri!r} is not under an allowed input prefix "
                                  f"({_listed(self.inputs)})")
        return found

    def check_output(self, uri: str, overwrite: bool) -> str:
        self._local_allowed(uri, "output")
        found = normalise(uri)
        for protected in self.protected:
            if overlaps(found, protected):
                raise OutputProtected(f"output {uri!r} overlaps {protected}, which no job may "
                                      "write (dataset, feedback or model repository)")
        if not any(under(found, p) for p in self.outputs):
            raise OutputNotAllowed(f"output {uri!r} is not under an allowed output prefix "
                                   f"({_listed(self.outputs)})")
        if overwrite and not any(under(found, p) for p in self.overwrite):
            raise OverwriteNotAllowed(f"output {uri!r}: overwrite is not allowed there "
                                      f"(allowed under: {_listed(self.overwrite)})")
        return found


def _listed(prefixes: tuple[str, ...]) -> str:
    return ", ".join(prefixes) if prefixes else "none configured"


def read_check(prefixes: Sequence[str],
               refuse: Callable[[str], MaskfleetError]) -> Callable[[str], None]:
    """A storage read `check` (see `Storage.read_checked`): where a read really lands must be
    under one of `prefixes` (normalised), else `refuse(where)` is raised.

    For a local file, `where` is the path the kernel opened, already free of links and `..`,
    so it is compared as it is (no `realpath`, which costs a system call per folder); a
    gs:// URI is the object's name, `spelled` (lexically, never decoded) first."""
    def check(where: str) -> None:
        found = where
        if where.startswith(GS):
            try:
                found = spelled(where)
            except InvalidJob:
                raise refuse(where) from None
        if not any(under(found, prefix) for prefix in prefixes):
            raise refuse(where)
    return check


def every(checks: Sequence[Callable[[str], None]]) -> Callable[[str], None]:
    """One read `check` made of several: a read must pass each of them."""
    def check(where: str) -> None:
        for one in checks:
            one(where)
    return check


def write_under(storage: Storage, root: str, uri: str, data: bytes, content_type: str) -> None:
    """Write `uri` inside the job output `root` (normalised) and nowhere else.

    Local outputs are written through descriptors from `root` down (`write_within`), so a
    folder swapped for a symlink after any earlier check refuses the write (`OutsideFolder`).
    Object names hold no links: there the spelling is the whole check, then a plain write."""
    if is_local(root):
        storage.write_within(root, uri, data, content_type)
        return
    relative_parts(root, uri)
    storage.write(uri, data, content_type)


def policy_from(settings: JobSettings, protected: Sequence[str] = ()) -> StoragePolicy:
    """The policy `settings` configure, as the API's job service and the worker both use it;
    `protected` adds prefixes no job may write (the API's feedback prefix and dataset)."""
    return StoragePolicy.build(
        inputs=settings.job_input_prefixes, outputs=settings.job_output_prefixes,
        overwrite=settings.job_overwrite_prefixes,
        protected=(settings.model_repository, *settings.job_protected_prefixes, *protected),
        allow_local=settings.environment != "production")

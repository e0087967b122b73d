"""Google Cloud Storage behind the storage interface.

The client honours STORAGE_EMULATOR_HOST (anonymous credentials), so tests run the same code
against the emulator. Every call passes the client's own retry policy: our writes always put
the same bytes at the same name, so retrying them is safe.

Errors are translated here, so no caller sees a google or requests exception: API errors
become `StorageError` (502, `ObjectNotFound` 404); credentials that cannot be obtained or
refreshed (metadata server, Workload Identity, token endpoint) and transport failures become
`StorageUnavailable` (503). Both are `StorageError`s, which the worker retries. Their details
name the URI and the kind of failure (HTTP status, exception class), never the library's own
message, which may carry request URLs, project ids or token endpoints; that goes to the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from shared.errors import (
    InvalidStorageUri,
    ObjectNotFound,
    PayloadTooLarge,
    StorageError,
    StorageUnavailable,
)
from shared.storage.base import ReadCheck, relative_parts

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
_UNREACHABLE = (auth_exc.GoogleAuthError, OSError)
"""What the client raises when credentials or the network fail, rather than the API
(requests' and urllib3's exceptions are `OSError`s)."""


def _reason(exc: BaseException) -> str:
    """A caller-safe account of a cloud failure; the full message is logged."""
    log.warning("Cloud Storage call failed", extra={"error": type(exc).__name__,
                                                     "detail": str(exc)[:2000]})
    code = getattr(exc, "code", None)
    return f"HTTP {code} {type(exc).__name__}" if isinstance(code, int) else type(exc).__name__


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise StorageUnavailable(f"cannot reach Cloud Storage ({_reason(exc)})") from exc
        except gexc.RetryError as exc:
            raise StorageUnavailable(f"Cloud Storage kept failing ({_reason(exc)})") from exc
    return wrapper

_SCHEME = "gs://"


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix(_SCHEME).partition("/")
    if not bucket:
        raise InvalidStorageUri(f"no bucket in {uri[:200]!r}")
    return bucket, key


class GcsStorage:
    def __init__(self, client: storage.Client | None = None,
                 retry: Retry = DEFAULT_RETRY) -> None:
        self._given = client
        self._retry = retry

    @cached_property
    def client(self) -> storage.Client:
        return self._given or storage.Client()

    def _blob(self, uri: str) -> storage.Blob:
        bucket, key = split(uri)
        return self.client.bucket(bucket).blob(key)

    @_translated
    def read(self, uri: str) -> bytes:
        return self._download(uri)

    def _download(self, uri: str, **options: Any) -> bytes:
        """The object's bytes (`options` go to `download_as_bytes`), its errors made ours."""
        try:
            return bytes(self._blob(uri).download_as_bytes(retry=self._retry, **options))
        except gexc.RequestRangeNotSatisfiable:
            return b""  # a ranged read of an empty object: it has no byte 0 to start at
        except gexc.NotFound as exc:
            raise ObjectNotFound(f"no object at {uri}") from exc
        except gexc.RetryError:
            raise  # the service never answered: _translated makes it StorageUnavailable
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"reading {uri} failed ({_reason(exc)})") from exc

    @_translated
    def read_checked(self, uri: str, max_bytes: int, check: ReadCheck | None = None) -> bytes:
        """At most `max_bytes + 1` bytes are downloaded (one ranged request), so an object of
        any size costs no more memory than the limit. The bytes are the stored ones
        (`raw_download`): a gzip-encoded object is not inflated here, where its inflated size
        would be unbounded. Ranged answers carry no whole-object checksum to verify."""
        if check is not None:
            check(uri)
        data = self._download(uri, start=0, end=max_bytes, raw_download=True)
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"{uri[:300]} is larger than the {max_bytes} bytes allowed")
        return data

    def write_within(self, root: str, uri: str, data: bytes,
                     content_type: str | None = None) -> None:
        """Object names are not paths and hold no links: a name spelled inside `root` is the
        whole check."""
        relative_parts(root, uri)
        self.write(uri, data, content_type)

    @_translated
    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        try:
            self._blob(uri).upload_from_string(
                data, content_type=content_type or "application/octet-stream", retry=self._retry
            )
        except gexc.RetryError:
            raise  # the service never answered: _translated makes it StorageUnavailable
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"writing {uri} failed ({_reason(exc)})") from exc

    @_translated
    def exists(self, uri: str) -> bool:
        try:
            return bool(self._blob(uri).exists(retry=self._retry))
        except gexc.RetryError:
            raise  # the service never answered: _translated makes it StorageUnavailable
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"checking {uri} failed ({_reason(exc)})") from exc

    def list(self, prefix: str) -> list[str]:
        return sorted(self.walk(prefix))

    def walk(self, prefix: str) -> Iterator[str]:
        """Pages are fetched as the caller goes on, so stopping early costs one page."""
        bucket, key = split(prefix)
        blobs = self._listing(bucket, key)
        while (name := self._next_name(blobs, prefix)) is not None:
            if not name.endswith("/"):
                yield f"{_SCHEME}{bucket}/{name}"

    @_translated
    def _listing(self, bucket: str, key: str) -> Iterator[Any]:
        """The lazy listing (no request yet); building the client may already fail on
        credentials, which must be translated like any call."""
        return iter(self.client.list_blobs(bucket, prefix=key, retry=self._retry))

    @_translated
    def _next_name(self, blobs: Iterator[Any], prefix: str) -> str | None:
        try:
            blob = next(blobs, None)
        except gexc.NotFound as exc:
            raise ObjectNotFound(f"no bucket {split(prefix)[0]}") from exc
        except gexc.RetryError:
            raise  # the service never answered: _translated makes it StorageUnavailable
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"listing {prefix} failed ({_reason(exc)})") from exc
        return None if blob is None else str(blob.name)

    @_translated
    def delete(self, uri: str) -> None:
        try:
            self._blob(uri).delete(retry=self._retry)
        except gexc.NotFound:
            return
        except gexc.RetryError:
            raise  # the service never answered: _translated makes it StorageUnavailable
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"deleting {uri} failed ({_reason(exc)})") from exc

    @_translated
    def download_tree(self, prefix: str, dest: Path) -> Path:
        root = prefix.rstrip("/") + "/"
        uris = self.list(root)
        if not uris:
            raise ObjectNotFound(f"no objects under {prefix}")
        for uri in uris:
            target = dest / uri.removeprefix(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(uri))
        return dest

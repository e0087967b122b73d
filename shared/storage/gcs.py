"""Google Cloud Storage behind the storage interface.

The client honours STORAGE_EMULATOR_HOST (anonymous credentials), so tests run the same code
against the emulator. Every call passes the client's own retry policy: our writes always put
the same bytes at the same name, so retrying them is safe.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from shared.errors import ObjectNotFound, StorageError

_SCHEME = "gs://"


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix(_SCHEME).partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {uri!r}")
    return bucket, key


class GcsStorage:
    def __init__(self, client: storage.Client | None = None) -> None:
        self._given = client

    @cached_property
    def client(self) -> storage.Client:
        return self._given or storage.Client()

    def _blob(self, uri: str) -> storage.Blob:
        bucket, key = split(uri)
        return self.client.bucket(bucket).blob(key)

    def read(self, uri: str) -> bytes:
        try:
            return bytes(self._blob(uri).download_as_bytes(retry=DEFAULT_RETRY))
        except gexc.NotFound as exc:
            raise ObjectNotFound(f"no object at {uri}") from exc
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"reading {uri}: {exc}") from exc

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        try:
            self._blob(uri).upload_from_string(
                data, content_type=content_type or "application/octet-stream", retry=DEFAULT_RETRY
            )
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"writing {uri}: {exc}") from exc

    def exists(self, uri: str) -> bool:
        try:
            return bool(self._blob(uri).exists(retry=DEFAULT_RETRY))
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"checking {uri}: {exc}") from exc

    def list(self, prefix: str) -> list[str]:
        bucket, key = split(prefix)
        try:
            blobs = self.client.list_blobs(bucket, prefix=key, retry=DEFAULT_RETRY)
            return sorted(f"{_SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))
        except gexc.NotFound as exc:
            raise ObjectNotFound(f"no bucket {bucket}") from exc
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"listing {prefix}: {exc}") from exc

    def delete(self, uri: str) -> None:
        try:
            self._blob(uri).delete(retry=DEFAULT_RETRY)
        except gexc.NotFound:
            return
        except gexc.GoogleAPIError as exc:
            raise StorageError(f"deleting {uri}: {exc}") from exc

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

"""Storage addressed by URI: `gs://bucket/key` through google-cloud-storage, else local disk."""

from __future__ import annotations

from functools import cache

from shared.storage.base import Storage, basename, folder, join
from shared.storage.gcs import GcsStorage
from shared.storage.local import LocalStorage

__all__ = ["GcsStorage", "LocalStorage", "Storage", "basename", "folder", "join", "storage_for"]


@cache
def _gcs() -> GcsStorage:
    return GcsStorage()


_LOCAL = LocalStorage()


def storage_for(uri: str) -> Storage:
    """The backend for a URI; the GCS client is created once per process."""
    if uri.startswith("gs://"):
        return _gcs()
    return _LOCAL

"""gs:// storage against a real GCS-API server (the emulator), through google-cloud-storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ObjectNotFound
from shared.storage import GcsStorage, folder, join, storage_for

pytestmark = pytest.mark.integration


def test_gs_uris_use_the_gcs_backend(gcs_bucket: str) -> None:
    assert isinstance(storage_for(gcs_bucket), GcsStorage)


def test_write_read_exists(gcs_bucket: str) -> None:
    storage = storage_for(gcs_bucket)
    uri = join(gcs_bucket, "dir", "blob.bin")
    payload = bytes(range(256)) * 64
    storage.write(uri, payload, "application/octet-stream")
    assert storage.read(uri) == payload
    assert storage.exists(uri)
    storage.write(uri, b"second")
    assert storage.read(uri) == b"second"


def test_missing_object(gcs_bucket: str) -> None:
    storage = storage_for(gcs_bucket)
    with pytest.raises(ObjectNotFound):
        storage.read(join(gcs_bucket, "absent"))
    assert not storage.exists(join(gcs_bucket, "absent"))


def test_list_by_prefix_is_recursive_and_sorted(gcs_bucket: str) -> None:
    storage = storage_for(gcs_bucket)
    for name in ("b/2.txt", "a/1.txt", "a/deep/3.txt", "ab.txt"):
        storage.write(join(gcs_bucket, name), name.encode())
    assert storage.list(folder(join(gcs_bucket, "a"))) == [
        join(gcs_bucket, "a/1.txt"), join(gcs_bucket, "a/deep/3.txt"),
    ]
    assert storage.list(join(gcs_bucket, "a")) == [
        join(gcs_bucket, "a/1.txt"), join(gcs_bucket, "a/deep/3.txt"), join(gcs_bucket, "ab.txt"),
    ]
    assert storage.list(folder(join(gcs_bucket, "nothing"))) == []
    assert len(storage.list(gcs_bucket + "/")) == 4


def test_list_of_a_missing_bucket_is_object_not_found(gcs_emulator: object) -> None:
    with pytest.raises(ObjectNotFound):
        storage_for("gs://no-such-bucket-here").list("gs://no-such-bucket-here/x/")


def test_delete(gcs_bucket: str) -> None:
    storage = storage_for(gcs_bucket)
    uri = join(gcs_bucket, "gone.txt")
    storage.write(uri, b"x")
    storage.delete(uri)
    assert not storage.exists(uri)
    assert storage.list(gcs_bucket + "/") == []
    storage.delete(uri)


def test_download_tree_copies_a_folder(gcs_bucket: str, tmp_path: Path) -> None:
    storage = storage_for(gcs_bucket)
    storage.write(join(gcs_bucket, "models/unet/1/saved_model.pb"), b"pb")
    storage.write(join(gcs_bucket, "models/unet/1/variables/variables.index"), b"idx")
    storage.write(join(gcs_bucket, "models/unet/10/saved_model.pb"), b"other version")
    dest = storage.download_tree(join(gcs_bucket, "models/unet/1"), tmp_path / "v1")
    assert (dest / "saved_model.pb").read_bytes() == b"pb"
    assert (dest / "variables" / "variables.index").read_bytes() == b"idx"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "saved_model.pb", "variables/variables.index",
    ], "version 10 must not leak into version 1"


def test_download_tree_of_nothing(gcs_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        storage_for(gcs_bucket).download_tree(join(gcs_bucket, "absent"), tmp_path / "x")

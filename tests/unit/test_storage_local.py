"""Local storage: the embedded default behind plain paths and file:// URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ObjectNotFound
from shared.storage import LocalStorage, basename, folder, join, storage_for


@pytest.fixture(params=["path", "file"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests for `/dir` and `file:///dir` roots."""
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_write_then_read_returns_the_bytes(root: str) -> None:
    storage = storage_for(root)
    storage.write(join(root, "a", "b.bin"), b"\x00\x01payload")
    assert storage.read(join(root, "a", "b.bin")) == b"\x00\x01payload"
    assert storage.exists(join(root, "a", "b.bin"))


def test_overwrite_replaces_and_leaves_no_temp_files(root: str, tmp_path: Path) -> None:
    storage = storage_for(root)
    uri = join(root, "x.txt")
    storage.write(uri, b"old")
    storage.write(uri, b"new")
    assert storage.read(uri) == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_missing_object_is_object_not_found(root: str) -> None:
    storage = storage_for(root)
    with pytest.raises(ObjectNotFound):
        storage.read(join(root, "nope"))
    assert not storage.exists(join(root, "nope"))
    assert not storage.exists(root), "a folder is not an object"


def test_list_is_recursive_sorted_and_keeps_the_uri_style(root: str) -> None:
    storage = storage_for(root)
    for name in ("b/2.txt", "a/1.txt", "a/deep/3.txt", "ab.txt"):
        storage.write(join(root, name), name.encode())
    assert storage.list(folder(join(root, "a"))) == [
        join(root, "a/1.txt"), join(root, "a/deep/3.txt"),
    ]
    assert storage.list(join(root, "a")) == [
        join(root, "a/1.txt"), join(root, "a/deep/3.txt"), join(root, "ab.txt"),
    ], "without a trailing slash a prefix also matches siblings, as on GCS"
    assert storage.list(folder(join(root, "missing"))) == []
    assert len(storage.list(folder(root))) == 4


def test_list_by_partial_name_matches_like_an_object_store(root: str) -> None:
    storage = storage_for(root)
    for name in ("run-1.txt", "run-2.txt", "other.txt"):
        storage.write(join(root, name), b"")
    assert storage.list(join(root, "run-")) == [join(root, "run-1.txt"), join(root, "run-2.txt")]


def test_relative_paths_come_back_spelled_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`./var/models` (the default repository) must list as `./var/models/...`."""
    monkeypatch.chdir(tmp_path)
    storage = storage_for("./var/models")
    storage.write("./var/models/unet/1/COMPLETE", b"")
    assert storage.list("./var/models/unet/") == ["./var/models/unet/1/COMPLETE"]
    assert storage.list("var/models/un") == ["var/models/unet/1/COMPLETE"]


def test_delete_object_and_missing_is_quiet(root: str) -> None:
    storage = storage_for(root)
    storage.write(join(root, "gone.txt"), b"x")
    storage.delete(join(root, "gone.txt"))
    assert not storage.exists(join(root, "gone.txt"))
    storage.delete(join(root, "never-there.txt"))


def test_download_tree_keeps_relative_paths(root: str, tmp_path: Path) -> None:
    storage = storage_for(root)
    storage.write(join(root, "model", "saved_model.pb"), b"pb")
    storage.write(join(root, "model", "variables", "variables.index"), b"idx")
    dest = storage.download_tree(join(root, "model"), tmp_path / "copy")
    assert (dest / "saved_model.pb").read_bytes() == b"pb"
    assert (dest / "variables" / "variables.index").read_bytes() == b"idx"


def test_download_tree_of_nothing_is_object_not_found(root: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        storage_for(root).download_tree(join(root, "absent"), tmp_path / "copy")


def test_uri_helpers() -> None:
    assert join("gs://b/p/", "/x/", "y") == "gs://b/p/x/y"
    assert join("/tmp/a", "", "b") == "/tmp/a/b"
    assert folder("gs://b/p") == "gs://b/p/" == folder("gs://b/p/")
    assert basename("gs://b/p/file.png") == "file.png"
    assert isinstance(storage_for("/tmp/x"), LocalStorage)
    assert isinstance(storage_for("file:///tmp/x"), LocalStorage)


def test_local_os_errors_become_storage_errors_never_oserror(tmp_path: Path) -> None:
    from shared.errors import InvalidStorageUri, StorageError

    storage = LocalStorage()
    too_long = str(tmp_path / ("x" * 5000))
    with pytest.raises(InvalidStorageUri, match="File name too long"):
        storage.read(too_long)
    with pytest.raises(InvalidStorageUri):
        storage.list(too_long + "/")
    with pytest.raises(InvalidStorageUri):
        storage.write(str(tmp_path / ("y" * 300) / "a.png"), b"x")
    with pytest.raises(InvalidStorageUri):
        storage.read(str(tmp_path / "nul\x00byte"))
    # sysfs refuses new files to everyone, root included: an OSError that is not the path's
    with pytest.raises(StorageError, match="Permission denied"):
        storage.write("/sys/maskfleet-test.png", b"x")


def test_writes_make_missing_folders_again_and_refuse_a_file_in_the_way(tmp_path: Path) -> None:
    from shared.errors import StorageError

    storage = LocalStorage()
    uri = str(tmp_path / "out" / "deep" / "m.png")
    storage.write(uri, b"first")
    (tmp_path / "out" / "deep" / "m.png").unlink()
    (tmp_path / "out" / "deep").rmdir()  # removed between two writes of the same job
    storage.write(uri, b"")
    assert storage.read(uri) == b""
    (tmp_path / "blocked").write_bytes(b"a file where a folder should be")
    with pytest.raises(StorageError, match="cannot write"):
        storage.write(str(tmp_path / "blocked" / "m.png"), b"x")
    assert sorted(p.name for p in (tmp_path / "out" / "deep").iterdir()) == ["m.png"]

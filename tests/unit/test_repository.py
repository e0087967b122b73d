"""The model repository on local disk: versions, atomic publish, stages, the download cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.errors import ModelNotFound, StorageError, VersionNotFound
from shared.repository import MARKER, ModelRepository, VersionMetadata
from shared.storage import LocalStorage, join


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    """Stands in for a SavedModel: the repository moves files, it does not read them."""
    root = tmp_path / "export"
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights" * 100)
    return root


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(str(tmp_path / "models"))


def meta(**metrics: float) -> VersionMetadata:
    return VersionMetadata(model="ignored", version=0, metrics=metrics,
                           dataset_fingerprint="sha256:abc", config={"train": {"steps": 1}},
                           parent_version=None)


class CrashingStorage(LocalStorage):
    """Local storage whose process "dies" after a number of writes."""

    def __init__(self, writes_before_crash: int) -> None:
        self.left = writes_before_crash

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        if self.left == 0:
            raise StorageError("simulated crash")
        self.left -= 1
        super().write(uri, data, content_type)


class CountingStorage(LocalStorage):
    def __init__(self) -> None:
        self.trees = 0

    def download_tree(self, prefix: str, dest: Path) -> Path:
        self.trees += 1
        return super().download_tree(prefix, dest)


def test_publish_numbers_versions_and_stores_files_and_metadata(
    repo: ModelRepository, saved_model: Path
) -> None:
    assert repo.versions("unet") == []
    first = repo.publish("unet", saved_model, meta(mean_iou=0.8))
    second = repo.publish("unet", saved_model, meta(mean_iou=0.9))
    assert (first, second) == (1, 2)
    assert repo.versions("unet") == [1, 2]
    assert repo.models() == ["unet"]
    folder = Path(repo.root) / "unet" / "2"
    assert (folder / "saved_model.pb").read_bytes() == b"graph"
    assert (folder / "variables" / "variables.index").read_bytes() == b"index"
    stored = repo.metadata("unet", 2)
    assert (stored.model, stored.version) == ("unet", 2), "publish stamps name and number"
    assert stored.metrics == {"mean_iou": 0.9}
    assert stored.dataset_fingerprint == "sha256:abc"
    assert stored.config == {"train": {"steps": 1}}
    assert json.loads((folder / "metadata.json").read_text())["version"] == 2


def test_a_version_without_marker_is_invisible(repo: ModelRepository, saved_model: Path) -> None:
    repo.publish("unet", saved_model, meta())
    half = Path(repo.root) / "unet" / "2"
    half.mkdir()
    (half / "saved_model.pb").write_bytes(b"half written")
    assert repo.versions("unet") == [1]
    assert not repo.is_complete("unet", 2)
    with pytest.raises(VersionNotFound):
        repo.metadata("unet", 2)
    with pytest.raises(VersionNotFound):
        repo.resolve("unet", version=2)
    with pytest.raises(VersionNotFound):
        repo.set_stage("unet", "production", 2)


@pytest.mark.parametrize("writes", [0, 1, 3, 4])
def test_crashed_publish_leaves_nothing_loadable(
    tmp_path: Path, saved_model: Path, writes: int
) -> None:
    """3 model files + metadata + marker: a crash before the marker publishes nothing."""
    root = str(tmp_path / "models")
    ModelRepository(root).publish("unet", saved_model, meta())
    crashing = ModelRepository(root, storage=CrashingStorage(writes))
    with pytest.raises(StorageError):
        crashing.publish("unet", saved_model, meta())
    reader = ModelRepository(root)
    assert reader.versions("unet") == [1]
    with pytest.raises(VersionNotFound):
        reader.download("unet", 2, tmp_path / "cache")
    assert reader.publish("unet", saved_model, meta()) == (3 if writes else 2), \
        "a number a crashed publish started writing is never reused"


def test_stages_point_at_complete_versions(repo: ModelRepository, saved_model: Path) -> None:
    repo.publish("unet", saved_model, meta())
    repo.publish("unet", saved_model, meta())
    assert repo.stage("unet", "production") is None
    with pytest.raises(ModelNotFound):
        repo.resolve("unet", stage="production")
    repo.set_stage("unet", "production", 1)
    repo.set_stage("unet", "candidate", 2)
    assert repo.stage("unet", "production") == 1
    assert repo.resolve("unet") == 1
    assert repo.resolve("unet", stage="candidate") == 2
    assert repo.resolve("unet", version=2, stage="production") == 2, "a pin wins over a stage"
    pointer = json.loads((Path(repo.root) / "unet" / "stages" / "production.json").read_text())
    assert pointer["version"] == 1
    assert "updated_at" in pointer
    repo.clear_stage("unet", "candidate")
    assert repo.stage("unet", "candidate") is None
    assert repo.versions("unet") == [1, 2], "stage files are not versions"


def test_a_stage_pointing_at_a_vanished_version_resolves_to_nothing(
    repo: ModelRepository, saved_model: Path
) -> None:
    repo.publish("unet", saved_model, meta())
    repo.set_stage("unet", "production", 1)
    repo.storage.delete(join(repo.root, "unet", "1", MARKER))
    assert repo.stage("unet", "production") is None


def test_download_copies_once_into_the_cache(tmp_path: Path, saved_model: Path) -> None:
    storage = CountingStorage()
    repo = ModelRepository(str(tmp_path / "models"), storage=storage)
    repo.publish("unet", saved_model, meta())
    cache = tmp_path / "cache"
    local = repo.download("unet", 1, cache)
    assert local == cache / "unet" / "1"
    assert (local / "saved_model.pb").read_bytes() == b"graph"
    assert (local / "variables" / "variables.data-00000-of-00001").exists()
    assert (local / MARKER).exists()
    assert repo.download("unet", 1, cache) == local
    assert storage.trees == 1, "the second download is served from the cache"
    assert [p.name for p in (cache / "unet").iterdir()] == ["1"], "no staging dirs left behind"


def test_unknown_model_has_no_versions(repo: ModelRepository) -> None:
    assert repo.versions("nothing") == []
    assert repo.models() == []
    with pytest.raises(ModelNotFound):
        repo.resolve("nothing")


def test_relative_default_root_works(
    tmp_path: Path, saved_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MASKFLEET_MODEL_REPOSITORY defaults to ./var/models."""
    monkeypatch.chdir(tmp_path)
    repo = ModelRepository("./var/models")
    assert repo.publish("unet", saved_model, meta()) == 1
    assert repo.publish("unet", saved_model, meta()) == 2
    assert repo.versions("unet") == [1, 2]
    assert repo.models() == ["unet"]


class RacingStorage(LocalStorage):
    """Local storage where publishers meet: every thread's first listing waits until all of
    them have listed, so they all compute the same `max + 1` (the race of two runs finishing
    together, made certain)."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=30)
        self.listed = threading.local()

    def list(self, prefix: str) -> list[str]:
        found = super().list(prefix)
        if not getattr(self.listed, "done", False):
            self.listed.done = True
            self.barrier.wait()
        return found


def race_publishers(repo_for: Callable[[], ModelRepository], sources: list[Path]) -> list[int]:
    with ThreadPoolExecutor(len(sources)) as pool:
        futures = [pool.submit(repo_for().publish, "unet", src, meta(tag=float(i)))
                   for i, src in enumerate(sources)]
        return [f.result() for f in futures]


def distinct_models(tmp_path: Path, count: int) -> list[Path]:
    sources = []
    for i in range(count):
        root = tmp_path / f"export-{i}"
        (root / "variables").mkdir(parents=True)
        (root / "saved_model.pb").write_bytes(f"graph {i}".encode())
        (root / "variables" / "variables.index").write_bytes(f"index {i}".encode())
        sources.append(root)
    return sources


def test_concurrent_publishers_never_share_a_version(tmp_path: Path) -> None:
    sources = distinct_models(tmp_path, 3)
    storage = RacingStorage(len(sources))
    root = str(tmp_path / "models")
    versions = race_publishers(lambda: ModelRepository(root, storage=storage), sources)
    assert sorted(versions) == [1, 2, 3]
    repo = ModelRepository(root)
    for i, version in enumerate(versions):
        folder = Path(root) / "unet" / str(version)
        assert repo.metadata("unet", version).metrics == {"tag": float(i)}
        assert (folder / "saved_model.pb").read_bytes() == f"graph {i}".encode()
        assert (folder / "variables" / "variables.index").read_bytes() == f"index {i}".encode()
        assert sorted(p.name for p in folder.iterdir()) == [
            MARKER, "metadata.json", "saved_model.pb", "variables"], "claims are removed"


def test_republishing_a_version_folder_still_writes_the_marker_last(
    tmp_path: Path, saved_model: Path
) -> None:
    """`maskfleet-models import` of a folder copied out of a repository: its own COMPLETE and
    metadata.json must not be uploaded first and make a half-copied version visible."""
    source = ModelRepository(str(tmp_path / "old"))
    source.publish("unet", saved_model, meta())
    folder = tmp_path / "old" / "unet" / "1"
    root = str(tmp_path / "models")
    with pytest.raises(StorageError):
        ModelRepository(root, storage=CrashingStorage(2)).publish("unet", folder, meta())
    assert ModelRepository(root).versions("unet") == []


def test_a_stage_rolls_back_through_its_history(repo: ModelRepository, saved_model: Path) -> None:
    for _ in range(3):
        repo.publish("unet", saved_model, meta())
    assert repo.rollback_stage("unet", "production") is None, "nothing to roll back"
    repo.set_stage("unet", "production", 1)
    repo.set_stage("unet", "production", 2)
    repo.set_stage("unet", "production", 2)
    repo.set_stage("unet", "production", 3)
    assert repo.history("unet", "production") == [1, 2]
    assert repo.rollback_stage("unet", "production") == 2
    assert repo.stage("unet", "production") == 2
    assert repo.rollback_stage("unet", "production") == 1
    assert repo.rollback_stage("unet", "production") is None
    assert repo.stage("unet", "production") == 1, "left as is when there is nothing earlier"


def test_rollback_skips_versions_that_no_longer_exist(
    repo: ModelRepository, saved_model: Path
) -> None:
    for version in (1, 2, 3):
        repo.publish("unet", saved_model, meta())
        repo.set_stage("unet", "production", version)
    repo.storage.delete(join(repo.root, "unet", "2", MARKER))
    assert repo.rollback_stage("unet", "production") == 1


def test_only_the_current_and_previous_downloads_are_kept(
    tmp_path: Path, saved_model: Path
) -> None:
    repo = ModelRepository(str(tmp_path / "models"))
    for _ in range(4):
        repo.publish("unet", saved_model, meta())
    cache = tmp_path / "cache"
    for version in (1, 2, 3):
        repo.download("unet", version, cache)
    assert sorted(p.name for p in (cache / "unet").iterdir()) == ["2", "3"]
    repo.download("unet", 2, cache)  # back to 2: now the most recently used
    repo.download("unet", 4, cache)
    assert sorted(p.name for p in (cache / "unet").iterdir()) == ["2", "4"]
    assert (cache / "unet" / "4" / "saved_model.pb").read_bytes() == b"graph"

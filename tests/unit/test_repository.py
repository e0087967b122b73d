"""The model repository on local disk: versions, atomic publish, stages, the download cache."""

from __future__ import annotations

import json
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

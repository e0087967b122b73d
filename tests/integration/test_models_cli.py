"""`maskfleet-models` against real repositories: a local path and gs:// on the GCS emulator,
with the small real SavedModels of `tiny_model_repo` as the models being imported."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.models.cli import main
from shared.repository import MARKER, ModelRepository, VersionMetadata
from shared.storage import GcsStorage, join, storage_for

pytestmark = pytest.mark.integration


def models(repository: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--repository", repository, *argv], out=out)
    return code, out.getvalue()


def upload_tree(local: Path, uri: str) -> None:
    storage = storage_for(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write(join(uri, path.relative_to(local).as_posix()), path.read_bytes())


def lifecycle(repository: str, first: str, second: str) -> None:
    """The whole story on one repository: import, import again, promote, roll back."""
    code, text = models(repository, "list")
    assert code == 0
    assert "no versions" in text

    code, text = models(repository, "import", first, "--metric", "mean_iou=0.81")
    assert code == 0, text
    assert "as version 1" in text
    assert "candidate, production" in text, "a fresh repository serves its first import"

    code, text = models(repository, "import", second)
    assert code == 0, text
    repo = ModelRepository(repository)
    assert (repo.stage("unet", "production"), repo.stage("unet", "candidate")) == (1, 2)

    code, text = models(repository, "list", "--json")
    listed = json.loads(text)
    assert [v["version"] for v in listed["versions"]] == [2, 1]
    assert listed["versions"][0]["stages"] == ["candidate"]
    assert listed["versions"][1]["metrics"] == {"mean_iou": 0.81}
    assert listed["versions"][1]["source"] == f"imported from {first}"

    code, text = models(repository, "describe", "2")
    described = json.loads(text)
    assert code == 0
    assert described["config"] == {"imported_from": second, "model": {"input_size": 64}}

    assert models(repository, "promote")[0] == 0
    assert repo.stage("unet", "production") == 2
    code, text = models(repository, "rollback")
    assert (code, repo.stage("unet", "production")) == (0, 1), text
    assert models(repository, "rollback")[0] == 2, "nothing earlier than version 1"
    assert models(repository, "promote", "2")[0] == 0
    assert models(repository, "rollback", "--stage", "candidate")[0] == 0
    assert repo.stage("unet", "candidate") == 1
    assert models(repository, "rollback", "--stage", "candidate")[0] == 0
    assert repo.stage("unet", "candidate") is None, "a candidate without history is cleared"
    assert repo.stage("unet", "production") == 2


def test_models_cli_on_a_local_repository(tiny_model_repo: Path, tmp_path: Path) -> None:
    lifecycle(str(tmp_path / "models"), str(tiny_model_repo / "unet" / "1"),
              str(tiny_model_repo / "unet" / "2"))
    local = ModelRepository(str(tmp_path / "models"))
    assert (Path(local.root) / "unet" / "2" / "saved_model.pb").read_bytes() == (
        tiny_model_repo / "unet" / "2" / "saved_model.pb").read_bytes()


def test_models_cli_on_gcs(tiny_model_repo: Path, gcs_bucket: str) -> None:
    sources = []
    for version in ("1", "2"):
        uri = f"{gcs_bucket}/exports/v{version}"
        upload_tree(tiny_model_repo / "unet" / version, uri)
        sources.append(uri)
    lifecycle(f"{gcs_bucket}/models", *sources)
    repo = ModelRepository(f"{gcs_bucket}/models")
    assert repo.storage.exists(f"{gcs_bucket}/models/unet/2/variables/variables.index")


def test_what_is_not_a_savedmodel_is_refused_and_nothing_is_published(
        tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "saved_model.pb").write_bytes(b"not a graph")
    repository = str(tmp_path / "models")
    code, _ = models(repository, "import", str(junk))
    assert code == 2
    assert ModelRepository(repository).versions("unet") == []
    assert models(repository, "describe", "7")[0] == 2
    assert models(repository, "promote")[0] == 2, "no candidate to promote"


def test_the_console_entry_point_runs(tiny_model_repo: Path, tmp_path: Path) -> None:
    env = {"MASKFLEET_MODEL_REPOSITORY": str(tiny_model_repo), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "services.models", "list", "--json"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**env, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["stages"]["production"] == 1
    assert [v["version"] for v in listed["versions"]] == [2, 1]


class RacingGcs(GcsStorage):
    """The emulator as storage, with every publisher's first listing held until all have
    listed: they all compute the same next number, as two runs finishing together would."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=60)
        self.listed = threading.local()

    def list(self, prefix: str) -> list[str]:
        found = super().list(prefix)
        if not getattr(self.listed, "done", False):
            self.listed.done = True
            self.barrier.wait()
        return found


def test_concurrent_publishes_on_gcs_get_distinct_whole_versions(
        tiny_model_repo: Path, gcs_bucket: str) -> None:
    """The emulator ignores generation preconditions; the claim protocol does not need them."""
    root = f"{gcs_bucket}/models"
    storage = RacingGcs(2)
    sources = [tiny_model_repo / "unet" / "1", tiny_model_repo / "unet" / "2"]
    publish: Callable[[int], int] = lambda i: ModelRepository(root, storage).publish(  # noqa: E731
        "unet", sources[i], VersionMetadata(model="unet", version=0, metrics={"tag": i}))
    with ThreadPoolExecutor(2) as pool:
        versions = list(pool.map(publish, range(2)))
    assert sorted(versions) == [1, 2]
    repo = ModelRepository(root)
    for i, version in enumerate(versions):
        assert repo.metadata("unet", version).metrics == {"tag": i}
        stored = repo.storage.read(f"{root}/unet/{version}/saved_model.pb")
        assert stored == (sources[i] / "saved_model.pb").read_bytes()
        names = {u.rsplit("/", 1)[-1] for u in repo.storage.list(f"{root}/unet/{version}/")}
        assert MARKER in names
        assert not any(n.startswith("CLAIMED-BY-") for n in names)

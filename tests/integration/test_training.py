"""The retraining job end to end against a real GCS-API server (the emulator).

A small synthetic dataset goes into the emulator; a tiny U-Net (64 px, alpha 0.35) trains for a
few steps and is published into a gs:// repository. The model quality is irrelevant here; what
is checked is what an operator relies on: the published version answers like the trained
model, a killed Job resumes from its checkpoint and publishes once, a failed gate publishes
nothing and says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from google.cloud import storage as gcs

from shared.imaging import preprocess
from shared.model.serving import LoadedModel
from shared.repository import ModelRepository
from shared.storage import folder, join, storage_for
from tests.servers import REPO, Server, wait_until
from training.__main__ import main
from training.config import load_config
from training.data import split_names
from training.job import JobResult, checkpoint_uri, run
from training.settings import TrainingSettings
from training.synthetic import generate

pytestmark = pytest.mark.integration

TINY = {
    "model": {"input_size": 64, "alpha": 0.35, "decoder_filters": [32, 16, 16, 8],
              "bn_momentum": 0.9},
    "data": {"batch_size": 8, "cache": "memory", "shuffle_buffer": 64},
    "train": {"steps": 20, "learning_rate": 0.002, "checkpoint_every": 10, "log_every": 10},
    "repository": {"model": "unet"},
    "gate": {"min_mean_iou": 0.0, "max_regression": 1.0},
}


def bucket(name: str) -> str:
    client = gcs.Client()
    if not client.bucket(name).exists():
        client.create_bucket(name)
    return f"gs://{name}"


@pytest.fixture(scope="module")
def data_uri(gcs_emulator: Server) -> str:
    """32 generated images (a fifth held out) in the emulator, shared by every test here."""
    uri = join(bucket("training-data"), "pets")
    generate(uri, count=32, seed=11)
    return uri


@pytest.fixture(scope="module")
def models_uri(gcs_emulator: Server) -> str:
    return join(bucket("training-models"), "models")


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory, data_uri: str, models_uri: str) -> Path:
    raw = json.loads(json.dumps(TINY))
    raw["data"]["uri"] = data_uri
    raw["repository"]["uri"] = models_uri
    raw["checkpoint"] = {"root": join(models_uri.rsplit("/", 1)[0], "checkpoints")}
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass
class FirstRun:
    result: JobResult
    repository: ModelRepository
    config_path: Path


@pytest.fixture(scope="module")
def first_run(config_path: Path, models_uri: str,
              tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """The first training run into an empty repository, in-process to keep the Keras model."""
    settings = TrainingSettings(cache_dir=str(tmp_path_factory.mktemp("cache")))
    result = run(load_config(config_path), settings, "first-run")
    return FirstRun(result, ModelRepository(models_uri), config_path)


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "MASKFLEET_CACHE_DIR": str(tmp_path / "cache"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MASKFLEET_TRAIN_RUN_ID", None)
    return env


def last_json_line(text: str) -> dict[str, object]:
    return dict(json.loads(text.strip().splitlines()[-1]))


def test_trained_model_is_published_and_reloads_with_the_same_outputs(
    first_run: FirstRun, data_uri: str, tmp_path: Path
) -> None:
    result, repo = first_run.result, first_run.repository
    assert result.status == "published"
    assert result.exit_code == 0
    assert result.summary["version"] == 1
    assert result.summary["stages"] == ["candidate", "production"], \
        "the first version also becomes production"
    assert repo.versions("unet") == [1]
    assert repo.stage("unet", "production") == 1
    assert repo.stage("unet", "candidate") == 1

    metadata = repo.metadata("unet", 1)
    assert set(metadata.metrics) >= {"mean_iou", "pixel_accuracy", "iou_background"}
    assert 0.0 <= metadata.metrics["mean_iou"] <= 1.0
    assert metadata.dataset_fingerprint.startswith("sha256:")
    assert metadata.dataset_fingerprint == result.summary["dataset_fingerprint"]
    assert metadata.parent_version is None
    assert metadata.config["run_id"] == "first-run"
    assert metadata.config["model"]["input_size"] == 64
    assert metadata.config["train"]["steps"] == 20

    names = split_names(data_uri, "test")
    assert names
    pixels = np.stack([
        preprocess(storage_for(data_uri).read(join(data_uri, "images", f"{n}.jpg")), 64)[0]
        for n in names[:4]
    ])
    reloaded = LoadedModel(repo.download("unet", 1, tmp_path / "cache"), name="unet", version=1)
    assert reloaded.input_size == 64
    expected = np.asarray(result.model(pixels, training=False))
    np.testing.assert_allclose(reloaded.logits(pixels), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(reloaded.class_ids(pixels), expected.argmax(axis=-1))


def test_checkpoints_are_deleted_after_publishing(first_run: FirstRun) -> None:
    config = load_config(first_run.config_path)
    remote = checkpoint_uri(config, "first-run")
    assert storage_for(remote).list(folder(remote)) == []


def test_failed_gate_publishes_nothing_and_exits_3(
    first_run: FirstRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = first_run.repository
    versions, candidate = repo.versions("unet"), repo.stage("unet", "candidate")
    monkeypatch.setenv("MASKFLEET_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["--config", str(first_run.config_path), "--run-id", "gate-fails",
                 "train.steps=4", "gate.min_mean_iou=1.01"])
    captured = capsys.readouterr()
    assert code == 3
    summary = last_json_line(captured.out)
    assert summary["status"] == "rejected"
    assert "below gate.min_mean_iou 1.0100" in str(summary["reason"])
    assert "quality gate: mean IoU" in captured.err
    assert summary["version"] is None
    assert summary["production_version"] == 1
    recorded = repo.metadata("unet", 1).metrics["mean_iou"]
    assert summary["production_mean_iou"] == pytest.approx(recorded, abs=1e-6), \
        "production is re-evaluated from gs:// on the same held-out split"
    assert repo.versions("unet") == versions
    assert repo.stage("unet", "candidate") == candidate


def test_killed_run_resumes_from_its_checkpoint_and_publishes_once(
    first_run: FirstRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = first_run.repository
    config = load_config(first_run.config_path)
    before = repo.versions("unet")
    argv = [sys.executable, "-m", "training", "--config", str(first_run.config_path),
            "--run-id", "preempted", "train.steps=40", "train.checkpoint_every=5"]
    latest = join(checkpoint_uri(config, "preempted"), "latest.json")
    store = storage_for(latest)

    log = (tmp_path / "attempt1.log").open("wb")
    first = subprocess.Popen(argv, cwd=REPO, env=cli_env(tmp_path), stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: first.poll() is not None or store.exists(latest), timeout=240,
                   what="the first checkpoint of the run")
    finally:
        first.kill()
        first.wait()
        log.close()
    assert first.returncode == -9, (
        "expected to kill the run mid-way; it ended by itself:\n"
        + (tmp_path / "attempt1.log").read_text()[-3000:]
    )
    killed_at = int(json.loads(store.read(latest))["step"])
    assert 0 < killed_at < 40
    assert repo.versions("unet") == before, "nothing published by the killed attempt"

    second = subprocess.run(argv, cwd=REPO, env=cli_env(tmp_path), capture_output=True,
                            text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = last_json_line(second.stdout)
    assert summary["status"] == "published"
    assert summary["resumed"] is True
    assert summary["start_step"] == killed_at, "the step counter continues"
    assert summary["final_step"] == 40
    new = [v for v in repo.versions("unet") if v not in before]
    assert new == [summary["version"]], "exactly one new version"
    assert summary["stages"] == ["candidate"], "production already existed"
    assert repo.stage("unet", "candidate") == new[0]
    assert repo.stage("unet", "production") == 1
    assert repo.metadata("unet", new[0]).parent_version == 1

    monkeypatch.setenv("MASKFLEET_CACHE_DIR", str(tmp_path / "cache"))
    assert main(argv[3:]) == 0, "a third attempt (in-process: no TF start-up to pay) succeeds"
    third = last_json_line(capsys.readouterr().out)
    assert (third["status"], third["version"]) == ("already_published", new[0])
    assert [v for v in repo.versions("unet") if v not in before] == new, \
        "a restart after publishing does not publish again"


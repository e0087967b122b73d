"""Fixture chain shared by every test: servers -> storage -> model repository -> model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# every app a test builds (and every API process it starts) serves gRPC on a port the OS picks,
# never the fixed 8081; gRPC tests choose a free port explicitly
os.environ.setdefault("MASKFLEET_GRPC_PORT", "0")

from tests.servers import Server, running, start_gcs_emulator, start_redis


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def gcs_emulator(logs_dir: Path) -> Iterator[Server]:
    """A real GCS-API server; the google client finds it through STORAGE_EMULATOR_HOST."""
    with running(start_gcs_emulator(log=logs_dir / "gcs.log")) as server:
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{server.port}"
        yield server
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def gcs_bucket(gcs_emulator: Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test, returned as a gs:// URI."""
    from google.cloud import storage

    name = "t-" + request.node.name.lower().replace("[", "-").replace("]", "")[:40].strip("-_")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    client = storage.Client()
    if not client.bucket(name).exists():
        client.create_bucket(name)
    return f"gs://{name}"


@pytest.fixture(scope="session")
def redis_server(logs_dir: Path) -> Iterator[Server]:
    with running(start_redis(log=logs_dir / "redis.log")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local repository holding one small (untrained, deterministic) U-Net at `production`.

    Serving tests need a real SavedModel, not a good one; seeding makes every run identical.
    """
    import keras

    from shared.model.config import UNetConfig
    from shared.model.serving import export_savedmodel
    from shared.model.unet import build_unet
    from shared.repository import ModelRepository, VersionMetadata

    root = tmp_path_factory.mktemp("models")
    repo = ModelRepository(str(root))
    config = UNetConfig(input_size=64, alpha=0.35, decoder_filters=(32, 16, 16, 8))
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        export_dir = tmp_path_factory.mktemp(f"export{seed}") / "model"
        export_savedmodel(build_unet(config), export_dir)
        repo.publish("unet", export_dir, VersionMetadata(
            model="unet", version=0, metrics={"mean_iou": 0.5 + seed / 10},
            config={"model": config.model_dump()},
        ))
    repo.set_stage("unet", "production", 1)
    return root

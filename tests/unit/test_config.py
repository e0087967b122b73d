"""Training config: YAML + overrides into a typed model, with errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from shared.errors import ConfigError
from shared.model.config import UNetConfig
from training.__main__ import main
from training.config import TrainingConfig, apply_overrides, load_config, parse_config
from training.settings import TrainingSettings

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"

MINIMAL = {
    "data": {"uri": "gs://bucket/pets"},
    "train": {"steps": 10},
    "checkpoint": {"root": "gs://bucket/checkpoints"},
}


def write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(raw: dict[str, object], *overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(apply_overrides(raw, overrides))
    return caught.value.detail


def test_shipped_configs_parse() -> None:
    quick = load_config(CONFIGS / "quick.yaml")
    assert quick.model == UNetConfig(input_size=128, alpha=0.35,
                                     decoder_filters=(128, 64, 32, 16), bn_momentum=0.9)
    assert quick.train.learning_rate == 0.004
    assert quick.data.generate_if_missing
    full = load_config(CONFIGS / "full.yaml")
    assert full.model.alpha == 1.0
    assert full.model.decoder_filters == (512, 256, 128, 64)
    assert full.data.uri.startswith("gs://")
    assert not full.data.generate_if_missing


def test_defaults_fill_what_the_yaml_leaves_out() -> None:
    config = parse_config(MINIMAL)
    assert config.model == UNetConfig()
    assert config.data.validation_split == "test"
    assert config.data.feedback_fraction == 0.0
    assert config.gate.min_mean_iou == 0.0
    assert config.repository.uri is None


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), [
        "train.steps=50", "model.decoder_filters=[64, 32, 16, 8]", "data.flip=false",
        "gate.min_mean_iou=0.75", "data.uri=/tmp/data", "model.input_size=64",
    ])
    assert config.train.steps == 50
    assert config.model.decoder_filters == (64, 32, 16, 8)
    assert config.model.input_size == 64
    assert config.data.flip is False
    assert config.gate.min_mean_iou == 0.75
    assert config.data.uri == "/tmp/data"


@pytest.mark.parametrize(("override", "message"), [
    ("train.steps=0", "train.steps: must be > 0"),
    ("train.steps=abc", "train.steps: must be a valid integer"),
    ("train.stepz=5", "train.stepz: unknown field"),
    ("model.input_size=100", "model.input_size: must be a multiple of 32"),
    ("model.alpha=0", "model.alpha: must be > 0.0"),
    ("data.batch_size=-1", "data.batch_size: must be > 0"),
    ("data.feedback_fraction=1.5", "data.feedback_fraction: must be <= 1.0"),
    ("gate.max_regression=-0.1", "gate.max_regression: must be >= 0.0"),
    ("train.lr_schedule=linear", "train.lr_schedule: must be 'constant' or 'cosine'"),
    ("train.class_weights=[1, 1, 0]", "train.class_weights: every class weight must be > 0"),
    ("repository.model=Bad Name", "repository.model: must match pattern"),
    ("optimizer.beta=0.9", "optimizer: unknown field"),
])
def test_errors_name_the_field(override: str, message: str) -> None:
    assert message in error_of(MINIMAL, override)


def test_missing_required_fields_are_named() -> None:
    detail = error_of({"train": {"steps": 1}})
    assert "data: required" in detail
    assert "checkpoint: required" in detail
    assert "train.steps: must be > 0" in error_of({**MINIMAL, "train": {"steps": -3}})
    assert "data.uri: required" in error_of({**MINIMAL, "data": {"batch_size": 2}})


def test_a_section_given_as_a_value_is_reported() -> None:
    assert "train: must be a mapping" in error_of({**MINIMAL, "train": 5})
    assert "train.steps: is a value, not a section" in error_of(MINIMAL, "train.steps.x=1")


def test_bad_override_syntax() -> None:
    assert "expected key.sub=value" in error_of(MINIMAL, "train.steps")
    assert "expected key.sub=value" in error_of(MINIMAL, "train..steps=1")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path, ["a", "list"]))


def test_overrides_do_not_mutate_the_file_contents() -> None:
    raw = {"train": {"steps": 1}}
    apply_overrides(raw, ["train.steps=2"])
    assert raw == {"train": {"steps": 1}}


def test_repository_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKFLEET_MODEL_REPOSITORY", "gs://models/repo")
    monkeypatch.setenv("MASKFLEET_MODEL_NAME", "pets")
    settings = TrainingSettings()
    resolved = parse_config(MINIMAL).resolved(settings)
    assert (resolved.repository_uri, resolved.model_name) == ("gs://models/repo", "pets")
    explicit = parse_config({**MINIMAL, "repository": {"uri": "/srv/models", "model": "unet"}})
    assert explicit.resolved(settings).repository_uri == "/srv/models"


def test_run_id_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKFLEET_TRAIN_RUN_ID", "retrain-28")
    assert TrainingSettings().train_run_id == "retrain-28"
    monkeypatch.setenv("MASKFLEET_TRAIN_RUN_ID", "../escape")
    with pytest.raises(ValidationError):
        TrainingSettings()


def test_resolved_config_round_trips_through_metadata_json() -> None:
    config = parse_config(MINIMAL)
    again = TrainingConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json"))))
    assert again == config


def test_cli_reports_config_errors_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--config", str(write(tmp_path, MINIMAL)), "--run-id", "r1", "train.steps=0"])
    assert code == 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"status": "error", "run_id": "r1", "error": "train.steps: must be > 0"}


def test_cli_refuses_unsafe_run_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(write(tmp_path, MINIMAL)), "--run-id", "a/../b"]) == 2
    assert "--run-id" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]

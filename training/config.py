"""The experiment: one YAML file plus `key.sub=value` overrides, parsed into a typed model.

Every mistake is reported as a `ConfigError` naming the field (`train.steps: must be > 0`), so a
Kubernetes Job that fails on its ConfigMap says which line to fix. The resolved config (after
overrides and environment fallbacks) is what goes into the published version's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from shared.errors import ConfigError
from shared.model.config import UNetConfig
from shared.settings import ServiceSettings

_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_SPLIT = r"^[A-Za-z0-9_.-]+$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the dataset is and how it is fed to the model."""

    uri: str = Field(min_length=1)
    """Dataset root in the Oxford-IIIT Pet layout (gs://... or a path)."""

    train_split: str = Field(default="trainval", pattern=_SPLIT)
    """Split list (`annotations/<name>.txt`) to train on; all pairs when the list is absent."""

    validation_split: str = Field(default="test", pattern=_SPLIT)
    """Held-out split list the gate evaluates on; never trained on."""

    feedback_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of training examples drawn from `<uri>/feedback/` when it holds any pairs."""

    batch_size: int = Field(default=16, gt=0)

    cache: str = "memory"
    """`memory`, `none`, or a local file path for tf.data's cache of decoded examples."""

    shuffle_buffer: int = Field(default=1024, gt=0)

    flip: bool = True
    """Random horizontal flip of image and mask together."""

    generate_if_missing: bool = False
    """Write a synthetic dataset to `uri` first when it holds no split list (local runs)."""

    generate_count: int = Field(default=600, ge=2)
    generate_seed: int = 0

    @field_validator("cache", mode="before")
    @classmethod
    def _bool_cache(cls, value: object) -> object:
        if isinstance(value, bool):
            return "memory" if value else "none"
        return value


class TrainConfig(_Section):
    steps: int = Field(gt=0)
    """Total optimizer steps of the run, counted across restarts."""

    learning_rate: float = Field(default=1e-3, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """`cosine` decays to 5% of the rate at the last step."""

    class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Loss weight of pet, background and border pixels; the thin border band gains from > 1."""

    checkpoint_every: int = Field(default=100, gt=0)
    """Steps between checkpoints uploaded to the checkpoint URI."""

    log_every: int = Field(default=25, gt=0)
    seed: int = 0


    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(w <= 0 for w in value):
            raise ValueError("every class weight must be > 0")
        return value


class CheckpointConfig(_Section):
    root: str = Field(min_length=1)
    """Checkpoint URI root; a run's checkpoints live under `<root>/<run id>/`."""

    keep: int = Field(default=2, ge=1)
    """Checkpoints kept per run (older ones are deleted locally and remotely)."""

    keep_after_publish: bool = False
    """Keep the run's checkpoints after a successful publish (default: delete them)."""


class RepositoryConfig(_Section):
    uri: str | None = None
    """Model repository URI; unset means MASKFLEET_MODEL_REPOSITORY."""

    model: str | None = Field(default=None, pattern=_NAME)
    """Model name; unset means MASKFLEET_MODEL_NAME."""


class GateConfig(_Section):
    min_mean_iou: float = Field(default=0.0, ge=0.0)
    """Publish nothing below this held-out mean IoU (above 1 rejects everything)."""

    max_regression: float = Field(default=0.0, ge=0.0)
    """How much lower than production's mean IoU (same held-out split) a candidate may be."""


class VariantsConfig(_Section):
    """Optimized runtime builds made after the gate, each kept only within the accuracy budget.

    The budget's defaults follow MACHINE.md: with ~100 held-out images the mean IoU is only
    known to about +-0.2 pt, so a budget much tighter than 0.3 pt would reject on noise.
    """

    build: tuple[Literal["fp32", "int8"], ...] = ("fp32", "int8")
    """OpenVINO IR builds to make: `fp32` (plain conversion) and `int8` (NNCF post-training
    quantization); empty builds none."""

    max_mean_iou_loss: float = Field(default=0.005, ge=0.0, le=1.0)
    """Largest held-out mean IoU drop against the SavedModel (0.005 = 0.5 pt)."""

    min_pixel_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    """Smallest share of held-out mask pixels equal to the SavedModel's."""

    calibration_images: int = Field(default=200, ge=1, le=10_000)
    """Training-split images (a seeded sample; never held-out ones) int8 is calibrated on."""

    calibration_seed: int = 0

    speed_batch: int = Field(default=16, ge=1, le=256)
    """Batch at which the speed recorded in metadata.json is measured."""


class TrainingConfig(_Section):
    model: UNetConfig = UNetConfig()
    data: DataConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    repository: RepositoryConfig = RepositoryConfig()
    gate: GateConfig = GateConfig()
    variants: VariantsConfig = VariantsConfig()

    def resolved(self, settings: ServiceSettings) -> TrainingConfig:
        """Fill what the environment decides (repository URI and model name)."""
        repository = RepositoryConfig(
            uri=self.repository.uri or settings.model_repository,
            model=self.repository.model or settings.model_name,
        )
        return self.model_copy(update={"repository": repository})

    @property
    def repository_uri(self) -> str:
        if self.repository.uri is None:
            raise ConfigError("repository.uri: not resolved")
        return self.repository.uri

    @property
    def model_name(self) -> str:
        if self.repository.model is None:
            raise ConfigError("repository.model: not resolved")
        return self.repository.model


_COMPARISONS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind in _COMPARISONS:
        key, sign = _COMPARISONS[kind]
        return f"must be {sign} {ctx[key]}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    text = error["msg"].replace("Input should be", "must be").replace("String should", "must")
    if kind.startswith(("int_", "float_", "bool_", "string_")) and "input" in error:
        return f"{text}, got {error['input']!r}"
    return text


def _messages(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "config"
        out.append(f"{where}: {_describe(error)}")
    return out


def parse_config(raw: Mapping[str, Any]) -> TrainingConfig:
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_messages(exc))) from None


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """`train.steps=50`, `model.decoder_filters=[64,32,16,8]`: values are parsed as YAML."""
    result: dict[str, Any] = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: value is not valid YAML ({exc})") from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[:depth + 1])}: is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: Path, overrides: Sequence[str] = ()) -> TrainingConfig:
    return parse_config(apply_overrides(read_yaml(path), overrides))

"""`optimize VERSION`: build the variants of an already published version.

For versions published before variants existed, or whose conversion failed at the time. The
version's own recorded config names its dataset and splits, so the variants are calibrated on
the training split and gated on the held-out split it was evaluated on. Passing variants are
added to the version (`ModelRepository.add_variants`: files first, metadata last); the
SavedModel and everything already published stay untouched.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.model.serving import LoadedModel
from shared.repository import ModelRepository
from training.config import DataConfig, VariantsConfig
from training.data import load_dataset
from training.variants import build_variants

log = logging.getLogger(__name__)


def optimize(repository: ModelRepository, model: str, version: int, cache_dir: Path,
             config: VariantsConfig | None = None) -> dict[str, Any]:
    """Build, gate and publish the variants of `model` version `version`; a JSON summary."""
    metadata = repository.metadata(model, version)
    recorded = metadata.config
    try:
        data = DataConfig.model_validate(recorded["data"])
        variants_config = config or VariantsConfig.model_validate(recorded.get("variants", {}))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{model} version {version} records no usable data config: {exc}") \
            from None
    local = repository.download(model, version, cache_dir / "models")
    work = cache_dir / "optimize" / f"{model}-{version}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        dataset = load_dataset(data.model_copy(update={"generate_if_missing": False}),
                               work / "data")
        reference = LoadedModel(local, name=model, version=version)
        outcome = build_variants(local, reference, work / "variants", train=dataset.train,
                                 validation=dataset.validation, config=variants_config)
        if outcome.passed:
            repository.add_variants(model, version, outcome.root, outcome.passed)
        return {"status": "optimized", "model": model, "version": version,
                **outcome.summary()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""How a version is shown: the same fields in `list` and `describe`, as plain data."""

from __future__ import annotations

from typing import Any

from shared.repository import ModelRepository

STAGE_NAMES = ("production", "candidate")


def stages_of(repo: ModelRepository, model: str) -> dict[str, int | None]:
    return {stage: repo.stage(model, stage) for stage in STAGE_NAMES}


def version_summary(repo: ModelRepository, model: str, version: int,
                    stages: dict[str, int | None]) -> dict[str, Any]:
    meta = repo.metadata(model, version)
    config = meta.config
    source = (f"imported from {config['imported_from']}" if "imported_from" in config
              else f"run {config['run_id']}" if "run_id" in config else "-")
    return {
        "version": version,
        "created_at": meta.created_at.isoformat(),
        "metrics": meta.metrics,
        "stages": [stage for stage, v in stages.items() if v == version],
        "parent_version": meta.parent_version,
        "dataset_fingerprint": meta.dataset_fingerprint,
        "source": source,
    }

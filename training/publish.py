"""The quality gate and the publish step.

A trained model becomes a version only when it is good enough in absolute terms
(`gate.min_mean_iou`) and not worse than production, re-evaluated on the same held-out split,
by more than `gate.max_regression`. It is published as `candidate` (the canary follows that
stage); it also becomes `production` when there is none yet, so a fresh install serves
something. Promotion of later candidates is the rollout's job, not training's.

Each version's metadata records the run id, so a Job restarted after publishing (say, killed
before it could exit) finds its version instead of publishing a duplicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from shared.errors import MaskfleetError
from shared.repository import ModelRepository, VersionMetadata
from training.config import GateConfig

CANDIDATE, PRODUCTION = "candidate", "production"
RUN_ID_KEY = "run_id"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def decide(mean_iou: float, gate: GateConfig, production_mean_iou: float | None) -> GateDecision:
    if mean_iou < gate.min_mean_iou:
        return GateDecision(False, f"mean IoU {mean_iou:.4f} is below gate.min_mean_iou "
                                   f"{gate.min_mean_iou:.4f}")
    if production_mean_iou is not None and mean_iou < production_mean_iou - gate.max_regression:
        return GateDecision(False, f"mean IoU {mean_iou:.4f} is worse than production's "
                                   f"{production_mean_iou:.4f} by more than gate.max_regression "
                                   f"{gate.max_regression:.4f}")
    if production_mean_iou is None:
        return GateDecision(True, f"mean IoU {mean_iou:.4f} >= {gate.min_mean_iou:.4f}; "
                                  "no production version to compare with")
    return GateDecision(True, f"mean IoU {mean_iou:.4f} >= {gate.min_mean_iou:.4f} and within "
                              f"{gate.max_regression:.4f} of production's "
                              f"{production_mean_iou:.4f}")


def published_by(repository: ModelRepository, model: str, run_id: str) -> int | None:
    """The version an earlier attempt of this run published, if any (newest first)."""
    for version in reversed(repository.versions(model)):
        try:
            if repository.metadata(model, version).config.get(RUN_ID_KEY) == run_id:
                return version
        except MaskfleetError:
            continue
    return None


def ensure_stages(repository: ModelRepository, model: str, version: int) -> list[str]:
    """Finish the staging of a version this run published before it was interrupted.

    `candidate` moves to it unless it already points at something newer; `production` is only
    set when there is none, exactly as a run that had not been interrupted would have done.
    """
    candidate = repository.stage(model, CANDIDATE)
    if candidate is None or candidate < version:
        repository.set_stage(model, CANDIDATE, version)
    if repository.stage(model, PRODUCTION) is None:
        repository.set_stage(model, PRODUCTION, version)
    return [s for s in (CANDIDATE, PRODUCTION) if repository.stage(model, s) == version]


def publish(repository: ModelRepository, model: str, export_dir: Path,
            metadata: VersionMetadata, variants: Path | None = None) -> tuple[int, list[str]]:
    """Publish atomically (with the variants `metadata` lists, from `variants/<name>/`), then
    move `candidate` (and `production` if there is none)."""
    version = repository.publish(model, export_dir, metadata, variants)
    stages = [CANDIDATE]
    repository.set_stage(model, CANDIDATE, version)
    if repository.stage(model, PRODUCTION) is None:
        repository.set_stage(model, PRODUCTION, version)
        stages.append(PRODUCTION)
    log.info("version staged", extra={"model": model, "version": version, "stages": stages})
    return version, stages

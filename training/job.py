"""The retraining job: data -> train (resumable) -> export -> evaluate -> gate -> variants ->
publish.

Everything a run leaves behind is addressed by its run id: checkpoints under
`<checkpoint.root>/<run id>/checkpoints/` and the run id in the published version's metadata.
Restarting the same run therefore resumes training, and restarting it after it published does
not publish twice.

After the gate, optimized variants (OpenVINO fp32/int8, `training.variants`) are built and
gated against the SavedModel; those within the accuracy budget are published inside the
version, atomically with it. A variant that fails never blocks the SavedModel's publish.

Checkpoints are deleted after a successful publish (`checkpoint.keep_after_publish: true` keeps
them): the published SavedModel is the artefact and a checkpoint only exists to resume. After a
gate rejection they are kept, so re-running the same run id with a different gate re-evaluates
the trained model without training it again.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import keras
import tensorflow as tf

from shared.errors import MaskfleetError
from shared.model.serving import LoadedModel, export_savedmodel
from shared.repository import ModelRepository, VersionMetadata
from shared.storage import join
from training import synthetic
from training.config import TrainingConfig
from training.data import Dataset, has_dataset, load_dataset, training_batches
from training.evaluate import evaluate
from training.publish import (
    PRODUCTION,
    RUN_ID_KEY,
    decide,
    ensure_stages,
    publish,
    published_by,
)
from training.settings import TrainingSettings
from training.trainer import CheckpointStore, train
from training.variants import build_variants

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_REJECTED = 0, 1, 2, 3
Status = Literal["published", "already_published", "rejected"]

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass
class JobResult:
    status: Status
    summary: dict[str, Any]
    model: keras.Model | None = field(default=None, repr=False)
    """The trained in-memory model (None when the run had already published)."""

    @property
    def exit_code(self) -> int:
        return EXIT_REJECTED if self.status == "rejected" else EXIT_OK


def checkpoint_uri(config: TrainingConfig, run_id: str) -> str:
    return join(config.checkpoint.root, run_id, "checkpoints")


def _production_mean_iou(repository: ModelRepository, model: str, version: int,
                         dataset: Dataset, cache_dir: Path) -> float | None:
    """Production re-evaluated on this run's held-out split; its recorded metric as fallback."""
    try:
        local = repository.download(model, version, cache_dir)
        loaded = LoadedModel(local, name=model, version=version)
        return evaluate(loaded, dataset.validation)["mean_iou"]
    except (MaskfleetError, KeyError, OSError, ValueError, tf.errors.OpError) as exc:
        log.warning("could not re-evaluate production; using its recorded mean IoU",
                    extra={"version": version, "error": str(exc)})
        recorded = repository.metadata(model, version).metrics.get("mean_iou")
        return None if recorded is None else float(recorded)


def run(config: TrainingConfig, settings: TrainingSettings, run_id: str) -> JobResult:
    """One retraining run; raises ConfigError/StorageError for problems a human must fix."""
    started = time.perf_counter()
    config = config.resolved(settings)
    model_name = config.model_name
    repository = ModelRepository(config.repository_uri)
    base = {"run_id": run_id, "model": model_name, "repository": config.repository_uri}
    log.info("training run started", extra={**base, "config": config.model_dump(mode="json")})

    earlier = published_by(repository, model_name, run_id)
    if earlier is not None:
        stages = ensure_stages(repository, model_name, earlier)
        log.info("this run already published", extra={**base, "version": earlier})
        return JobResult("already_published", {
            "status": "already_published", **base, "version": earlier, "stages": stages,
            "metrics": repository.metadata(model_name, earlier).metrics,
        })

    parent = repository.stage(model_name, PRODUCTION)
    data = config.data
    if data.generate_if_missing and not has_dataset(data.uri, data.validation_split):
        log.info("no dataset yet; generating a synthetic one",
                 extra={"uri": data.uri, "count": data.generate_count})
        synthetic.generate(data.uri, data.generate_count, data.generate_seed)

    work = Path(settings.cache_dir) / "training" / run_id
    shutil.rmtree(work, ignore_errors=True)
    try:
        dataset = load_dataset(data, work)
        stores: list[CheckpointStore] = []

        def store_for(checkpoint: tf.train.Checkpoint) -> CheckpointStore:
            stores.append(CheckpointStore(checkpoint_uri(config, run_id), work / "checkpoints",
                                          checkpoint, keep=config.checkpoint.keep))
            return stores[-1]

        def batches_for(start_step: int) -> tf.data.Dataset:
            return training_batches(dataset, data, config.model.input_size,
                                    seed=config.train.seed + start_step)

        outcome = train(config, store_for, batches_for)
        export_dir = export_savedmodel(outcome.model, work / "export")
        loaded = LoadedModel(export_dir, name=model_name)
        metrics = evaluate(loaded, dataset.validation)
        production_iou = None if parent is None else _production_mean_iou(
            repository, model_name, parent, dataset, Path(settings.cache_dir) / "models")
        decision = decide(metrics["mean_iou"], config.gate, production_iou)
        summary: dict[str, Any] = {
            **base, "metrics": metrics, "production_version": parent,
            "production_mean_iou": production_iou, "reason": decision.reason,
            "start_step": outcome.start_step, "final_step": outcome.final_step,
            "resumed": outcome.resumed, "train_seconds": round(outcome.seconds, 2),
            "dataset_fingerprint": dataset.fingerprint,
            "examples": {"train": len(dataset.train), "validation": len(dataset.validation),
                         "feedback": len(dataset.feedback)},
        }
        if not decision.passed:
            log.warning("quality gate rejected the model",
                        extra={**base, "reason": decision.reason})
            summary.update(status="rejected", version=None, stages=[],
                           total_seconds=round(time.perf_counter() - started, 2))
            return JobResult("rejected", summary, outcome.model)

        variants = build_variants(export_dir, loaded, work / "variants", train=dataset.train,
                                  validation=dataset.validation, config=config.variants,
                                  reference_metrics=metrics)
        summary["variants"] = variants.summary()
        metadata = VersionMetadata(
            model=model_name, version=0, metrics=metrics,
            dataset_fingerprint=dataset.fingerprint,
            config={**config.model_dump(mode="json"), RUN_ID_KEY: run_id},
            parent_version=parent, variants=variants.passed,
        )
        version, stages = publish(repository, model_name, export_dir, metadata, variants.root)
        if not config.checkpoint.keep_after_publish:
            stores[0].delete_remote()
        summary.update(status="published", version=version, stages=stages,
                       total_seconds=round(time.perf_counter() - started, 2))
        return JobResult("published", summary, outcome.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)

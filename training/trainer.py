"""The training loop and its checkpoints, which make a preempted Job resume instead of restart.

Checkpoints (model, optimizer and step counter) are written by a `tf.train.CheckpointManager`
into a local directory and mirrored to `<checkpoint root>/<run id>/checkpoints/`. The mirror's
`latest.json` is written after the checkpoint's files, so it only ever names a checkpoint that
was fully uploaded; a restarted run with the same id reads it, downloads that checkpoint and
continues counting steps from there. The run always saves a checkpoint at its last step too, so
a crash during export, evaluation or publish does not retrain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import tensorflow as tf
from pydantic import BaseModel, Field

from shared.errors import ConfigError, ObjectNotFound
from shared.model.unet import build_unet
from shared.storage import basename, folder, join, storage_for
from training.config import TrainConfig, TrainingConfig

LATEST = "latest.json"

log = logging.getLogger(__name__)


class CheckpointPointer(BaseModel):
    """`latest.json`: the newest checkpoint whose files are all uploaded."""

    step: int
    prefix: str
    files: list[str]
    saved_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class CheckpointStore:
    """A local CheckpointManager mirrored to a storage URI (gs:// or a path)."""

    def __init__(self, remote: str, local: Path, checkpoint: tf.train.Checkpoint,
                 keep: int = 2) -> None:
        self.remote = remote.rstrip("/")
        self.local = local
        self.storage = storage_for(self.remote)
        self.checkpoint = checkpoint
        local.mkdir(parents=True, exist_ok=True)
        self.manager = tf.train.CheckpointManager(checkpoint, str(local), max_to_keep=keep)

    def latest(self) -> CheckpointPointer | None:
        try:
            return CheckpointPointer.model_validate_json(
                self.storage.read(join(self.remote, LATEST))
            )
        except ObjectNotFound:
            return None

    def restore(self) -> int | None:
        """Load the newest uploaded checkpoint; returns its step, or None when there is none."""
        latest = self.latest()
        if latest is None:
            return None
        for name in latest.files:
            data = self.storage.read(join(self.remote, name))
            (self.local / name).write_bytes(data)
        try:
            restored = self.checkpoint.restore(str(self.local / latest.prefix))
            restored.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise ConfigError(
                f"checkpoint {join(self.remote, latest.prefix)} does not fit this model config "
                f"(same run id, different model?): {exc}"
            ) from None
        return latest.step

    def save(self, step: int) -> str:
        """Save locally, upload, then point `latest.json` at it and drop old remote files."""
        path = Path(self.manager.save(checkpoint_number=step))
        files = sorted(p.name for p in self.local.glob(f"{path.name}.*"))
        for name in files:
            self.storage.write(join(self.remote, name), (self.local / name).read_bytes())
        pointer = CheckpointPointer(step=step, prefix=path.name, files=files)
        self.storage.write(join(self.remote, LATEST), pointer.model_dump_json().encode(),
                           "application/json")
        kept = {Path(p).name for p in self.manager.checkpoints}
        for uri in self.storage.list(folder(self.remote)):
            name = basename(uri)
            if name != LATEST and name.split(".", 1)[0] not in kept:
                self.storage.delete(uri)
        log.info("checkpoint saved", extra={"step": step, "uri": join(self.remote, path.name)})
        return path.name

    def delete_remote(self) -> None:
        """Pointer first: a crash half-way leaves orphans, never a pointer to missing files."""
        self.storage.delete(join(self.remote, LATEST))
        for uri in self.storage.list(folder(self.remote)):
            self.storage.delete(uri)


def learning_rate(config: TrainConfig) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=config.steps, alpha=0.05
        )
    return config.learning_rate


@dataclass
class Trainee:
    """A model with its optimizer and step counter, and a compiled step that trains it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    train_step: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step)


def build_trainee(config: TrainingConfig) -> Trainee:
    """Seeded model + Adam + a `tf.function` step (graph mode: eager is several times slower)."""
    keras.utils.set_random_seed(config.train.seed)
    model = build_unet(config.model)
    optimizer = keras.optimizers.Adam(learning_rate(config.train))
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    class_weights = tf.constant(config.train.class_weights, tf.float32)

    def train_step(images: tf.Tensor, class_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(class_ids, logits, sample_weight=tf.gather(class_weights, class_ids))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        step.assign_add(1)
        hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), class_ids)
        return loss, tf.reduce_mean(tf.cast(hits, tf.float32))

    compiled: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] = tf.function(
        train_step
    )
    return Trainee(model, optimizer, step, compiled)


@dataclass(frozen=True)
class TrainOutcome:
    model: keras.Model
    start_step: int
    final_step: int
    resumed: bool
    loss: float | None
    accuracy: float | None
    seconds: float


def train(
    config: TrainingConfig,
    store_for: Callable[[tf.train.Checkpoint], CheckpointStore],
    batches_for: Callable[[int], tf.data.Dataset],
) -> TrainOutcome:
    """Resume from the newest checkpoint if any, train to `train.steps`, checkpoint on the way.

    `batches_for(start_step)` builds the input stream after the restore, so a resumed run can
    reseed its shuffle instead of replaying the first batches again.
    """
    trainee = build_trainee(config)
    store = store_for(trainee.checkpoint())
    restored = store.restore()
    start = int(trainee.step.numpy())
    if restored is not None:
        log.info("resumed from checkpoint", extra={"step": start, "uri": store.remote})
    total = config.train.steps
    loss = accuracy = None
    started = time.perf_counter()
    if start < total:
        window = time.perf_counter()
        losses: list[float] = []
        batches = iter(batches_for(start))
        for step in range(start + 1, total + 1):
            images, class_ids = next(batches)
            loss_t, accuracy_t = trainee.train_step(images, class_ids)
            losses.append(float(loss_t))
            loss, accuracy = losses[-1], float(accuracy_t)
            if step % config.train.log_every == 0 or step == total:
                elapsed = time.perf_counter() - window
                log.info("training", extra={
                    "step": step, "loss": round(sum(losses) / len(losses), 5),
                    "pixel_accuracy": round(accuracy, 4),
                    "steps_per_second": round(len(losses) / max(elapsed, 1e-9), 3),
                })
                losses, window = [], time.perf_counter()
            if step % config.train.checkpoint_every == 0 or step == total:
                store.save(step)
    return TrainOutcome(
        model=trainee.model, start_step=start, final_step=int(trainee.step.numpy()),
        resumed=restored is not None, loss=loss, accuracy=accuracy,
        seconds=time.perf_counter() - started,
    )

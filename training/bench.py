"""Training speed for `make bench`: optimizer steps per second of the real train step.

It times the same compiled step the trainer runs, on a fixed random batch, so the figure is the
model's compute cost on this machine without the input pipeline (which is cached after the
first epoch in real runs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import tensorflow as tf

from training.config import TrainingConfig, load_config
from training.trainer import build_trainee

WARMUP_STEPS = 3


def training_steps_per_second(config: TrainingConfig | Path | str, steps: int = 20) -> dict[str,
                                                                                         Any]:
    """Time `steps` train steps after a warm-up that pays for tracing; returns a report row."""
    if not isinstance(config, TrainingConfig):
        config = load_config(Path(config))
    if steps < 1:
        raise ValueError("steps must be >= 1")
    size, batch = config.model.input_size, config.data.batch_size
    started = time.perf_counter()
    trainee = build_trainee(config)
    generator = tf.random.Generator.from_seed(config.train.seed)
    images = generator.uniform((batch, size, size, 3))
    class_ids = generator.uniform((batch, size, size), maxval=config.model.num_classes,
                                  dtype=tf.int32)
    for _ in range(WARMUP_STEPS):
        trainee.train_step(images, class_ids)
    warmup = time.perf_counter() - started
    timed = time.perf_counter()
    for _ in range(steps):
        loss, _ = trainee.train_step(images, class_ids)
    float(loss)
    seconds = time.perf_counter() - timed
    return {
        "input_size": size,
        "alpha": config.model.alpha,
        "decoder_filters": list(config.model.decoder_filters),
        "batch_size": batch,
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_second": round(steps / seconds, 3),
        "images_per_second": round(steps * batch / seconds, 2),
        "warmup_seconds": round(warmup, 3),
        "parameters": int(trainee.model.count_params()),
    }

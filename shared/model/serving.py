"""SavedModel export with our own signature, and the loaded model every server calls.

Serving always goes through the signature's concrete function: calling the Keras model eagerly
is 5-7x slower on CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from shared.errors import ModelNotFound
from shared.model.runtime import SAVEDMODEL

SIGNATURE = "serving_default"
INPUT_NAME = "images"
LOGITS = "logits"
CLASS_IDS = "class_ids"

log = logging.getLogger(__name__)


def export_savedmodel(model: keras.Model, path: Path) -> Path:
    """Write a SavedModel whose signature takes `images` and returns `logits` and `class_ids`."""
    size = int(model.input_shape[1])
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(images, training=False)
        return {LOGITS: logits, CLASS_IDS: tf.argmax(logits, axis=-1, output_type=tf.int32)}

    archive.add_endpoint(
        name=SIGNATURE,
        fn=serve,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(str(path), verbose=False)
    return path


class LoadedModel:
    """A SavedModel version ready to segment batches of preprocessed images."""

    variant = SAVEDMODEL

    def __init__(self, path: Path, *, name: str = "unet", version: int = 0) -> None:
        if not (path / "saved_model.pb").exists():
            raise ModelNotFound(f"no SavedModel in {path}")
        started = time.perf_counter()
        self._module = tf.saved_model.load(str(path))
        self._fn = self._module.signatures[SIGNATURE]
        spec = self._fn.structured_input_signature[1][INPUT_NAME]
        self.input_size = int(spec.shape[1])
        self.name = name
        self.version = version
        self.load_seconds = time.perf_counter() - started

    def class_ids(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
        """[N, S, S, 3] floats in [0, 1] -> [N, S, S] class ids."""
        out = self._fn(**{INPUT_NAME: tf.constant(images)})
        return np.asarray(out[CLASS_IDS])

    def logits(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = self._fn(**{INPUT_NAME: tf.constant(images)})
        return np.asarray(out[LOGITS])

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run the graph once per batch size so the first real request pays no setup cost."""
        for n in batch_sizes:
            self.class_ids(np.zeros((n, self.input_size, self.input_size, 3), np.float32))

"""MLServer's side of `make bench-peers`: a custom runtime serving the bench SavedModel.

As MLServer's custom-runtime docs have it: an `MLModel` subclass that loads the model in
`load()` and answers in `predict()`, named by `implementation` in `model-settings.json`
(written by `loadtest.peers.launch`, with adaptive batching on: `max_batch_size`,
`max_batch_time`). MLServer merges the queued requests into one whose `image_bytes` input has
one JPEG per request, and splits the answer's `mask_png` back. It runs in the peers'
virtualenv (var/peers-venv), never in the project's, which has no MLServer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import Base64Codec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from loadtest.peers.pipeline import segment

SIGNATURE, INPUT_NAME, CLASS_IDS = "serving_default", "images", "class_ids"


class UNetRuntime(MLModel):  # type: ignore[misc]
    """JPEGs (base64 `BYTES`) in, PNG trimaps (base64 `BYTES`) out, one model call a batch."""

    async def load(self) -> bool:
        self._module = tf.saved_model.load(await get_model_uri(self._settings))
        self._fn = self._module.signatures[SIGNATURE]
        self._size = int(self._fn.structured_input_signature[1][INPUT_NAME].shape[1])
        self._class_ids(np.zeros((1, self._size, self._size, 3), np.float32))  # trace once
        return True

    def _class_ids(self, images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(self._fn(**{INPUT_NAME: tf.constant(images)})[CLASS_IDS])

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        jpegs = Base64Codec.decode_input(payload.inputs[0])
        masks = segment(jpegs, self._class_ids, self._size)
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[Base64Codec.encode_output("mask_png", masks)])

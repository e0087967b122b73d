"""OpenVINO IR variants of a version: the fast CPU runtime behind `SegmentationModel`.

Measured on the serving CPUs (MACHINE.md): OpenVINO fp32 runs the U-Net ~2x faster than the
TensorFlow SavedModel and its NNCF int8 build 6-8x faster, loading in ~0.2 s at a fifth of
TensorFlow's memory. Two choices matter:

- The precision is set explicitly to f32: OpenVINO's default follows the host (bf16 on CPUs
  with AMX), which would silently make the `fp32` variant a different model from the one the
  accuracy gate measured. Quantized (int8) layers stay int8 either way.
- The THROUGHPUT hint gives one stream per group of cores, and a stream only computes when it
  has a request. One call is therefore split across the compiled model's infer requests and
  run asynchronously, so one batch keeps every core busy; Python waits for them without the
  GIL (`InferRequest.wait` releases it), so the event loop and codec threads keep running.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov
import openvino.properties.hint as hints

from shared.errors import ModelNotFound

IR_FILE = "model.xml"
CLASS_IDS = "class_ids"
DEVICE = "CPU"


def runtime_version() -> str:
    """The OpenVINO runtime version, recorded with every variant built."""
    return str(ov.get_version()).split("-", 1)[0]


class OpenVinoModel:
    """An OpenVINO IR (`<dir>/model.xml` + `.bin`) compiled for this machine's CPU."""

    def __init__(self, path: Path, *, name: str = "unet", version: int = 0,
                 variant: str = "openvino", threads: int = 0) -> None:
        xml = path / IR_FILE
        if not xml.is_file():
            raise ModelNotFound(f"no OpenVINO IR in {path}")
        started = time.perf_counter()
        config: dict[str, Any] = {
            hints.performance_mode: hints.PerformanceMode.THROUGHPUT,
            hints.inference_precision: ov.Type.f32,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(str(xml), DEVICE, config)
        shape = self._compiled.input(0).get_partial_shape()
        self.input_size = int(shape[1].get_length())
        self._output = self._compiled.output(CLASS_IDS)
        count = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests = [self._compiled.create_infer_request() for _ in range(max(1, count))]
        self._lock = threading.Lock()
        self.name = name
        self.version = version
        self.variant = variant
        self.load_seconds = time.perf_counter() - started

    @property
    def parallel_requests(self) -> int:
        """Infer requests one call is spread over (the streams OpenVINO chose for this CPU)."""
        return len(self._requests)

    def class_ids(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
        """[N, S, S, 3] floats in [0, 1] -> [N, S, S] class ids, every stream at work."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        parts = min(len(self._requests), len(images)) or 1
        chunks = np.array_split(images, parts)
        with self._lock:  # the requests' output buffers are reused by the next call
            active = self._requests[:parts]
            for request, chunk in zip(active, chunks, strict=True):
                request.start_async({0: chunk}, share_inputs=True)
            outputs = []
            for request in active:
                request.wait()
                outputs.append(np.array(request.get_tensor(self._output).data, np.int32))
        return outputs[0] if parts == 1 else np.concatenate(outputs)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Compile the kernels for each batch size (dynamic shapes are specialised lazily)."""
        for n in batch_sizes:
            self.class_ids(np.zeros((n, self.input_size, self.input_size, 3), np.float32))

"""The in-process model ceiling: what the SavedModel alone does on this machine.

Every other figure in the bench report is a ratio to this one, measured in the same run, so
the report compares like with like whatever machine it runs on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shared.model.runtime import SegmentationModel


@dataclass(frozen=True)
class Ceiling:
    batch1_images_per_s: float
    batch1_latency_ms: float
    best_batch_size: int
    best_images_per_s: float
    by_batch: dict[int, float]
    best_cpu_ms_per_image: float
    """Process CPU time per image at the best batch size: what serving one image must cost."""


def _rate(model: SegmentationModel, batch: int, seconds: float) -> tuple[float, float, float]:
    """Images/s, mean ms per call and CPU ms per image, running for about `seconds`."""
    images = np.random.default_rng(0).random(
        (batch, model.input_size, model.input_size, 3), dtype=np.float32
    )
    model.class_ids(images)
    calls = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or calls < 3:
        model.class_ids(images)
        calls += 1
    cpu_ms = 1000 * (time.process_time() - cpu) / (calls * batch)
    return calls * batch / elapsed, 1000 * elapsed / calls, cpu_ms


def measure_ceiling(
    model: SegmentationModel, batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32), seconds: float = 3.0
) -> Ceiling:
    by_batch: dict[int, float] = {}
    cpu_ms: dict[int, float] = {}
    latency_ms = 0.0
    for batch in batch_sizes:
        by_batch[batch], ms, cpu_ms[batch] = _rate(model, batch, seconds)
        if batch == 1:
            latency_ms = ms
    best = max(by_batch, key=by_batch.__getitem__)
    return Ceiling(by_batch.get(1, 0.0), latency_ms, best, by_batch[best], by_batch,
                   cpu_ms[best])

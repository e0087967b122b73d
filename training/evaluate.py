"""Held-out quality of an exported model: pixel accuracy, IoU per class, mean IoU.

The model is called through its SavedModel signature (`LoadedModel`), so the evaluated artefact
is the one that gets published, and masks are compared at each image's own resolution after
the same resize-back the API applies: the metrics describe what users receive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from shared.imaging import (
    CLASS_NAMES,
    FloatImage,
    Mask,
    decode_mask,
    mask_from_class_ids,
    preprocess,
)
from shared.model.runtime import SegmentationModel
from training.data import LocalPair

NUM_CLASSES = len(CLASS_NAMES)
Confusion = npt.NDArray[np.int64]


def confusion(truth: Mask, predicted: Mask) -> Confusion:
    """3x3 counts, rows = true class, columns = predicted class (trimap values 1..3)."""
    index = (truth.astype(np.int64) - 1) * NUM_CLASSES + (predicted.astype(np.int64) - 1)
    counts = np.bincount(index.ravel(), minlength=NUM_CLASSES * NUM_CLASSES)
    return counts.reshape(NUM_CLASSES, NUM_CLASSES)


def metrics_from_confusion(matrix: Confusion) -> dict[str, float]:
    """Classes absent from both truth and prediction have no IoU and stay out of the mean."""
    total = int(matrix.sum())
    hits = np.diag(matrix)
    out = {"pixel_accuracy": float(hits.sum()) / total if total else 0.0}
    ious = []
    for index, name in enumerate(CLASS_NAMES):
        union = int(matrix[index, :].sum() + matrix[:, index].sum() - hits[index])
        if union:
            iou = float(hits[index]) / union
            out[f"iou_{name}"] = iou
            ious.append(iou)
    out["mean_iou"] = float(np.mean(ious)) if ious else 0.0
    return {key: round(value, 6) for key, value in out.items()}


def _load(pair: LocalPair, size: int) -> tuple[FloatImage, Mask]:
    pixels, _ = preprocess(pair.image.read_bytes(), size)
    return pixels, decode_mask(pair.trimap.read_bytes())


def predict(model: SegmentationModel, pairs: Sequence[LocalPair],
            batch_size: int = 16) -> Iterator[tuple[Mask, Mask]]:
    """(predicted mask, true mask) per pair, both at the image's own resolution."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            loaded = list(pool.map(lambda p: _load(p, model.input_size), chunk))
            ids = model.class_ids(np.stack([pixels for pixels, _ in loaded]))
            for class_ids, (_, truth) in zip(ids, loaded, strict=True):
                yield mask_from_class_ids(class_ids, (truth.shape[1], truth.shape[0])), truth


def evaluate(
    model: SegmentationModel, pairs: Sequence[LocalPair], batch_size: int = 16
) -> dict[str, float]:
    """Metrics of `model` over `pairs`, accumulated as one confusion matrix over all pixels."""
    total: Confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for predicted, truth in predict(model, pairs, batch_size):
        total += confusion(truth, predicted)
    return metrics_from_confusion(total)


def evaluate_against(
    model: SegmentationModel, reference: Sequence[Mask], pairs: Sequence[LocalPair],
    batch_size: int = 16,
) -> tuple[dict[str, float], float]:
    """Metrics of `model` over `pairs` and the share of its mask pixels equal to `reference`
    (the SavedModel's predicted masks for the same pairs, in order)."""
    total: Confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    equal = pixels = 0
    predictions = predict(model, pairs, batch_size)
    for (predicted, truth), expected in zip(predictions, reference, strict=True):
        total += confusion(truth, predicted)
        equal += int(np.count_nonzero(predicted == expected))
        pixels += predicted.size
    return metrics_from_confusion(total), round(equal / pixels, 6) if pixels else 0.0

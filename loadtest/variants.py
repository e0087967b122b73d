"""Per-variant figures for `make bench`: the same version served by each runtime build.

The bench model (PRODUCT.md's full U-Net, untrained) gets OpenVINO fp32 and int8 variants
built as the training job builds them (`training.variants`), int8 calibrated on synthetic pets
that the agreement and mIoU figures do not use. mIoU against the synthetic trimaps says little
for untrained weights (it is reported for completeness: the accuracy gate runs on the trained
model at publish); pixel agreement with the SavedModel is what the int8 build risks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.imaging import decode_mask, mask_from_class_ids, preprocess
from shared.model.ir import OpenVinoModel, runtime_version
from shared.model.runtime import SAVEDMODEL, SegmentationModel
from shared.model.variants import VariantRecord
from shared.repository import ModelRepository
from shared.segmentation import finish, prepare
from training.evaluate import confusion, metrics_from_confusion
from training.synthetic import render
from training.variants import convert, quantize, telemetry_off

VARIANTS = (SAVEDMODEL, "fp32", "int8")
CALIBRATION_SEED, EVALUATION_SEED = 101, 202


@dataclass(frozen=True)
class Accuracy:
    mean_iou: float
    pixel_agreement: float


def _pixels(seed: int, count: int, size: int) -> tuple[list[npt.NDArray[np.float32]],
                                                        list[npt.NDArray[np.uint8]]]:
    images, truths = [], []
    for index in range(count):
        sample = render(seed, index)
        images.append(preprocess(sample.jpeg, size)[0])
        truths.append(decode_mask(sample.trimap))
    return images, truths


def accuracy(model: SegmentationModel, reference: SegmentationModel,
             count: int = 48) -> Accuracy:
    """mIoU on synthetic trimaps and pixel agreement with `reference`, at image resolution."""
    images, truths = _pixels(EVALUATION_SEED, count, model.input_size)
    batch = np.stack(images)
    ours, theirs = model.class_ids(batch), reference.class_ids(batch)
    total = np.zeros((3, 3), np.int64)
    equal = pixels = 0
    for ids, ref, truth in zip(ours, theirs, truths, strict=True):
        size = (truth.shape[1], truth.shape[0])
        mask, expected = mask_from_class_ids(ids, size), mask_from_class_ids(ref, size)
        total += confusion(truth, mask)
        equal += int(np.count_nonzero(mask == expected))
        pixels += mask.size
    return Accuracy(metrics_from_confusion(total)["mean_iou"], equal / pixels)


def publish_variants(repository: ModelRepository, model: str, version: int, saved_model: Path,
                     work: Path, reference: SegmentationModel,
                     calibration_images: int = 64) -> dict[str, VariantRecord]:
    """Build fp32 and int8 for the bench version and add them to it (no budget: the bench
    reports what each build does, the gate is the training job's)."""
    telemetry_off()
    converted = convert(saved_model, work / "fp32")
    calibration, _ = _pixels(CALIBRATION_SEED, calibration_images, reference.input_size)
    quantize(converted, calibration, work / "int8")
    records = {}
    for name in ("fp32", "int8"):
        built = OpenVinoModel(work / name, name=model, version=version, variant=name)
        measured = accuracy(built, reference)
        records[name] = VariantRecord(
            runtime_version=runtime_version(), precision=name,
            metrics={"mean_iou": measured.mean_iou}, pixel_agreement=measured.pixel_agreement,
            mean_iou_loss=accuracy(reference, reference).mean_iou - measured.mean_iou,
            calibration_images=calibration_images if name == "int8" else 0)
    repository.add_variants(model, version, work, records)
    return records


@dataclass(frozen=True)
class CodecCost:
    """Thread CPU per image of the request path's codec steps (decode + resize, mask + PNG)."""

    back_to_back_ms: float
    after_idle_ms: float
    """The same steps, each begun after the thread slept `IDLE_PAUSE_S`, as an API's codec
    thread does between a request's decode and its mask (the model runs meanwhile)."""


IDLE_PAUSE_S = 0.002


def codec_cost(blobs: Sequence[bytes], size: int, class_ids: npt.NDArray[np.int32],
               images: int = 200) -> CodecCost:
    """What the codec steps cost on this machine hot and after a pause.

    On this bench's VM a step begun right after its core went idle costs 1.2-1.7x the CPU it
    costs back to back, though nothing else ran meanwhile (docs/variants.md): the API's
    overhead pays that on every request whose thread waited, while the model's in-process
    ceiling and this figure's first half do not.
    """
    def run(pause: float) -> float:
        spent = 0.0
        for index in range(images):
            blob = blobs[index % len(blobs)]
            if pause:
                time.sleep(pause)
            started = time.thread_time()
            prepared = prepare(blob, size)
            spent += time.thread_time() - started
            if pause:
                time.sleep(pause)
            started = time.thread_time()
            _ = finish(class_ids, prepared.original).png
            spent += time.thread_time() - started
        return spent * 1000 / images

    run(0.0)  # warm: first calls load codecs and fill caches
    return CodecCost(back_to_back_ms=run(0.0), after_idle_ms=run(IDLE_PAUSE_S))


def pipeline_rate(model: SegmentationModel, blobs: Sequence[bytes], images: int,
                  batch: int = 16) -> float:
    """In-process images/s of decode + model + mask PNG, one step after the other on one
    thread: what a batch job would do with no overlap and no storage."""
    started = time.perf_counter()
    done = 0
    while done < images:
        count = min(batch, images - done)
        prepared = [prepare(blobs[(done + i) % len(blobs)], model.input_size)
                    for i in range(count)]
        ids = model.class_ids(np.stack([p.pixels for p in prepared]))
        for class_ids, item in zip(ids, prepared, strict=True):
            _ = finish(class_ids, item.original).png
        done += count
    return images / (time.perf_counter() - started)

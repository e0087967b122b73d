"""Optimized variants of a version, built after the quality gate and kept only within budget.

For each requested build (OpenVINO IR `fp32`, NNCF post-training-quantized `int8`):
convert the SavedModel, quantize on a seeded sample of the *training* split (never the
held-out one, which judges it), evaluate on the held-out split with the gate's metric, and
compare every mask pixel with the SavedModel's. A build whose mean IoU drops by more than
`max_mean_iou_loss` or that agrees on fewer than `min_pixel_agreement` of the pixels is
dropped; so is one that fails to convert: the SavedModel always serves. The speed of each
build is timed here for people reading metadata.json; serving times them again on its node.

OpenVINO's converter and NNCF send usage telemetry unless a consent file says no; it is
written (declined) before either runs.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.imaging import preprocess
from shared.model.ir import IR_FILE, OpenVinoModel, runtime_version
from shared.model.runtime import SegmentationModel
from shared.model.variants import VariantRecord, images_per_second
from training.config import VariantsConfig
from training.data import LocalPair
from training.evaluate import evaluate_against, predict

log = logging.getLogger(__name__)


@dataclass
class VariantsOutcome:
    """Builds that passed (their folders are under `root/<name>/`) and why others did not."""

    root: Path
    passed: dict[str, VariantRecord] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"published": {n: r.model_dump(mode="json") for n, r in self.passed.items()},
                "rejected": self.rejected}


def telemetry_off() -> None:
    """Record a declined consent where OpenVINO/NNCF telemetry looks for one (~/intel)."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no telemetry package, nothing to switch off
        return
    if not OptInChecker().update_result(ConsentCheckResult.DECLINED):
        log.warning("could not record the telemetry opt-out (home not writable); OpenVINO may "
                    "try to send usage data")


def convert(saved_model: Path, out: Path) -> Any:
    """The SavedModel as an OpenVINO model (fp32 weights), also written to `out`."""
    import openvino as ov

    model = ov.convert_model(str(saved_model))
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / IR_FILE), compress_to_fp16=False)
    return model


def quantize(model: Any, calibration: Sequence[npt.NDArray[np.float32]], out: Path) -> None:
    """NNCF post-training int8 quantization calibrated on `calibration` (preprocessed images,
    `[S, S, 3]` each), written to `out`."""
    import nncf
    import openvino as ov

    dataset = nncf.Dataset([pixels[np.newaxis] for pixels in calibration])
    quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(calibration))
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out / IR_FILE))


def calibration_pixels(pairs: Sequence[LocalPair], input_size: int,
                       ) -> list[npt.NDArray[np.float32]]:
    """The calibration images through the serving preprocessing (what int8 will be fed)."""
    return [preprocess(pair.image.read_bytes(), input_size)[0] for pair in pairs]


def calibration_sample(train: Sequence[LocalPair], config: VariantsConfig) -> list[LocalPair]:
    count = min(config.calibration_images, len(train))
    return random.Random(config.calibration_seed).sample(list(train), count)


def _cpu_name() -> str:
    import openvino as ov

    try:
        return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    except RuntimeError:
        return ""


def build_variants(saved_model: Path, reference: SegmentationModel, out: Path, *,
                   train: Sequence[LocalPair], validation: Sequence[LocalPair],
                   config: VariantsConfig,
                   reference_metrics: dict[str, float] | None = None) -> VariantsOutcome:
    """Build, evaluate and gate every variant `config.build` names, into `out/<name>/`."""
    outcome = VariantsOutcome(out)
    if not config.build:
        return outcome
    if not validation:
        outcome.rejected = {name: "no held-out images to gate on" for name in config.build}
        return outcome
    telemetry_off()
    expected = [predicted for predicted, _ in predict(reference, validation)]
    baseline = reference_metrics or {}
    if "mean_iou" not in baseline:
        from training.evaluate import evaluate

        baseline = evaluate(reference, validation)
    reference_speed = images_per_second(reference, config.speed_batch)
    cpu = _cpu_name()
    shutil.rmtree(out, ignore_errors=True)
    try:
        converted = convert(saved_model, out / "fp32")
    except Exception as exc:
        log.exception("conversion to OpenVINO failed; publishing the SavedModel only")
        outcome.rejected = {name: f"conversion failed: {type(exc).__name__}: {exc}"
                            for name in config.build}
        shutil.rmtree(out, ignore_errors=True)
        return outcome
    calibration = calibration_sample(train, config)
    for name in config.build:
        try:
            if name == "int8":
                quantize(converted, calibration_pixels(calibration, reference.input_size),
                         out / name)
            model = OpenVinoModel(out / name, name=reference.name, version=reference.version,
                                  variant=name)
            metrics, agreement = evaluate_against(model, expected, validation)
            speed = images_per_second(model, config.speed_batch)
        except Exception as exc:
            log.exception("variant build failed", extra={"variant": name})
            outcome.rejected[name] = f"build failed: {type(exc).__name__}: {exc}"
            continue
        loss = round(baseline["mean_iou"] - metrics["mean_iou"], 6)
        record = VariantRecord(
            runtime_version=runtime_version(), precision=name, metrics=metrics,
            mean_iou_loss=loss, pixel_agreement=agreement,
            images_per_second=round(speed, 1),
            savedmodel_images_per_second=round(reference_speed, 1),
            speed_batch=config.speed_batch, built_on=cpu,
            calibration_images=len(calibration) if name == "int8" else 0)
        reason = _outside_budget(record, config)
        extra = {"variant": name, "mean_iou_loss": loss, "pixel_agreement": agreement,
                 "images_per_second": record.images_per_second,
                 "savedmodel_images_per_second": record.savedmodel_images_per_second}
        if reason:
            log.warning("variant outside the accuracy budget; not published",
                        extra={**extra, "reason": reason})
            outcome.rejected[name] = reason
        else:
            log.info("variant within the accuracy budget", extra=extra)
            outcome.passed[name] = record
    for path in out.iterdir():
        if path.name not in outcome.passed:
            shutil.rmtree(path)
    return outcome


def _outside_budget(record: VariantRecord, config: VariantsConfig) -> str:
    if record.mean_iou_loss > config.max_mean_iou_loss:
        return (f"mean IoU loss {record.mean_iou_loss:.4f} is above max_mean_iou_loss "
                f"{config.max_mean_iou_loss:.4f}")
    if record.pixel_agreement < config.min_pixel_agreement:
        return (f"pixel agreement {record.pixel_agreement:.4f} is below min_pixel_agreement "
                f"{config.min_pixel_agreement:.4f}")
    return ""

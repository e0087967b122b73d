"""`make bench`: every figure measured in one run, each also as a ratio to the model ceiling.

The ceiling is the exported SavedModel called in-process on this machine; the other sections
(training speed, the API over HTTP, cache hits, the naive baseline, batch jobs) are added to
the same report so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from loadtest.ceiling import Ceiling, measure_ceiling
from loadtest.report import Figure, Report
from shared.logging import configure_logging
from shared.model.config import UNetConfig
from shared.model.serving import LoadedModel, export_savedmodel
from shared.model.unet import build_unet

log = logging.getLogger("bench")


def _ceiling_section(report: Report, model: LoadedModel, seconds: float) -> Ceiling:
    ceiling = measure_ceiling(model, seconds=seconds)
    report.add(Figure("ceiling", "in-process batch 1", ceiling.batch1_images_per_s, "img/s",
                      ceiling.batch1_images_per_s / ceiling.best_images_per_s))
    report.add(Figure("ceiling", f"in-process batch {ceiling.best_batch_size} (best)",
                      ceiling.best_images_per_s, "img/s", 1.0,
                      extra={"by_batch": ceiling.by_batch}))
    report.add(Figure("ceiling", "in-process batch 1 latency", ceiling.batch1_latency_ms, "ms"))
    report.context["ceiling_images_per_s"] = ceiling.best_images_per_s
    return ceiling


def _training_section(report: Report, steps: int) -> None:
    from training.bench import training_steps_per_second

    for name in ("quick", "full"):
        result = training_steps_per_second(name, steps)
        report.add(Figure("training", f"{name} config train steps", result["steps_per_s"],
                          "steps/s", extra=result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-report.json"))
    parser.add_argument("--seconds", type=float, default=3.0, help="per ceiling measurement")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--skip", action="append", default=[], help="section to skip")
    args = parser.parse_args(argv)
    configure_logging("WARNING")

    report = Report(context={"model": "U-Net MobileNetV2 alpha 1.0, 128x128 (PRODUCT.md)"})
    with tempfile.TemporaryDirectory() as tmp:
        export = export_savedmodel(build_unet(UNetConfig()), Path(tmp) / "model")
        model = LoadedModel(export, name="unet", version=1)
        _ceiling_section(report, model, args.seconds)
        if "training" not in args.skip:
            _training_section(report, args.train_steps)
    report.write_json(args.out)
    report.print_table()
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()

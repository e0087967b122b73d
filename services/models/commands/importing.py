"""`import SAVEDMODEL_URI`: publish an existing SavedModel as the next version.

The SavedModel must have the serving signature maskfleet exports (`images` in, `class_ids`
out) and is run once on a blank batch before anything is written, so a version that would only
fail in the API is refused here. Like a training run it lands as `candidate`, and also as
`production` when there is none yet (a fresh install then serves it at once); `--stage
production` serves it as production right away, `--stage none` only publishes it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from services.models.context import EXIT_OK, EXIT_USAGE, Context
from shared.errors import MaskfleetError, ModelNotFound
from shared.repository import VersionMetadata
from shared.storage import storage_for

NAME = "import"
HELP = "publish a SavedModel (local path or gs:// URI) as the next version"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SAVEDMODEL_URI",
                        help="folder holding saved_model.pb: a path, file:// or gs:// URI")
    parser.add_argument("--stage", choices=["candidate", "production", "none"],
                        default="candidate", help="stage to point at the new version "
                        "(default candidate; production too when there is none yet)")
    parser.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE",
                        help="record an evaluation metric, e.g. mean_iou=0.84 (repeatable)")


def _metrics(pairs: list[str]) -> dict[str, float]:
    metrics = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            metrics[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--metric {pair!r}: expected NAME=NUMBER")
    return metrics


def _input_size(saved_model: Path) -> int:
    """Load the SavedModel as the API does and run one blank image through it."""
    import numpy as np

    from shared.model.serving import LoadedModel

    try:
        model = LoadedModel(saved_model)
        size = model.input_size
        out = model.class_ids(np.zeros((1, size, size, 3), np.float32))
    except MaskfleetError:
        raise
    except Exception as exc:  # TensorFlow raises many unrelated types for a bad SavedModel
        raise ModelNotFound(f"{saved_model} is not a maskfleet SavedModel: "
                            f"{type(exc).__name__}: {exc}") from exc
    if out.shape != (1, size, size):
        raise ModelNotFound(f"{saved_model}: class_ids has shape {out.shape}, expected "
                            f"(1, {size}, {size})")
    return size


def run(args: argparse.Namespace, context: Context) -> int:
    repo, model = context.repository, context.model
    try:
        metrics = _metrics(args.metric)
    except ValueError as exc:
        context.say(str(exc))
        return EXIT_USAGE
    with tempfile.TemporaryDirectory(prefix="maskfleet-import-") as scratch:
        source: str = args.source
        if source.startswith("gs://"):
            local = storage_for(source).download_tree(source.rstrip("/"), Path(scratch))
        else:
            local = Path(source.removeprefix("file://"))
        size = _input_size(local)
        metadata = VersionMetadata(model=model, version=0, metrics=metrics, config={
            "imported_from": source, "model": {"input_size": size}})
        version = repo.publish(model, local, metadata)
    stages = [] if args.stage == "none" else [args.stage]
    if args.stage == "candidate" and repo.stage(model, "production") is None:
        stages.append("production")
    for stage in stages:
        repo.set_stage(model, stage, version)
    context.say(f"{model}: imported {source} as version {version} "
                f"(input {size}x{size}; stages: {', '.join(stages) or 'none'})")
    return EXIT_OK

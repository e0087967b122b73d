"""`optimize VERSION`: build the OpenVINO variants of a published version behind the gate.

For versions published before variants existed, or whose conversion failed at the time (see
docs/variants.md). It calibrates on the training split and gates on the held-out split that the
version's own recorded config names, then adds the variants that stay within the budget to the
version. It needs NNCF, which only the training image carries (the inference and worker images
keep the OpenVINO runtime only), so the build code is loaded when the command runs and any
other image answers with a clear message instead of an import error at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
from pathlib import Path

from services.models.context import EXIT_FAILED, EXIT_OK, Context

NAME = "optimize"
HELP = "build, gate and publish the OpenVINO fp32/int8 variants of a version (training image)"
BUILDER = "training.optimize"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", type=int)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="scratch space for the dataset and the builds (default: a "
                             "temporary folder, removed afterwards)")


def run(args: argparse.Namespace, context: Context) -> int:
    try:
        builder = importlib.import_module(BUILDER)
    except ImportError as exc:
        print(f"maskfleet-models optimize: needs the training image (NNCF): {exc}",
              file=context.out)
        return EXIT_FAILED
    with tempfile.TemporaryDirectory(prefix="maskfleet-optimize-") as tmp:
        work = args.work_dir or Path(tmp)
        summary = builder.optimize(context.repository, context.model, args.version, work)
    context.say(json.dumps(summary, indent=2, default=str))
    return EXIT_OK

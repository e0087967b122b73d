"""`list`: every complete version, newest first, with its quality and the stages naming it."""

from __future__ import annotations

import argparse
import json

from services.models.context import EXIT_OK, Context
from services.models.summary import stages_of, version_summary

NAME = "list"
HELP = "list the versions of the model, newest first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def run(args: argparse.Namespace, context: Context) -> int:
    repo, model = context.repository, context.model
    stages = stages_of(repo, model)
    rows = [version_summary(repo, model, v, stages) for v in reversed(repo.versions(model))]
    if args.json:
        context.say(json.dumps({"model": model, "stages": stages, "versions": rows}, indent=2))
        return EXIT_OK
    if not rows:
        context.say(f"{model}: no versions in {repo.root}")
        return EXIT_OK
    context.say(f"{'VERSION':>7}  {'CREATED (UTC)':<19}  {'MEAN IOU':>8}  {'STAGES':<22}  SOURCE")
    for row in rows:
        iou = row["metrics"].get("mean_iou")
        context.say(f"{row['version']:>7}  {row['created_at'][:19].replace('T', ' '):<19}  "
                    f"{'-' if iou is None else f'{iou:.4f}':>8}  "
                    f"{','.join(row['stages']) or '-':<22}  {row['source']}")
    return EXIT_OK

"""`describe VERSION`: everything recorded about one version, including its full config."""

from __future__ import annotations

import argparse
import json

from services.models.context import EXIT_OK, Context
from services.models.summary import stages_of, version_summary

NAME = "describe"
HELP = "show one version's metadata, metrics, stages and training config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", type=int)


def run(args: argparse.Namespace, context: Context) -> int:
    repo, model = context.repository, context.model
    summary = version_summary(repo, model, args.version, stages_of(repo, model))
    summary["config"] = repo.metadata(model, args.version).config
    summary["model"] = model
    summary["repository"] = repo.root
    context.say(json.dumps(summary, indent=2, default=str))
    return EXIT_OK

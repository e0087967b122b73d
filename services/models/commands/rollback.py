"""`rollback [--stage STAGE]`: point a stage back at the version it named before.

Stage pointers keep their history, so this also undoes a promotion the rollout made. A
`candidate` with no earlier version is cleared instead, as the rollout does with a canary that
lost: the canary Deployment then stays alive and unready until the next candidate.
"""

from __future__ import annotations

import argparse

from services.models.context import EXIT_OK, EXIT_USAGE, Context

NAME = "rollback"
HELP = "point a stage (default production) back at its previous version"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=["production", "candidate"], default="production")


def run(args: argparse.Namespace, context: Context) -> int:
    repo, model, stage = context.repository, context.model, args.stage
    current = repo.stage(model, stage)
    restored = repo.rollback_stage(model, stage)
    if restored is not None:
        context.say(f"{model}: {stage} {current or '-'} -> {restored}")
        return EXIT_OK
    if stage == "candidate" and current is not None:
        repo.clear_stage(model, stage)
        context.say(f"{model}: candidate {current} -> - (cleared)")
        return EXIT_OK
    context.say(f"{model}: {stage} has no earlier version to go back to")
    return EXIT_USAGE

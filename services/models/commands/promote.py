"""`promote [VERSION]`: point `production` at a version (by default, the candidate's).

This is what the rollout does when a canary wins; both API variants follow their stage within
`stage_poll_seconds`, no redeploy. `rollback` undoes it.
"""

from __future__ import annotations

import argparse

from services.models.context import EXIT_OK, EXIT_USAGE, Context

NAME = "promote"
HELP = "point production at VERSION (default: the candidate's version)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", type=int, nargs="?",
                        help="version to serve as production (default: the candidate)")


def run(args: argparse.Namespace, context: Context) -> int:
    repo, model = context.repository, context.model
    version = args.version if args.version is not None else repo.stage(model, "candidate")
    if version is None:
        context.say(f"{model}: no candidate to promote; name a version")
        return EXIT_USAGE
    before = repo.stage(model, "production")
    repo.set_stage(model, "production", version)
    context.say(f"{model}: production {before or '-'} -> {version}")
    return EXIT_OK

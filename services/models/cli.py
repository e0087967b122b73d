"""`maskfleet-models [--repository URI] [--model NAME] COMMAND ...`

    list [--json]                          versions, newest first, with metrics and stages
    describe VERSION                       one version's metadata and config (JSON)
    import SAVEDMODEL_URI [--stage S]      publish a SavedModel as the next version
    promote [VERSION]                      production := VERSION (default: the candidate)
    rollback [--stage S]                   a stage back to its previous version
    optimize VERSION                       build + gate OpenVINO fp32/int8 variants (training image)

The repository and model default to MASKFLEET_MODEL_REPOSITORY and MASKFLEET_MODEL_NAME, the
variables every maskfleet process reads, so inside a pod no flag is needed. Exit codes: 0 done,
1 storage or model error, 2 usage (unknown version, nothing to roll back to).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from pydantic import ValidationError

from services.models.commands import COMMANDS
from services.models.context import EXIT_FAILED, EXIT_USAGE, Context
from shared.errors import MaskfleetError, NotFound
from shared.logging import configure_logging
from shared.repository import ModelRepository
from shared.settings import ServiceSettings


def parser(settings: ServiceSettings) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="maskfleet-models", description="Inspect the model repository and move its stages.")
    root.add_argument("--repository", default=settings.model_repository,
                      help="repository URI, gs://bucket/prefix or a path "
                           f"(default MASKFLEET_MODEL_REPOSITORY: {settings.model_repository})")
    root.add_argument("--model", default=settings.model_name,
                      help=f"model name (default MASKFLEET_MODEL_NAME: {settings.model_name})")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.add_arguments(sub)
        sub.set_defaults(handler=command.run)
    return root


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    try:
        settings = ServiceSettings()
    except ValidationError as exc:
        print(f"maskfleet-models: invalid environment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging("WARNING", stream=sys.stderr)
    args = parser(settings).parse_args(argv)
    context = Context(ModelRepository(args.repository), args.model, out or sys.stdout)
    try:
        code: int = args.handler(args, context)
    except NotFound as exc:
        print(f"maskfleet-models: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except MaskfleetError as exc:
        print(f"maskfleet-models: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    return code

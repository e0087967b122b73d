"""`python -m training --config <yaml> [--run-id ID] [key.sub=value ...]`

Exit codes: 0 published (or already published by this run id), 3 the quality gate refused the
model (nothing published), 2 invalid configuration, 1 any other failure. The last line on stdout
is always a one-line JSON summary; everything before it is JSON logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.cpu import size_tensorflow_threads
from shared.errors import ConfigError, MaskfleetError
from shared.logging import configure_logging
from training.config import load_config
from training.settings import RUN_ID_PATTERN, TrainingSettings

log = logging.getLogger("training")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the U-Net, evaluate it on the held-out split and publish it as a "
                    "candidate version when it passes the quality gate.",
    )
    parser.add_argument("--config", required=True, type=Path, help="experiment YAML file")
    parser.add_argument("--run-id", help="names the checkpoint directory; the same id resumes "
                                         "(default: MASKFLEET_TRAIN_RUN_ID, else a new id)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, values parsed as YAML (train.steps=50)")
    return parser


def _emit(summary: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = TrainingSettings()
    except ValidationError as exc:
        _emit({"status": "error", "error": f"invalid environment: {exc}"})
        return 2
    configure_logging(settings.log_level)
    size_tensorflow_threads(settings.cpu_limit)  # before the first TensorFlow op

    from training.job import EXIT_CONFIG, EXIT_FAILED, new_run_id, run

    run_id = args.run_id or settings.train_run_id or new_run_id()
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        _emit({"status": "error", "run_id": run_id,
               "error": f"--run-id: must match {RUN_ID_PATTERN}"})
        return EXIT_CONFIG
    try:
        config = load_config(args.config, args.overrides)
        result = run(config, settings, run_id)
    except ConfigError as exc:
        log.error("invalid configuration", extra={"error": exc.detail})
        _emit({"status": "error", "run_id": run_id, "error": exc.detail})
        return EXIT_CONFIG
    except MaskfleetError as exc:
        log.exception("training failed")
        _emit({"status": "error", "run_id": run_id, "error": exc.detail})
        return EXIT_FAILED
    except Exception as exc:
        log.exception("training failed unexpectedly")
        _emit({"status": "error", "run_id": run_id, "error": f"{type(exc).__name__}: {exc}"})
        return EXIT_FAILED
    if result.status == "rejected":
        print(f"quality gate: {result.summary['reason']}", file=sys.stderr)
    _emit({"status": result.status, **{k: v for k, v in result.summary.items()
                                       if k != "status"}})
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())

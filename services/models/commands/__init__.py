"""The subcommands, one module each; `COMMANDS` is the registry the CLI builds its parser from.

A new subcommand (say `optimize`) is a module with `NAME`, `HELP`, `add_arguments(parser)` and
`run(args, context) -> int`, appended to `COMMANDS`.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from services.models.context import Context

from . import describe, importing, listing, optimize, promote, rollback


class Command(Protocol):
    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, context: Context) -> int: ...


COMMANDS: tuple[Command, ...] = (listing, describe, importing, promote, rollback, optimize)

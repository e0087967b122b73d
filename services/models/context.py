"""What every subcommand receives, and the exit codes they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from shared.repository import ModelRepository

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""0 done; 1 storage or model trouble; 2 the request makes no sense (unknown version, nothing
to roll back to)."""


@dataclass(frozen=True)
class Context:
    """One repository, one model name, and where to print."""

    repository: ModelRepository
    model: str
    out: TextIO

    def say(self, line: str) -> None:
        print(line, file=self.out)

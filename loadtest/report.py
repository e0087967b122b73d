"""Bench report: one JSON file for machines and one table for people."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    ratio_to_ceiling: float | None = None
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def write_json(self, path: Path) -> None:
        doc = {
            "created_at": datetime.now(UTC).isoformat(),
            "machine": {"python": platform.python_version(), "cpu": platform.processor(),
                        "machine": platform.machine()},
            "context": self.context,
            "figures": [asdict(f) for f in self.figures],
        }
        path.write_text(json.dumps(doc, indent=2))

    def print_table(self, console: Console | None = None) -> None:
        table = Table(title="maskfleet bench", show_lines=False)
        for column in ("section", "figure", "value", "unit", "x ceiling", "target"):
            numeric = column in ("value", "x ceiling")
            table.add_column(column, justify="right" if numeric else "left")
        for f in self.figures:
            ratio = "" if f.ratio_to_ceiling is None else f"{f.ratio_to_ceiling:.2f}"
            table.add_row(f.section, f.name, f"{f.value:.2f}", f.unit, ratio, f.target or "")
        (console or Console()).print(table)

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
    met: bool | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    cpu_ms: float | None = None
    """Server CPU time per request (all its threads, plus Redis where it serves)."""
    cpu_ratio: float | None = None
    """Ceiling CPU per image over `cpu_ms`: the share of the ceiling CPU alone allows."""
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
        numeric = ("value", "x ceiling", "cpu ms", "x ceil (cpu)", "p50 ms", "p95 ms",
                   "p99 ms")
        for column in ("section", "figure", "value", "unit", *numeric[1:], "target"):
            table.add_column(column, justify="right" if column in numeric else "left")
        for f in self.figures:
            verdict = "" if f.met is None else (" [green]met[/]" if f.met else " [red]missed[/]")
            table.add_row(f.section, f.name, f"{f.value:.2f}", f.unit, _num(f.ratio_to_ceiling),
                          _num(f.cpu_ms), _num(f.cpu_ratio), _num(f.p50_ms, 1),
                          _num(f.p95_ms, 1), _num(f.p99_ms, 1), (f.target or "") + verdict)
        if console is None:
            console = Console()
            if not console.is_terminal:
                console = Console(width=200)  # a log or a pipe: do not wrap the figure names
        console.print(table)


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"

"""The side-by-side table of `make bench-peers`: one row per server, one column group per
concurrency, every throughput as a ratio to the in-process ceiling of the same run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from loadtest.report import Figure


@dataclass(frozen=True)
class Cell:
    """One server at one concurrency."""

    per_second: float
    x_ceiling: float | None
    cpu_ms: float | None
    x_ceiling_cpu: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int


@dataclass
class Row:
    server: str
    payload: str
    agreement: float | None
    """Share of the answer's mask pixels equal to maskfleet's mask for the same JPEG."""
    cells: dict[int, Cell] = field(default_factory=dict)


def rows(figures: Sequence[Figure]) -> list[Row]:
    """Group the load figures (those with `extra.server`) by server, in the order they ran."""
    found: dict[tuple[str, str], Row] = {}
    for f in figures:
        server = f.extra.get("server")
        if server is None:
            continue
        key = (str(server), str(f.extra.get("payload", "")))
        row = found.setdefault(key, Row(key[0], key[1], f.extra.get("agreement")))
        row.cells[int(f.extra["connections"])] = Cell(
            f.value, f.ratio_to_ceiling, f.cpu_ms, f.cpu_ratio, f.p50_ms, f.p99_ms,
            int(f.extra.get("errors", 0)))
    return list(found.values())


def table(found: Sequence[Row], ceiling: float, title: str = "maskfleet vs peers") -> Table:
    """Per concurrency: x ceiling, images/s, server CPU ms per request, the share of the ceiling
    that CPU alone allows, p99 (p50 and the rest are in the JSON report)."""
    levels = sorted({c for row in found for c in row.cells})
    out = Table(title=f"{title} (ceiling {ceiling:.1f} img/s in-process)")
    out.add_column("server")
    out.add_column("payload")
    for c in levels:
        for name in ("x ceiling", "img/s", "cpu ms", "x ceil (cpu)", "p99 ms"):
            out.add_column(f"c={c} {name}", justify="right")
    out.add_column("errors", justify="right")
    out.add_column("mask = maskfleet", justify="right")
    for row in found:
        values = [row.server, row.payload]
        for c in levels:
            cell = row.cells.get(c)
            if cell is None:
                values += [""] * 5
                continue
            values += [_num(cell.x_ceiling), _num(cell.per_second, 1), _num(cell.cpu_ms),
                       _num(cell.x_ceiling_cpu), _num(cell.p99_ms, 1)]
        values.append(str(sum(cell.errors for cell in row.cells.values())))
        values.append("" if row.agreement is None else f"{100 * row.agreement:.1f}%")
        out.add_row(*values)
    return out


def print_table(found: Sequence[Row], ceiling: float, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=240)  # a log or a pipe: keep each row on one line
    console.print(table(found, ceiling))


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"

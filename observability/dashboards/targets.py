"""Read the PromQL back out of generated dashboard JSON, as Grafana would send it.

Tests use this to check every panel query against promtool and a live Prometheus: the JSON
is what users get, so that is what gets checked, not the Python that produced it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# What Grafana would put in place of each variable, for a query that covers everything.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "namespace": ".*",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str


def panel_queries(model: Mapping[str, Any]) -> Iterator[PanelQuery]:
    """Every Prometheus expression of every panel, rows' nested panels included."""
    uid = str(model.get("uid", ""))

    def walk(panels: list[Mapping[str, Any]]) -> Iterator[PanelQuery]:
        for panel in panels:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    yield PanelQuery(uid, str(panel.get("title", "")),
                                     str(target.get("refId", "")), str(target["expr"]))
            yield from walk(panel.get("panels") or [])

    yield from walk(model.get("panels") or [])


def substitute(expr: str, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """Replace `$var` / `${var}` like Grafana; an unknown variable raises KeyError."""

    def value(match: re.Match[str]) -> str:
        return variables[match.group(1) or match.group(2)]

    return VARIABLE.sub(value, expr)

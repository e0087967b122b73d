"""Grafana dashboards as code (grafana-foundation-sdk, Grafana 11 schema).

`python -m observability.dashboards` writes one `<uid>.json` per dashboard into
`charts/maskfleet/dashboards/`, where the chart ships them as ConfigMaps for the Grafana
sidecar. The JSON is generated, never edited: a test fails when it drifts from this code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel

from observability.dashboards import ab, batch, overview

BUILDERS: tuple[Callable[[], Dashboard], ...] = (overview.build, ab.build, batch.build)
OUTPUT = Path(__file__).resolve().parents[2] / "charts" / "maskfleet" / "dashboards"


def number_panels(model: DashboardModel) -> DashboardModel:
    """Give every panel a distinct id: the builders leave 0 or none, and Grafana keys panel
    links, edits and library state on the id."""
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard, byte-for-byte what the chart ships."""
    files: dict[str, str] = {}
    for build in BUILDERS:
        model = number_panels(build().build())
        text = JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"
        uid = json.loads(text)["uid"]
        files[f"{uid}.json"] = text
    return files


def load(text: str) -> dict[str, Any]:
    model: dict[str, Any] = json.loads(text)
    return model


def write(directory: Path = OUTPUT) -> list[Path]:
    """Write every dashboard and remove generated files whose dashboard no longer exists."""
    directory.mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written

"""Where the tests find the JSON Schemas they validate against.

Every schema a test reads is vendored here (see README.md for each file's origin), so a clone
with nothing beside it runs the whole suite offline; no test reaches outside the repository."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).resolve().parent
CRDS = SCHEMAS / "crds"
SKAFFOLD = SCHEMAS / "skaffold-v4beta13.json"


def crd_schema_path(api_version: str, kind: str) -> Path:
    """The file holding the schema of one custom resource version, e.g.
    ("gateway.networking.k8s.io/v1", "HTTPRoute"); it may not exist for core kinds."""
    group, _, version = api_version.rpartition("/")
    return CRDS / f"{group}_{kind.lower()}_{version}.json"


@cache
def _load(path: Path) -> str:
    return path.read_text()


def crd_schema(api_version: str, kind: str) -> Any:
    """The parsed schema of a custom resource; a missing file is a test error, not a skip."""
    path = crd_schema_path(api_version, kind)
    assert path.is_file(), f"no vendored schema {path.name} in {CRDS}"
    return json.loads(_load(path))

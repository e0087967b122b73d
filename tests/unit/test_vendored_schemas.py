"""The schemas the tests validate against are in the repository, unaltered beyond what
tests/schemas/README.md lists, and no test reaches outside the repository for them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.schemas import CRDS, SCHEMAS, SKAFFOLD, crd_schema_path

TESTS = Path(__file__).resolve().parents[1]
SOURCES = CRDS / "source"
README = (SCHEMAS / "README.md").read_text()
# The one documented rewrite: Python's re has no inline (?i) after ^.
PROMETHEUSRULE_PATTERN = ("^(?i)(abort|warn)?$", "^([Aa][Bb][Oo][Rr][Tt]|[Ww][Aa][Rr][Nn])?$")


def _served_versions() -> list[tuple[Path, str, dict[str, Any]]]:
    """(CRD source file, vendored file name, schema) for every version each source serves."""
    found = []
    for source in sorted(SOURCES.glob("*.yaml")):
        crd = yaml.safe_load(source.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                path = crd_schema_path(f"{group}/{version['name']}", kind)
                found.append((source, path.name, version["schema"]["openAPIV3Schema"]))
    return found


SERVED = _served_versions()


def _replace(schema: Any, old: str, new: str) -> Any:
    if isinstance(schema, dict):
        return {k: new if k == "pattern" and v == old else _replace(v, old, new)
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [_replace(item, old, new) for item in schema]
    return schema


def test_every_served_crd_version_is_vendored_and_nothing_else() -> None:
    vendored = {path.name for path in CRDS.glob("*.json")}
    assert vendored == {name for _, name, _ in SERVED}
    assert len(vendored) >= 15  # Gateway API, Prometheus Operator, KEDA, GKE, GMP


@pytest.mark.parametrize(("source", "name", "upstream"), SERVED, ids=[n for _, n, _ in SERVED])
def test_vendored_crd_schema_equals_its_source(source: Path, name: str,
                                               upstream: dict[str, Any]) -> None:
    vendored = json.loads((CRDS / name).read_text())
    assert vendored.pop("$schema") == "http://json-schema.org/draft-07/schema#"
    comment = vendored.pop("$comment")
    assert source.name in comment
    assert re.search(r"commit [0-9a-f]{40}", comment), "the comment names the source commit"
    assert name in README or name.split("_")[0] in README, "README names the file's source"
    if name == "monitoring.coreos.com_prometheusrule_v1.json":
        upstream = _replace(upstream, *PROMETHEUSRULE_PATTERN)
    assert vendored == upstream
    jsonschema.Draft7Validator.check_schema(vendored)


def test_skaffold_schema_is_the_published_draft7_schema() -> None:
    schema = json.loads(SKAFFOLD.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "SkaffoldConfig" in schema["definitions"]
    assert SKAFFOLD.name in README


def test_license_of_the_vendored_files_ships_with_them() -> None:
    text = (SCHEMAS / "LICENSE-Apache-2.0.txt").read_text()
    assert "Apache License" in text
    assert "Version 2.0" in text


def test_no_test_reads_files_beside_the_repository() -> None:
    """A clone with no sibling folders must run the suite: nothing under tests/ may climb
    out of the repository (REPO.parent, ../shared)."""
    escape = re.compile(r"REPO\.parent|\.\./shared|parent\s*/\s*[\"']shared[\"']")
    offenders = [
        f"{path.relative_to(TESTS)}:{number}"
        for path in TESTS.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if escape.search(line) and path.name != Path(__file__).name
    ]
    assert not offenders

"""Each image and console script runs with only its own extra installed: every third-party
module its code can import (followed through the project's own modules, function-level
imports included) belongs to a distribution in that target's lock file.

Installing a fresh venv per extra would download TensorFlow three times, so this inspects
the imports instead: ast finds them, the installed distributions' file lists say which
distribution provides each module, and requirements/<target>.txt says what the image has."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.servers import REPO
from tests.unit.test_locks import pins

FIRST_PARTY = {"shared", "services", "training", "observability", "loadtest"}
# what each image runs (docker/Dockerfile CMD, chart Jobs) -> the modules it starts from
IMAGE_ENTRIES = {
    "inference": ["services.inference.__main__", "services.rollout.__main__"],
    "worker": ["services.worker.app"],
    "training": ["training.__main__"],
}
# console script -> the images (and so the extras) it must run in
SCRIPT_IMAGES = {
    "maskfleet-jobs": ["worker"],
    "maskfleet-models": ["inference", "worker", "training"],  # core dependencies only
}


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path) -> set[str]:
    """Every module name an import statement in the file can load (not under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    skip: set[int] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if _type_checking_only(node):
            skip.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@cache
def third_party_modules(entry: str) -> frozenset[str]:
    """Third-party module names reachable from a first-party entry module."""
    todo, seen, outside = [entry], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = module_file(name)
        if path is None:
            continue  # `from pkg import function`: not a module of its own
        for imported in imports_of(name, path):
            top = imported.split(".")[0]
            if top in FIRST_PARTY:
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                outside.add(imported)
    return frozenset(outside)


@cache
def files_of(distribution: str) -> frozenset[str]:
    """site-packages-relative paths a distribution installed (its RECORD)."""
    return frozenset(str(f) for f in importlib.metadata.distribution(distribution).files or ())


def _relative(location: str) -> str | None:
    """The path below the deepest sys.path entry holding it (site-packages may sit inside
    the repository, which is on sys.path too)."""
    entries = [e.rstrip("/") for e in sys.path if e and location.startswith(e.rstrip("/") + "/")]
    return location[len(max(entries, key=len)) + 1:] if entries else None


@cache
def top_level_owners() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


@cache
def distribution_of(module: str) -> str | None:
    """The installed distribution that provides an importable module, "" for a namespace
    package (its parts belong to several), None when nothing provides it."""
    parts = module.split(".")
    owners = set(top_level_owners().get(parts[0], []))
    if len(owners) == 1:  # the common case: no import needed
        return canonicalize_name(owners.pop())
    # a namespace package (google.*): the first regular package below it names the owner;
    # find_spec only imports the namespace parents, never the package itself
    for end in range(1, len(parts) + 1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:end]))
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if spec.origin not in (None, "namespace"):
            relative = _relative(spec.origin)
            found = [d for d in sorted(owners) if relative and relative in files_of(d)]
            return canonicalize_name(found[0]) if found else None
    return ""


def missing_from(lock: str, entries: list[str]) -> dict[str, str]:
    """module -> distribution, for imported modules whose distribution is not in the lock."""
    locked = set(pins(lock))
    missing = {}
    for entry in entries:
        for module in sorted(third_party_modules(entry)):
            dist = distribution_of(module)
            assert dist is not None, f"{module} (imported from {entry}) is not installed"
            if dist and dist not in locked:
                missing[module] = dist
    return missing


def test_import_inspection_sees_the_known_dependencies() -> None:
    """The inspection itself: the worker CLI's imports include httpx and rich, which is what
    made maskfleet-jobs fail in a worker-only install before httpx joined the worker extra."""
    modules = third_party_modules("services.jobs.cli")
    assert {distribution_of(m) for m in modules} >= {"httpx", "rich"}
    assert distribution_of("google.cloud.storage") == "google-cloud-storage"
    assert "httpx" not in pins("training"), "a lock without httpx would be caught"
    assert missing_from("training", ["services.jobs.cli"]) == {"httpx": "httpx"}


@pytest.mark.parametrize("image", list(IMAGE_ENTRIES))
def test_image_entry_points_import_only_what_their_lock_installs(image: str) -> None:
    for entry in IMAGE_ENTRIES[image]:
        assert module_file(entry) is not None, f"{entry} moved: update IMAGE_ENTRIES"
    assert missing_from(image, IMAGE_ENTRIES[image]) == {}


def console_scripts() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    scripts: dict[str, str] = project.get("scripts", {})
    return scripts


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_console_script_works_with_only_its_own_extra(script: str) -> None:
    module = console_scripts()[script].partition(":")[0]
    assert module_file(module) is not None, f"{script} points at a missing module {module}"
    if script in SCRIPT_IMAGES:
        for image in SCRIPT_IMAGES[script]:
            assert missing_from(image, [module]) == {}, f"{script} in the {image} image"
    else:
        # a script not yet assigned to an image must at least run in one of them
        fits = [image for image in IMAGE_ENTRIES if not missing_from(image, [module])]
        assert fits, f"{script} imports packages no single image installs"

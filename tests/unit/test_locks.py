"""The lock files in requirements/ pin every install target exactly, with hashes, from one
resolution (one version of each package across the images and CI), satisfy what
pyproject.toml asks of each target, and `make install` reinstalls when they change."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.servers import REPO

REQUIREMENTS = REPO / "requirements"
# lock -> the extras it installs; the Dockerfile's targets and scripts/lock.sh use these names
TARGETS = {"inference": {"api", "rollout"}, "worker": {"worker"}, "training": {"train"}}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?: \\)?$")
HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}(?: \\)?$")
# the environment the locks are solved for (scripts/lock.sh): CPython 3.11 on x86_64 Linux
ENVIRONMENT: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
ENVIRONMENT.update(python_version="3.11", python_full_version="3.11.0", sys_platform="linux",
                   platform_system="Linux", platform_machine="x86_64")


@cache
def pins(lock: str) -> dict[str, str]:
    """name -> version of one lock file; asserts each pin is exact and carries hashes."""
    found: dict[str, str] = {}
    lines = (REQUIREMENTS / f"{lock}.txt").read_text().splitlines()
    for number, line in enumerate(lines):
        if not line or line.lstrip().startswith("#") or line.startswith(" "):
            continue
        match = PIN.match(line)
        assert match, f"{lock}.txt:{number + 1} is not an exact pin: {line!r}"
        following = lines[number + 1] if number + 1 < len(lines) else ""
        assert HASH.match(following), f"{lock}.txt: {match[1]} has no sha256 hash"
        found[canonicalize_name(match[1])] = match[2]
    return found


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return data


def requirements(extras: set[str]) -> list[Requirement]:
    """The base dependencies plus those of the extras, following maskfleet[...] references."""
    optional: dict[str, list[str]] = project()["optional-dependencies"]  # type: ignore[assignment]
    found = [Requirement(r) for r in project()["dependencies"]]  # type: ignore[attr-defined]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in optional[extra]:
            requirement = Requirement(raw)
            if canonicalize_name(requirement.name) == "maskfleet":
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return [r for r in found if r.marker is None or r.marker.evaluate(ENVIRONMENT)]


LOCKS = ["dev", *TARGETS, "cuda"]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    assert len(pins(lock)) >= 20


def test_one_version_of_each_package_across_images_and_ci() -> None:
    versions: dict[str, set[str]] = {}
    for lock in LOCKS:
        for name, version in pins(lock).items():
            versions.setdefault(name, set()).add(version)
    assert {name: v for name, v in versions.items() if len(v) > 1} == {}
    for target in TARGETS:
        assert set(pins(target)) <= set(pins("dev")), f"{target} has packages CI never tested"


@pytest.mark.parametrize(("lock", "extras"), [("dev", {"dev"}), *TARGETS.items()])
def test_lock_satisfies_what_pyproject_asks_of_its_target(lock: str, extras: set[str]) -> None:
    locked = pins(lock)
    missing, outside = [], []
    for requirement in requirements(extras):
        name = canonicalize_name(requirement.name)
        if name not in locked:
            missing.append(str(requirement))
        elif not requirement.specifier.contains(locked[name], prereleases=True):
            outside.append(f"{requirement} (locked {locked[name]})")
    assert not missing, f"run `make lock`: {lock}.txt lacks {missing}"
    assert not outside, f"run `make lock`: {lock}.txt pins outside pyproject: {outside}"


@pytest.mark.parametrize("lock", ["dev", *TARGETS])
def test_no_image_or_ci_lock_mixes_in_the_cuda_build(lock: str) -> None:
    assert "tensorflow-cpu" in pins(lock)
    assert "tensorflow" not in pins(lock)
    assert not [name for name in pins(lock) if name.startswith("nvidia-")]


def test_cuda_lock_is_the_same_tensorflow_built_for_cuda() -> None:
    cuda = pins("cuda")
    assert cuda["tensorflow"] == pins("dev")["tensorflow-cpu"]
    assert "tensorflow-cpu" not in cuda
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= set(cuda)
    source = (REQUIREMENTS / "cuda.in").read_text()
    assert f"tensorflow[and-cuda]=={cuda['tensorflow']}" in source


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_header_records_the_command_that_regenerates_it(lock: str) -> None:
    """Renovate's pip-compile manager (renovate.json) re-runs the command in the header."""
    header = (REQUIREMENTS / f"{lock}.txt").read_text().splitlines()[1]
    assert header.startswith("#    uv pip compile ")
    assert "--generate-hashes" in header
    assert f"-o requirements/{lock}.txt" in header
    extras = set(re.findall(r"--extra (\w+)", header))
    expected = {"dev": {"dev"}, "cuda": set(), **TARGETS}[lock]
    assert extras == expected
    script = (REPO / "scripts" / "lock.sh").read_text()
    if lock in TARGETS:
        assert f'[{lock}]="{" ".join(sorted(TARGETS[lock]))}"' in script


@pytest.fixture
def make_tree(tmp_path: Path) -> Path:
    """The Makefile with the files its install stamp depends on, installed a moment ago."""
    if shutil.which("make") is None:
        pytest.fail("make not found")
    for name in ("Makefile", "pyproject.toml", "scripts/install-system.sh",
                 "requirements/dev.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    stamp = tmp_path / ".venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    newer = max(p.stat().st_mtime for p in tmp_path.rglob("*") if p.is_file()) + 10
    os.utime(stamp, (newer, newer))
    return tmp_path


def dry_run(tree: Path, *args: str) -> str:
    done = subprocess.run(["make", "-n", "install", *args], cwd=tree, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout


def test_make_install_is_a_no_op_when_nothing_changed(make_tree: Path) -> None:
    assert "pip install" not in dry_run(make_tree)


def test_a_changed_lock_reinstalls_from_the_lock(make_tree: Path) -> None:
    lock = make_tree / "requirements" / "dev.txt"
    newer = (make_tree / ".venv" / ".installed").stat().st_mtime + 10
    os.utime(lock, (newer, newer))
    commands = dry_run(make_tree)
    assert "pip install -q --require-hashes -r requirements/dev.txt" in commands
    assert "pip install -q --no-deps --no-build-isolation -e ." in commands
    assert "pip install -q -e '.[dev]'" not in commands, "never resolves outside the lock"


def test_renovate_updates_every_lock_and_the_pinned_base_images_and_actions() -> None:
    config = json.loads((REPO / "renovate.json").read_text())
    patterns = [re.compile(p.strip("/")) for p in config["pip-compile"]["managerFilePatterns"]]
    for lock in LOCKS:
        assert any(p.search(f"requirements/{lock}.txt") for p in patterns), lock
    assert "docker:pinDigests" in config["extends"]
    assert "helpers:pinGitHubActionDigests" in config["extends"]
    assert config["lockFileMaintenance"]["enabled"] is True
    assert config["vulnerabilityAlerts"]["enabled"] is True

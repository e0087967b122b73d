"""Structure of docker/Dockerfile (no Docker engine here, so nothing is built): multi-stage,
each final image is the digest-pinned python:3.11-slim plus a venv installed from its own
hash-checked lock, runs as a non-root user, and carries neither build tools nor the dev extra.
Also the CI workflows."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
INSTALL_SCRIPT = REPO / "docker" / "install-locked.sh"
FINAL = {"inference": "api,rollout", "worker": "worker", "training": "train"}
DIGEST = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
COMMANDS = {
    "inference": ["python", "-m", "services.inference"],
    "worker": ["celery", "-A", "services.worker.app", "worker", "--pool=solo",
               "--concurrency=1", "-Q", "maskfleet"],
    "training": ["python", "-m", "training", "--config", "/etc/maskfleet/training.yaml"],
}
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "git", "curl", "wget")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines are joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
        elif op == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif stages:
            stages[-1].instructions.append((op, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse(DOCKERFILE)[1]}


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and its ancestors, nearest first."""
    found = [stages[name]]
    while found[-1].base in stages:
        found.append(stages[found[-1].base])
    return found


def instructions(stages: dict[str, Stage], name: str, op: str) -> list[str]:
    return [rest for s in reversed(chain(stages, name)) for o, rest in s.instructions if o == op]


def test_dockerfile_is_multi_stage(stages: dict[str, Stage]) -> None:
    assert len(stages) >= 4
    assert set(FINAL) <= set(stages)


@pytest.mark.parametrize("target", list(FINAL))
def test_final_image_is_slim_python_with_only_the_venv(stages: dict[str, Stage],
                                                       target: str) -> None:
    lineage = chain(stages, target)
    assert lineage[-1].base.startswith("python:3.11-slim")
    copies = instructions(stages, target, "COPY")
    assert copies, "the venv is copied from a builder stage"
    for copy in copies:
        assert copy.startswith("--from="), f"{target} copies build context: {copy}"
        source = copy.split()[0].removeprefix("--from=")
        builder = chain(stages, source)
        assert builder[-1].base.startswith("python:3.11-slim"), "same interpreter path"
        installs = instructions(stages, source, "RUN")
        assert f"install-locked deps {target}" in installs, "the image's own lock"
        assert "install-locked project" in installs
        assert not [run for run in installs if "pip install" in run], "only through the lock"
    for run in instructions(stages, target, "RUN"):
        assert "pip install" not in run
        assert not [tool for tool in BUILD_TOOLS if re.search(rf"\b{re.escape(tool)}\b", run)]


@pytest.mark.parametrize("target", list(FINAL))
def test_final_image_runs_as_a_non_root_user(stages: dict[str, Stage], target: str) -> None:
    users = instructions(stages, target, "USER")
    assert users, f"{target} never sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric uid so that runAsNonRoot can verify it"
    assert int(uid) == 10001


@pytest.mark.parametrize("target", list(FINAL))
def test_final_image_runs_the_contract_command(stages: dict[str, Stage], target: str) -> None:
    def exec_form(op: str) -> list[str]:
        found = instructions(stages, target, op)
        return list(yaml.safe_load(found[-1])) if found else []

    assert exec_form("ENTRYPOINT") + exec_form("CMD") == COMMANDS[target]


def test_no_dev_extra_or_test_files_in_any_image() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"\[[^\]]*\bdev\b[^\]]*\]", text), "the dev extra stays out"
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "**", "the build context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "shared", "services", "training",
                       "requirements", "docker/install-locked.sh"}
    assert "**/tests" in ignore


def test_inference_and_worker_share_their_layers(stages: dict[str, Stage]) -> None:
    inference, worker = chain(stages, "inference"), chain(stages, "worker")
    assert inference[1].name == worker[1].name, "one runtime base stage"
    source = {t: instructions(stages, t, "COPY")[0].split()[0] for t in ("inference", "worker")}
    builders = {t: chain(stages, s.removeprefix("--from="))[1].name for t, s in source.items()}
    assert builders["inference"] == builders["worker"], "one builder stage with the sources"


def test_install_step_uses_the_hash_checked_lock_and_resolves_nothing() -> None:
    """The script every build stage runs: pip installs exactly requirements/<target>.txt with
    --require-hashes --no-deps, and the project itself with --no-deps."""
    pips = [line.strip() for line in INSTALL_SCRIPT.read_text().splitlines()
            if line.strip().startswith("pip install")]
    assert 'pip install --require-hashes --no-deps -r "requirements/$2.txt"' in pips
    assert "pip install --require-hashes --no-deps -r requirements/cuda.txt" in pips
    assert "pip install --no-deps --no-build-isolation ." in pips
    assert all("--no-deps" in pip for pip in pips), "pip never resolves on its own"
    for target in FINAL:
        assert (REPO / "requirements" / f"{target}.txt").is_file()


def test_base_images_are_pinned_by_digest(stages: dict[str, Stage]) -> None:
    args, _ = parse(DOCKERFILE)
    bases = {s.base for s in stages.values() if s.base not in stages}
    assert bases, "at least one external base image"
    for base in bases:
        assert DIGEST.match(base), f"{base} is a tag, not a digest"
    assert DIGEST.match(args["PYTHON_IMAGE"])
    syntax = DOCKERFILE.read_text().splitlines()[0]
    assert syntax.startswith("# syntax=")
    assert DIGEST.match(syntax.removeprefix("# syntax="))
    assert "imagetools inspect" in DOCKERFILE.read_text(), "documents how to refresh them"


def test_gpu_variant_is_a_documented_build_argument(stages: dict[str, Stage]) -> None:
    args, _ = parse(DOCKERFILE)
    assert args["TENSORFLOW"] == "cpu", "CPU by default"
    text = DOCKERFILE.read_text()
    assert "--build-arg TENSORFLOW=cuda" in text
    builder_env = " ".join(instructions(stages, "builder", "ENV"))
    assert "TENSORFLOW=${TENSORFLOW}" in builder_env, "the script sees the build argument"
    cuda = (REPO / "requirements" / "cuda.txt").read_text()
    assert re.search(r"^tensorflow==", cuda, flags=re.MULTILINE)
    assert "nvidia-cudnn-cu12==" in cuda
    values = (REPO / "charts" / "maskfleet" / "values.yaml").read_text()
    for component in FINAL:
        block = values[values.index(f"@param {component}.gpu.enabled") - 400:
                       values.index(f"@param {component}.gpu.enabled")]
        assert "-cuda" in block, f"{component}.gpu docs name the image"
        assert "TENSORFLOW=cuda" in block, f"{component}.gpu docs say how it is built"


def test_run_commands_parse(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for op, rest in stage.instructions:
            if op == "RUN":
                shlex.split(rest)


# ---------------------------------------------------------------- workflows

def workflow(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    return data


def triggers(wf: dict[Any, Any]) -> set[str]:
    """YAML 1.1 reads the `on:` key as the boolean True."""
    return set(wf.get("on", wf.get(True, {})))


def steps(wf: dict[Any, Any]) -> list[dict[str, Any]]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def make_targets(script: str) -> list[str]:
    return re.findall(r"^\s*make (\w+)\b", script, flags=re.MULTILINE)


def test_team_ci_lints_before_it_tests() -> None:
    assert make_targets((REPO / ".ci" / "run").read_text()) == ["lint", "test"]


def test_github_ci_runs_what_the_team_ci_runs_and_audits_the_locks() -> None:
    wf = workflow("ci.yml")
    assert {"push", "pull_request", "schedule"} <= triggers(wf)
    test = wf["jobs"]["test"]
    assert [s["run"] for s in test["steps"] if "run" in s] == ["bash .ci/run"]
    python = next(s for s in test["steps"]
                  if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11"
    audit = [s["run"] for s in wf["jobs"]["audit"]["steps"] if "run" in s]
    assert audit == ["make audit"]
    assert not [s for s in steps(wf) if "shared" in s.get("run", "")], "no sibling folder"


def test_images_workflow_builds_and_pushes_the_three_targets() -> None:
    wf = workflow("image-build.yml")
    assert triggers(wf) == {"workflow_call"}, "run only by images.yml"
    (job,) = wf["jobs"].values()
    assert set(job["strategy"]["matrix"]["target"]) == set(FINAL)
    build = next(s for s in job["steps"]
                 if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "docker/Dockerfile"
    assert build["with"]["target"] == "${{ matrix.target }}"
    assert build["with"]["push"] == "${{ inputs.push }}"
    login = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/login"))
    assert login["if"] == "inputs.push"
    assert set(job["strategy"]["matrix"]["variant"]) == {"cpu", "cuda"}
    assert build["with"]["build-args"].strip() == "TENSORFLOW=${{ matrix.variant }}"
    meta = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/metadata"))
    assert meta["with"]["images"].endswith("maskfleet-${{ matrix.target }}")


def test_only_pushes_get_a_token_that_writes_packages() -> None:
    wf = workflow("images.yml")
    assert "pull_request" in triggers(wf), "pull requests build the images, without pushing"
    on: dict[str, Any] = wf.get("on", wf.get(True, {}))
    assert "requirements/**" in on["pull_request"]["paths"], "a lock change rebuilds the images"
    assert wf["permissions"] == {}
    jobs = {job["with"]["push"]: job for job in wf["jobs"].values()}
    assert set(jobs) == {True, False}
    for job in jobs.values():
        assert job["uses"] == "./.github/workflows/image-build.yml"
    assert jobs[False]["if"] == "github.event_name == 'pull_request'"
    assert jobs[False]["permissions"] == {"contents": "read"}
    assert jobs[True]["if"] == "github.event_name != 'pull_request'"
    assert jobs[True]["permissions"] == {"contents": "read", "packages": "write"}


def test_every_action_is_pinned_to_a_commit() -> None:
    """A tag can be moved to other code; a commit cannot (Renovate updates the pins)."""
    used = [s["uses"] for name in ("ci.yml", "image-build.yml") for s in steps(workflow(name))
            if "uses" in s]
    assert len(used) >= 6
    loose = [u for u in used if not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u)]
    assert loose == []

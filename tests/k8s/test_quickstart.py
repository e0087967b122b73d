"""docs/deploy.md's "from an empty cluster and bucket to a served mask": at most ten commands,
and its `helm install` renders (schema-checked values) into the objects the later commands
name, with a training config the Job accepts."""

from __future__ import annotations

import itertools
import re
import shlex
from typing import Any

import yaml

from tests.k8s.cases import Manifest, one, workloads
from tests.k8s.conftest import REPO, Render
from training.config import apply_overrides, parse_config

SECTION = "## From an empty cluster and bucket to a served mask"
EXAMPLE = {"$REGISTRY": "europe-docker.pkg.dev/my-project/maskfleet", "$BUCKET": "my-bucket",
           "$PROJECT_NUMBER": "123456789012", "$PROJECT": "my-project", "$REGION": "europe-west4"}


def quickstart_commands() -> list[str]:
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text[text.index(SECTION):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def set_values(command: str) -> dict[str, Any]:
    """The `--set a.b=c` flags of a helm command as nested values (YAML-typed leaves)."""
    values: dict[str, Any] = {}
    for variable, example in EXAMPLE.items():
        command = command.replace(variable, example)
    words = shlex.split(command)
    for flag, value in itertools.pairwise(words):
        if flag != "--set":
            continue
        key, _, raw = value.partition("=")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return values


def test_at_most_ten_commands_from_nothing_to_a_mask() -> None:
    commands = quickstart_commands()
    assert 3 <= len(commands) <= 10, commands
    assert commands[-1].startswith("curl"), "it ends with a served mask"


def test_the_quickstart_install_renders_what_the_next_commands_use(render: Render) -> None:
    commands = quickstart_commands()
    (install,) = [c for c in commands if c.startswith("helm install")]
    values = set_values(install)
    assert values["model"]["repository"].startswith("gs://")
    objects: list[Manifest] = render(values)
    one(objects, "CronJob", "maskfleet-retrain")
    one(objects, "Deployment", "maskfleet-inference-stable")
    service = one(objects, "Service", "maskfleet-inference-stable")
    forwarded = next(c for c in commands if "port-forward" in c)
    assert f":{service['spec']['ports'][0]['port']}" in forwarded
    cron = next(o for o, _ in workloads(objects) if o["kind"] == "CronJob")
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    raw = yaml.safe_load(one(objects, "ConfigMap", "maskfleet-training")["data"]["training.yaml"])
    config = parse_config(apply_overrides(raw, c["args"][2:]))
    assert config.data.generate_if_missing, "an empty bucket trains on synthetic data"

"""The override example values.yaml documents for the training Job is a real config key."""

from __future__ import annotations

import re

import yaml

from tests.k8s.cases import Manifest, one, workloads
from tests.k8s.conftest import CHART, Render
from training.config import apply_overrides, parse_config


def training_container(objects: list[Manifest]) -> Manifest:
    cron = next(o for o, _ in workloads(objects) if o["kind"] == "CronJob")
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def documented_extra_args() -> list[str]:
    """The `extraArgs` example in values.yaml's comments."""
    text = (CHART / "values.yaml").read_text()
    block = text[text.index("## @param training.extraArgs"):]
    block = block[:block.index("extraArgs: []")]
    return re.findall(r"##\s+-\s+(\S+)", block)


def test_the_documented_override_example_is_a_real_config_key(render: Render) -> None:
    example = documented_extra_args()
    assert example, "values.yaml shows an extraArgs example"
    objects = render({"training": {"extraArgs": example}})
    c = training_container(objects)
    raw = yaml.safe_load(one(objects, "ConfigMap", "maskfleet-training")["data"]["training.yaml"])
    overrides = c["args"][2:]
    assert overrides == example
    config = parse_config(apply_overrides(raw, overrides))  # a typo raises: the Job exits 2
    key, _, value = example[0].partition("=")
    section, field = key.split(".")
    assert str(getattr(getattr(config, section), field)) == value

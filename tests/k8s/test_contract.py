"""The pods' environment is accepted by the services' own settings classes, in production
mode, for every value set: a misspelled variable, a stage the code does not know or a value
it refuses in production fails here instead of in a CrashLoopBackOff."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from services.inference.middleware import StripPathPrefix
from services.inference.settings import InferenceSettings
from services.worker.settings import WorkerSettings
from tests.k8s.cases import Manifest, env_of, one, workloads
from training.config import apply_overrides, parse_config
from training.settings import TrainingSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "inference": InferenceSettings,
    "worker": WorkerSettings,
    "training": TrainingSettings,
}

# What the kubelet would substitute for valueFrom entries.
RUNTIME_VALUES = {
    "secretKeyRef": "redis://:secret@redis.example:6379/0",
    "fieldRef": "0f6b1c1e-5d0a-4c39-9a57-7c1f3e0b2a44",
    "resourceFieldRef": "4",
}


def process_env(objects: list[Manifest], c: Manifest) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for name, value in env_of(c).items():
        env[name] = RUNTIME_VALUES[next(iter(value))] if isinstance(value, dict) else value
    return env


def maskfleet_containers(objects: list[Manifest]) -> list[tuple[Manifest, Manifest]]:
    return [(pod, c) for _, pod in workloads(objects) for c in pod["spec"]["containers"]
            if c["name"] in SETTINGS]


def test_every_variable_is_a_settings_field(rendered: list[Manifest]) -> None:
    for _, c in maskfleet_containers(rendered):
        fields = SETTINGS[c["name"]].model_fields
        for name in process_env(rendered, c):
            if name.startswith("MASKFLEET_"):
                assert name.removeprefix("MASKFLEET_").lower() in fields, (c["name"], name)


def test_services_accept_their_environment(rendered: list[Manifest],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    containers = maskfleet_containers(rendered)
    assert {c["name"] for _, c in containers} == set(SETTINGS)
    for _, c in containers:
        with monkeypatch.context() as patch:
            for name in [n for n in _environ() if n.startswith("MASKFLEET_")]:
                patch.delenv(name)
            for name, value in process_env(rendered, c).items():
                patch.setenv(name, value)
            settings: Any = SETTINGS[c["name"]]()
            assert settings.environment == "production"
            if c["name"] == "inference":
                assert settings.role in ("stable", "canary")
                port = c["ports"][0]["containerPort"]
                assert settings.port == port
                grace = pod_grace(rendered, c)
                assert settings.shutdown_timeout_seconds < grace


def test_the_api_strips_the_prefixes_the_routes_send(render: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the Ingress nor the HTTPRoute rewrites paths: /stable/v1/segment reaches the pod
    as it is, and only the API's prefix stripping makes it /v1/segment. With ingress.paths
    changed, the API must strip the new prefixes, or every call under them is a 404."""
    objects = render({"ingress": {"paths": {"stable": "/stable", "canary": "/try/canary/"}}})
    c = next(c for _, c in maskfleet_containers(objects) if c["name"] == "inference")
    for name in [n for n in _environ() if n.startswith("MASKFLEET_")]:
        monkeypatch.delenv(name)
    for name, value in process_env(objects, c).items():
        monkeypatch.setenv(name, value)
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])

    strip = StripPathPrefix(app, InferenceSettings().path_prefixes)
    ingress = one(objects, "Ingress", "maskfleet")
    sent = [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]
            if p["pathType"] == "Prefix"]
    assert "/stable/v1" in sent
    assert "/try/canary/v1" in sent
    for path in sent:
        asyncio.run(strip({"type": "http", "path": path + "/x"}, None, None))
    assert sorted(set(seen)) == ["/ui/x", "/v1/x", "/v2/x"]


def pod_grace(objects: list[Manifest], c: Manifest) -> int:
    for _, pod in workloads(objects):
        if c in pod["spec"]["containers"]:
            return int(pod["spec"]["terminationGracePeriodSeconds"])
    raise AssertionError("container not found")


def _environ() -> list[str]:
    import os

    return list(os.environ)


def test_training_configmap_is_a_valid_experiment(rendered: list[Manifest]) -> None:
    cron = next(o for o, _ in workloads(rendered) if o["kind"] == "CronJob")
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    raw = yaml.safe_load(one(rendered, "ConfigMap", "maskfleet-training")["data"]["training.yaml"])
    overrides = c["args"][2:]
    config: BaseModel = parse_config(apply_overrides(raw, overrides))
    assert config.model_dump()["checkpoint"]["root"].startswith("gs://"), (
        "checkpoints must outlive the pod so that a retried Job resumes")

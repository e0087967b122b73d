"""Identities in the rendered chart (issue 11): the API keys Secret (hashed, mounted, never in
env or values), /metrics only on its own port and only for Prometheus, one ServiceAccount and
Google service account per component, the smallest retrain-trigger Role, public-only routes."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from tests.k8s.cases import by_kind, container, env_of, one, pod_template
from tests.k8s.test_security import ingress_allowed, pod_labels

Manifest = dict[str, Any]
STABLE = "maskfleet-inference-stable"
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}


def secret_text(secret: Manifest, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_a_generated_key_is_stored_hashed_and_mounted(defaults: list[Manifest]) -> None:
    plain = secret_text(one(defaults, "Secret", "maskfleet-api-key-admin"), "key")
    assert plain.startswith("mfk_")
    assert len(plain) >= 40
    keys = json.loads(secret_text(one(defaults, "Secret", "maskfleet-api-keys"), "keys.json"))
    (entry,) = keys["keys"]
    assert entry == {"id": "admin", "sha256": hashlib.sha256(plain.encode()).hexdigest(),
                     "scopes": ["admin", "feedback", "infer", "jobs"]}
    deployment = one(defaults, "Deployment", STABLE)
    env = env_of(container(deployment, "inference"))
    assert env["MASKFLEET_API_KEYS_FILE"] == "/etc/maskfleet/api-keys/keys.json"
    volumes = {v["name"]: v for v in pod_template(deployment)["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "maskfleet-api-keys"
    mounts = {m["name"]: m for m in container(deployment, "inference")["volumeMounts"]}
    assert mounts["api-keys"] == {"name": "api-keys", "mountPath": "/etc/maskfleet/api-keys",
                                  "readOnly": True}
    rendered = json.dumps([o for o in defaults if o["kind"] != "Secret"])
    assert plain not in rendered  # not in env, ConfigMaps or annotations


def test_an_existing_keys_secret_replaces_the_generated_one(render: Any) -> None:
    objects = render({"apiKeys": {"existingSecret": "team-keys", "existingSecretKey": "k.json"}})
    assert not [s for s in by_kind(objects, "Secret") if "api-key" in s["metadata"]["name"]]
    deployment = one(objects, "Deployment", STABLE)
    (volume,) = [v for v in pod_template(deployment)["spec"]["volumes"]
                 if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "team-keys"
    assert volume["secret"]["items"] == [{"key": "k.json", "path": "keys.json"}]


def test_metrics_are_for_prometheus_only_and_docs_are_off(defaults: list[Manifest]) -> None:
    api = pod_labels(defaults, "inference")
    assert ingress_allowed(defaults, api, 8080, None)  # the public API
    assert not ingress_allowed(defaults, api, 9090, None)
    assert ingress_allowed(defaults, api, 9090, PROMETHEUS)
    env = env_of(container(one(defaults, "Deployment", STABLE), "inference"))
    assert (env["MASKFLEET_METRICS_PORT"], env["MASKFLEET_DOCS_ENABLED"]) == ("9090", "false")
    routed = {p["path"] for i in by_kind(defaults, "Ingress")
              for p in i["spec"]["rules"][0]["http"]["paths"]}
    routed |= {m["path"]["value"] for r in by_kind(defaults, "HTTPRoute")
               for rule in r["spec"]["rules"] for m in rule["matches"]}
    for hidden in ("/metrics", "/docs", "/openapi.json"):
        assert not [p for p in routed if p.endswith(hidden) or p.startswith(hidden)]


def test_one_service_account_and_google_identity_per_component(render: Any) -> None:
    release = "release@ops-1.iam.gserviceaccount.com"
    objects = render({"gcs": {"workloadIdentity": {
        "project": "acme-ml", "gcpServiceAccounts": {"rollout": release}}},
        "rollout": {"enabled": True}})
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objects, "ServiceAccount")}
    google = {name: sa["metadata"].get("annotations", {}).get("iam.gke.io/gcp-service-account")
              for name, sa in accounts.items()}
    assert google == {
        "maskfleet-inference": "maskfleet-inference@acme-ml.iam.gserviceaccount.com",
        "maskfleet-worker": "maskfleet-worker@acme-ml.iam.gserviceaccount.com",
        "maskfleet-training": "maskfleet-training@acme-ml.iam.gserviceaccount.com",
        "maskfleet-rollout": release,
        "maskfleet-redis": None,
    }
    used = {pod_template(o)["spec"]["serviceAccountName"]
            for o in objects if o["kind"] in ("Deployment", "CronJob")}
    assert {"maskfleet-inference", "maskfleet-worker", "maskfleet-training",
            "maskfleet-rollout"} <= used


def test_the_retrain_trigger_role_is_the_smallest_kubectl_needs(defaults: list[Manifest]) -> None:
    role = one(defaults, "Role", "maskfleet-retrain-trigger")
    writes = [(rule["resources"], rule["verbs"], rule.get("resourceNames"))
              for rule in role["rules"]
              if set(rule["verbs"]) - {"get", "list", "watch"}]
    assert writes == [(["jobs"], ["create"], None)]
    (cronjobs,) = [r for r in role["rules"] if r["resources"] == ["cronjobs"]]
    assert (cronjobs["verbs"], cronjobs["resourceNames"]) == (["get"], ["maskfleet-retrain"])
    assert not [r for r in role["rules"] if "secrets" in r["resources"] or
                "pods/exec" in r["resources"] or "*" in r["verbs"]]


def test_job_storage_rules_reach_api_and_worker(render: Any) -> None:
    objects = render({"jobs": {"inputPrefixes": ["gs://acme-uploads/batch"],
                               "outputPrefixes": ["gs://acme-results/masks"]}})
    for name, owner in ((STABLE, "inference"), ("maskfleet-worker", "worker")):
        env = env_of(container(one(objects, "Deployment", name), owner))
        assert env["MASKFLEET_JOB_INPUT_PREFIXES"] == "gs://acme-uploads/batch"
        assert env["MASKFLEET_JOB_OUTPUT_PREFIXES"] == "gs://acme-results/masks"
        protected = env["MASKFLEET_JOB_PROTECTED_PREFIXES"].split(",")
        assert {"gs://maskfleet-models/models", "gs://maskfleet-data/pets",
                "gs://maskfleet-data/pets/feedback"} <= set(protected)

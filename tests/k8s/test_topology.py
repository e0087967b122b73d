"""What a user relies on once the chart is installed: traffic reaches the right variant,
autoscalers scale the right Deployment, retraining runs the training entry point, and the
env/port/command contract of docs/interfaces.md is what the pods get."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.cases import (
    VALUE_SETS,
    Manifest,
    by_kind,
    container,
    env_of,
    one,
    pod_template,
    selects,
    workloads,
)
from tests.k8s.conftest import CHART

STABLE = "maskfleet-inference-stable"
CANARY = "maskfleet-inference-canary"


def service_target(objects: list[Manifest], service_name: str, port: int | str) -> tuple[str, int]:
    """Follow a Service port to (the Deployment whose pods it selects, their container port)."""
    service = one(objects, "Service", service_name)
    svc_port = next(
        p for p in service["spec"]["ports"] if port in (p["port"], p.get("name"))
    )
    matches = [
        (o, c)
        for o in by_kind(objects, "Deployment")
        if selects({"matchLabels": service["spec"]["selector"]},
                   pod_template(o)["metadata"]["labels"])
        for c in pod_template(o)["spec"]["containers"]
    ]
    assert len(matches) == 1, f"Service {service_name} selects {len(matches)} containers"
    deployment, c = matches[0]
    target = svc_port["targetPort"]
    container_port = next(p for p in c["ports"] if target in (p["name"], p["containerPort"]))
    return deployment["metadata"]["name"], container_port["containerPort"]


def role_of(objects: list[Manifest], deployment: str) -> str:
    return str(env_of(container(one(objects, "Deployment", deployment), "inference"))[
        "MASKFLEET_ROLE"])


# ---------------------------------------------------------------- Ingress

PUBLIC = ("/v1", "/v2", "/ui")
"""ingress.publicPaths: what the Ingress and the HTTPRoutes route under each base path."""


def public_matches(rule: Manifest, base: str) -> list[Manifest]:
    """The rule's matches, checked to be exactly the public API under `base`."""
    paths = {(m["path"]["type"], m["path"]["value"]) for m in rule["matches"]}
    assert paths == {("PathPrefix", f"{base}{p}") for p in PUBLIC} | {("Exact", base or "/")}
    return list(rule["matches"])


def test_ingress_fans_out_by_path_to_the_right_variant(defaults: list[Manifest]) -> None:
    ingress = one(defaults, "Ingress", "maskfleet")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert not ingress["metadata"].get("annotations"), "no controller-specific annotation"
    paths = {p["path"]: p for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    bases = {"/model-a": "stable", "/model-b": "canary", "": "stable"}
    expected = {f"{base}{public}": role for base, role in bases.items() for public in PUBLIC}
    exact = {base or "/": role for base, role in bases.items()}
    assert set(paths) == set(expected) | set(exact)  # only the public API: no /docs, /openapi
    for path, role in (expected | exact).items():
        backend = paths[path]["backend"]["service"]
        deployment, port = service_target(defaults, backend["name"], backend["port"]["name"])
        assert role_of(defaults, deployment) == role, path
        assert port == 8080
        assert paths[path]["pathType"] == ("Exact" if path in exact else "Prefix")


def test_ingress_without_canary_never_routes_to_it(render: Any) -> None:
    objects = render(VALUE_SETS["canary-off"])
    paths = one(objects, "Ingress", "maskfleet")["spec"]["rules"][0]["http"]["paths"]
    assert {p["path"] for p in paths} == {f"{base}{public}" for base in ("/model-a", "")
                                          for public in PUBLIC} | {"/model-a", "/"}
    assert all(p["backend"]["service"]["name"] == STABLE for p in paths)
    assert not [o for o in objects if o["metadata"]["name"] == CANARY]


def test_ingress_off_renders_no_ingress(render: Any) -> None:
    assert not by_kind(render(VALUE_SETS["ingress-off"]), "Ingress")


def test_nginx_canary_annotations_only_when_switched_on(defaults: list[Manifest],
                                                        render: Any) -> None:
    for obj in defaults:
        assert not any(k.startswith("nginx.ingress.kubernetes.io")
                       for k in obj["metadata"].get("annotations", {}))

    objects = render(VALUE_SETS["nginx-canary"])
    canary = one(objects, "Ingress", "maskfleet-canary")
    notes = canary["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/canary"] == "true"
    # The rollout owns the weight: a new release starts at 0 whatever abTest.canaryWeight says.
    assert notes["nginx.ingress.kubernetes.io/canary-weight"] == "0"
    assert notes["nginx.ingress.kubernetes.io/canary-by-header"] == "X-Maskfleet-Variant"
    assert notes["nginx.ingress.kubernetes.io/canary-by-header-value"] == "canary"
    main = one(objects, "Ingress", "maskfleet")
    (rule,) = canary["spec"]["rules"]
    assert rule["host"] == main["spec"]["rules"][0]["host"]
    # ingress-nginx pairs a canary with a location of the very same path and type only (and
    # drops it silently otherwise): the canary Ingress lists the main path's locations exactly
    main_paths = [(p["path"], p["pathType"]) for p in main["spec"]["rules"][0]["http"]["paths"]
                  if not p["path"].startswith(("/model-a", "/model-b"))]
    assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == main_paths
    assert ("/v1", "Prefix") in main_paths
    assert ("/", "Exact") in main_paths
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {CANARY}
    assert canary["spec"]["ingressClassName"] == main["spec"]["ingressClassName"] == "nginx"


# ---------------------------------------------------------------- HTTPRoute (A/B)

def main_rules(objects: list[Manifest]) -> tuple[list[Manifest], dict[str, Manifest]]:
    """(weighted rules without header, {header value: rule}) on the main path, over every
    HTTPRoute of the release (Gateway API merges the rules of routes on the same listener)."""
    weighted, by_header = [], {}
    for rule in (r for route in by_kind(objects, "HTTPRoute") for r in route["spec"]["rules"]):
        if {"type": "Exact", "value": "/"} not in [m["path"] for m in rule["matches"]]:
            continue
        match = public_matches(rule, "")[0]
        if "headers" in match:
            (header,) = match["headers"]
            assert header["name"] == "X-Maskfleet-Variant"
            assert header["type"] == "Exact"
            by_header[header["value"]] = rule
        else:
            weighted.append(rule)
    return weighted, by_header


def backend_roles(objects: list[Manifest], rule: Manifest) -> dict[str, int]:
    """{role: weight} of a rule's backends, checking each reaches a real Service port."""
    roles = {}
    for ref in rule["backendRefs"]:
        deployment, _ = service_target(objects, ref["name"], ref["port"])
        roles[role_of(objects, deployment)] = ref.get("weight", 1)
    return roles


@pytest.mark.parametrize("weight", [0, 10, 35, 100])
def test_httproute_main_path_starts_with_no_canary_traffic(render: Any, weight: int) -> None:
    """abTest.canaryWeight is what the rollout gives a ready candidate, not what Helm sets."""
    objects = render({"abTest": {"canaryWeight": weight}})
    route = one(objects, "HTTPRoute", "maskfleet-traffic")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    (weighted,), _ = main_rules(objects)
    assert weighted in route["spec"]["rules"]
    assert backend_roles(objects, weighted) == {"stable": 100, "canary": 0}


def test_httproute_header_forces_one_side(defaults: list[Manifest]) -> None:
    _, by_header = main_rules(defaults)
    assert backend_roles(defaults, by_header["canary"]) == {"canary": 1}
    assert backend_roles(defaults, by_header["stable"]) == {"stable": 1}


def test_httproute_model_paths_reach_their_variant_without_prefix(
        defaults: list[Manifest]) -> None:
    route = one(defaults, "HTTPRoute", "maskfleet")
    for path, role in {"/model-a": "stable", "/model-b": "canary"}.items():
        (rule,) = [r for r in route["spec"]["rules"]
                   if {"type": "Exact", "value": path} in [m["path"] for m in r["matches"]]]
        public_matches(rule, path)
        assert backend_roles(defaults, rule) == {role: 1}
        assert "filters" not in rule  # the API strips the prefix (MASKFLEET_PATH_PREFIXES)


def test_httproute_without_canary_sends_everything_to_stable(render: Any) -> None:
    objects = render(VALUE_SETS["canary-off"])
    (weighted,), by_header = main_rules(objects)
    assert backend_roles(objects, weighted) == {"stable": 100}
    assert set(by_header) == {"stable"}
    assert all(ref["name"] == STABLE for route in by_kind(objects, "HTTPRoute")
               for r in route["spec"]["rules"] for ref in r["backendRefs"])


def test_httproute_attaches_to_the_configured_gateway(render: Any) -> None:
    objects = render({"httpRoute": {"parentRefs": [
        {"name": "public", "namespace": "gateway-system", "sectionName": "https"}]}})
    for name in ("maskfleet", "maskfleet-traffic"):
        route = one(objects, "HTTPRoute", name)
        assert route["spec"]["parentRefs"] == [
            {"name": "public", "namespace": "gateway-system", "sectionName": "https"}]


# ---------------------------------------------------------------- autoscaling

def test_each_hpa_targets_its_own_deployment(defaults: list[Manifest]) -> None:
    hpas = {h["metadata"]["name"]: h for h in by_kind(defaults, "HorizontalPodAutoscaler")}
    assert set(hpas) == {STABLE, CANARY, "maskfleet-worker"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == (
            "apps/v1", "Deployment", name)
        deployment = one(defaults, "Deployment", name)
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        (cpu,) = hpa["spec"]["metrics"]
        assert cpu["resource"]["name"] == "cpu"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert role_of(defaults, hpas[STABLE]["spec"]["scaleTargetRef"]["name"]) == "stable"
    assert role_of(defaults, hpas[CANARY]["spec"]["scaleTargetRef"]["name"]) == "canary"


def test_api_hpa_can_also_scale_on_a_custom_metric(render: Any) -> None:
    objects = render(VALUE_SETS["metrics-on"])
    metrics = one(objects, "HorizontalPodAutoscaler", STABLE)["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]
    assert metrics[1]["pods"]["metric"]["name"] == "maskfleet_http_requests_in_flight"
    assert metrics[1]["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}


def test_autoscaling_off_uses_fixed_replicas(render: Any) -> None:
    objects = render(VALUE_SETS["autoscaling-off"])
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"]
                for d in by_kind(objects, "Deployment")}
    assert replicas == {STABLE: 3, CANARY: 2, "maskfleet-worker": 4}


# ---------------------------------------------------------------- retraining

def test_retrain_cronjob_runs_the_training_entry_point(defaults: list[Manifest]) -> None:
    cron = one(defaults, "CronJob", "maskfleet-retrain")
    assert cron["spec"]["suspend"] is True
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    c = container(cron, "training")
    assert c["command"] + c["args"] == [
        "python", "-m", "training", "--config", "/etc/maskfleet/training.yaml"]
    assert c["image"] == "maskfleet-training:0.1.0"
    pod = pod_template(cron)["spec"]
    assert pod["restartPolicy"] == "Never"

    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/maskfleet")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config = one(defaults, "ConfigMap", volume["configMap"]["name"])
    assert "training.yaml" in config["data"]

    run_id = env_of(c)["MASKFLEET_TRAIN_RUN_ID"]
    assert run_id == {
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}


def test_retrain_cronjob_is_named_after_the_release(render: Any) -> None:
    objects = render(release="prod")
    assert [c["metadata"]["name"] for c in by_kind(objects, "CronJob")] == ["prod-retrain"]


def test_training_config_and_overrides_come_from_values(render: Any) -> None:
    import yaml

    objects = render({"training": {"config": {"train": {"steps": 3}},
                                   "extraArgs": ["train.steps=5"]}})
    data = one(objects, "ConfigMap", "maskfleet-training")["data"]
    config = yaml.safe_load(data["training.yaml"])
    assert config["train"]["steps"] == 3
    c = container(one(objects, "CronJob", "maskfleet-retrain"), "training")
    assert c["args"] == ["--config", "/etc/maskfleet/training.yaml", "train.steps=5"]


# ---------------------------------------------------------------- env / command contract

def test_inference_variants_follow_their_stage(defaults: list[Manifest]) -> None:
    for name, role, stage in ((STABLE, "stable", "production"), (CANARY, "canary", "candidate")):
        c = container(one(defaults, "Deployment", name), "inference")
        env = env_of(c)
        assert env["MASKFLEET_ROLE"] == role
        assert env["MASKFLEET_MODEL_STAGE"] == stage
        assert "MASKFLEET_MODEL_VERSION" not in env
        assert env["MASKFLEET_PORT"] == "8080"
        assert c["command"] == ["python", "-m", "services.inference"]
        assert env["MASKFLEET_METRICS_PORT"] == "9090"
        assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                              {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                              {"name": "grpc", "containerPort": 8081, "protocol": "TCP"}]


def test_a_pinned_version_wins_over_the_stage(render: Any) -> None:
    objects = render(VALUE_SETS["pinned-version"])
    assert env_of(container(one(objects, "Deployment", STABLE), "inference"))[
        "MASKFLEET_MODEL_VERSION"] == "7"
    assert env_of(container(one(objects, "Deployment", CANARY), "inference"))[
        "MASKFLEET_MODEL_VERSION"] == "8"
    assert env_of(container(one(objects, "Deployment", "maskfleet-worker"), "worker"))[
        "MASKFLEET_MODEL_VERSION"] == "7"


def test_worker_runs_the_celery_contract(defaults: list[Manifest]) -> None:
    c = container(one(defaults, "Deployment", "maskfleet-worker"), "worker")
    assert c["command"] == ["celery", "-A", "services.worker.app", "worker", "--pool=solo",
                            "--concurrency=1", "-Q", "maskfleet"]
    assert env_of(c)["MASKFLEET_WORKER_METRICS_PORT"] == "9808"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9808, "protocol": "TCP"}]
    assert service_target(defaults, "maskfleet-worker-metrics", "metrics") == (
        "maskfleet-worker", 9808)


def shared_env(objects: list[Manifest], c: Manifest) -> dict[str, Any]:
    """A container's env as the process sees it: ConfigMap envFrom, then inline env."""
    env: dict[str, Any] = {}
    for source in c.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update(env_of(c))
    return env


def test_every_maskfleet_container_gets_the_shared_settings(rendered: list[Manifest]) -> None:
    for owner, pod in workloads(rendered):
        for c in pod["spec"]["containers"]:
            if c["name"] == "redis":
                continue
            env = shared_env(rendered, c)
            assert env["MASKFLEET_CACHE_DIR"] == "/tmp/maskfleet"
            assert env["MASKFLEET_MODEL_REPOSITORY"].startswith("gs://")
            assert env["MASKFLEET_MODEL_NAME"] == "unet"
            assert env["MASKFLEET_ENVIRONMENT"] == "production"
            if c["name"] != "training":
                assert "MASKFLEET_STATE_REDIS_URL" in env, owner["metadata"]["name"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            tmp = next(v for v in pod["spec"]["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in tmp


def test_config_change_rolls_the_pods(render: Any, defaults: list[Manifest]) -> None:
    changed = render({"model": {"repository": "gs://other-bucket/models"}})
    for name in (STABLE, CANARY, "maskfleet-worker"):
        before = pod_template(one(defaults, "Deployment", name))["metadata"]["annotations"]
        after = pod_template(one(changed, "Deployment", name))["metadata"]["annotations"]
        assert before["checksum/config"] != after["checksum/config"], name
    same = render({"abTest": {"canaryWeight": 50}})
    assert (pod_template(one(same, "Deployment", STABLE))["metadata"]["annotations"]
            == pod_template(one(defaults, "Deployment", STABLE))["metadata"]["annotations"])


# ---------------------------------------------------------------- Redis

def redis_conf(objects: list[Manifest], role: str) -> list[str]:
    conf: str = one(objects, "ConfigMap", f"maskfleet-redis-{role}")["data"]["redis.conf"]
    return conf.splitlines()


def test_the_cache_redis_is_volatile_and_evicts_anything(defaults: list[Manifest]) -> None:
    conf = redis_conf(defaults, "cache")
    assert {"maxmemory 256mb", "maxmemory-policy allkeys-lru", "appendonly no",
            'save ""'} <= set(conf)
    pod = pod_template(one(defaults, "StatefulSet", "maskfleet-redis-cache"))
    data = next(v for v in pod["spec"]["volumes"] if v["name"] == "data")
    assert "emptyDir" in data
    api = env_of(container(one(defaults, "Deployment", STABLE), "inference"))
    assert api["MASKFLEET_CACHE_REDIS_URL"] == "redis://maskfleet-redis-cache:6379/0"
    assert service_target_statefulset(defaults, "maskfleet-redis-cache") == 6379


def test_the_state_redis_is_durable_and_never_evicts(defaults: list[Manifest]) -> None:
    conf = redis_conf(defaults, "state")
    assert {"maxmemory-policy noeviction", "appendonly yes",
            "appendfsync everysec"} <= set(conf)
    state = one(defaults, "StatefulSet", "maskfleet-redis-state")
    [claim] = state["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    mounts = {m["name"]: m["mountPath"] for m in container(state, "redis")["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert "data" not in {v["name"] for v in pod_template(state)["spec"]["volumes"]}
    data = one(defaults, "ConfigMap", "maskfleet-config")["data"]
    assert data["MASKFLEET_STATE_REDIS_URL"] == "redis://maskfleet-redis-state:6379/0"
    assert service_target_statefulset(defaults, "maskfleet-redis-state") == 6379


def test_the_state_redis_may_run_without_a_claim(render: Any) -> None:
    objects = render({"redis": {"state": {"persistence": {"enabled": False}}}})
    state = one(objects, "StatefulSet", "maskfleet-redis-state")
    assert "volumeClaimTemplates" not in state["spec"]
    data = next(v for v in pod_template(state)["spec"]["volumes"] if v["name"] == "data")
    assert "emptyDir" in data


def test_redis_requires_a_password_from_a_secret(defaults: list[Manifest]) -> None:
    secret = one(defaults, "Secret", "maskfleet-redis-auth")
    password = base64.b64decode(secret["data"]["redis-password"])
    assert len(password) >= 32
    ref = {"secretKeyRef": {"name": "maskfleet-redis-auth", "key": "redis-password"}}
    for role in ("cache", "state"):
        assert "include /tmp/auth.conf" in redis_conf(defaults, role)
        c = container(one(defaults, "StatefulSet", f"maskfleet-redis-{role}"), "redis")
        assert "requirepass" in c["command"][-1]
        assert env_of(c)["REDIS_PASSWORD"] == ref
        assert password.decode() not in json.dumps(c)
    api = env_of(container(one(defaults, "Deployment", STABLE), "inference"))
    worker = env_of(container(one(defaults, "Deployment", "maskfleet-worker"), "worker"))
    assert api["MASKFLEET_STATE_REDIS_PASSWORD"] == api["MASKFLEET_CACHE_REDIS_PASSWORD"] == ref
    assert worker["MASKFLEET_STATE_REDIS_PASSWORD"] == ref
    for config in by_kind(defaults, "ConfigMap"):
        assert password.decode() not in json.dumps(config)


def test_an_existing_password_secret_replaces_the_generated_one(render: Any) -> None:
    objects = render(VALUE_SETS["locked-down"])
    assert not [s for s in by_kind(objects, "Secret") if "redis" in s["metadata"]["name"]]
    ref = {"secretKeyRef": {"name": "redis-auth", "key": "pw"}}
    c = container(one(objects, "StatefulSet", "maskfleet-redis-state"), "redis")
    assert env_of(c)["REDIS_PASSWORD"] == ref
    worker = env_of(container(one(objects, "Deployment", "maskfleet-worker"), "worker"))
    assert worker["MASKFLEET_STATE_REDIS_PASSWORD"] == ref


def test_an_app_upgrade_does_not_restart_redis(render: Any, defaults: list[Manifest]) -> None:
    upgraded = render({"image": {"tag": "9.9.9"}, "model": {"repository": "gs://new/models"},
                       "commonLabels": {}})
    for role in ("cache", "state"):
        name = f"maskfleet-redis-{role}"
        before = pod_template(one(defaults, "StatefulSet", name))
        assert pod_template(one(upgraded, "StatefulSet", name)) == before
        labels = set(before["metadata"]["labels"])
        assert not {"helm.sh/chart", "app.kubernetes.io/version"} & labels


def service_target_statefulset(objects: list[Manifest], service_name: str) -> int:
    service = one(objects, "Service", service_name)
    pod = pod_template(one(objects, "StatefulSet", service_name))
    assert selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    (cport,) = pod["spec"]["containers"][0]["ports"]
    assert port["targetPort"] == cport["name"]
    return int(cport["containerPort"])


def test_the_two_redis_services_select_only_their_own_server(defaults: list[Manifest]) -> None:
    cache = one(defaults, "Service", "maskfleet-redis-cache")
    state_pod = pod_template(one(defaults, "StatefulSet", "maskfleet-redis-state"))
    assert not selects({"matchLabels": cache["spec"]["selector"]},
                       state_pod["metadata"]["labels"])


def test_external_redis_replaces_the_statefulsets(render: Any) -> None:
    objects = render(VALUE_SETS["external-redis"])
    assert not by_kind(objects, "StatefulSet")
    assert not [o for o in objects if "redis" in o["metadata"]["name"]
                and o["kind"] in ("Service", "ConfigMap", "ServiceAccount", "Secret")]
    url = one(objects, "ConfigMap", "maskfleet-config")["data"]["MASKFLEET_STATE_REDIS_URL"]
    assert url == "redis://state.example.internal:6379/2"
    api = env_of(container(one(objects, "Deployment", STABLE), "inference"))
    assert api["MASKFLEET_CACHE_REDIS_URL"] == "rediss://cache.example.internal:6380/0"
    ref = {"secretKeyRef": {"name": "external-redis", "key": "password"}}
    assert api["MASKFLEET_STATE_REDIS_PASSWORD"] == api["MASKFLEET_CACHE_REDIS_PASSWORD"] == ref


def test_external_redis_url_can_come_from_a_secret(render: Any) -> None:
    objects = render(VALUE_SETS["external-redis-secret"])
    assert "MASKFLEET_STATE_REDIS_URL" not in one(objects, "ConfigMap", "maskfleet-config")["data"]
    for name, cname in ((STABLE, "inference"), ("maskfleet-worker", "worker")):
        env = env_of(container(one(objects, "Deployment", name), cname))
        ref = env["MASKFLEET_STATE_REDIS_URL"]
        assert env.get("MASKFLEET_CACHE_REDIS_URL", ref) == ref
        assert ref == {"secretKeyRef": {"name": "maskfleet-redis-url", "key": "redis-url"}}


# ---------------------------------------------------------------- GCS access

def test_workload_identity_annotates_the_service_accounts(render: Any) -> None:
    objects = render(VALUE_SETS["workload-identity"])
    for name in ("maskfleet-inference", "maskfleet-worker", "maskfleet-training"):
        notes = one(objects, "ServiceAccount", name)["metadata"]["annotations"]
        assert notes["iam.gke.io/gcp-service-account"] == (
            "maskfleet@my-project.iam.gserviceaccount.com")
    for _, pod in workloads(objects):
        sa = pod["spec"]["serviceAccountName"]
        one(objects, "ServiceAccount", sa)  # every pod runs under a ServiceAccount we create


def test_a_key_secret_is_mounted_for_google_credentials(render: Any) -> None:
    objects = render(VALUE_SETS["gcs-key-secret"])
    path = one(objects, "ConfigMap", "maskfleet-config")["data"]["GOOGLE_APPLICATION_CREDENTIALS"]
    for owner, pod in workloads(objects):
        if owner["metadata"]["name"].startswith("maskfleet-redis"):
            continue
        c = pod["spec"]["containers"][0]
        mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        assert mount["readOnly"] is True
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "maskfleet-gcs-key"
        assert volume["secret"]["items"] == [{"key": "key.json", "path": path.rsplit("/", 1)[1]}]


# ---------------------------------------------------------------- GPU

def test_gpu_scheduling_from_values(render: Any, defaults: list[Manifest]) -> None:
    objects = render(VALUE_SETS["gpu-on"])
    expected = {STABLE: 1, CANARY: 1, "maskfleet-worker": 2, "maskfleet-retrain": 1}
    for owner, pod in workloads(objects):
        name = owner["metadata"]["name"]
        if name not in expected:
            continue
        c = pod["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == expected[name]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
            pod["spec"]["tolerations"])
        assert "cloud.google.com/gke-accelerator" in pod["spec"]["nodeSelector"]
    training = pod_template(one(objects, "CronJob", "maskfleet-retrain"))["spec"]
    assert training["nodeSelector"]["pool"] == "a100"
    for _, pod in workloads(defaults):
        assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["limits"]
        assert "tolerations" not in pod["spec"]


# ---------------------------------------------------------------- disruption budgets

def test_pdbs_protect_the_serving_deployments(rendered: list[Manifest]) -> None:
    for pdb in by_kind(rendered, "PodDisruptionBudget"):
        assert pdb["apiVersion"] == "policy/v1"
        targets = [o["metadata"]["name"] for o, pod in workloads(rendered)
                   if selects(pdb["spec"]["selector"], pod["metadata"]["labels"])]
        assert targets == [pdb["metadata"]["name"]]
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


def test_default_pdbs(defaults: list[Manifest]) -> None:
    names = {p["metadata"]["name"] for p in by_kind(defaults, "PodDisruptionBudget")}
    assert names == {STABLE, CANARY, "maskfleet-worker"}


@pytest.mark.parametrize("values", [
    {"inference": {"stable": {"autoscaling": {"enabled": False}, "replicaCount": 1}}},
    {"inference": {"stable": {"autoscaling": {"minReplicas": 1}}}},
    {},
])
def test_no_pdb_blocks_a_node_drain_at_the_fewest_replicas(render: Any,
                                                         values: dict[str, Any]) -> None:
    """At its fewest pods (the fixed count, or the HPA's minimum) every budget still lets one pod
    be evicted: a budget that allows none stalls every drain and node upgrade on that node."""
    objects = render(values)
    fewest = {}
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        fewest[hpa["spec"]["scaleTargetRef"]["name"]] = hpa["spec"]["minReplicas"]
    for deployment in by_kind(objects, "Deployment"):
        if "replicas" in deployment["spec"]:
            fewest.setdefault(deployment["metadata"]["name"], deployment["spec"]["replicas"])
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        pods = fewest[pdb["metadata"]["name"]]
        if "maxUnavailable" in pdb["spec"]:
            allowed = int(pdb["spec"]["maxUnavailable"])
        else:
            allowed = pods - int(pdb["spec"]["minAvailable"])
        assert allowed >= 1, f"{pdb['metadata']['name']}: {pods} pods, no eviction allowed"


# ---------------------------------------------------------------- monitoring hooks

def test_service_monitors_scrape_api_and_worker(render: Any, defaults: list[Manifest]) -> None:
    assert not by_kind(defaults, "ServiceMonitor")
    objects = render(VALUE_SETS["metrics-on"])
    scraped = {}
    for monitor in by_kind(objects, "ServiceMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        for service in by_kind(objects, "Service"):
            named = {p["name"] for p in service["spec"]["ports"]}
            if selects(monitor["spec"]["selector"], service["metadata"]["labels"]) and \
                    endpoint["port"] in named:
                _, port = service_target(objects, service["metadata"]["name"], endpoint["port"])
                scraped[service["metadata"]["name"]] = port
    # the API's metrics port is on its own Services, never on those the Ingress routes to
    assert scraped == {f"{STABLE}-metrics": 9090, f"{CANARY}-metrics": 9090,
                       "maskfleet-worker-metrics": 9808}
    for name in (STABLE, CANARY):
        assert [p["name"] for p in one(objects, "Service", name)["spec"]["ports"]] == \
            ["http", "grpc"]


def test_dashboards_ship_every_json_file(render: Any, tmp_path: Path) -> None:
    """Each dashboards/*.json becomes a ConfigMap the Grafana sidecar picks up."""
    chart = tmp_path / "maskfleet"
    shutil.copytree(CHART, chart)
    (chart / "dashboards" / "zz_test_board.json").write_text('{"title": "test"}')
    files = sorted(p.name for p in (chart / "dashboards").glob("*.json"))
    objects = render(VALUE_SETS["metrics-on"], chart=chart)
    dashboards = {c["metadata"]["name"]: c for c in by_kind(objects, "ConfigMap")
                  if c["metadata"]["labels"].get("grafana_dashboard") == "1"}
    assert sorted(k for c in dashboards.values() for k in c["data"]) == files
    board = dashboards["maskfleet-dashboard-zz-test-board"]
    assert board["data"] == {"zz_test_board.json": '{"title": "test"}'}
    assert [c for c in by_kind(render(chart=chart), "ConfigMap")
            if "grafana_dashboard" in c["metadata"]["labels"]], "dashboards ship by default"
    off = render({"metrics": {"dashboards": {"enabled": False}}}, chart=chart)
    assert not [c for c in by_kind(off, "ConfigMap")
                if "grafana_dashboard" in c["metadata"]["labels"]]

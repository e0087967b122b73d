"""Pods that fit a real cluster: ephemeral storage declared for every pod, replicas spread
softly over zones and nodes, PDBs that let drains evict broken pods, the worker optionally
scaled by KEDA on its queue, and a retraining Job whose failures mean what they say."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.utils import parse_quantity

from tests.k8s.cases import (
    GKE_GATEWAY,
    KEDA,
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
from training.job import EXIT_CONFIG, EXIT_REJECTED
from training.settings import TrainingSettings

STABLE = "maskfleet-inference-stable"
CANARY = "maskfleet-inference-canary"
WORKER = "maskfleet-worker"


# ---------------------------------------------------------------- ephemeral storage

def test_every_pod_requests_and_caps_ephemeral_storage(rendered: list[Manifest]) -> None:
    """/tmp is an emptyDir counted against the pod's ephemeral storage: the request lets the
    scheduler place the pod, and the limit holds the emptyDir plus the logs."""
    pods = list(workloads(rendered))
    assert pods
    for owner, pod in pods:
        spec = pod["spec"]
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        limit_total = 0
        for c in spec["containers"] + spec.get("initContainers", []):
            resources = c.get("resources", {})
            request = resources.get("requests", {}).get("ephemeral-storage")
            limit = resources.get("limits", {}).get("ephemeral-storage")
            assert request, f"{where} {c['name']}: no ephemeral-storage request"
            assert limit, f"{where} {c['name']}: no ephemeral-storage limit"
            assert parse_quantity(request) <= parse_quantity(limit), where
            limit_total += parse_quantity(limit)
        disks = sum(parse_quantity(v["emptyDir"]["sizeLimit"]) for v in spec.get("volumes", [])
                    if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
                    and "sizeLimit" in v["emptyDir"])
        assert disks < limit_total, f"{where}: emptyDirs {disks} leave no room under {limit_total}"


# ---------------------------------------------------------------- spreading

@pytest.mark.parametrize("name", [STABLE, CANARY, WORKER])
def test_replicas_spread_softly_over_zones_and_nodes(defaults: list[Manifest], name: str) -> None:
    pod = pod_template(one(defaults, "Deployment", name))
    constraints = pod["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == [
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    for c in constraints:
        # Soft: a full zone or a single-node cluster still schedules the pod.
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"
        assert c["maxSkew"] == 1
        assert c["matchLabelKeys"] == ["pod-template-hash"]
        selected = [o["metadata"]["name"] for o, p in workloads(defaults)
                    if selects(c["labelSelector"], p["metadata"]["labels"])]
        assert selected == [name], "each Deployment spreads its own pods only"


def test_explicit_constraints_replace_the_soft_spread(render: Any) -> None:
    mine = [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
             "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "x"}}}]
    objects = render({"inference": {"topologySpreadConstraints": mine},
                      "worker": {"topologySpread": {"enabled": False}}})
    assert pod_template(one(objects, "Deployment", STABLE))["spec"][
        "topologySpreadConstraints"] == mine
    assert "topologySpreadConstraints" not in pod_template(one(objects, "Deployment", WORKER))[
        "spec"]


# ---------------------------------------------------------------- disruption budgets

def test_pdbs_let_drains_evict_unhealthy_pods(rendered: list[Manifest]) -> None:
    for pdb in by_kind(rendered, "PodDisruptionBudget"):
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_pdb_eviction_policy_is_a_value(render: Any) -> None:
    objects = render({"worker": {"pdb": {"unhealthyPodEvictionPolicy": "IfHealthyBudget"}}})
    assert one(objects, "PodDisruptionBudget", WORKER)["spec"][
        "unhealthyPodEvictionPolicy"] == "IfHealthyBudget"


# ---------------------------------------------------------------- KEDA

def keda_objects(render: Any, name: str) -> list[Manifest]:
    return render(VALUE_SETS[name], api_versions=GKE_GATEWAY + KEDA)


def test_keda_scales_the_worker_on_its_celery_queue(render: Any, crd_validator: Any) -> None:
    objects = keda_objects(render, "keda")
    scaled = one(objects, "ScaledObject", WORKER)
    auth = one(objects, "TriggerAuthentication", "maskfleet-worker-redis")
    for obj in (scaled, auth):
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert not list(crd_validator(obj).iter_errors(obj))
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", WORKER)
    assert one(objects, "Deployment", WORKER)
    # KEDA owns the worker's HPA now: a second one would fight it.
    assert [h["spec"]["scaleTargetRef"]["name"] for h in
            by_kind(objects, "HorizontalPodAutoscaler")] == [STABLE, CANARY]
    assert "replicas" not in one(objects, "Deployment", WORKER)["spec"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 8)

    redis, cpu = scaled["spec"]["triggers"]
    command = container(one(objects, "Deployment", WORKER), "worker")["command"]
    queue = command[command.index("-Q") + 1]
    assert redis["type"] == "redis"
    assert redis["metadata"]["listName"] == queue
    assert redis["metadata"]["listLength"] == "8"
    service = one(objects, "Service", "maskfleet-redis-state")  # the queue lives there
    port = service["spec"]["ports"][0]["port"]
    assert redis["metadata"]["address"] == f"maskfleet-redis-state.maskfleet.svc:{port}"
    assert redis["authenticationRef"] == {"name": "maskfleet-worker-redis",
                                          "kind": "TriggerAuthentication"}
    assert "password" not in redis["metadata"]
    (secret,) = auth["spec"]["secretTargetRef"]
    assert secret["parameter"] == "password"
    # the password the state Redis itself requires
    state = container(one(objects, "StatefulSet", "maskfleet-redis-state"), "redis")
    required = next(e for e in state["env"] if e["name"] == "REDIS_PASSWORD")
    assert {k: secret[k] for k in ("name", "key")} == required["valueFrom"]["secretKeyRef"]
    assert (cpu["type"], cpu["metricType"], cpu["metadata"]) == (
        "cpu", "Utilization", {"value": "75"})


def test_keda_reaches_an_external_redis(render: Any) -> None:
    objects = keda_objects(render, "keda-external-redis")
    (redis, _) = one(objects, "ScaledObject", WORKER)["spec"]["triggers"]
    assert redis["metadata"]["address"] == "10.0.0.7:6379"
    assert redis["metadata"]["enableTLS"] == "true"
    (secret,) = one(objects, "TriggerAuthentication", "maskfleet-worker-redis")["spec"][
        "secretTargetRef"]
    assert (secret["name"], secret["key"]) == ("memorystore-auth", "auth-string")


def test_keda_with_external_redis_needs_its_address(render: Any) -> None:
    from helm_python import HelmRenderError

    with pytest.raises(HelmRenderError, match=r"keda\.redis\.address"):
        render({"redis": {"enabled": False, "external": {"url": "redis://cache:6379/0"}},
                "worker": {"autoscaling": {"keda": {"enabled": True}}}})


def test_no_keda_objects_by_default(defaults: list[Manifest]) -> None:
    assert not by_kind(defaults, "ScaledObject")
    assert WORKER in [h["spec"]["scaleTargetRef"]["name"]
                      for h in by_kind(defaults, "HorizontalPodAutoscaler")]


# ---------------------------------------------------------------- retraining Job

def job_spec(objects: list[Manifest]) -> dict[str, Any]:
    return dict(one(objects, "CronJob", "maskfleet-retrain")["spec"]["jobTemplate"]["spec"])


def test_config_errors_and_gate_rejections_fail_the_job_at_once(defaults: list[Manifest]) -> None:
    spec = job_spec(defaults)
    fail, ignore = spec["podFailurePolicy"]["rules"]
    assert fail["action"] == "FailJob"
    codes = fail["onExitCodes"]
    assert (codes["containerName"], codes["operator"]) == ("training", "In")
    # The exit codes the training CLI really uses for "retrying cannot help".
    assert sorted(codes["values"]) == sorted([EXIT_CONFIG, EXIT_REJECTED])
    # Preemptions, drains and evictions are not the run's fault: not counted as failures.
    assert ignore == {"action": "Ignore",
                      "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    assert spec["activeDeadlineSeconds"] == 86400
    assert spec["backoffLimit"] == 4


def test_run_id_is_unique_per_job_and_cpu_limit_reaches_tensorflow(
        defaults: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    c = container(one(defaults, "CronJob", "maskfleet-retrain"), "training")
    env = env_of(c)
    assert env["MASKFLEET_TRAIN_RUN_ID"] == {
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}
    assert env["MASKFLEET_CPU_LIMIT"] == {"resourceFieldRef": {
        "containerName": "training", "resource": "limits.cpu", "divisor": "1"}}
    assert c["resources"]["limits"]["cpu"] == "4"
    # What the kubelet would substitute: a Job UID and the limit in whole cores.
    monkeypatch.setenv("MASKFLEET_TRAIN_RUN_ID", "3f0c9b8e-2a47-4a8e-9d4b-6c1e0f2a7b19")
    monkeypatch.setenv("MASKFLEET_CPU_LIMIT", "4")
    settings = TrainingSettings()
    assert settings.train_run_id == "3f0c9b8e-2a47-4a8e-9d4b-6c1e0f2a7b19"
    assert settings.cpu_limit == 4


def test_fail_job_exit_codes_are_values(render: Any) -> None:
    spec = job_spec(render({"training": {"failJobExitCodes": [2]}}))
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]


def test_keda_operator_may_read_the_queue_through_the_network_policies(render: Any) -> None:
    objects = keda_objects(render, "keda")
    redis = next(pod["metadata"]["labels"] for o, pod in workloads(objects)
                 if o["metadata"]["name"] == "maskfleet-redis-state")
    allowed = [p for p in by_kind(objects, "NetworkPolicy")
               if selects(p["spec"]["podSelector"], redis)
               for rule in p["spec"].get("ingress", []) for peer in rule.get("from", [])
               if selects(peer.get("namespaceSelector", {"matchLabels": {"x": "none"}}),
                          {"kubernetes.io/metadata.name": "keda"})
               and selects(peer.get("podSelector", {}),
                           {"app.kubernetes.io/name": "keda-operator"})
               and [pt["port"] for pt in rule["ports"]] == [6379]]
    assert allowed, "KEDA's operator cannot reach Redis"
    assert not [p for p in by_kind(render(), "NetworkPolicy")
                if p["metadata"]["name"] == "maskfleet-redis-keda"]

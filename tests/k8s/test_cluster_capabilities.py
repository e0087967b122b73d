"""Monitoring and Gateway objects are rendered where the cluster can take them: custom
resources set to `auto` appear only when the cluster serves their kind (Helm's
.Capabilities.APIVersions, as `helm install` sees it), so an install never fails for a missing
CRD, and monitoring is on by default wherever it can work."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.k8s.cases import (
    BARE_CLUSTER,
    GKE_GATEWAY,
    KEDA,
    MANAGED_PROMETHEUS,
    PROMETHEUS_OPERATOR,
    Manifest,
    by_kind,
    one,
    selects,
    workloads,
)
from tests.k8s.conftest import REPO

STABLE = "maskfleet-inference-stable"
CANARY = "maskfleet-inference-canary"
CUSTOM_KINDS = {"HTTPRoute", "HealthCheckPolicy", "ServiceMonitor", "PrometheusRule",
                "PodMonitoring", "ScaledObject", "TriggerAuthentication"}


def custom_kinds(objects: list[Manifest]) -> set[str]:
    return {o["kind"] for o in objects} & CUSTOM_KINDS


@pytest.mark.parametrize(("cluster", "expected"), [
    (BARE_CLUSTER, set()),
    (GKE_GATEWAY, {"HTTPRoute", "HealthCheckPolicy"}),
    (("gateway.networking.k8s.io/v1/HTTPRoute",), {"HTTPRoute"}),
    (PROMETHEUS_OPERATOR, {"ServiceMonitor", "PrometheusRule"}),
    (MANAGED_PROMETHEUS, {"PodMonitoring"}),
    (PROMETHEUS_OPERATOR + MANAGED_PROMETHEUS, {"ServiceMonitor", "PrometheusRule"}),
    (GKE_GATEWAY + MANAGED_PROMETHEUS + KEDA,
     {"HTTPRoute", "HealthCheckPolicy", "PodMonitoring"}),
])
def test_default_install_renders_only_what_the_cluster_serves(
        render: Any, cluster: tuple[str, ...], expected: set[str]) -> None:
    objects = render(api_versions=cluster)
    assert custom_kinds(objects) == expected
    # Dashboards are plain ConfigMaps: always there for a Grafana sidecar to pick up.
    assert [c for c in by_kind(objects, "ConfigMap")
            if c["metadata"]["labels"].get("grafana_dashboard") == "1"]


def test_a_bare_cluster_still_gets_the_whole_platform(render: Any) -> None:
    objects = render(api_versions=BARE_CLUSTER)
    assert {o["metadata"]["name"] for o in by_kind(objects, "Deployment")} == {
        STABLE, CANARY, "maskfleet-worker"}
    assert one(objects, "Ingress", "maskfleet")


def test_true_forces_and_false_refuses_whatever_the_cluster(render: Any) -> None:
    forced = render({"httpRoute": {"enabled": True, "healthCheckPolicy": {"enabled": True}},
                     "metrics": {"serviceMonitor": {"enabled": True},
                                 "prometheusRule": {"enabled": True},
                                 "podMonitoring": {"enabled": True}}},
                    api_versions=BARE_CLUSTER)
    assert custom_kinds(forced) == CUSTOM_KINDS - {"ScaledObject", "TriggerAuthentication"}
    refused = render({"httpRoute": {"enabled": False},
                      "metrics": {"serviceMonitor": {"enabled": False},
                                  "prometheusRule": {"enabled": False},
                                  "podMonitoring": {"enabled": False}}},
                     api_versions=GKE_GATEWAY + PROMETHEUS_OPERATOR + MANAGED_PROMETHEUS)
    assert custom_kinds(refused) == set()


def test_no_health_check_policy_without_a_route(render: Any) -> None:
    objects = render({"httpRoute": {"enabled": False}}, api_versions=GKE_GATEWAY)
    assert not by_kind(objects, "HealthCheckPolicy")


def test_rollout_patches_no_route_that_is_not_there(render: Any) -> None:
    """Without the Gateway API the rollout gets no HTTPRoute to patch and no RBAC for one."""
    objects = render({"rollout": {"enabled": True}}, api_versions=BARE_CLUSTER)
    cron = one(objects, "CronJob", "maskfleet-rollout")
    env = {e["name"] for e in
           cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MASKFLEET_ROLLOUT_HTTPROUTE" not in env
    assert not [r for r in by_kind(objects, "Role") if r["metadata"]["name"] ==
                "maskfleet-rollout"]


# ---------------------------------------------------------------- GKE HealthCheckPolicy

def test_gke_health_checks_each_inference_service_on_readyz(defaults: list[Manifest],
                                                            crd_validator: Any) -> None:
    policies = by_kind(defaults, "HealthCheckPolicy")
    services = {s["metadata"]["name"] for s in by_kind(defaults, "Service")}
    targets = set()
    for policy in policies:
        assert policy["apiVersion"] == "networking.gke.io/v1"
        assert not list(crd_validator(policy).iter_errors(policy))
        ref = policy["spec"]["targetRef"]
        assert (ref["group"], ref["kind"]) == ("", "Service")
        assert ref["name"] in services
        targets.add(ref["name"])
        check = policy["spec"]["default"]
        assert check["config"]["type"] == "HTTP"
        assert check["config"]["httpHealthCheck"]["requestPath"] == "/readyz"
        # The serving port is the container port the readiness probe uses.
        assert check["config"]["httpHealthCheck"]["portSpecification"] == "USE_SERVING_PORT"
        assert check["timeoutSec"] <= check["checkIntervalSec"]
    assert targets == {STABLE, CANARY}


def test_health_check_matches_the_readiness_probe(defaults: list[Manifest]) -> None:
    """The load balancer and the kubelet agree on what 'ready' means."""
    for name in (STABLE, CANARY):
        deployment = one(defaults, "Deployment", name)
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        policy = one(defaults, "HealthCheckPolicy", name)
        path = policy["spec"]["default"]["config"]["httpHealthCheck"]["requestPath"]
        assert c["readinessProbe"]["httpGet"]["path"] == path


def test_health_check_policy_follows_the_canary_switch(render: Any) -> None:
    objects = render({"inference": {"canary": {"enabled": False}}})
    assert [p["metadata"]["name"] for p in by_kind(objects, "HealthCheckPolicy")] == [STABLE]


def test_health_check_schema_refuses_a_slow_probe(render: Any) -> None:
    from helm_python import HelmValuesError

    with pytest.raises(HelmValuesError):
        render({"httpRoute": {"healthCheckPolicy": {"checkIntervalSec": 0}}})


# ---------------------------------------------------------------- scraping

def scraped_jobs(objects: list[Manifest]) -> dict[str, set[str]]:
    """{job label Prometheus gives the series: names of the pods' Deployments}."""
    jobs: dict[str, set[str]] = {}
    for monitor in by_kind(objects, "ServiceMonitor"):
        assert "jobLabel" not in monitor["spec"], "job must be the Service name"
        for service in by_kind(objects, "Service"):
            if not selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
                continue
            pods = {o["metadata"]["name"] for o, pod in workloads(objects)
                    if selects({"matchLabels": service["spec"]["selector"]},
                               pod["metadata"]["labels"])}
            job = service["metadata"]["name"]
            for endpoint in monitor["spec"]["endpoints"]:
                if not any(p.get("name") == endpoint["port"] for p in service["spec"]["ports"]):
                    continue  # no such port: Prometheus finds no target here
                for rule in endpoint.get("relabelings", []):
                    if rule["sourceLabels"] == ["__meta_kubernetes_service_name"] and \
                            rule["targetLabel"] == "job":
                        job = re.sub(f"^{rule['regex']}$", rule["replacement"].replace(
                            "$", "\\"), job)
                jobs[job] = pods
    for monitoring in by_kind(objects, "PodMonitoring"):
        pods = {o["metadata"]["name"] for o, pod in workloads(objects)
                if selects(monitoring["spec"]["selector"], pod["metadata"]["labels"])}
        jobs[monitoring["metadata"]["name"]] = pods
    return jobs


EXPECTED_JOBS = {STABLE: {STABLE}, CANARY: {CANARY},
                 "maskfleet-worker-metrics": {"maskfleet-worker"}}


def test_operator_and_managed_prometheus_give_the_same_jobs(render: Any,
                                                            crd_validator: Any) -> None:
    operator = render(api_versions=PROMETHEUS_OPERATOR)
    managed = render(api_versions=MANAGED_PROMETHEUS)
    assert scraped_jobs(operator) == scraped_jobs(managed) == EXPECTED_JOBS
    for monitoring in by_kind(managed, "PodMonitoring"):
        assert monitoring["apiVersion"] == "monitoring.googleapis.com/v1"
        assert not list(crd_validator(monitoring).iter_errors(monitoring))
        (endpoint,) = monitoring["spec"]["endpoints"]
        assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "30s")
        port_names = {p["name"] for o, pod in workloads(managed)
                      if selects(monitoring["spec"]["selector"], pod["metadata"]["labels"])
                      for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in port_names


def test_managed_prometheus_skips_the_canary_when_it_is_off(render: Any) -> None:
    objects = render({"inference": {"canary": {"enabled": False}}},
                     api_versions=MANAGED_PROMETHEUS)
    assert set(scraped_jobs(objects)) == {STABLE, "maskfleet-worker-metrics"}


def test_alert_rules_aggregate_by_the_labels_the_scrapes_give(render: Any) -> None:
    rule = one(render(api_versions=PROMETHEUS_OPERATOR), "PrometheusRule", "maskfleet")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any("namespace, job" in e for e in exprs)


# ---------------------------------------------------------------- custom metrics adapter

def test_documented_adapter_rule_serves_the_metric_the_hpa_reads(render: Any) -> None:
    """docs/metrics.md's prometheus-adapter rule names the gauge the API exports and exposes
    it under the name the HPA asks the custom metrics API for."""
    text = (REPO / "docs" / "metrics.md").read_text()
    block = text.split("<!-- prometheus-adapter rule:", 1)[1].split("```yaml", 1)[1]
    (rule,) = yaml.safe_load(block.split("```", 1)[0])
    series = rule["seriesQuery"].split("{", 1)[0].strip("'")
    assert series in (REPO / "docs" / "interfaces.md").read_text(), "not an exported metric"
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    objects = render({"inference": {"stable": {"autoscaling": {"customMetric": {
        "enabled": True}}}}})
    hpa = one(objects, "HorizontalPodAutoscaler", STABLE)
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == rule["name"]["as"] == series


def admits(objects: list[Manifest], target: dict[str, str], port_name: str,
           namespace: str, pod: dict[str, str]) -> bool:
    """Would some NetworkPolicy let a pod (labels `pod`) of another namespace (`namespace`,
    as its kubernetes.io/metadata.name label) reach `target` on the named port?"""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for policy in by_kind(objects, "NetworkPolicy"):
        if "Ingress" not in policy["spec"]["policyTypes"] or not selects(
                policy["spec"]["podSelector"], target):
            continue
        for rule in policy["spec"].get("ingress", []):
            if rule.get("ports") and port_name not in [p["port"] for p in rule["ports"]]:
                continue
            for peer in rule.get("from", [{"namespaceSelector": {}}]):
                if ("namespaceSelector" in peer
                        and selects(peer["namespaceSelector"], ns_labels)
                        and selects(peer.get("podSelector", {}), pod)):
                    return True
    return False


def test_managed_prometheus_collectors_may_scrape_through_the_network_policies(
        render: Any) -> None:
    """Default deny would silently starve the PodMonitorings: the collectors in gmp-system
    are let in on exactly the ports the PodMonitorings scrape."""
    collector = {"app.kubernetes.io/name": "collector"}
    managed = render(api_versions=MANAGED_PROMETHEUS)
    for monitoring in by_kind(managed, "PodMonitoring"):
        (endpoint,) = monitoring["spec"]["endpoints"]
        target = next(pod["metadata"]["labels"] for _, pod in workloads(managed)
                      if selects(monitoring["spec"]["selector"], pod["metadata"]["labels"]))
        assert admits(managed, target, endpoint["port"], "gmp-system", collector)
    # Only the collectors: the worker's metrics stay closed to everyone else.
    worker = next(pod["metadata"]["labels"] for o, pod in workloads(managed)
                  if o["metadata"]["name"] == "maskfleet-worker")
    assert not admits(managed, worker, "metrics", "default", collector)
    operator = render(api_versions=PROMETHEUS_OPERATOR)
    assert not admits(operator, worker, "metrics", "gmp-system", collector)

"""Hardening a cluster admin relies on, whatever the values: non-root pods with read-only
root filesystems and no capabilities, bounded resources, probes on the API's health routes,
no Kubernetes API access for the pods, and NetworkPolicies that allow only the platform's
own flows."""

from __future__ import annotations

from typing import Any

from tests.k8s.cases import VALUE_SETS, Manifest, by_kind, container, one, selects, workloads


def test_every_pod_is_non_root_read_only_and_drops_all(rendered: list[Manifest]) -> None:
    pods = list(workloads(rendered))
    assert pods
    for owner, pod in pods:
        spec = pod["spec"]
        pod_ctx = spec.get("securityContext", {})
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, where
        assert spec.get("hostNetwork") is not True, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            ctx = c["securityContext"]
            assert (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))) is True, where
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) > 0, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx.get("privileged", False) is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in ctx["capabilities"], where
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile"))
            assert seccomp == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, kind)
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


def test_maskfleet_pods_run_as_the_image_user(defaults: list[Manifest]) -> None:
    for owner, pod in workloads(defaults):
        if not owner["metadata"]["name"].startswith("maskfleet-redis"):
            assert pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_api_probes_use_the_health_routes(rendered: list[Manifest]) -> None:
    deployments = [d for d in by_kind(rendered, "Deployment")
                   if d["metadata"]["labels"]["app.kubernetes.io/component"] == "inference"]
    assert deployments
    for deployment in deployments:
        c = container(deployment, "inference")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        probes = {kind: c[kind]["httpGet"] for kind in
                  ("livenessProbe", "readinessProbe", "startupProbe")}
        assert probes["livenessProbe"]["path"] == "/healthz"
        assert probes["readinessProbe"]["path"] == "/readyz"
        # a pod with no version at its stage must stay alive (unready), not crash-loop
        assert probes["startupProbe"]["path"] == "/healthz"
        assert all(ports[p["port"]] == 8080 for p in probes.values())
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, (
            "importing TensorFlow on a busy node takes tens of seconds")


def test_worker_and_redis_are_probed(defaults: list[Manifest]) -> None:
    worker = container(one(defaults, "Deployment", "maskfleet-worker"), "worker")
    assert worker["startupProbe"]["tcpSocket"]["port"] == "metrics"
    # a TCP check stays green while the consumer is wedged: liveness reads its heartbeat
    command = worker["livenessProbe"]["exec"]["command"]
    assert command[:3] == ["python", "-m", "services.worker.liveness"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    beat_file = command[command.index("--file") + 1]
    assert env["MASKFLEET_WORKER_HEARTBEAT_FILE"] == beat_file
    assert beat_file.startswith("/tmp/"), "on the writable emptyDir"
    max_age = float(command[command.index("--max-age") + 1])
    assert max_age >= 3 * float(env["MASKFLEET_WORKER_HEARTBEAT_SECONDS"])
    for role in ("cache", "state"):
        redis = container(one(defaults, "StatefulSet", f"maskfleet-redis-{role}"), "redis")
        assert {"livenessProbe", "readinessProbe"} <= set(redis)
        # the probe authenticates (and fails while an AOF is still loading)
        assert "PONG" in " ".join(redis["readinessProbe"]["exec"]["command"])
        assert "REDISCLI_AUTH" in {e["name"] for e in redis["env"]}


# ---------------------------------------------------------------- RBAC

def test_rbac_is_least_privilege(rendered: list[Manifest]) -> None:
    assert not by_kind(rendered, "ClusterRole")
    assert not by_kind(rendered, "ClusterRoleBinding")
    for sa in by_kind(rendered, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    serving = {pod["spec"]["serviceAccountName"] for owner, pod in workloads(rendered)
               if owner["metadata"]["labels"]["app.kubernetes.io/component"]
               in ("inference", "worker", "training", "redis")}
    for binding in by_kind(rendered, "RoleBinding"):
        for subject in binding["subjects"]:
            assert subject["name"] not in serving, "serving pods never need the API"
    for role in by_kind(rendered, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"]


def test_retrain_trigger_role_only_reads_and_creates(defaults: list[Manifest]) -> None:
    role = one(defaults, "Role", "maskfleet-retrain-trigger")
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch", "create"}
    assert not by_kind(defaults, "RoleBinding"), "bound only to the subjects a user lists"


def test_retrain_trigger_role_allows_kubectl_create_job_from_cronjob(render: Any) -> None:
    objects = render(VALUE_SETS["locked-down"])
    role = one(objects, "Role", "maskfleet-retrain-trigger")
    grants = {(r["apiGroups"][0], res, verb) for r in role["rules"]
              for res in r["resources"] for verb in r["verbs"]}
    assert {("batch", "cronjobs", "get"), ("batch", "jobs", "create")} <= grants
    cron_rule = next(r for r in role["rules"] if r["resources"] == ["cronjobs"])
    assert cron_rule["resourceNames"] == ["maskfleet-retrain"]
    binding = one(objects, "RoleBinding", "maskfleet-retrain-trigger")
    assert binding["roleRef"]["name"] == "maskfleet-retrain-trigger"
    assert binding["subjects"][0]["name"] == "ml-engineers"


# ---------------------------------------------------------------- NetworkPolicies

def pod_labels(objects: list[Manifest], component: str) -> dict[str, str]:
    for owner, pod in workloads(objects):
        if owner["metadata"]["labels"]["app.kubernetes.io/component"] == component:
            return dict(pod["metadata"]["labels"])
    raise AssertionError(f"no {component} pod")


def container_ports(objects: list[Manifest], labels: dict[str, str]) -> dict[str, int]:
    for _, pod in workloads(objects):
        if pod["metadata"]["labels"] == labels:
            return {p["name"]: p["containerPort"]
                    for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    return {}


def policies_for(objects: list[Manifest], labels: dict[str, str], kind: str) -> list[Manifest]:
    return [p for p in by_kind(objects, "NetworkPolicy")
            if kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)]


def port_matches(rule_ports: list[Manifest] | None, port: int, named: dict[str, int]) -> bool:
    if not rule_ports:
        return True
    return any(named.get(p["port"], p["port"]) == port for p in rule_ports)


def ingress_allowed(objects: list[Manifest], target: dict[str, str], port: int,
                    source: dict[str, str] | None) -> bool:
    """Would a pod with `source` labels (None = outside the cluster) reach `target`:port?"""
    named = container_ports(objects, target)
    for policy in policies_for(objects, target, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            if not port_matches(rule.get("ports"), port, named):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            if source is not None and any(
                    "podSelector" in peer and selects(peer["podSelector"], source)
                    for peer in peers):
                return True
    return False


def egress_allowed(objects: list[Manifest], source: dict[str, str], port: int,
                   target: dict[str, str] | None = None, cidr: str | None = None) -> bool:
    for policy in policies_for(objects, source, "Egress"):
        for rule in policy["spec"].get("egress", []):
            if not port_matches(rule.get("ports"), port, {}):
                continue
            peers = rule.get("to")
            if not peers:
                return True
            for peer in peers:
                if target is not None and "podSelector" in peer and selects(
                        peer["podSelector"], target):
                    return True
                if cidr is not None and peer.get("ipBlock", {}).get("cidr") == cidr:
                    return True
    return False


def test_default_deny_covers_every_pod(rendered: list[Manifest], value_set: Any) -> None:
    if value_set[0] == "minimal":
        assert not by_kind(rendered, "NetworkPolicy")
        return
    deny = [p for p in by_kind(rendered, "NetworkPolicy")
            if p["spec"]["policyTypes"] == ["Ingress", "Egress"]
            and "ingress" not in p["spec"] and "egress" not in p["spec"]]
    assert len(deny) == 1
    for _, pod in workloads(rendered):
        assert selects(deny[0]["spec"]["podSelector"], pod["metadata"]["labels"])


def test_network_policies_allow_the_platform_flows(defaults: list[Manifest]) -> None:
    api, worker, redis, training = (pod_labels(defaults, c)
                                    for c in ("inference", "worker", "redis", "training"))
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    # clients (the Gateway / Ingress controller) reach the API
    assert ingress_allowed(defaults, api, 8080, None)
    # Prometheus scrapes the API and the worker
    assert ingress_allowed(defaults, api, 8080, prometheus)
    assert ingress_allowed(defaults, worker, 9808, prometheus)
    assert not ingress_allowed(defaults, worker, 9808, None)
    # API and worker use Redis, nobody else does
    for client in (api, worker):
        assert egress_allowed(defaults, client, 6379, target=redis)
        assert ingress_allowed(defaults, redis, 6379, client)
    assert not ingress_allowed(defaults, redis, 6379, training)
    assert not ingress_allowed(defaults, redis, 6379, None)
    assert not egress_allowed(defaults, training, 6379, target=redis)
    # DNS and HTTPS (GCS) out for the pods that use Google Cloud Storage
    for pod in (api, worker, training):
        assert egress_allowed(defaults, pod, 53)
        assert egress_allowed(defaults, pod, 443, cidr="0.0.0.0/0")
    # Redis talks to nobody
    assert not egress_allowed(defaults, redis, 443, cidr="0.0.0.0/0")
    assert not ingress_allowed(defaults, training, 8080, None)


def test_api_ingress_can_be_restricted_to_the_gateway(render: Any) -> None:
    objects = render(VALUE_SETS["locked-down"])
    api = pod_labels(objects, "inference")
    assert not ingress_allowed(objects, api, 8080, None)
    assert not ingress_allowed(objects, api, 8080, {"app.kubernetes.io/name": "prometheus"})
    assert ingress_allowed(objects, api, 9090, {"app.kubernetes.io/name": "prometheus"})
    assert egress_allowed(objects, api, 443, cidr="199.36.153.4/30")
    assert not egress_allowed(objects, api, 443, cidr="0.0.0.0/0")


def test_external_redis_egress_is_opened(render: Any) -> None:
    objects = render(VALUE_SETS["external-redis"])
    for component in ("inference", "worker"):
        assert egress_allowed(objects, pod_labels(objects, component), 6379, cidr="0.0.0.0/0")

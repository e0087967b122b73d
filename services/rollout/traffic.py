"""The canary's share of traffic, read and set through the Kubernetes API.

The rollout is the one writer of that share: the chart creates the weighted HTTPRoute
(`<release>-traffic`) with the canary at 0 and re-renders the live weights on every
`helm upgrade`, so what is set here stays until the rollout changes it again.

The HTTPRoute is changed with a JSON merge patch. A merge patch replaces lists whole, so the
patch carries every rule of the route as it was read, with only the weights changed, plus the
`resourceVersion` it was read at: if anyone changed the route in between, the API server
answers 409 instead of silently undoing their change.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from services.rollout.errors import TrafficError

GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES = "gateway.networking.k8s.io", "v1", "httproutes"
GRPCROUTES = "grpcroutes"
ROUTE_PLURALS = {"HTTPRoute": HTTPROUTES, "GRPCRoute": GRPCROUTES}
"""Gateway API routes the rollout weighs: the HTTPRoute, and the GRPCRoute of gRPC clients,
whose weighted rule has the same shape (backendRefs with weights)."""
NGINX_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "maskfleet-rollout"


@dataclass(frozen=True)
class Patch:
    """One request the rollout sends, shown as is by --dry-run."""

    kind: str
    namespace: str
    name: str
    path: str
    body: dict[str, Any]
    summary: str
    method: str = "PATCH"
    content_type: str = MERGE_PATCH
    query: dict[str, str] = field(default_factory=lambda: {"fieldManager": FIELD_MANAGER})


def httproute_path(namespace: str, name: str, plural: str = HTTPROUTES) -> str:
    return f"/apis/{GATEWAY_GROUP}/{GATEWAY_VERSION}/namespaces/{namespace}/{plural}/{name}"


def ingress_path(namespace: str, name: str) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses/{name}"


def weigh_httproute(route: dict[str, Any], stable: str, canary: str,
                    canary_weight: int) -> tuple[dict[str, Any], str]:
    """Merge patch giving the canary `canary_weight` percent of every weighted stable/canary
    split, and stable the rest.

    Only rules that route to both Services change: a rule that reaches the canary alone
    (a header or path that forces it) is left for testers.
    """
    if not 0 <= canary_weight <= 100:
        raise TrafficError(f"canary weight {canary_weight} is not a percentage")
    rules = copy.deepcopy(route.get("spec", {}).get("rules", []))
    changes: list[str] = []
    for index, rule in enumerate(rules):
        refs = rule.get("backendRefs", [])
        names = {ref.get("name") for ref in refs}
        if not {stable, canary} <= names:
            continue
        for ref in refs:
            before = ref.get("weight", 1)
            after = canary_weight if ref.get("name") == canary else 100 - canary_weight
            if before != after:
                changes.append(f"rules[{index}] {ref['name']} weight {before} -> {after}")
            ref["weight"] = after
    if not any({stable, canary} <= {ref.get("name") for ref in rule.get("backendRefs", [])}
               for rule in rules):
        raise TrafficError(f"{route.get('kind', 'HTTPRoute')} "
                           f"{route.get('metadata', {}).get('name')} has no rule "
                           f"splitting traffic between {stable} and {canary}")
    patch = {"metadata": {"resourceVersion": route.get("metadata", {}).get("resourceVersion")},
             "spec": {"rules": rules}}
    if patch["metadata"]["resourceVersion"] is None:
        del patch["metadata"]
    return patch, "; ".join(changes) or f"canary weight already {canary_weight}"


def drain_httproute(route: dict[str, Any], stable: str, canary: str) -> tuple[dict[str, Any], str]:
    """Merge patch sending every weighted stable/canary split entirely to stable."""
    return weigh_httproute(route, stable, canary, 0)


def canary_weight_of(route: dict[str, Any], canary: str) -> int | None:
    """The canary's weight in the route's first rule that names it among others, if any."""
    for rule in route.get("spec", {}).get("rules", []):
        refs = rule.get("backendRefs", [])
        if len(refs) > 1:
            for ref in refs:
                if ref.get("name") == canary:
                    return int(ref.get("weight", 1))
    return None


def weigh_ingress(annotations: dict[str, str] | None,
                  canary_weight: int) -> tuple[dict[str, Any], str]:
    """Merge patch of the one annotation: the other canary annotations stay as they are."""
    before = (annotations or {}).get(NGINX_WEIGHT)
    return ({"metadata": {"annotations": {NGINX_WEIGHT: str(canary_weight)}}},
            f"{NGINX_WEIGHT} {before} -> {canary_weight}")


def drain_ingress(annotations: dict[str, str] | None) -> tuple[dict[str, Any], str]:
    return weigh_ingress(annotations, 0)


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """In-cluster ServiceAccount config unless a kubeconfig path is given."""
    try:
        configuration = client.Configuration()
        if kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        return client.ApiClient(configuration)
    except config.ConfigException as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config"
        raise TrafficError(f"no Kubernetes configuration ({where}: {exc}); outside a cluster "
                           "set MASKFLEET_KUBECONFIG") from exc


class Traffic:
    """Reads the split and sets the canary's share; every API error becomes a TrafficError."""

    def __init__(self, api: client.ApiClient, namespace: str, *, httproute: str | None,
                 stable_service: str, canary_service: str,
                 nginx_canary_ingress: str | None, grpcroute: str | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.httproute = httproute
        self.grpcroute = grpcroute
        self.stable_service = stable_service
        self.canary_service = canary_service
        self.nginx_canary_ingress = nginx_canary_ingress
        self.custom = client.CustomObjectsApi(api)
        self.networking = client.NetworkingV1Api(api)

    def plan_drain(self) -> list[Patch]:
        """Read the objects (GET) and return the patches that set the canary weight to 0."""
        return self.plan_weight(0)

    def plan_weight(self, canary_weight: int) -> list[Patch]:
        """Read the objects (GET) and return the patches that give the canary
        `canary_weight` percent; an object already there needs no patch."""
        patches: list[Patch] = []
        ns = self.namespace
        for kind, name in (("HTTPRoute", self.httproute), ("GRPCRoute", self.grpcroute)):
            if not name:
                continue
            plural = ROUTE_PLURALS[kind]
            route = self._call(f"get {kind}", name, lambda p=plural, n=name: self.custom
                               .get_namespaced_custom_object(GATEWAY_GROUP, GATEWAY_VERSION, ns,
                                                             p, n))
            body, summary = weigh_httproute(route, self.stable_service, self.canary_service,
                                            canary_weight)
            if body.get("spec", {}).get("rules") != route.get("spec", {}).get("rules"):
                patches.append(Patch(kind, ns, name, httproute_path(ns, name, plural), body,
                                     summary))
        if self.nginx_canary_ingress:
            name = self.nginx_canary_ingress
            ingress = self._call("get Ingress", name,
                                 lambda: self.networking.read_namespaced_ingress(name, ns))
            annotations = ingress.metadata.annotations if ingress.metadata else None
            if (annotations or {}).get(NGINX_WEIGHT) != str(canary_weight):
                body, summary = weigh_ingress(annotations, canary_weight)
                patches.append(Patch("Ingress", ns, name, ingress_path(ns, name), body,
                                     summary))
        return patches

    def apply(self, patch: Patch) -> None:
        if patch.kind in ROUTE_PLURALS:
            self._call(f"patch {patch.kind}", patch.name, lambda: self.custom
                       .patch_namespaced_custom_object(
                           GATEWAY_GROUP, GATEWAY_VERSION, patch.namespace,
                           ROUTE_PLURALS[patch.kind], patch.name, patch.body,
                           field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH))
        elif patch.kind == "Ingress":
            self._call("patch Ingress", patch.name, lambda: self.networking
                       .patch_namespaced_ingress(patch.name, patch.namespace, patch.body,
                                                 field_manager=FIELD_MANAGER,
                                                 _content_type=MERGE_PATCH))
        else:
            raise TrafficError(f"cannot apply a patch to a {patch.kind}")

    def _call(self, what: str, name: str, call: Any) -> Any:
        try:
            return call()
        except ApiException as exc:
            raise TrafficError(f"{what} {self.namespace}/{name}: HTTP {exc.status} "
                               f"{exc.reason}: {_message(exc)}") from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise TrafficError(f"{what} {self.namespace}/{name}: {exc}") from exc


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", ""))
    except ValueError:
        return str(exc.body or "")

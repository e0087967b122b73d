"""The rollout against a real Prometheus loaded with prepared series, end to end.

Every series carries the `namespace` and `job` labels a ServiceMonitor (or PodMonitoring)
gives it, and the clear-win scenario also holds a second release's failing canary (another
namespace, and another job in the same namespace) that a query without those matchers would
mix in. Three 1-hour scenarios are written as OpenMetrics text with timestamps, backfilled with
`promtool tsdb create-blocks-from openmetrics` and served by /usr/bin/prometheus; each is
evaluated at its own end time (the `--at` of the command):
  clear win   canary as reliable and fast as stable, clearly better feedback IoU -> promote
  clear loss  canary 8% 5xx, 4x slower, worse IoU                                -> rollback
  too little  40 canary requests, 4 feedback masks                                -> wait

No real Kubernetes API server can run on this machine (no kube-apiserver, kind or k3s), so
the command talks to a small threaded HTTP server standing in for it: it serves the
HTTPRoute and the nginx canary Ingress rendered from charts/maskfleet, checks every request's
method, path, auth, content type and field manager, applies merge patches as the API server
does, and refuses (422) a patched object that does not validate against the official schemas
(the Gateway API CRD schema, kubernetes-validate for the Ingress).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.rollout.decision import Thresholds, decide
from services.rollout.errors import PrometheusError, TrafficError
from services.rollout.prometheus import PrometheusClient
from services.rollout.readout import Readout, read_readout
from services.rollout.traffic import NGINX_WEIGHT, Traffic, api_client
from shared.repository import ModelRepository, VersionMetadata
from tests.schemas import crd_schema
from tests.servers import REPO, Server, free_port, http_ok, running

pytestmark = pytest.mark.integration

T0 = 1767225600  # 2026-01-01T00:00:00Z; scenario i covers [T0 + 3h*i, T0 + 3h*i + 1h]
STEP = 15
ROUTES = r"/v1/segment|/v2/models/.+/infer"
LATENCY_LE = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IOU_LE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FAST = {0.05: 0.30, 0.1: 0.50, 0.25: 0.17, 0.5: 0.03}  # p95 = 0.1 + 0.15/0.17 * 0.15 s
SLOW = {0.1: 0.20, 0.25: 0.30, 0.5: 0.30, 1.0: 0.20}  # p95 = 0.5 + 0.15/0.20 * 0.5 s
NAMESPACE, TOKEN = "ml", "rollout-test-token"
HTTPROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/ml/httproutes/maskfleet-traffic"
INGRESS_PATH = "/apis/networking.k8s.io/v1/namespaces/ml/ingresses/maskfleet-canary"
STABLE, CANARY = "maskfleet-inference-stable", "maskfleet-inference-canary"


@dataclass(frozen=True)
class Side:
    """What one version saw in 30 minutes (the window the command looks at)."""

    version: int
    role: str
    ok: int
    server_errors: int
    client_errors: int
    latency: dict[float, float]
    iou: dict[float, int]
    """Feedback masks per IoU bucket upper bound; each sits at the bucket's midpoint."""


@dataclass(frozen=True)
class Scenario:
    name: str
    index: int
    stable: Side
    canary: Side

    @property
    def start(self) -> int:
        return T0 + 3 * 3600 * self.index

    @property
    def end(self) -> int:
        return self.start + 3600


STABLE_SIDE = Side(1, "stable", ok=3940, server_errors=20, client_errors=40, latency=FAST,
                   iou={0.6: 20, 0.7: 40, 0.8: 50, 0.9: 10})
SCENARIOS = {
    "win": Scenario("win", 0, STABLE_SIDE, Side(
        2, "canary", ok=796, server_errors=4, client_errors=200, latency=FAST,
        iou={0.8: 10, 0.9: 35, 1.0: 15})),
    "loss": Scenario("loss", 1, STABLE_SIDE, Side(
        2, "canary", ok=900, server_errors=80, client_errors=20, latency=SLOW,
        iou={0.5: 20, 0.6: 30, 0.7: 10})),
    "little": Scenario("little", 2, STABLE_SIDE, Side(
        2, "canary", ok=40, server_errors=0, client_errors=0, latency=FAST,
        iou={0.8: 2, 0.9: 2})),
}


def labels(**items: object) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in items.items()) + "}"


class OpenMetrics:
    """Metric families of timestamped samples, written family by family, each series in order."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.series: dict[str, dict[str, list[tuple[int, float]]]] = {}

    def ramp(self, family: str, kind: str, sample: str, per_window: float, s: Scenario) -> None:
        """A counter growing from 0 by `per_window` every 30 minutes of the scenario."""
        self.kinds[family] = kind
        self.series.setdefault(family, {}).setdefault(sample, []).extend(
            (t, per_window * (t - s.start) / 1800) for t in range(s.start, s.end + 1, STEP))

    def histogram(self, family: str, lbls: dict[str, object], per_bucket: dict[float, float],
                  bounds: tuple[float, ...], total_sum: float, s: Scenario) -> None:
        """`per_bucket`: observations per 30 minutes in each bucket (by upper bound)."""
        cumulative = 0.0
        for le in bounds:
            cumulative += per_bucket.get(le, 0.0)
            self.ramp(family, "histogram", f"{family}_bucket" + labels(**lbls, le=le),
                      cumulative, s)
        total = sum(per_bucket.values())
        self.ramp(family, "histogram", f"{family}_bucket" + labels(**lbls, le="+Inf"), total, s)
        self.ramp(family, "histogram", f"{family}_count" + labels(**lbls), total, s)
        self.ramp(family, "histogram", f"{family}_sum" + labels(**lbls), total_sum, s)

    def text(self) -> str:
        lines = []
        for family, series in self.series.items():
            lines.append(f"# TYPE {family} {self.kinds[family]}")
            for sample, points in series.items():
                lines += [f"{sample} {value:.6f} {t}" for t, value in sorted(points)]
        return "\n".join(lines) + "\n# EOF\n"


# Another release's canary of the same model version, failing badly: it must not count.
FOREIGN = Side(2, "canary", ok=100, server_errors=900, client_errors=0, latency=SLOW,
               iou={0.1: 50})
FOREIGN_VERSION_SERVED = 7


def openmetrics(scenarios: list[Scenario]) -> str:
    """What the API's /metrics would have shown for each side, sampled every 15 s."""
    om = OpenMetrics()
    for s in scenarios:
        for side in (s.stable, s.canary):
            job = STABLE if side.role == "stable" else CANARY
            emit(om, s, side, {"namespace": NAMESPACE, "job": job})
        if s.name == "win":
            for scope in ({"namespace": "other", "job": CANARY},
                          {"namespace": NAMESPACE, "job": "other-inference-canary"}):
                emit(om, s, FOREIGN, scope, served=FOREIGN_VERSION_SERVED)
    return om.text()


def emit(om: OpenMetrics, s: Scenario, side: Side, scope: dict[str, str],
         served: int | None = None) -> None:
    """One API Deployment's series, with the target labels of its scrape (`scope`)."""
    v = side.version
    by_status = {"200": side.ok, "500": side.server_errors, "422": side.client_errors}
    for status, count in by_status.items():
        http = {**scope, "route": "/v1/segment", "method": "POST", "status": status,
                "version": v}
        om.ramp("maskfleet_http_requests", "counter",
                "maskfleet_http_requests_total" + labels(**http), count, s)
        shares = side.latency if status == "200" else {0.005: 1.0}  # errors fail fast
        om.histogram("maskfleet_http_request_duration_seconds", http,
                     {le: count * share for le, share in shares.items()}, LATENCY_LE,
                     count * sum(le * share for le, share in shares.items()), s)
    probes = {**scope, "route": "/healthz", "method": "GET", "status": "200",
              "version": v}
    om.ramp("maskfleet_http_requests", "counter",
            "maskfleet_http_requests_total" + labels(**probes), 3600, s)
    om.histogram("maskfleet_feedback_iou", {**scope, "version": v},
                 {le: float(n) for le, n in side.iou.items()}, IOU_LE,
                 sum(n * (le - 0.05) for le, n in side.iou.items()), s)
    stage = "production" if side.role == "stable" else "candidate"
    info = {**scope, "model": "unet", "version": served or v, "stage": stage,
            "role": side.role}
    om.kinds["maskfleet_model_info"] = "gauge"
    om.series.setdefault("maskfleet_model_info", {}).setdefault(
        "maskfleet_model_info" + labels(**info), []).extend(
        (t, 1.0) for t in range(s.start, s.end + 1, STEP))


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus on a free port over TSDB blocks backfilled from the three scenarios."""
    root = tmp_path_factory.mktemp("prometheus")
    (root / "series.om").write_text(openmetrics(list(SCENARIOS.values())))
    data = root / "data"
    subprocess.run(["/usr/bin/promtool", "tsdb", "create-blocks-from", "openmetrics",
                    str(root / "series.om"), str(data)], check=True, capture_output=True)
    (root / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(["/usr/bin/prometheus", f"--config.file={root / 'prometheus.yml'}",
                     f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=100y",
                     f"--web.listen-address=127.0.0.1:{port}"], port, log=root / "log")
    with running(server.start(ready=lambda: http_ok(f"{url}/-/ready"), timeout=60)):
        yield url


def at(scenario: Scenario) -> datetime:
    return datetime.fromtimestamp(scenario.end, UTC)


def readout_of(prometheus: str, scenario: Scenario) -> Readout:
    with PrometheusClient(prometheus) as client:
        return read_readout(client, model="unet", stable_version=1, canary_version=2,
                            window="30m", routes=ROUTES, namespace=NAMESPACE,
                            jobs=f"{STABLE}|{CANARY}", at=at(scenario))


def test_readout_counts_prediction_requests_and_server_errors_only(prometheus: str) -> None:
    r = readout_of(prometheus, SCENARIOS["win"])
    assert r.stable.requests == pytest.approx(4000)
    assert r.canary.requests == pytest.approx(1000)  # /healthz probes are not counted
    assert r.canary.errors == pytest.approx(4)  # 200 client errors (422) are not counted
    assert r.stable.p95_seconds == pytest.approx(0.1 + 0.15 / 0.17 * 0.15)
    assert r.canary.feedback_count == pytest.approx(60)
    assert r.canary.feedback_sum / r.canary.feedback_count == pytest.approx(51.5 / 60)
    assert r.canary_serving == (2,)  # not the other release's version 7


def test_unscoped_queries_would_mix_in_the_other_release(prometheus: str) -> None:
    """Guards the scoping: the prepared data really holds another release's failures."""
    with PrometheusClient(prometheus) as client:
        everywhere = client.query(
            'sum(increase(maskfleet_http_requests_total{route="/v1/segment",version="2",'
            'status="500"}[30m]))', at(SCENARIOS["win"]))
    assert everywhere[0].value == pytest.approx(4 + 2 * 900)


def test_clear_win_is_promoted(prometheus: str) -> None:
    decision = decide(readout_of(prometheus, SCENARIOS["win"]), Thresholds())
    assert decision.action == "promote", decision.reasons
    assert all(c.verdict == "pass" for c in decision.checks)


def test_clear_loss_is_rolled_back_on_every_count(prometheus: str) -> None:
    decision = decide(readout_of(prometheus, SCENARIOS["loss"]), Thresholds())
    assert decision.action == "rollback"
    verdicts = {c.name: c.verdict for c in decision.checks}
    assert verdicts == {"serving": "pass", "errors": "fail", "latency": "fail",
                        "feedback_iou": "fail"}
    latency = next(c for c in decision.checks if c.name == "latency")
    slow_p95, fast_p95 = 0.5 + 0.15 / 0.20 * 0.5, 0.1 + 0.15 / 0.17 * 0.15
    assert latency.numbers["ratio"] == pytest.approx(slow_p95 / fast_p95)


def test_too_little_data_waits(prometheus: str) -> None:
    decision = decide(readout_of(prometheus, SCENARIOS["little"]), Thresholds())
    assert decision.action == "wait"
    verdicts = {c.name: c.verdict for c in decision.checks}
    assert verdicts["errors"] == verdicts["latency"] == verdicts["feedback_iou"] == "insufficient"
    assert any("requests stable 4000, canary 40; need 500 each" in r for r in decision.reasons)


# --- the command, against Prometheus, a model repository and a stand-in Kubernetes API ---


def strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


HTTPROUTE_SCHEMA = strict(crd_schema("gateway.networking.k8s.io/v1", "HTTPRoute"))


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def schema_errors(obj: dict[str, Any]) -> list[str]:
    if obj["kind"] == "HTTPRoute":
        return [e.message for e in jsonschema.Draft7Validator(HTTPROUTE_SCHEMA).iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


@dataclass
class FakeKubernetes:
    """The two objects the rollout may touch, and every request it made."""

    objects: dict[str, dict[str, Any]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, target: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        record: dict[str, Any] = {"method": method, "path": url.path, "query": query,
                  "content_type": headers.get("content-type"),
                  "body": json.loads(body) if body else None}
        with self.lock:
            self.requests.append(record)
            if headers.get("authorization") != f"Bearer {TOKEN}":
                return 401, status(401, "Unauthorized", "no or wrong bearer token")
            current = self.objects.get(url.path)
            if current is None:
                return 404, status(404, "NotFound", f"{url.path} not found")
            if method == "GET":
                return 200, current
            if method != "PATCH":
                return 405, status(405, "MethodNotAllowed", method)
            if record["content_type"] != "application/merge-patch+json":
                return 415, status(415, "UnsupportedMediaType", str(record["content_type"]))
            if query.get("fieldManager") != "maskfleet-rollout":
                self.problems.append(f"PATCH {url.path} without fieldManager")
            patch: dict[str, Any] = record["body"] or {}
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                return 409, status(409, "Conflict", "the object has been modified")
            patched = merge_patch(current, patch)
            errors = schema_errors(patched)
            if errors:
                self.problems += errors
                return 422, status(422, "Invalid", "; ".join(errors))
            version = str(int(current["metadata"]["resourceVersion"]) + 1)
            patched["metadata"]["resourceVersion"] = version
            self.objects[url.path] = patched
            return 200, patched


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}


def handler_for(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, doc = fake.handle(self.command, self.path,
                                    {k.lower(): v for k, v in self.headers.items()},
                                    self.rfile.read(length))
            payload = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    for verb in ("GET", "PATCH", "PUT", "POST", "DELETE"):
        setattr(Handler, f"do_{verb}", Handler._serve)
    return Handler


def chart_objects() -> dict[str, dict[str, Any]]:
    """The weighted HTTPRoute and canary Ingress as `helm install` would create them."""
    manifests = helm.Chart.load(REPO / "charts" / "maskfleet").render(
        {"ingress": {"nginxCanary": {"enabled": True}}, "httpRoute": {"enabled": True}},
        name="maskfleet", namespace=NAMESPACE)
    route = yaml.safe_load(manifests["maskfleet/templates/httproute-traffic.yaml"])
    ingress = yaml.safe_load(manifests["maskfleet/templates/ingress-nginx-canary.yaml"])
    for obj in (route, ingress):
        obj["metadata"].update(resourceVersion="1000", uid="0b1c" + obj["kind"].lower())
        assert schema_errors(obj) == []
    return {HTTPROUTE_PATH: route, INGRESS_PATH: ingress}


def under_test(objects: dict[str, dict[str, Any]], weight: int) -> dict[str, dict[str, Any]]:
    """The objects after an earlier run gave the canary `weight` percent."""
    route, ingress = copy.deepcopy(objects[HTTPROUTE_PATH]), copy.deepcopy(objects[INGRESS_PATH])
    for ref in route["spec"]["rules"][-1]["backendRefs"]:
        ref["weight"] = weight if ref["name"] == CANARY else 100 - weight
    ingress["metadata"]["annotations"][NGINX_WEIGHT] = str(weight)
    return {HTTPROUTE_PATH: route, INGRESS_PATH: ingress}


@pytest.fixture
def kubernetes(tmp_path: Path) -> Iterator[tuple[FakeKubernetes, Path]]:
    """The stand-in API server on a free port, and a kubeconfig that points at it; the
    canary is under test (10%, set by an earlier run of the rollout)."""
    fake = FakeKubernetes(under_test(chart_objects(), 10))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler_for(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {
            "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "rollout", "user": {"token": TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "rollout"}}],
    }))
    try:
        yield fake, kubeconfig
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    """Versions 1 (production) and 2 (candidate); the rollout never loads them."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_bytes(b"not loaded by the rollout")
    repo = ModelRepository(str(tmp_path / "models"))
    for _ in (1, 2):
        repo.publish("unet", export, VersionMetadata(model="unet", version=0))
    repo.set_stage("unet", "production", 1)
    repo.set_stage("unet", "candidate", 2)
    return repo


def run_rollout(prometheus: str, repo: ModelRepository, kubeconfig: Path, scenario: Scenario,
                *args: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "MASKFLEET_MODEL_REPOSITORY": repo.root,
           "MASKFLEET_PROMETHEUS_URL": prometheus, "MASKFLEET_KUBECONFIG": str(kubeconfig),
           "MASKFLEET_ROLLOUT_NAMESPACE": NAMESPACE,
           "MASKFLEET_ROLLOUT_HTTPROUTE": "maskfleet-traffic",
           "MASKFLEET_ROLLOUT_NGINX_CANARY_INGRESS": "maskfleet-canary"}
    done = subprocess.run(
        [sys.executable, "-m", "services.rollout", "--json", "--at", str(scenario.end), *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 1, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return done.returncode, report


def split(fake: FakeKubernetes) -> dict[str, int]:
    refs = fake.objects[HTTPROUTE_PATH]["spec"]["rules"][-1]["backendRefs"]
    return {ref["name"]: ref["weight"] for ref in refs}


def test_promote_moves_production_and_drains_the_canary(
        prometheus: str, repository: ModelRepository,
        kubernetes: tuple[FakeKubernetes, Path]) -> None:
    fake, kubeconfig = kubernetes
    code, report = run_rollout(prometheus, repository, kubeconfig, SCENARIOS["win"])

    assert (code, report["decision"]) == (3, "promote")
    assert repository.stage("unet", "production") == 2
    assert repository.stage("unet", "candidate") == 2
    assert [(r["method"], r["path"]) for r in fake.requests] == [
        ("GET", HTTPROUTE_PATH), ("GET", INGRESS_PATH),
        ("PATCH", HTTPROUTE_PATH), ("PATCH", INGRESS_PATH)]
    assert fake.problems == []
    assert split(fake) == {STABLE: 100, CANARY: 0}
    annotations = fake.objects[INGRESS_PATH]["metadata"]["annotations"]
    assert annotations[NGINX_WEIGHT] == "0"
    patch = fake.requests[2]["body"]
    assert patch["metadata"] == {"resourceVersion": "1000"}
    assert patch == next(a["body"] for a in report["actions"] if a.get("kind") == "HTTPRoute")


def test_rollback_clears_the_candidate_and_drains_the_canary(
        prometheus: str, repository: ModelRepository,
        kubernetes: tuple[FakeKubernetes, Path]) -> None:
    fake, kubeconfig = kubernetes
    code, report = run_rollout(prometheus, repository, kubeconfig, SCENARIOS["loss"])

    assert (code, report["decision"]) == (4, "rollback")
    assert repository.stage("unet", "candidate") is None
    assert repository.stage("unet", "production") == 1
    assert [r["method"] for r in fake.requests] == ["GET", "GET", "PATCH", "PATCH"]
    assert fake.problems == []
    assert split(fake) == {STABLE: 100, CANARY: 0}
    assert {c["name"] for c in report["checks"] if c["verdict"] == "fail"} == {
        "errors", "latency", "feedback_iou"}


def test_too_little_data_waits_and_touches_nothing(
        prometheus: str, repository: ModelRepository,
        kubernetes: tuple[FakeKubernetes, Path]) -> None:
    fake, kubeconfig = kubernetes
    before = copy.deepcopy(fake.objects)
    code, report = run_rollout(prometheus, repository, kubeconfig, SCENARIOS["little"])

    assert (code, report["decision"]) == (0, "wait")
    assert report["actions"] == []
    assert [r["method"] for r in fake.requests] == ["GET", "GET"]
    assert fake.objects == before
    assert (repository.stage("unet", "production"), repository.stage("unet", "candidate")) == (1, 2)


def test_a_candidate_the_canary_serves_gets_its_share_of_traffic(
        prometheus: str, repository: ModelRepository,
        kubernetes: tuple[FakeKubernetes, Path]) -> None:
    """Fresh install: the chart sends the canary 0%; once the canary serves the candidate
    (maskfleet_model_info), the rollout raises it to MASKFLEET_ROLLOUT_CANARY_WEIGHT."""
    fake, kubeconfig = kubernetes
    fake.objects = chart_objects()
    assert split(fake) == {STABLE: 100, CANARY: 0}
    code, report = run_rollout(prometheus, repository, kubeconfig, SCENARIOS["little"])

    assert (code, report["decision"]) == (0, "wait")
    assert [r["method"] for r in fake.requests] == ["GET", "GET", "PATCH", "PATCH"]
    assert fake.problems == []
    assert split(fake) == {STABLE: 90, CANARY: 10}
    assert fake.objects[INGRESS_PATH]["metadata"]["annotations"][NGINX_WEIGHT] == "10"
    assert (repository.stage("unet", "production"), repository.stage("unet", "candidate")) == (1, 2)


def test_no_candidate_means_no_canary_traffic(
        prometheus: str, repository: ModelRepository,
        kubernetes: tuple[FakeKubernetes, Path]) -> None:
    """A share left on the canary without a candidate (set by hand) goes back to 0."""
    fake, kubeconfig = kubernetes
    repository.clear_stage("unet", "candidate")
    code, report = run_rollout(prometheus, repository, kubeconfig, SCENARIOS["little"])

    assert (code, report["decision"]) == (0, "wait")
    assert split(fake) == {STABLE: 100, CANARY: 0}
    assert fake.objects[INGRESS_PATH]["metadata"]["annotations"][NGINX_WEIGHT] == "0"


def test_dry_run_prints_the_exact_patches_and_changes_nothing(
        prometheus: str, repository: ModelRepository,
        kubernetes: tuple[FakeKubernetes, Path]) -> None:
    fake, kubeconfig = kubernetes
    before = copy.deepcopy(fake.objects)
    code, report = run_rollout(prometheus, repository, kubeconfig, SCENARIOS["loss"],
                               "--dry-run")

    assert (code, report["decision"], report["applied"]) == (4, "rollback", False)
    assert [r["method"] for r in fake.requests] == ["GET", "GET"]
    assert fake.objects == before
    assert repository.stage("unet", "candidate") == 2
    route_patch, ingress_patch, stage = report["actions"]
    assert (route_patch["method"], route_patch["path"]) == ("PATCH", HTTPROUTE_PATH)
    assert route_patch["content_type"] == "application/merge-patch+json"
    assert schema_errors(merge_patch(before[HTTPROUTE_PATH], route_patch["body"])) == []
    assert ingress_patch["body"] == {"metadata": {"annotations": {NGINX_WEIGHT: "0"}}}
    assert stage == {"type": "stage", "op": "clear", "stage": "candidate", "version": 2,
                     "summary": "clear stage candidate (was version 2)"}


def test_a_route_changed_after_it_was_read_is_not_overwritten(
        kubernetes: tuple[FakeKubernetes, Path]) -> None:
    fake, kubeconfig = kubernetes
    traffic = Traffic(api_client(str(kubeconfig)), NAMESPACE, httproute="maskfleet-traffic",
                      stable_service=STABLE, canary_service=CANARY, nginx_canary_ingress=None)
    (patch,) = traffic.plan_drain()
    fake.objects[HTTPROUTE_PATH]["metadata"]["resourceVersion"] = "1001"  # someone else's edit

    with pytest.raises(TrafficError, match="HTTP 409"):
        traffic.apply(patch)
    assert split(fake) == {STABLE: 90, CANARY: 10}


def test_a_refused_query_is_an_error_that_names_the_query(prometheus: str) -> None:
    with PrometheusClient(prometheus) as client, pytest.raises(PrometheusError,
                                                               match="bad_data"):
        client.query("sum by (version) (maskfleet_http_requests_total[30m]")


def test_unreachable_prometheus_fails_the_run_and_changes_nothing(
        repository: ModelRepository, kubernetes: tuple[FakeKubernetes, Path]) -> None:
    fake, kubeconfig = kubernetes
    env = {**os.environ, "MASKFLEET_MODEL_REPOSITORY": repository.root,
           "MASKFLEET_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}",
           "MASKFLEET_KUBECONFIG": str(kubeconfig),
           "MASKFLEET_ROLLOUT_HTTPROUTE": "maskfleet-traffic"}
    done = subprocess.run([sys.executable, "-m", "services.rollout", "--json", "--exit-zero"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    error = json.loads(done.stderr.strip().splitlines()[-1])
    assert error["error"] == "prometheus_error"
    assert "cannot reach Prometheus" in error["detail"]
    assert fake.requests == []
    assert repository.stage("unet", "candidate") == 2

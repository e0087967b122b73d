"""The root document, probes, and /metrics when it shares the API port (metrics_port 0).

Normally /metrics is served by `metrics.MetricsServer` on its own port, which the Service the
Ingress/HTTPRoute use does not expose; `metrics_router` exists for development only.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.errors import Draining

from ..deps import DrainDep, HolderDep, MetricsDep, SettingsDep
from ..schemas import Health, Readiness, Root, ServedVersion

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])

NAME = "maskfleet-inference"


@router.get("/", summary="What this server is, which model it serves, where to go next")
async def root(request: Request, holder: HolderDep, settings: SettingsDep) -> Root:
    served = holder.current
    links = {"segment": "/v1/segment", "v2": "/v2", "health": "/healthz", "ready": "/readyz"}
    app = request.app
    if app.docs_url:
        links["docs"] = app.docs_url
    if any(getattr(route, "path", None) == "/ui" for route in app.routes):
        links["ui"] = "/ui/"
    if app.openapi_url:
        links["openapi"] = app.openapi_url
    return Root(
        name=NAME, version=app.version, links=links,
        model=ServedVersion(name=settings.model_name,
                            version=served.version if served else None,
                            stage=served.stage if served else holder.stage),
    )


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz",
            summary="Readiness: a model version is loaded and warm and the pod is not draining "
                    "(503 otherwise)")
async def readyz(holder: HolderDep, drain: DrainDep) -> Readiness:
    if drain.active():
        raise Draining("the pod is shutting down; send new requests elsewhere")
    served = holder.require()
    return Readiness(status="ready", model=served.name, version=served.version,
                     stage=served.stage)


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(api_metrics: MetricsDep) -> Response:
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""Probes and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import HolderDep, MetricsDep
from ..schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", summary="Readiness: a model version is loaded and warm (503 before)")
async def readyz(holder: HolderDep) -> Readiness:
    served = holder.require()
    return Readiness(status="ready", model=served.name, version=served.version,
                     stage=served.stage)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(api_metrics: MetricsDep) -> Response:
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)

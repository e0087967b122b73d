"""`create_app`: the composition root that builds the components and wires the routes.

Components are built here and reach routes only through `deps`; nothing reads the
environment. The lifespan starts the model holder (background load, stage polling) and the
batcher, then the gRPC server (`grpc_v2`) on the same loop and components; on shutdown, which
uvicorn runs after in-flight HTTP requests have completed, gRPC calls in flight finish (their
drain began with uvicorn's, see `__main__`), then the batcher runs anything still queued.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import redis.asyncio as redis
from fastapi import FastAPI
from starlette.datastructures import Headers

from services.jobs.service import JobService
from shared.repository import ModelRepository

from .admission import BodyBudget, PixelBudget
from .auth import Authenticator
from .batcher import Batcher
from .cache import ResultCache
from .codec import CodecPool
from .dataplane import DataPlane
from .deps import SegmentParts
from .drain import DrainMarker
from .errors import install_error_handlers
from .feedback import Feedback, KeptAnswers, RedisServedLog, ServedAnswers
from .grpc_v2.server import GrpcServer
from .metrics import ApiMetrics, MetricsServer
from .middleware import BodyLimit, RequestContext, StripPathPrefix
from .model_holder import Loader, ModelHolder
from .pipeline import Segmenter
from .ratelimit import RateLimiter
from .routes import feedback, health, job_items, jobs, segment, v2
from .settings import InferenceSettings
from .ui import install_ui
from .ui.docs import install_docs

log = logging.getLogger(__name__)


def software_version() -> str:
    """The installed maskfleet distribution's version (`0+unknown` when run from a bare tree)."""
    try:
        return version("maskfleet")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: InferenceSettings,
    *,
    repository: ModelRepository | None = None,
    loader: Loader | None = None,
    redis_client: redis.Redis | None = None,  # type: ignore[type-arg]
) -> FastAPI:
    """Build one API instance; `repository`, `loader` and `redis_client` exist for tests."""
    auth = Authenticator.from_settings(settings)
    metrics = ApiMetrics()
    repository = repository or ModelRepository(settings.model_repository)
    holder = ModelHolder(settings, repository, metrics, loader)
    batcher = _batcher(settings, holder, metrics)
    cache = ResultCache.from_settings(settings, metrics, redis_client)
    codec = CodecPool(settings.codec_threads, settings.codec_max_queue, metrics)
    budget = PixelBudget(settings.max_inflight_pixels, metrics)
    bodies = BodyBudget(settings.max_body_bytes_in_flight, metrics)
    segmenter = Segmenter(holder, batcher, cache, codec, budget, metrics,
                          max_pixels=settings.max_pixels)
    compare = _compare_segmenters(settings, repository, loader, cache, budget)
    dataplane = DataPlane(settings, holder, segmenter)
    served_log = RedisServedLog.from_settings(settings, redis_client)
    kept = KeptAnswers.from_settings(settings, served_log.client)
    corrections = Feedback(ServedAnswers(served_log, kept), metrics, uri=settings.feedback_uri)
    drain = DrainMarker(settings.drain_file)
    limiter = RateLimiter.from_settings(settings, served_log.client)
    grpc_server = (GrpcServer(settings, dataplane, metrics, drain, bodies,
                              authorize=lambda metadata: auth.authorize(
                                  Headers(headers=metadata), "infer").id)
                   if settings.grpc_enabled else None)
    metrics_server = MetricsServer(metrics.registry, settings.host, settings.metrics_listen_port)
    job_service = JobService.from_settings(settings, on_submitted=metrics.jobs_submitted.inc,
                                           protected=settings.feedback_protected)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain.clear()
        _log_access_rules(settings, auth)
        metrics_server.start()
        segmenter.start()
        await batcher.start()
        await holder.start()
        for parts in compare.values():
            await parts.start()
        if grpc_server is not None:
            port = await grpc_server.start()
            log.info("gRPC serving", extra={"port": port})
        stop_reaper = job_service.start_reaper()
        try:
            yield
        finally:
            stop_reaper.set()
            if grpc_server is not None:  # drain gRPC calls while the batcher still runs
                await grpc_server.stop()
            await batcher.stop()
            await holder.stop()
            segmenter.close()
            for parts in compare.values():
                await parts.stop()
            await kept.close()
            await served_log.close()
            await cache.close()
            metrics_server.stop()

    docs = settings.docs_served
    app = FastAPI(
        title="maskfleet inference",
        version=software_version(),
        summary="Pet/background/border segmentation with a TensorFlow U-Net",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # Prometheus metrics and JSON logs are this API's telemetry; FastAPI's OpenTelemetry
        # hooks otherwise ask the global OTel providers on every request whether to record
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.auth = auth
    app.state.rate_limiter = limiter
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.holder = holder
    app.state.drain = drain
    app.state.batcher = batcher
    app.state.cache = cache
    app.state.segmenter = segmenter
    app.state.dataplane = dataplane
    app.state.grpc = grpc_server
    app.state.compare_segmenters = {stage: parts.segmenter for stage, parts in compare.items()}
    app.state.served_log = served_log
    app.state.kept = kept
    app.state.segment_parts = SegmentParts(settings, segmenter, app.state.compare_segmenters,
                                           served_log, kept)
    app.state.feedback = corrections
    app.state.jobs = job_service
    install_error_handlers(app)
    app.add_middleware(BodyLimit, default=settings.max_body_bytes,
                       limits={jobs.router.prefix: settings.max_json_body_bytes},
                       budget=bodies)
    app.add_middleware(RequestContext, metrics=metrics, access_log=settings.access_log)
    app.add_middleware(StripPathPrefix, prefixes=settings.path_prefixes)
    app.include_router(health.router)
    if settings.metrics_listen_port == 0:
        app.include_router(health.metrics_router)
    app.include_router(segment.router)
    app.include_router(feedback.router)
    app.include_router(v2.router)
    app.include_router(jobs.router)
    app.include_router(job_items.router)
    install_ui(app)
    if docs:
        install_docs(app)
    return app


@dataclass
class _StageParts:
    """Holder, batcher and segmenter of a second stage (`compare_stage`)."""

    holder: ModelHolder
    batcher: Batcher
    segmenter: Segmenter

    async def start(self) -> None:
        self.segmenter.start()
        await self.batcher.start()
        await self.holder.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.holder.stop()
        self.segmenter.close()


def _batcher(settings: InferenceSettings, holder: ModelHolder, metrics: ApiMetrics) -> Batcher:
    """The batcher `settings` describe, for the served stage and the compared one alike."""
    return Batcher(holder, metrics, max_size=settings.batch_max_size,
                   max_wait_ms=settings.batch_max_wait_ms,
                   wait_always=settings.batch_wait == "always",
                   max_queue_images=settings.batch_max_queue_images)


def _compare_segmenters(settings: InferenceSettings, repository: ModelRepository,
                        loader: Loader | None, cache: ResultCache,
                        budget: PixelBudget) -> dict[str, _StageParts]:
    """The `compare_stage` pipeline, sharing the cache (its keys carry the version) and the
    in-flight pixel budget (one memory bound for the process).

    Its holder, batcher and codec report to a registry nobody scrapes: the pod's model metrics
    stay those of the stage it serves, as dashboards and the rollout readout expect.
    """
    stage = settings.compare_stage
    if stage is None or (settings.model_version is None and stage == settings.model_stage):
        return {}
    own = settings.model_copy(update={"model_stage": stage, "model_version": None})
    metrics = ApiMetrics()
    holder = ModelHolder(own, repository, metrics, loader)
    batcher = _batcher(settings, holder, metrics)
    codec = CodecPool(1, settings.codec_max_queue, metrics)
    segmenter = Segmenter(holder, batcher, cache, codec, budget, metrics,
                          max_pixels=settings.max_pixels)
    return {stage: _StageParts(holder, batcher, segmenter)}


def _log_access_rules(settings: InferenceSettings, auth: Authenticator) -> None:
    """Say at start-up who may call what, loudly when callers need no key."""
    rules = {**auth.describe(), "environment": settings.environment,
             "metrics_port": settings.metrics_listen_port or settings.port,
             "docs": settings.docs_served}
    if settings.open_scopes:
        log.warning("API open to callers without a key for: "
                    + ", ".join(sorted(settings.open_scopes))
                    + " (local mode; set MASKFLEET_API_KEYS_FILE to require keys)", extra=rules)
    else:
        log.info("API keys required on every route but /, /healthz and /readyz", extra=rules)

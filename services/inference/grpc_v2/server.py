"""The gRPC server: OIP v2 and `grpc.health.v1` on `grpc_port`, in the API's own process.

Started by the app's lifespan (`..app`), on the same event loop as uvicorn, so both transports
share the model holder, batcher, cache, codec pool and pixel budget. Its drain begins the moment
uvicorn's shutdown does (`begin_stop`, from `..__main__`), beside the HTTP drain, and the
lifespan waits for it before stopping the batcher. Limits
gRPC enforces itself: `max_body_bytes` as the largest request message (RESOURCE_EXHAUSTED
beyond), `max_header_bytes` as the metadata limit and `grpc_max_concurrent_rpcs`. Every
request message is read by `receive.BoundedReceive`: after authentication, within the body
budget REST also draws from and within `body_timeout_seconds`.

Health (`grpc.health.v1.Health/Check`, what Kubernetes' `grpc` probes call) answers SERVING
for the server (`""`) and `inference.GRPCInferenceService` while a model is loaded and the pod
is not draining, NOT_SERVING otherwise, NOT_FOUND for other services. On shutdown every
service turns NOT_SERVING, new calls are refused and calls in flight get up to
`shutdown_timeout_seconds` to finish before the batcher stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..admission import BodyBudget
from ..dataplane import DataPlane
from ..drain import DrainMarker
from ..metrics import ApiMetrics
from ..settings import InferenceSettings
from . import grpc_predict_v2_pb2_grpc as pb_grpc
from .receive import BoundedReceive
from .servicer import SERVICE, Authorize, Servicer

WATCH_INTERVAL_SECONDS = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """Readiness as gRPC health: recomputed on every Check from the data plane and the drain
    marker, so probes see the same answer as REST's /readyz; `follow` also refreshes it every
    `WATCH_INTERVAL_SECONDS`, so `Watch` streams see changes without anyone calling Check."""

    def __init__(self, dataplane: DataPlane, drain: DrainMarker) -> None:
        super().__init__()
        self._dataplane = dataplane
        self._drain = drain
        self._stopping = False

    async def refresh(self) -> None:
        if self._stopping:
            return
        serving = not self._drain.active() and self._dataplane.ready()
        for service in ("", SERVICE):
            await self.set(service, SERVING if serving else NOT_SERVING)

    async def follow(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.service in ("", SERVICE):
            await self.refresh()
        return await super().Check(request, context)

    async def stopping(self) -> None:
        self._stopping = True
        await self.enter_graceful_shutdown()


class GrpcServer:
    def __init__(self, settings: InferenceSettings, dataplane: DataPlane, metrics: ApiMetrics,
                 drain: DrainMarker, bodies: BodyBudget,
                 authorize: Authorize | None = None) -> None:
        self._settings = settings
        self._health = Health(dataplane, drain)
        self._servicer = Servicer(dataplane, metrics,
                                  retry_after_seconds=settings.retry_after_seconds,
                                  authorize=authorize)
        self._receive = BoundedReceive(
            bodies, metrics, max_message_bytes=settings.max_body_bytes,
            timeout_seconds=settings.body_timeout_seconds,
            retry_after_seconds=settings.retry_after_seconds, protected=SERVICE,
            authorize=authorize)
        self._server: grpc.aio.Server | None = None
        self._follow: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Bind and serve; the bound port (the setting's, or the OS's choice for 0)."""
        s = self._settings
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", s.max_body_bytes),
                     ("grpc.max_metadata_size", s.max_header_bytes),
                     ("grpc.so_reuseport", 0), ("grpc.http2.bdp_probe", 0)],
            interceptors=[self._receive],
            maximum_concurrent_rpcs=s.grpc_max_concurrent_rpcs)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for service in ("", SERVICE):
            await self._health.set(service, NOT_SERVING)
        port = int(server.add_insecure_port(f"{_host(s.host)}:{s.grpc_port}"))
        if port == 0:
            raise OSError(f"cannot bind the gRPC port {s.host}:{s.grpc_port}")
        await server.start()
        self._server, self.port = server, port
        self._follow = asyncio.create_task(self._health.follow())
        return port

    def begin_stop(self) -> None:
        """Refuse new calls from now on and drain those in flight, without waiting for them.

        uvicorn runs the lifespan's shutdown only after its HTTP connections have drained (up
        to `shutdown_timeout_seconds`); stopping gRPC only then would keep taking new calls all
        that time and drain for as long again, past the pod's grace period. Called when
        uvicorn's shutdown begins, both drains share one `shutdown_timeout_seconds`.
        """
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())

    async def stop(self) -> None:
        """Refuse new calls, let those in flight finish (bounded), then close."""
        self.begin_stop()
        if self._stopping is not None:
            await self._stopping

    async def _stop(self) -> None:
        if self._server is None:
            return
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        await self._health.stopping()
        await self._server.stop(self._settings.shutdown_timeout_seconds)
        self._server = None


def _host(host: str) -> str:
    """gRPC wants IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

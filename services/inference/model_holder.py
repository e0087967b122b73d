"""Which model version the API serves, and hot swaps when the followed stage moves.

The holder loads a version (pinned, or the one the stage points to) off the event loop, warms
it up, and only then publishes it. While serving it polls the stage; a new version is loaded
and warmed beside the old one and then swapped in by replacing one reference, so requests never
wait for a load and batches already running finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from shared.cpu import thread_count
from shared.errors import MaskfleetError, ModelNotReady
from shared.model.runtime import SegmentationModel
from shared.repository import ModelRepository
from shared.segmentation import load_model

from .metrics import ApiMetrics
from .settings import InferenceSettings

PINNED = "pinned"
"""The `stage` label of a version chosen by MASKFLEET_MODEL_VERSION."""

log = logging.getLogger(__name__)


Loader = Callable[[int], SegmentationModel]


@dataclass(frozen=True)
class ServedModel:
    """One loaded, warm version; batches keep the instance they started with."""

    model: SegmentationModel
    name: str
    version: int
    stage: str
    load_seconds: float
    eval_metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @property
    def variant(self) -> str:
        """The runtime build answering (`savedmodel`, `int8`...): part of cache keys, metric
        labels and `X-Model-Version`, so the rollout compares like with like."""
        return self.model.variant

    @property
    def label(self) -> str:
        """`<version>/<variant>`, as `X-Model-Version` and logs show it."""
        return f"{self.version}/{self.variant}"


class ModelHolder:
    """Owns the served version and the background task that loads and swaps it."""

    def __init__(self, settings: InferenceSettings, repository: ModelRepository,
                 metrics: ApiMetrics, loader: Loader | None = None) -> None:
        self._settings = settings
        self._repository = repository
        self._metrics = metrics
        self._load_model = loader or self._load_from_repository
        self._stage = PINNED if settings.model_version is not None else settings.model_stage
        self._current: ServedModel | None = None
        self._task: asyncio.Task[None] | None = None
        metrics.model_ready.labels(settings.model_name, settings.role).set(0)

    @property
    def current(self) -> ServedModel | None:
        return self._current

    @property
    def stage(self) -> str:
        """The stage followed, or `pinned` when a version is."""
        return self._stage

    def require(self) -> ServedModel:
        """The served version, or 503 while none is loaded yet."""
        served = self._current
        if served is None:
            raise ModelNotReady(f"model {self._settings.model_name!r} is still loading")
        return served

    async def start(self) -> None:
        """Start loading in the background, so /healthz answers while a large model loads."""
        self._task = asyncio.create_task(self._run(), name="model-holder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> bool:
        """Resolve the version to serve and swap to it if it changed; True when swapped."""
        version = await asyncio.to_thread(self._resolve)
        current = self._current
        if current is not None and current.version == version:
            return False
        served = await asyncio.to_thread(self._prepare, version)
        self._publish(served)
        return True

    async def _run(self) -> None:
        poll = self._settings.stage_poll_seconds
        while True:
            try:
                await self.refresh()
            except MaskfleetError as exc:
                log.warning("model not loaded", extra={"error": exc.code, "detail": exc.detail})
            except Exception:
                log.exception("model load failed")
            loaded = self._current is not None
            if loaded and (self._stage == PINNED or poll == 0):
                return
            await asyncio.sleep(poll if loaded or poll > 0 else 5.0)

    def _resolve(self) -> int:
        settings = self._settings
        return self._repository.resolve(settings.model_name, version=settings.model_version,
                                        stage=settings.model_stage)

    def _load_from_repository(self, version: int) -> SegmentationModel:
        s = self._settings
        return load_model(self._repository, s.model_name, version, Path(s.cache_dir),
                          variant=s.model_variant,
                          threads=s.model_threads or thread_count(s.cpu_limit),
                          batch=s.batch_max_size)

    def _prepare(self, version: int) -> ServedModel:
        """Load and warm one version (runs in a worker thread)."""
        name = self._settings.model_name
        started = time.perf_counter()
        model = self._load_model(version)
        model.warm_up((1, self._settings.batch_max_size))
        seconds = time.perf_counter() - started
        try:
            metadata = self._repository.metadata(name, version)
        except MaskfleetError:
            eval_metrics: dict[str, float] = {}
        else:
            record = metadata.variants.get(model.variant)
            eval_metrics = dict(record.metrics if record is not None else metadata.metrics)
        log.info("model version loaded", extra={"model": name, "version": version,
                                                "variant": model.variant,
                                                "load_seconds": round(seconds, 3)})
        return ServedModel(model, name, version, self._stage, seconds, eval_metrics)

    def _publish(self, served: ServedModel) -> None:
        """The swap itself: one reference assignment, then the metrics follow."""
        old, self._current = self._current, served
        m, role = self._metrics, self._settings.role
        if old is not None:
            m.model_swaps.labels(served.name).inc()
            _remove(m.model_info, old.name, str(old.version), old.variant, old.stage, role)
            _remove(m.model_load_seconds, old.name, str(old.version), old.variant)
            for metric in old.eval_metrics:
                _remove(m.model_eval_metric, old.name, str(old.version), old.variant, metric)
            log.info("model version swapped", extra={"model": served.name, "from_version":
                                                     old.label, "to_version": served.label})
        version, variant = str(served.version), served.variant
        m.model_info.labels(served.name, version, variant, served.stage, role).set(1)
        m.model_load_seconds.labels(served.name, version, variant).set(served.load_seconds)
        for metric, value in served.eval_metrics.items():
            m.model_eval_metric.labels(served.name, version, variant, metric).set(value)
        m.model_ready.labels(served.name, role).set(1)


def _remove(metric: MetricWrapperBase, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)

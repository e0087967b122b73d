"""The worker's Prometheus metrics (names as in docs/interfaces.md), one registry per worker.

Counters are updated by the process doing the work (`--pool=solo`); the queue backlog and the
per-job progress are read from Redis at scrape time, so every worker reports the same values
and nothing goes stale when a worker dies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.jobs.store import JobStore

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CHUNK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PRIORITY_SEPARATOR = "\x06\x16"
"""kombu's Redis transport keeps messages with priority p under `<queue>\\x06\\x16<p>`."""


class WorkerMetrics:
    """Every metric the worker exports; the chunk runner receives this object, not globals."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.chunks = Counter(
            "maskfleet_worker_chunks", "Chunks by outcome (succeeded, failed, skipped)",
            ["status"], registry=r)
        self.images = Counter(
            "maskfleet_worker_images", "Images of recorded chunks by outcome (ok, error)",
            ["status"], registry=r)
        self.chunk_duration = Histogram(
            "maskfleet_worker_chunk_duration_seconds", "Time to run one chunk",
            buckets=CHUNK_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "maskfleet_worker_batch_size", "Images per model call", buckets=BATCH_BUCKETS,
            registry=r)
        self.requeued = Counter(
            "maskfleet_worker_chunks_requeued",
            "Chunks this worker's reaper sent again because their lease expired, by cause "
            "(crashed: the holder went silent; released: a retry never came)",
            ["cause"], registry=r)
        for status in ("succeeded", "failed", "skipped"):
            self.chunks.labels(status)
        for cause in ("crashed", "released"):
            self.requeued.labels(cause)
        for status in ("ok", "error"):
            self.images.labels(status)

    def watch(self, store: JobStore, queue: str) -> None:
        """Export the queue backlog and unfinished jobs' progress, read at scrape time."""
        self.registry.register(RedisCollector(store, queue))

    def with_process_metrics(self) -> WorkerMetrics:
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        return self


class RedisCollector(Collector):
    def __init__(self, store: JobStore, queue: str) -> None:
        self.store = store
        self.queue = queue

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("maskfleet_queue_length", "", labels=["queue"])
        yield GaugeMetricFamily("maskfleet_job_images", "", labels=["job_id", "state"])

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "maskfleet_queue_length", "Chunk messages waiting in the Celery queue",
            labels=["queue"])
        jobs = GaugeMetricFamily(
            "maskfleet_job_images", "Images of unfinished jobs (total, done, failed)",
            labels=["job_id", "state"])
        try:
            keys = [self.queue] + [f"{self.queue}{PRIORITY_SEPARATOR}{p}" for p in (3, 6, 9)]
            pipe = self.store.redis.pipeline(transaction=False)
            for name in keys:
                pipe.llen(name)
            queue.add_metric([self.queue], float(sum(pipe.execute())))
            for job_id, images, done, failed in self.store.active():
                jobs.add_metric([job_id, "total"], images)
                jobs.add_metric([job_id, "done"], done)
                jobs.add_metric([job_id, "failed"], failed)
        except redis.RedisError as exc:
            log.warning("metrics could not read Redis", extra={"error": str(exc)})
            return
        yield queue
        yield jobs

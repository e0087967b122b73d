"""Batch: is the offline queue keeping up, and how far along is each job.

Every worker reads the queue length and the job progress from Redis at scrape time, so those
gauges are identical across workers: they are deduplicated with `max`, never summed.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row

from observability.dashboards import promql as q
from observability.dashboards.panels import bars, base, graph, query, single

UID = "maskfleet-batch"

CHUNKS = "maskfleet_worker_chunks_total"
IMAGES = "maskfleet_worker_images_total"
JOB_IMAGES = "maskfleet_job_images"

BACKLOG = f'sum (max by (queue) ({q.selector("maskfleet_queue_length")}))'
IMAGE_ERROR_RATIO = q.ratio(q.sum_rate(IMAGES, 'status="error"'), q.sum_rate(IMAGES))


def job_state(*states: str) -> str:
    """Images per job in `states`, deduplicated across the workers that all report it."""
    matcher = f'state=~"{"|".join(states)}"'
    return f"sum by (job_id) (max by (job_id, state) ({q.selector(JOB_IMAGES, matcher)}))"


def job_progress() -> str:
    """Finished share of each unfinished job (`done` counts per-item errors too)."""
    return f"{job_state('done')}\n/\n{job_state('total')}"


def build() -> Dashboard:
    return (
        base(UID, "maskfleet / Batch",
             "Offline batch segmentation: queue backlog, worker throughput, failures and the "
             "progress of every running job.", ["batch", "worker"], "maskfleet_queue_length")
        .with_row(Row("Now"))
        .with_panel(single(
            "Backlog", "Chunks waiting in the queues.", "short", query(BACKLOG, "chunks"),
            width=5))
        .with_panel(single(
            "Image throughput", "Images segmented per second, all workers.", "short",
            query(q.sum_rate(IMAGES), "images/s"), width=5, decimals=1))
        .with_panel(single(
            "Image error ratio", "Images recorded as per-item errors (corrupt, too large, "
            "unreadable).", "percentunit", query(IMAGE_ERROR_RATIO, "errors"),
            thresholds=(0.05, 0.2), width=5, decimals=1))
        .with_panel(single(
            "Running jobs", "Jobs submitted and not finished yet.", "short",
            query(f"count ({job_state('total')}) or vector(0)", "jobs"), width=4))
        .with_panel(single(
            "Workers", "Worker processes Prometheus scrapes.", "short",
            query(f'count (count by (job, instance) ({q.selector("maskfleet_queue_length")}))',
                  "workers"), width=5))
        .with_row(Row("Queue"))
        .with_panel(graph(
            "Backlog by queue", "Chunks waiting per Celery queue; a line that keeps rising means "
            "the workers cannot keep up.", "short",
            query(f'max by (queue) ({q.selector("maskfleet_queue_length")})', "{{queue}}")))
        .with_panel(graph(
            "Jobs submitted", "Batch jobs accepted by the API per second.", "short",
            query(q.sum_rate("maskfleet_jobs_submitted_total"), "jobs/s")))
        .with_row(Row("Throughput"))
        .with_panel(graph(
            "Images processed", "Images per second by outcome, all workers.", "short",
            query(q.sum_rate(IMAGES, labels=("status",)), "{{status}}"), stacked=True))
        .with_panel(graph(
            "Chunks processed", "Chunks per second by outcome (skipped: the job was cancelled).",
            "short", query(q.sum_rate(CHUNKS, labels=("status",)), "{{status}}"), stacked=True))
        .with_row(Row("Failures"))
        .with_panel(graph(
            "Failures", "Failed chunks (retried by Celery) and images recorded as errors.",
            "short", query(q.sum_rate(CHUNKS, 'status="failed"'), "failed chunks/s"),
            query(q.sum_rate(IMAGES, 'status="error"'), "image errors/s")))
        .with_panel(graph(
            "Failures by worker", "Failed chunks per second per worker: one bad node stands out.",
            "short", query(q.sum_rate(CHUNKS, 'status="failed"', labels=("instance",)),
                           "{{instance}}")))
        .with_row(Row("Performance"))
        .with_panel(graph(
            "Chunk duration", "Time to read, segment and write one chunk.", "s",
            *(query(q.quantile(p, "maskfleet_worker_chunk_duration_seconds"), f"p{round(p * 100)}")
              for p in (0.5, 0.95, 0.99))))
        .with_panel(graph(
            "Worker batch size", "Images per model call in the workers.", "short",
            query(q.mean("maskfleet_worker_batch_size"), "mean"),
            query(q.quantile(0.95, "maskfleet_worker_batch_size"), "p95"), minimum=0))
        .with_row(Row("Jobs"))
        .with_panel(bars(
            "Job progress", "Finished share of each running job: images processed (masks "
            "written or recorded as per-item errors) over the job's images.", "percentunit",
            query(job_progress(), "{{job_id}}"), minimum=0, maximum=1))
        .with_panel(bars(
            "Job errors", "Images recorded as per-item errors in each running job.", "short",
            query(job_state("failed"), "{{job_id}}"), minimum=0))
    )

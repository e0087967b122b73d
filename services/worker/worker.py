"""`create_worker_app`: the worker's composition root (the Celery app, tasks and signals).

With `--pool=solo` the process that consumes is the one that works: when its pool starts it
loads the default model version and serves /metrics on MASKFLEET_WORKER_METRICS_PORT. A
consumer bootstep refreshes the liveness heartbeat (`liveness.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, signals

from services.jobs.broker import CeleryEnqueuer, make_celery
from services.worker.liveness import heartbeat_step
from services.worker.runtime import WorkerRuntime
from services.worker.settings import WorkerSettings
from services.worker.tasks import register_tasks
from shared.cpu import size_tensorflow_threads
from shared.logging import configure_logging


def create_worker_app(settings: WorkerSettings) -> Celery:
    celery = make_celery(settings.state_redis(),
                         visibility_timeout=settings.visibility_timeout_seconds)
    runtime = WorkerRuntime(settings, CeleryEnqueuer(celery))
    register_tasks(celery, runtime)

    def setup_logging(**_: Any) -> None:
        configure_logging(settings.log_level)

    def start_process(**_: Any) -> None:
        size_tensorflow_threads(settings.cpu_limit)  # before the model's first op
        runtime.start_reaper()
        runtime.warm_up()
        runtime.serve_metrics()

    if settings.worker_heartbeat_file:
        celery.steps["consumer"].add(heartbeat_step(Path(settings.worker_heartbeat_file),
                                                    settings.worker_heartbeat_seconds))
    signals.setup_logging.connect(setup_logging, weak=False)
    signals.worker_process_init.connect(start_process, weak=False)
    return celery

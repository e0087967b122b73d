"""Celery configuration shared by the worker (consumer) and the API (producer).

Loss-free by construction: a chunk message is acknowledged only after the chunk is recorded
(late acks, rejected on worker loss), each worker holds one message at a time (prefetch 1),
and Redis hands a message that stays unacknowledged longer than the visibility timeout (its
worker died) to another worker. JSON only: a queue must never unpickle what it receives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from celery import Celery

from shared.redis import RedisEndpoint

QUEUE = "maskfleet"
CHUNK_TASK = "maskfleet.process_chunk"


def restore_interval(visibility_timeout: int) -> int:
    """How often a worker looks for abandoned messages: often enough for short timeouts."""
    return max(1, min(10, visibility_timeout // 4))


def make_celery(state: RedisEndpoint, *, visibility_timeout: int = 3600,
                main: str = "maskfleet", set_as_current: bool = True) -> Celery:
    """The Celery app on the state Redis (broker and result backend)."""
    url = state.celery_url()
    app = Celery(main, broker=url, backend=url, set_as_current=set_as_current)
    timeouts = {"socket_timeout": state.socket_timeout,
                "socket_connect_timeout": state.connect_timeout}
    transport = {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": restore_interval(visibility_timeout),
        "unacked_restore_throttle": 1,
        **timeouts,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": visibility_timeout, **timeouts},
        broker_use_ssl=state.celery_ssl(),
        redis_backend_use_ssl=state.celery_ssl(),
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_routes={CHUNK_TASK: {"queue": QUEUE}},
        result_expires=timedelta(days=1),
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


class CeleryEnqueuer:
    """Queues a job's chunks by task name, so the API needs no worker code or model."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def for_endpoint(cls, state: RedisEndpoint) -> CeleryEnqueuer:
        return cls(make_celery(state, main="maskfleet-api", set_as_current=False))

    def __call__(self, job_id: str, chunks: Sequence[int]) -> None:
        with self.app.producer_or_acquire() as producer:
            for index in chunks:
                self.app.send_task(CHUNK_TASK, args=[job_id, index], queue=QUEUE,
                                   task_id=f"{job_id}-{index}", producer=producer)

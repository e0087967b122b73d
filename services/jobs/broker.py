"""Celery configuration shared by the worker (consumer) and the API (producer).

Loss-free by construction: a chunk message is acknowledged only after the chunk is recorded
(late acks, rejected on worker loss), each worker holds one message at a time (prefetch 1),
and Redis hands a message that stays unacknowledged longer than the visibility timeout (its
worker died) to another worker. JSON only: a queue must never unpickle what it receives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Delivery:
    """A chunk message a worker took from the queue and has not acknowledged (yet)."""

    tag: str
    """Its delivery tag in the Redis transport's `unacked` hash."""
    job_id: str
    chunk: int


class CeleryEnqueuer:
    """Queues a job's chunks by task name, so the API needs no worker code or model; and shows
    the reaper the chunk messages workers took but never acknowledged (`taken`, `restore`).

    A worker killed after taking a message but before leasing its chunk (a window of a few
    milliseconds after the previous chunk) leaves no lease to expire: without this, only the
    transport's visibility timeout (an hour by default) would hand the message on.
    """

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

    def taken(self, older_than: float) -> list[Delivery]:
        """Chunk messages taken from the queue more than `older_than` seconds ago and still
        unacknowledged (the Redis transport's `unacked` index, by delivery time). All of them:
        besides the messages of running chunks the index holds only the originals of reaped
        chunks, which stay until their visibility timeout."""
        with self.app.pool.acquire(block=True) as connection:
            channel = connection.default_channel
            client = channel.client
            tags = client.zrangebyscore(channel.unacked_index_key, "-inf",
                                        time.time() - older_than)
            found = []
            for tag in tags:
                raw = client.hget(channel.unacked_key, tag)
                if raw is None:  # acknowledged meanwhile
                    continue
                headers = json.loads(raw)[0].get("headers") or {}
                job_id, _, chunk = str(headers.get("id", "")).rpartition("-")
                if headers.get("task") == CHUNK_TASK and job_id and chunk.isdigit():
                    name = tag.decode() if isinstance(tag, bytes) else str(tag)
                    found.append(Delivery(name, job_id, int(chunk)))
            return found

    def restore(self, delivery: Delivery) -> None:
        """Put a taken message back on its queue, as the transport does once the visibility
        timeout passes (and only if it is still unacknowledged: one reaper wins)."""
        with self.app.pool.acquire(block=True) as connection:
            connection.default_channel.qos.restore_by_tag(delivery.tag)

"""Worker settings and the Celery contract: JSON only, late acks, one message at a time."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.jobs.broker import CHUNK_TASK, QUEUE, make_celery, restore_interval
from services.worker.settings import WorkerSettings
from shared.redis import RedisEndpoint


def test_settings_come_from_maskfleet_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKFLEET_WORKER_METRICS_PORT", "9999")
    monkeypatch.setenv("MASKFLEET_VISIBILITY_TIMEOUT_SECONDS", "120")
    monkeypatch.setenv("MASKFLEET_JOB_CHUNK_SIZE", "32")
    settings = WorkerSettings()
    assert settings.worker_metrics_port == 9999
    assert settings.visibility_timeout_seconds == 120
    assert settings.job_chunk_size == 32


def test_defaults_match_the_interface() -> None:
    settings = WorkerSettings()
    assert settings.worker_metrics_port == 9808
    assert settings.visibility_timeout_seconds == 3600


def test_production_refuses_a_visibility_timeout_that_reruns_running_chunks() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout_seconds"):
        WorkerSettings(environment="production", model_repository="gs://m/models",
                       state_redis_password="p",
                       visibility_timeout_seconds=5)


def test_default_chunk_size_must_fit_the_maximum() -> None:
    with pytest.raises(ValidationError, match="job_chunk_size"):
        WorkerSettings(job_chunk_size=50, job_max_chunk_size=10)


def test_the_broker_never_accepts_pickle_and_acks_after_the_work() -> None:
    app = make_celery(RedisEndpoint.build("state", "redis://127.0.0.1:1/0"),
                      visibility_timeout=30, set_as_current=False)
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 30
    assert conf.task_routes[CHUNK_TASK]["queue"] == QUEUE == "maskfleet"


def test_abandoned_messages_are_looked_for_often_enough() -> None:
    assert restore_interval(4) == 1
    assert restore_interval(40) == 10
    assert restore_interval(3600) == 10

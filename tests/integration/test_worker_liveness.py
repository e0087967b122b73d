"""The worker's liveness probe against a real Celery worker: green while the consumer loop
turns, red once it stops (SIGSTOP stands in for a wedged consumer), green again when it
resumes. The metrics port, the old TCP check, stays open all along."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.cases import container, one
from tests.k8s.conftest import _load_render_script
from tests.servers import REPO, Server, free_port, port_open, wait_until

pytestmark = pytest.mark.integration
CELERY = str(Path(sys.executable).with_name("celery"))


def liveness_command(beat_file: Path) -> list[str]:
    """The chart's exec probe (rendered with short timings), pointed at this test's file."""
    objects = _load_render_script().render_objects(
        {"worker": {"heartbeat": {"intervalSeconds": 1, "maxAgeSeconds": 3}}})
    worker = container(one(objects, "Deployment", "maskfleet-worker"), "worker")
    command: list[str] = list(worker["livenessProbe"]["exec"]["command"])
    command[command.index("--file") + 1] = str(beat_file)
    assert command[command.index("--max-age") + 1] == "3"
    return [sys.executable if part == "python" else part for part in command]


def probe_passes(command: list[str]) -> bool:
    done = subprocess.run(command, capture_output=True, timeout=30, check=False, cwd=REPO)
    return done.returncode == 0


def test_liveness_fails_while_the_consumer_is_wedged(redis_server: Server, tiny_model_repo: Path,
                                                     tmp_path: Path) -> None:
    beat_file = tmp_path / "heartbeat"
    probe = liveness_command(beat_file)
    assert not probe_passes(probe), "no heartbeat yet"
    redis_url = f"redis://127.0.0.1:{redis_server.port}/9"
    port = free_port()
    worker = Server(
        [CELERY, "-A", "services.worker.app", "worker", "--pool=solo", "--concurrency=1",
         "-Q", "maskfleet", "--without-mingle", "--without-gossip", "-n", f"live-{port}@%h"],
        port, log=tmp_path / "worker.log",
        env={"MASKFLEET_STATE_REDIS_URL": redis_url, "MASKFLEET_CACHE_REDIS_URL": redis_url,
             "MASKFLEET_MODEL_REPOSITORY": str(tiny_model_repo),
             "MASKFLEET_CACHE_DIR": str(tmp_path / "cache"),
             "MASKFLEET_WORKER_METRICS_PORT": str(port),
             "MASKFLEET_WORKER_HEARTBEAT_FILE": str(beat_file),
             "MASKFLEET_WORKER_HEARTBEAT_SECONDS": "1",
             "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)})
    worker.start(timeout=120)
    try:
        wait_until(lambda: probe_passes(probe), 60, "the first heartbeat")
        first = beat_file.stat().st_mtime
        wait_until(lambda: beat_file.stat().st_mtime > first, 30, "the heartbeat to repeat")

        worker.signal(signal.SIGSTOP)  # the consumer loop stops turning
        wait_until(lambda: not probe_passes(probe), 30, "the probe to fail")
        assert port_open(port), "a TCP check would still call this worker alive"

        worker.signal(signal.SIGCONT)
        wait_until(lambda: probe_passes(probe), 30, "the probe to pass again")
    finally:
        worker.signal(signal.SIGCONT)
        worker.stop()

"""A pod's termination as Kubernetes runs it, against a real API under load: the chart's own
preStop hook (drain marker, then the sleep), the load balancer dropping the pod once readiness
fails, then SIGTERM. Not one request the server accepted may fail."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.integration.test_inference_support import photo, segment, start_api, url
from tests.k8s.cases import container, one
from tests.k8s.conftest import _load_render_script
from tests.servers import Server, wait_until

pytestmark = pytest.mark.integration
CLIENTS = 3
PRE_STOP_SLEEP = 3


@dataclass
class Load:
    """Clients with keep-alive connections sending until the load balancer drops the pod."""

    api: Server
    removed: threading.Event = field(default_factory=threading.Event)
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, seed: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self.removed.is_set():
                sent = time.monotonic()
                try:
                    outcome = str(segment(http, self.api, photo(seed * 1000 + n)).status_code)
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.outcomes.append((sent, outcome))
                n += 1

    def answered_since(self, moment: float) -> int:
        with self.lock:
            return sum(1 for sent, outcome in self.outcomes if sent > moment and outcome == "200")


def pre_stop_hook() -> list[str]:
    """The inference container's preStop command, exactly as the chart renders it."""
    render = _load_render_script().render_objects
    objects = render({"inference": {"preStopSleepSeconds": PRE_STOP_SLEEP}})
    c = container(one(objects, "Deployment", "maskfleet-inference-stable"), "inference")
    command: list[str] = c["lifecycle"]["preStop"]["exec"]["command"]
    return command


def draining(api: Server) -> bool:
    answer = httpx.get(url(api, "/readyz"), timeout=5)
    return answer.status_code == 503 and answer.json()["code"] == "draining"


def test_termination_sequence_fails_no_accepted_request(tiny_model_repo: Path,
                                                        redis_server: Server,
                                                        tmp_path: Path) -> None:
    hook = pre_stop_hook()
    marker = tmp_path / "draining"
    marker.write_text("left by an earlier container")  # the API must clear it on start
    api = start_api(tiny_model_repo, tmp_path, f"redis://127.0.0.1:{redis_server.port}/0",
                    drain_file=marker, cache_enabled="false", feedback_sample_rate=0,
                    stage_poll_seconds=0)
    load = Load(api)
    clients = [threading.Thread(target=load.client, args=(i,)) for i in range(CLIENTS)]
    try:
        assert not marker.exists()
        for thread in clients:
            thread.start()
        wait_until(lambda: load.answered_since(0) >= 10, 60, "the load to get going")

        # Kubernetes: the pod is terminating; the kubelet runs the preStop hook
        pre_stop = subprocess.Popen(hook, env={**os.environ, "MASKFLEET_DRAIN_FILE": str(marker)})
        wait_until(lambda: draining(api), 10, "readiness to go false")
        unready = time.monotonic()
        # the endpoint removal propagates: traffic keeps arriving for a while, and is served
        wait_until(lambda: load.answered_since(unready) >= 5, 30,
                   "requests served while unready")
        load.removed.set()  # the load balancer has dropped the pod
        for thread in clients:
            thread.join(30)
        assert pre_stop.wait(30) == 0, "the hook's sleep ends normally"

        api.signal(signal.SIGTERM)  # the kubelet, after the hook
        assert api.proc is not None
        assert api.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        load.removed.set()
        api.stop()
    failed = [outcome for _, outcome in load.outcomes if outcome != "200"]
    assert not failed, f"{len(failed)} of {len(load.outcomes)} requests failed: {failed[:5]}"
    assert len(load.outcomes) >= 15

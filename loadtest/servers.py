"""The processes `make bench` measures: Redis, the API, a worker and the baseline.

Each runs as its own child process, exactly as deployed (`python -m services.inference`, the
Celery command of docs/batch.md), on a free loopback port, and is stopped by its PID, so the
figures include everything a real deployment pays: HTTP parsing, the event loop, IPC to Redis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


@dataclass
class Process:
    """A child process serving on `port`; `stop()` ends it by PID, never by name."""

    name: str
    argv: list[str]
    port: int
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    grpc_port: int | None = None
    """The API's gRPC port (a free one, never the fixed 8081)."""

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: Callable[[], bool] | None = None, timeout: float = 120.0) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env={**os.environ, **self.env}, cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        probe = ready or (lambda: port_open(self.port))
        deadline = time.monotonic() + timeout
        while not probe():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (all threads, user + system).

        Busy machines stretch wall-clock figures; CPU per request barely moves, so the bench
        reports it beside every throughput.
        """
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the log, for errors: the run's temporary folder is gone afterwards."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a lost node does: no shutdown, no acknowledgement."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _common_env() -> dict[str, str]:
    return {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO),
            "MASKFLEET_LOG_LEVEL": "WARNING"}


def start_redis(logs: Path) -> Process:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run `make install`")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no"]
    return Process("redis", argv, port, logs / "redis.log").start()


def start_api(logs: Path, *, models: Path, redis_url: str, cache: bool,
              extra_env: Mapping[str, str] | None = None) -> Process:
    """`python -m services.inference` following the `production` stage of `models`."""
    port, grpc_port = free_port(), free_port()
    env = {**_common_env(), "MASKFLEET_HOST": "127.0.0.1", "MASKFLEET_PORT": str(port),
           "MASKFLEET_GRPC_PORT": str(grpc_port), "MASKFLEET_MODEL_REPOSITORY": str(models),
           "MASKFLEET_CACHE_REDIS_URL": redis_url,
           "MASKFLEET_STATE_REDIS_URL": redis_url,
           "MASKFLEET_CACHE_ENABLED": str(cache).lower(), "MASKFLEET_STAGE_POLL_SECONDS": "0",
           "MASKFLEET_CACHE_DIR": str(logs / "api-cache"),
           # batch jobs may read and write the bench workspace only (docs/security.md)
           "MASKFLEET_JOB_INPUT_PREFIXES": str(logs.parent),
           "MASKFLEET_JOB_OUTPUT_PREFIXES": str(logs.parent), **(extra_env or {})}
    name = f"api-cache-{'on' if cache else 'off'}"
    api = Process(name, [sys.executable, "-m", "services.inference"], port,
                  logs / f"{name}.log", env, grpc_port=grpc_port)
    return api.start(lambda: http_ok(f"{api.url}/readyz"))


def start_worker(logs: Path, *, models: Path, redis_url: str,
                 extra_env: Mapping[str, str] | None = None,
                 node: str | None = None) -> Process:
    """One Celery worker as docs/batch.md runs it; its metrics port opens once it is warm.
    `node` fixes the Celery node name (a restarted container keeps its hostname)."""
    port = free_port()
    env = {**_common_env(), "MASKFLEET_MODEL_REPOSITORY": str(models),
           "MASKFLEET_STATE_REDIS_URL": redis_url, "MASKFLEET_WORKER_METRICS_PORT": str(port),
           "MASKFLEET_CACHE_DIR": str(logs / "worker-cache"),
           "MASKFLEET_JOB_INPUT_PREFIXES": str(logs.parent),  # as `start_api`'s
           **(extra_env or {})}
    argv = [str(BIN / "celery"), "-A", "services.worker.app", "worker", "--pool=solo",
            "--concurrency=1", "-Q", "maskfleet", "--without-mingle", "--without-gossip",
            "--loglevel=WARNING", "-n", node or f"bench-{port}@%h"]
    return Process("worker", argv, port, logs / "worker.log", env).start()


def start_baseline(logs: Path, *, saved_model: Path) -> Process:
    port = free_port()
    baseline = Process("baseline", [sys.executable, "-m", "loadtest.baseline", "--model",
                                    str(saved_model), "--port", str(port)],
                       port, logs / "baseline.log", _common_env())
    return baseline.start(lambda: http_ok(f"{baseline.url}/healthz"))


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


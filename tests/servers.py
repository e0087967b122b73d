"""Real servers for integration tests: started on a free loopback port, stopped by PID.

Readiness is awaited by connecting to the port (or an HTTP probe), bounded by a deadline, never
by a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal as signals
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll `check` until it holds; fail the test with `what` if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


@dataclass
class Server:
    """A child process serving on `port`; `stop()` ends it by PID."""

    argv: Sequence[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool] | None = None, timeout: float = 60.0) -> Server:
        env = {**os.environ, **self.env}
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            list(self.argv), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,
        )
        probe = ready or (lambda: port_open(self.port))

        def alive_and_ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}; "
                                   f"log: {self.log}")
            return probe()

        wait_until(alive_and_ready, timeout, f"{' '.join(self.argv[:3])} on port {self.port}")
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30.0) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("redis-server not found: run `make install` (installs Debian redis-server)")


def start_redis(port: int | None = None, log: Path | None = None, *,
                password: str | None = None, aof_dir: Path | None = None,
                options: Sequence[str] = ()) -> Server:
    """A redis-server; with `password` it requires AUTH, with `aof_dir` it persists there with
    AOF `everysec` (and restarts from it when started again on the same directory)."""
    port = port or free_port()
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--protected-mode", "no"]
    if aof_dir is None:
        argv += ["--appendonly", "no"]
    else:
        aof_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(aof_dir)]
    if password is not None:
        argv += ["--requirepass", password]
    return Server([*argv, *options], port, log=log).start()


def start_gcs_emulator(log: Path | None = None) -> Server:
    port = free_port()
    argv = [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start",
            "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"]
    return Server(argv, port, log=log).start()


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()

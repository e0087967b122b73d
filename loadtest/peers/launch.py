"""Starting the peers as `make bench` starts maskfleet: child processes on free loopback ports.

Both peers run their work in more than one process (MLServer's inference pool worker;
tritonserver, its Python backend stub and PyTriton's own process), so a peer's CPU is its whole
process tree, read from /proc. maskfleet's API is measured the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from loadtest import servers

BATCH_MAX_SIZE = 16
BATCH_MAX_WAIT_S = 0.005
"""Both peers batch at most 16 images, as maskfleet (MASKFLEET_BATCH_MAX_SIZE), and wait 5 ms:
their batchers wait the whole time whether or not more requests are coming, where maskfleet's
waits (up to 20 ms) only for images being decoded, so a longer fixed wait would cost them
latency at low load."""


def descendants(pid: int, parents: Mapping[int, int]) -> list[int]:
    """`pid` and every process below it, given each process's parent."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _proc_stat(pid: int) -> list[str] | None:
    """Fields after the command name of /proc/PID/stat (None once the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _proc_stat(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
    return parents


class TreeProcess(servers.Process):
    """A server whose CPU is that of its whole process tree, stopped with its session."""

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in descendants(self.pid, _parents()):
            if (fields := _proc_stat(pid)) is not None:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server, then SIGKILL to whatever of its session is left (a
        tritonserver or inference worker its parent did not take down)."""
        session = self.proc.pid if self.proc is not None else None
        super().stop(timeout)
        if session is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(session, signal.SIGKILL)


def as_tree(process: servers.Process) -> TreeProcess:
    """The same started process, measured and stopped as a tree (maskfleet's API)."""
    return TreeProcess(**{f.name: getattr(process, f.name) for f in fields(process)})


def _env() -> dict[str, str]:
    return {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(servers.REPO)}


def start_mlserver(logs: Path, *, python: Path, saved_model: Path) -> TreeProcess:
    """`mlserver start` on a folder holding settings.json and the model's model-settings.json
    (custom runtime, adaptive batching on; MLServer's default single inference worker)."""
    folder = logs.parent / "mlserver"
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": servers.free_port(),
        "metrics_port": servers.free_port(), "debug": False}))
    (folder / "unet" / "model-settings.json").write_text(json.dumps({
        "name": "unet", "implementation": "loadtest.peers.mlserver_runtime.UNetRuntime",
        "max_batch_size": BATCH_MAX_SIZE, "max_batch_time": BATCH_MAX_WAIT_S,
        "parameters": {"uri": str(saved_model)}}))
    server = TreeProcess("mlserver", [str(python.parent / "mlserver"), "start", str(folder)],
                         port, logs / "mlserver.log", _env())
    server.start(lambda: servers.http_ok(f"{server.url}/v2/models/unet/ready"), timeout=180)
    return server


def start_triton(logs: Path, *, python: Path, saved_model: Path) -> TreeProcess:
    """PyTriton (`loadtest.peers.triton_server`) with Triton's dynamic batcher."""
    port = servers.free_port()
    argv = [str(python), "-m", "loadtest.peers.triton_server", "--model", str(saved_model),
            "--http-port", str(port), "--grpc-port", str(servers.free_port()),
            "--metrics-port", str(servers.free_port()),
            "--max-batch-size", str(BATCH_MAX_SIZE),
            "--max-delay-us", str(round(BATCH_MAX_WAIT_S * 1e6))]
    server = TreeProcess("pytriton", argv, port, logs / "pytriton.log", _env())
    server.start(lambda: servers.http_ok(f"{server.url}/v2/models/unet/ready"), timeout=180)
    return server


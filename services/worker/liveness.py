"""Worker liveness: a heartbeat file the Celery consumer loop refreshes, and the probe reading it.

A TCP check on the metrics port stays green while the consumer is wedged (the metrics server
runs on its own thread). Instead a consumer bootstep touches a file from the consumer's own
event loop every `worker_heartbeat_seconds`: when the loop stops turning (a hung broker
connection, a deadlock, a stuck task), the file goes stale and the exec probe

    python -m services.worker.liveness --file PATH --max-age SECONDS

exits 1, so the kubelet restarts the container. With `--pool=solo` a running chunk also blocks
the loop, so the age allowed must exceed the longest chunk (the chart's default is 300 s). The
probe imports nothing but the standard library: it runs every period, in the worker's cgroup.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_ALIVE, EXIT_STALE = 0, 1


def beat(path: Path) -> None:
    """Refresh the heartbeat: its modification time is what the probe reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def heartbeat_step(path: Path, interval: float) -> type:
    """A Celery consumer bootstep that beats from the consumer's event loop (its timer)."""
    from celery import bootsteps

    class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.tref: Any = None

        def start(self, parent: Any) -> None:
            beat(path)
            self.tref = parent.timer.call_repeatedly(interval, beat, (path,), priority=10)

        def stop(self, parent: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

    return Heartbeat


def age(path: Path) -> float | None:
    """Seconds since the last beat; None when there never was one."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.worker.liveness",
                                     description="exit 0 while the worker's heartbeat is fresh")
    parser.add_argument("--file", required=True, type=Path, help="the heartbeat file")
    parser.add_argument("--max-age", required=True, type=float, help="seconds allowed")
    args = parser.parse_args(argv)
    seconds = age(args.file)
    if seconds is None:
        print(f"no heartbeat at {args.file}", file=sys.stderr)
        return EXIT_STALE
    if seconds > args.max_age:
        print(f"heartbeat is {seconds:.0f}s old (more than {args.max_age:.0f}s): the consumer "
              "loop is not turning", file=sys.stderr)
        return EXIT_STALE
    return EXIT_ALIVE


if __name__ == "__main__":
    sys.exit(main())

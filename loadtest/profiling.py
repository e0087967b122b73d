"""Optional py-spy profiles of a server while wrk loads it (`make bench` with `--profile DIR`).

py-spy samples another process from outside (no code change, no restart) and sees every
thread: the event loop, the codec pool and the model thread. `--nonblocking` keeps it from
pausing the server, so the profiled run's figures stay close to an unprofiled one. Each run
leaves the collapsed stacks (`<name>.txt`, for flamegraph tools or speedscope) and a summary
of the hottest functions per thread (`<name>-top.txt`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


class Profiler:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def record(self, pid: int, name: str, seconds: float) -> Iterator[None]:
        if self.folder is None:
            yield
            return
        raw = self.folder / f"{name}.txt"
        proc = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(pid), "--duration", str(math.ceil(seconds)),
             "--rate", "200", "--format", "raw", "--threads", "--nonblocking", "--idle",
             "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.wait(seconds + 30)
        if raw.exists():
            (self.folder / f"{name}-top.txt").write_text(summarise(raw.read_text()))


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
    return found


def summarise(collapsed: str, top: int = 25) -> str:
    """Per thread: its share of samples, then the functions with the most self and total time.

    Idle samples (threads waiting) are kept, so a thread's share shows how busy it was.
    """
    per_thread: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread, calls = frames[0], frames[1:] or ["(no python frame)"]
        per_thread.setdefault(thread, Counter())[calls[-1]] += int(count)
        seen = inclusive.setdefault(thread, Counter())
        for frame in set(calls):
            seen[frame] += int(count)
    total = sum(sum(c.values()) for c in per_thread.values()) or 1
    out = []
    for thread, self_time in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        samples = sum(self_time.values())
        out.append(f"== {thread}: {samples} samples ({100 * samples / total:.1f}%)")
        out.append("  self:")
        out += [f"    {n:6d} {100 * n / samples:5.1f}%  {f}" for f, n in self_time.most_common(top)]
        out.append("  total:")
        out += [f"    {n:6d} {100 * n / samples:5.1f}%  {f}"
                for f, n in inclusive[thread].most_common(top)]
    return "\n".join(out) + "\n"

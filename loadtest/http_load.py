"""HTTP load with wrk: closed-loop connections POSTing one body, latency percentiles back.

Why wrk (Debian's `wrk`, C, one epoll thread): the machine has 2 cores and the server under
test needs both. A Python load generator (Locust, httpx) spends about as much CPU per request
as the server does on a cache hit, so it would measure itself; wrk drives thousands of
requests/s from one thread at a few percent of a core. Its Lua `done` hook reports exact
percentiles from its HDR histogram (p95 included, which `--latency` does not print).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_MARK = "MASKFLEET-WRK "
_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open(%(body)s, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = %(content_type)s
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"socket_errors":%%d,"http_errors":%%d,' ..
    '"p50_us":%%d,"p95_us":%%d,"p99_us":%%d,"mean_us":%%f,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean,
    latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    connections: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def per_second(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not found: run `make install` (installs Debian's wrk)")
    return found


def _lua(body: Path, content_type: str, headers: dict[str, str]) -> str:
    lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                      for k, v in headers.items())
    return _SCRIPT % {"body": json.dumps(str(body)), "content_type": json.dumps(content_type),
                      "headers": lines, "mark": _MARK}


def run_wrk(url: str, body: Path, *, content_type: str, connections: int, seconds: float,
            headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> LoadResult:
    """POST `body` to `url` over `connections` keep-alive connections for `seconds`.

    Errors are socket errors, timeouts and status >= 400; no `response` hook, since defining
    one makes wrk hand every response to Lua.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(body, content_type, headers or {}))
    try:
        out = subprocess.run(
            [wrk_binary(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             f"--timeout={round(timeout_s)}s", "-s", script.name, url],
            capture_output=True, text=True, check=True, timeout=seconds + timeout_s + 30)
    finally:
        Path(script.name).unlink(missing_ok=True)
    return parse(out.stdout, connections)


def parse(stdout: str, connections: int) -> LoadResult:
    """The figures our Lua `done` hook printed (wrk's own text is ignored)."""
    for line in stdout.splitlines():
        if line.startswith(_MARK):
            raw = json.loads(line[len(_MARK):])
            break
    else:
        raise RuntimeError(f"wrk printed no summary:\n{stdout}")
    return LoadResult(
        connections=connections, requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        errors=int(raw["socket_errors"]) + int(raw["http_errors"]),
        p50_ms=raw["p50_us"] / 1000, p95_ms=raw["p95_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000, mean_ms=raw["mean_us"] / 1000,
        max_ms=raw["max_us"] / 1000)

"""Server CPU per call by thread, REST beside gRPC on one API: where a call's CPU goes.

`python -m loadtest.transport_cpu [--rounds 3] [--seconds 8] [--concurrency 32]`

The bench's CPU per call is the whole process's, and nine tenths of it are the model threads,
whose cost per image moves by 1-2 ms with the batch sizes a run happens to form: more than the
transports differ. This splits the same figure by thread (from `/proc/<pid>/task/*/stat`,
Python threads named once with `py-spy dump`): the model (`model` and TensorFlow's own
threads), the codec pool, the event loop (`MainThread`, which runs uvicorn and grpc.aio) and
grpcio's poller and event-engine threads. The loads alternate in rounds on one API (cache
off, the bench's 500x375 JPEG, `mask_png` back), each after an unrecorded warm-up, so load
from other processes weighs on every transport alike. Calls answered with an error are left
out of the count (their CPU is not).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from loadtest import servers
from loadtest.bench import _check_segment, _prepare, _rest_v2_bytes
from loadtest.grpc_load import bytes_request, frame, grpc_failures, pixels_request, run_h2load
from loadtest.http_load import LoadResult, run_wrk
from loadtest.profiling import _py_spy

MODEL = "model"
GROUPS = {"model": MODEL, "native:python": MODEL, "native:tf_Compute": MODEL,
          "Thread-1 (_poll_wrapper)": "grpc_poller", "native:event_engine": "grpc_event_engine"}
"""Thread name -> group. TensorFlow's pool threads keep the comm of the process (`python`) or
are `tf_*`; Python threads without an OS name are known by the names py-spy reports."""


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every live thread of `pid`, keyed `<tid>:<comm>`."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        found[f"{tid}:{comm}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def python_thread_names(pid: int) -> dict[str, str]:
    """tid -> Python thread name, from one non-blocking `py-spy dump`."""
    return parse_dump(subprocess.run([_py_spy(), "dump", "--pid", str(pid), "--nonblocking"],
                                     capture_output=True, text=True, check=False).stdout)


def parse_dump(text: str) -> dict[str, str]:
    """`Thread 25495 (idle): "MainThread"` lines of a py-spy dump -> {"25495": "MainThread"}."""
    return dict(re.findall(r'^Thread (?:0x[0-9A-Fa-f]+ )?\(?(\d+)\)?[^:\n]*: "([^"]+)"', text,
                           flags=re.MULTILINE))


def per_call(before: Mapping[str, float], after: Mapping[str, float], names: Mapping[str, str],
             calls: int) -> dict[str, float]:
    """ms of CPU per call by thread group, largest first (`total` included)."""
    groups: dict[str, float] = {}
    for key, seconds in after.items():
        tid, comm = key.split(":", 1)
        name = names.get(tid, f"native:{comm}")
        name = GROUPS.get(name, re.sub(r"_\d+$", "", name))
        groups[name] = groups.get(name, 0.0) + seconds - before.get(key, 0.0)
    groups["total"] = sum(groups.values())
    return {k: round(1000 * v / max(calls, 1), 2)
            for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v > 0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="JSON of every run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="maskfleet-transport-") as tmp:
        ws, _ = _prepare(Path(tmp), False)
        jpeg = ws.jpeg.read_bytes()
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        with servers.running(servers.start_redis(ws.logs)) as redis, servers.running(
                servers.start_api(ws.logs, models=ws.models, cache=False,
                                  redis_url=f"redis://127.0.0.1:{redis.port}/0",
                                  extra_env={"MASKFLEET_MODEL_VARIANT": "savedmodel"})) as api:
            assert api.grpc_port is not None
            grpc_port, c = api.grpc_port, args.concurrency
            _check_segment(api.url, jpeg, "miss")
            v2_body, v2_headers = _rest_v2_bytes(jpeg, ws.root / "v2-bytes.bin")
            grpc_bytes, grpc_pixels = frame(bytes_request(jpeg)), frame(pixels_request(pixels))
            loads: dict[str, Callable[[float], LoadResult]] = {
                "REST segment": lambda s: run_wrk(f"{api.url}/v1/segment", ws.jpeg,
                                                  content_type="image/jpeg", connections=c,
                                                  seconds=s),
                "REST v2 BYTES": lambda s: run_wrk(
                    f"{api.url}/v2/models/unet/infer", v2_body,
                    content_type="application/octet-stream", connections=c, seconds=s,
                    headers=v2_headers),
                "gRPC BYTES": lambda s: run_h2load(grpc_port, grpc_bytes, concurrency=c,
                                                   seconds=s),
                "gRPC UINT8": lambda s: run_h2load(grpc_port, grpc_pixels, concurrency=c,
                                                   seconds=s),
            }
            loads["REST segment"](1)
            names = python_thread_names(api.pid)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in loads}
            for _ in range(args.rounds):
                for name, load in loads.items():
                    load(args.warmup_seconds)
                    failed, before = grpc_failures(f"{api.url}/metrics"), thread_cpu(api.pid)
                    result = load(args.seconds)
                    after = thread_cpu(api.pid)
                    failed_grpc = sum(v - failed.get(k, 0.0)
                                      for k, v in grpc_failures(f"{api.url}/metrics").items())
                    answered = result.requests - result.errors - round(failed_grpc)
                    figures = per_call(before, after, names, answered)
                    runs[name].append(figures)
                    print(f"{name} c={c}: {answered / result.seconds:.1f}/s {figures}",
                          flush=True)
    for name, measured in runs.items():
        totals = sorted(f["total"] for f in measured)
        rest = sorted(f["total"] - f.get(MODEL, 0.0) for f in measured)
        print(f"{name}: median ms/call {totals[len(totals) // 2]:.2f}, without the model "
              f"threads {rest[len(rest) // 2]:.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()

"""gRPC load with h2load: `ModelInfer` calls over HTTP/2, latency percentiles back.

Why h2load (Debian's `nghttp2-client`, C, one event-loop thread): like wrk for REST it drives
thousands of requests/s at a few percent of a core, so the server under test keeps both cores,
while a Python gRPC client (tritonclient, grpcio) costs about as much CPU per call as the server
spends on it. ghz, the usual gRPC benchmark tool, is not packaged by Debian or PyPI. h2load
speaks plain HTTP/2, and a unary gRPC call is just that: a POST to
`/inference.GRPCInferenceService/ModelInfer` with `content-type: application/grpc` whose body
is the protobuf message behind a 5-byte frame prefix. One connection multiplexes the
`concurrency` streams, as one gRPC channel (tritonclient's client) does.

h2load sees HTTP statuses only, and a failed gRPC call is HTTP 200 with a non-zero
`grpc-status` trailer, so the server's own count of non-OK gRPC calls
(`maskfleet_http_requests_total{protocol="grpc"}`) gives the errors.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest.http_load import LoadResult
from services.inference.grpc_v2 import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def frame(message: pb.ModelInferRequest) -> bytes:
    """One gRPC message on the wire: not compressed (0), big-endian length, the bytes."""
    payload: bytes = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def pixels_request(pixels: np.ndarray, output: str = "mask_png") -> pb.ModelInferRequest:
    """UINT8 `[1, H, W, 3]` pixels as `raw_input_contents`, as tritonclient sends them."""
    batch = pixels[np.newaxis] if pixels.ndim == 3 else pixels
    return pb.ModelInferRequest(
        model_name="unet", raw_input_contents=[np.ascontiguousarray(batch).tobytes()],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="UINT8",
                                                      shape=list(batch.shape))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=output)])


def bytes_request(blob: bytes, output: str = "mask_png") -> pb.ModelInferRequest:
    """One encoded image as a BYTES `[1]` tensor in Triton's raw layout."""
    return pb.ModelInferRequest(
        model_name="unet", raw_input_contents=[struct.pack("<I", len(blob)) + blob],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image_bytes", datatype="BYTES",
                                                      shape=[1])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=output)])


def h2load_binary() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise RuntimeError("h2load not found: run `make install` (installs Debian's "
                           "nghttp2-client)")
    return found


def run_h2load(grpc_port: int, body: bytes, *, concurrency: int, seconds: float,
               warmup_seconds: float = 0.0) -> LoadResult:
    """`concurrency` streams on one HTTP/2 connection, each sending `body` again as soon as
    its answer arrives, for `seconds` (after `warmup_seconds` not recorded)."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "log.tsv"
        body_file.write_bytes(body)
        argv = [h2load_binary(), "-c1", f"-m{concurrency}", f"-D{max(1, round(seconds))}",
                "-d", str(body_file), "-H", "content-type: application/grpc",
                "-H", "te: trailers", f"--log-file={log_file}"]
        if warmup_seconds > 0:
            argv.append(f"--warm-up-time={max(1, round(warmup_seconds))}")
        subprocess.run([*argv, f"http://127.0.0.1:{grpc_port}{METHOD}"], capture_output=True,
                       text=True, check=True, timeout=seconds + warmup_seconds + 60)
        return parse_log(log_file.read_text(), concurrency)


def parse_log(text: str, concurrency: int) -> LoadResult:
    """h2load's per-request log (start µs, HTTP status, duration µs) -> figures.

    Only HTTP 200 rows are answers: a gRPC server answers every call, failed or not, with 200
    (the outcome is in the trailers, counted by `grpc_failures`), so anything else is a stream
    h2load itself abandoned when its duration ended (one per stream in flight).
    """
    rows = [r for r in (line.split("\t") for line in text.splitlines() if line.strip())
            if r[1] == "200"]
    if not rows:
        raise RuntimeError("h2load recorded no finished request")
    starts = np.array([int(r[0]) for r in rows], dtype=np.int64)
    durations = np.array([int(r[2]) for r in rows], dtype=np.int64)
    span = (int((starts + durations).max()) - int(starts.min())) / 1e6
    ms = durations / 1000
    return LoadResult(connections=concurrency, requests=len(rows), seconds=span, errors=0,
                      p50_ms=float(np.percentile(ms, 50)), p95_ms=float(np.percentile(ms, 95)),
                      p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
                      max_ms=float(ms.max()))


def grpc_failures(metrics_url: str) -> dict[str, float]:
    """gRPC calls the API answered with anything but OK so far, by (HTTP-equivalent) status;
    499 (the caller went away) is left out: h2load cancels the streams in flight when its
    warm-up and its duration end."""
    text = httpx.get(metrics_url, timeout=10).text
    failed: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            status = sample.labels.get("status", "")
            if (sample.name == "maskfleet_http_requests_total" and status not in ("200", "499")
                    and sample.labels.get("protocol") == "grpc"):
                failed[status] = failed.get(status, 0.0) + sample.value
    return failed

"""`make bench-peers`: maskfleet, MLServer and PyTriton on the same SavedModel, side by side.

The run reuses `make bench`'s pieces: the same exported model and temporary model repository
(`loadtest.bench._prepare`), the in-process ceiling measured first and again around every load
run (`Bench.around`), wrk at each concurrency after a warm-up (`Bench.load`), the same report
JSON. Each server runs alone, one after another, since each wants both cores. The peers run
from their own virtualenv (var/peers-venv, `loadtest/peers/requirements.txt`); this driver runs
in the project's, where maskfleet and the ceiling live.

Before loading a server it gets one request: its answer must hold a PNG mask of the JPEG's
size, and the share of its pixels equal to maskfleet's mask is reported, so every row is known
to do the same work.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from PIL import Image

from loadtest import servers
from loadtest.bench import Bench, Workspace, _ceiling_section, _prepare
from loadtest.peers import launch
from loadtest.peers.payloads import Body, agreement, base64_body, binary_body, masks_from_answer
from loadtest.peers.table import print_table, rows
from loadtest.profiling import Profiler
from loadtest.report import Report
from shared.logging import configure_logging
from shared.model.runtime import SAVEDMODEL

log = logging.getLogger("bench-peers")

PEERS = ("maskfleet", "mlserver", "pytriton")
DEFAULT_PYTHON = servers.REPO / "var" / "peers-venv" / "bin" / "python"


def _answer_mask(url: str, body: Body, size: tuple[int, int]) -> bytes:
    """One request before the load; the PNG mask in its answer, checked for the image's size."""
    answer = httpx.post(url, content=body.data, timeout=120,
                        headers={"Content-Type": body.content_type, **body.headers})
    if answer.status_code != 200:
        raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:300]}")
    masks = masks_from_answer(answer.content, answer.headers)
    if len(masks) != 1 or Image.open(io.BytesIO(masks[0])).size != size:
        raise RuntimeError(f"{url} answered {len(masks)} masks, not one of size {size}")
    return masks[0]


class PeersBench:
    """The servers of one run, each measured with the same JPEG and the same wrk settings."""

    def __init__(self, bench: Bench, ws: Workspace) -> None:
        self.bench, self.ws = bench, ws
        self.jpeg = ws.jpeg.read_bytes()
        self.size = Image.open(io.BytesIO(self.jpeg)).size
        self.reference: bytes | None = None
        self.bodies = 0

    def measure(self, server: str, payload: str, process: servers.Process, path: str,
                body: Body, metrics: str | None = None) -> None:
        url = f"{process.url}{path}"
        mask = _answer_mask(url, body, self.size)
        if self.reference is None:
            self.reference = mask
        share = agreement(mask, self.reference)
        self.bodies += 1
        file = self.ws.root / f"body-{self.bodies}.bin"
        file.write_bytes(body.data)
        figures = self.bench.load("peers", f"{server} {payload}", url, file, body.content_type,
                                  process, metrics=metrics, headers=body.headers)
        for connections, f in figures.items():
            f.extra.update(server=server, payload=payload, connections=connections,
                           agreement=round(share, 4), body_bytes=len(body.data))

    def maskfleet(self, redis_url: str) -> None:
        api = launch.as_tree(servers.start_api(self.ws.logs, models=self.ws.models,
                                               redis_url=redis_url, cache=False,
                                               extra_env=self.bench.api_env))
        with servers.running(api):
            metrics = f"{api.url}/metrics"
            self.measure("maskfleet", "v2 BYTES binary [1]", api, "/v2/models/unet/infer",
                         binary_body(self.jpeg, [1]), metrics)
            self.measure("maskfleet", "/v1/segment raw JPEG", api, "/v1/segment",
                         Body(self.jpeg, "image/jpeg", {}), metrics)

    def peer(self, name: str, start: Callable[..., launch.TreeProcess], python: Path,
             payload: str, body: Body) -> None:
        process = start(self.ws.logs, python=python, saved_model=self.ws.saved_model)
        with servers.running(process):
            self.measure(name, payload, process, "/v2/models/unet/infer", body)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-peers-report.json"))
    parser.add_argument("--peers-python", type=Path, default=DEFAULT_PYTHON,
                        help="python of the virtualenv holding MLServer and PyTriton")
    parser.add_argument("--seconds", type=float, default=3.0, help="per ceiling measurement")
    parser.add_argument("--nearby-seconds", type=float, default=2.0,
                        help="ceiling re-measured before and after each run (0: use the first)")
    parser.add_argument("--load-seconds", type=float, default=8.0, help="per wrk run")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="before each wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--only", action="append", default=[], choices=PEERS,
                        help="servers to run (repeatable; default all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    configure_logging("WARNING")
    wanted = args.only or list(PEERS)
    python = args.peers_python.absolute()
    if any(p != "maskfleet" for p in wanted) and not python.exists():
        raise SystemExit(f"{python} not found: `make bench-peers` creates it")
    report = Report(context=_context(wanted))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maskfleet-bench-peers-") as tmp:
        ws, model = _prepare(Path(tmp), variants=False)
        bench = Bench(report, model, _ceiling_section(report, model, args.seconds),
                      args.concurrency, args.load_seconds, args.warmup_seconds,
                      args.nearby_seconds, Profiler(None),
                      {"MASKFLEET_MODEL_VARIANT": SAVEDMODEL})
        run = PeersBench(bench, ws)
        jpeg = run.jpeg
        if "maskfleet" in wanted:
            with servers.running(servers.start_redis(ws.logs)) as redis:
                run.maskfleet(f"redis://127.0.0.1:{redis.port}/0")
        if "mlserver" in wanted:
            run.peer("mlserver", launch.start_mlserver, python, "v2 BYTES base64 JSON [1]",
                     base64_body(jpeg))
        if "pytriton" in wanted:
            run.peer("pytriton", launch.start_triton, python, "v2 BYTES binary [1, 1]",
                     binary_body(jpeg, [1, 1]))
        ceiling = bench.ceiling.best_images_per_s
    found = rows(report.figures)
    report.context["side_by_side"] = [
        {"server": r.server, "payload": r.payload, "agreement": r.agreement,
         "cells": {str(c): vars(cell) for c, cell in r.cells.items()}} for r in found]
    report.context["bench_seconds"] = round(time.perf_counter() - started, 1)
    report.write_json(args.out)
    print_table(found, ceiling)
    print(f"report written to {args.out} in {report.context['bench_seconds']} s")


def _context(wanted: list[str]) -> dict[str, object]:
    return {
        "model": "U-Net MobileNetV2 alpha 1.0, 128x128 (PRODUCT.md), untrained weights; the "
                 "same SavedModel for every server",
        "work": "one 500x375 synthetic-pet JPEG per request as a v2 BYTES tensor, decoded and "
                "resized server side; a PNG trimap at 500x375 back",
        "servers": {
            "maskfleet": "python -m services.inference, cache off (MASKFLEET_CACHE_ENABLED="
                         "false), default batching (16 images, 5 ms)",
            "mlserver": "mlserver start, custom MLModel runtime (loadtest/peers/"
                        "mlserver_runtime.py), adaptive batching max_batch_size 16, "
                        "max_batch_time 5 ms, default 1 inference worker process",
            "pytriton": "PyTriton @batch function (loadtest/peers/triton_server.py), dynamic "
                        "batcher max_batch_size 16, max_queue_delay 5000 us, Triton HTTP",
        },
        "payloads": "maskfleet and Triton: binary tensor extension (tritonclient.http's "
                    "layout), mask_png as binary data; MLServer: base64 in JSON (its REST API "
                    "has no binary extension); maskfleet also /v1/segment with the raw JPEG",
        "x_ceiling": "images/s over the in-process best-batch throughput of the SavedModel, "
                     "the mean of one measurement right before and one right after that run",
        "cpu_ms": "CPU per request of the server's whole process tree (all processes and "
                  "threads), from /proc; x_ceil_cpu = ceiling CPU per image / cpu_ms",
        "agreement": "share of mask pixels equal to maskfleet's v2 answer for the same JPEG "
                     "(the peers decode the whole JPEG with Pillow; maskfleet's request path "
                     "decodes at reduced DCT scale)",
        "servers_run": wanted,
    }

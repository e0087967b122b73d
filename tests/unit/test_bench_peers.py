"""`make bench-peers`' own logic: request bodies, reading masks back, the peers' per-image work,
process-tree CPU and the side-by-side table (the peers themselves run only in the bench)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from loadtest import servers
from loadtest.images import pet_image
from loadtest.peers.launch import TreeProcess, descendants
from loadtest.peers.payloads import (
    HEADER_LENGTH,
    agreement,
    base64_body,
    binary_body,
    masks_from_answer,
)
from loadtest.peers.pipeline import segment
from loadtest.peers.table import rows, table
from loadtest.report import Figure
from shared.imaging import mask_from_class_ids, preprocess
from shared.model.serving import LoadedModel


def _png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def test_binary_body_is_the_triton_binary_tensor_layout():
    body = binary_body(b"\xff\xd8jpeg\xff\xd9", [1, 1])
    length = int(body.headers[HEADER_LENGTH])
    head = json.loads(body.data[:length])
    raw = body.data[length:]
    assert head["inputs"][0] == {"name": "image_bytes", "shape": [1, 1], "datatype": "BYTES",
                                 "parameters": {"binary_data_size": len(raw)}}
    assert head["outputs"] == [{"name": "mask_png", "parameters": {"binary_data": True}}]
    assert raw == (8).to_bytes(4, "little") + b"\xff\xd8jpeg\xff\xd9"
    assert body.content_type == "application/octet-stream"


def test_base64_body_carries_the_same_jpeg_in_json():
    jpeg = pet_image(0)
    body = base64_body(jpeg)
    tensor = json.loads(body.data)["inputs"][0]
    assert (tensor["datatype"], tensor["shape"]) == ("BYTES", [1])
    assert tensor["parameters"] == {"content_type": "base64"}
    assert base64.b64decode(tensor["data"][0]) == jpeg
    assert body.content_type == "application/json"
    assert body.headers == {}


def test_masks_are_read_from_binary_json_and_plain_png_answers():
    mask = _png(np.full((3, 4), 2))
    other = _png(np.full((3, 4), 1))
    # Triton: another binary output first, then mask_png with two elements
    head = json.dumps({"outputs": [
        {"name": "mask", "datatype": "UINT8", "shape": [1, 3, 4],
         "parameters": {"binary_data_size": 12}},
        {"name": "mask_png", "datatype": "BYTES", "shape": [2, 1],
         "parameters": {"binary_data_size": 8 + len(mask) + len(other)}}]}).encode()
    raw = bytes(12) + b"".join(len(m).to_bytes(4, "little") + m for m in (mask, other))
    assert masks_from_answer(head + raw, {HEADER_LENGTH.lower(): str(len(head))}) == [mask, other]
    # MLServer: base64 strings in JSON
    doc = {"outputs": [{"name": "mask_png", "shape": [1, 1], "datatype": "BYTES",
                        "data": [base64.b64encode(mask).decode()]}]}
    assert masks_from_answer(json.dumps(doc).encode(), {}) == [mask]
    # maskfleet /v1/segment: the PNG itself
    assert masks_from_answer(mask, {"content-type": "image/png"}) == [mask]
    with pytest.raises(ValueError, match="no mask_png"):
        masks_from_answer(json.dumps({"outputs": []}).encode(), {})


def test_agreement_is_the_share_of_equal_pixels():
    base = np.full((4, 5), 2)
    changed = base.copy()
    changed[0, :2] = 1
    assert agreement(_png(base), _png(base)) == 1.0
    assert agreement(_png(changed), _png(base)) == pytest.approx(18 / 20)
    assert agreement(_png(base), _png(np.full((5, 4), 2))) == 0.0


def test_peer_pipeline_does_the_work_maskfleet_does(tiny_model_repo: Path):
    """JPEGs of several sizes in, one PNG trimap each at the JPEG's size, nearly equal to the
    mask maskfleet's own pre/post-processing makes with the same model."""
    model = LoadedModel(tiny_model_repo / "unet" / "1")
    jpegs = [pet_image(i, size) for i, size in enumerate([(500, 375), (320, 240), (64, 96)])]
    masks = segment(jpegs, model.class_ids, model.input_size)
    assert len(masks) == 3
    for jpeg, png in zip(jpegs, masks, strict=True):
        pixels, size = preprocess(jpeg, model.input_size)
        ours = Image.open(io.BytesIO(png))
        assert (ours.format, ours.mode, ours.size) == ("PNG", "L", size)
        assert set(np.unique(np.asarray(ours))) <= {1, 2, 3}
        reference = mask_from_class_ids(model.class_ids(pixels[None])[0], size)
        assert agreement(png, _png(reference)) > 0.9


def test_descendants_walk_the_whole_tree():
    parents = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    assert sorted(descendants(10, parents)) == [10, 11, 12, 13]
    assert descendants(99, parents) == [99]


def test_tree_cpu_counts_the_servers_children(tmp_path: Path):
    """A peer's inference runs in child processes (MLServer's worker, tritonserver): their CPU
    is the server's too, which the PID's own counters miss."""
    burn = ("import sys, time\nstart = time.process_time()\n"
            "while time.process_time() - start < 0.4: pass\n"
            "print('done', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "$0"; true', burn],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    tree = TreeProcess("burner", [], 0, tmp_path / "log", proc=proc)
    plain = servers.Process("burner", [], 0, tmp_path / "log", proc=proc)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"done\n"
        assert tree.cpu_seconds() >= 0.3
        assert plain.cpu_seconds() < 0.1
    finally:
        tree.stop(timeout=5)
    assert proc.poll() is not None


def _figure(server: str, payload: str, connections: int, rate: float, ratio: float,
            errors: int = 0) -> Figure:
    return Figure("peers", f"{server} {payload} c={connections}", rate, "img/s", ratio,
                  p50_ms=50.0, p99_ms=120.0 + connections, cpu_ms=10.0, cpu_ratio=0.7,
                  extra={"server": server, "payload": payload, "connections": connections,
                         "errors": errors, "agreement": 0.995})


def test_side_by_side_rows_group_each_server_by_concurrency():
    figures = [Figure("ceiling", "in-process batch 16 (best)", 150.0, "img/s", 1.0),
               _figure("maskfleet", "v2 binary", 8, 100.0, 0.66),
               _figure("maskfleet", "v2 binary", 32, 110.0, 0.73),
               _figure("mlserver", "v2 base64", 8, 90.0, 0.6, errors=2),
               _figure("mlserver", "v2 base64", 32, 95.0, 0.63, errors=1)]
    found = rows(figures)
    assert [(r.server, r.payload) for r in found] == [("maskfleet", "v2 binary"),
                                                      ("mlserver", "v2 base64")]
    assert sorted(found[0].cells) == [8, 32]
    assert found[1].cells[32].x_ceiling == 0.63
    console = Console(record=True, width=300)
    console.print(table(found, 150.0))
    text = console.export_text()
    assert "ceiling 150.0 img/s" in text
    assert "c=32 x ceiling" in text
    mlserver = next(line for line in text.splitlines() if "mlserver" in line)
    for shown in ("0.60", "0.63", "99.5%"):
        assert shown in mlserver
    assert " 3 " in mlserver  # errors over both concurrencies

"""The request bodies `make bench-peers` sends and how it reads the masks back.

Every server gets the same work: one 500x375 JPEG as an Open Inference Protocol v2 `BYTES`
tensor, decoded and resized server side, a PNG trimap at the image's size back. Raw JPEG
rather than a pre-resized tensor because that is what clients of a segmentation service hold,
and because a pre-resized float tensor (128x128x3 float32 = 196 KB, ~5x the JPEG) would move
the decode to the client and measure the wire format more than the server.

Each server takes it in its own idiomatic encoding:
- Triton and maskfleet: the binary tensor extension (what `tritonclient.http` sends): a JSON
  header, then the tensor's raw bytes (4-byte little-endian length + the JPEG), the header's
  length in `Inference-Header-Content-Length`; `mask_png` asked for as binary data. Triton
  batches along the first dimension, so its tensor is `[1, 1]`; maskfleet's is `[1]`.
- MLServer: its REST API has no binary extension, so the JPEG travels base64 in the JSON body
  (`parameters.content_type = "base64"`, MLServer's Base64Codec), the mask likewise.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT, OUTPUT = "image_bytes", "mask_png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Body:
    """One request body and the headers it needs; `content_type` goes to wrk."""

    data: bytes
    content_type: str
    headers: dict[str, str]


def binary_body(jpeg: bytes, shape: Sequence[int]) -> Body:
    """The JPEG as a binary `BYTES` tensor of `shape`, `mask_png` back as binary data."""
    raw = len(jpeg).to_bytes(4, "little") + jpeg
    head = json.dumps({"inputs": [{"name": INPUT, "shape": list(shape), "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}]},
                      separators=(",", ":")).encode()
    return Body(head + raw, "application/octet-stream", {HEADER_LENGTH: str(len(head))})


def base64_body(jpeg: bytes) -> Body:
    """The JPEG base64-encoded in a JSON `BYTES` tensor `[1]`, as MLServer's REST API takes it."""
    doc = {"inputs": [{"name": INPUT, "shape": [1], "datatype": "BYTES",
                       "parameters": {"content_type": "base64"},
                       "data": [base64.b64encode(jpeg).decode("ascii")]}]}
    return Body(json.dumps(doc, separators=(",", ":")).encode(), "application/json", {})


def masks_from_answer(body: bytes, headers: Mapping[str, str]) -> list[bytes]:
    """The PNGs of `mask_png` in a v2 answer: binary (Triton's layout) or base64 in JSON; or
    the PNG itself (maskfleet's /v1/segment answer)."""
    if body.startswith(PNG_SIGNATURE):
        return [body]
    lowered = {k.lower(): v for k, v in headers.items()}
    length = lowered.get(HEADER_LENGTH.lower())
    head = json.loads(body[:int(length)] if length is not None else body)
    binary = body[int(length):] if length is not None else b""
    for output in head["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            raw, binary = binary[:size], binary[size:]
            if output["name"] == OUTPUT:
                return _split_bytes(raw)
        elif output["name"] == OUTPUT:
            return [base64.b64decode(item) for item in _flat(output["data"])]
    raise ValueError(f"no {OUTPUT} output in the answer: {head}")


def _split_bytes(raw: bytes) -> list[bytes]:
    """Triton's serialised BYTES tensor: each element a 4-byte little-endian length, then it."""
    items, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at:at + 4], "little")
        items.append(raw[at + 4:at + 4 + size])
        at += 4 + size
    return items


def _flat(data: object) -> list[str]:
    if isinstance(data, list):
        return [item for element in data for item in _flat(element)]
    return [str(data)]


def agreement(mask: bytes, reference: bytes) -> float:
    """Share of pixels two PNG masks agree on (0.0 when their sizes differ)."""
    ours, theirs = (np.asarray(Image.open(io.BytesIO(m))) for m in (mask, reference))
    if ours.shape != theirs.shape:
        return 0.0
    return float(np.count_nonzero(ours == theirs)) / ours.size

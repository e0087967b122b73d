"""Open Inference Protocol v2 (KServe/Triton REST) tensors: parsing requests, building answers.

Pure functions, no HTTP. Requests carry exactly one input tensor:
- `UINT8 [N, H, W, 3]`: raw RGB pixels; masks come back at `H x W`;
- `BYTES [N]` (or `[N, 1]`): encoded JPEG/PNG images; in JSON each element is a base64 string
  (JSON strings cannot hold arbitrary bytes), with the binary extension the raw bytes.
Outputs: `mask` (`UINT8 [N, H, W]`, trimap values 1/2/3; needs images of one size) and/or
`mask_png` (`BYTES [N]`, one PNG per image, any sizes); `mask` when none is named.

Triton's binary tensor data extension is supported both ways (an `Inference-Header-Content-
Length` header splits the JSON header from the raw tensors), because standard clients such as
`tritonclient.http` use it by default, and because it keeps pixels and masks out of JSON lists.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidInferenceRequest, PayloadTooLarge, TooManyPixels
from shared.imaging import Mask
from shared.masks import encode_png

HEADER_LENGTH = "Inference-Header-Content-Length"
MASK = "mask"
MASK_PNG = "mask_png"
OUTPUTS = (MASK, MASK_PNG)
UINT8 = "UINT8"
BYTES = "BYTES"


class TensorInput(BaseModel):
    """One input tensor; the schema carries what JSON Schema can say (datatypes, dimension
    counts and sizes), the parser the rest (data length = product of the shape)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=256)
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=4)
    datatype: Literal["UINT8", "BYTES"]
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class TensorOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Literal["mask", "mask_png"]
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorInput] = Field(min_length=1, max_length=1)
    outputs: list[TensorOutput] | None = None


@dataclass(frozen=True)
class InferInput:
    """A validated request: either `pixels` or `encoded` is set."""

    id: str | None
    pixels: npt.NDArray[np.uint8] | None
    encoded: list[bytes] | None
    outputs: dict[str, bool]
    """Requested output name -> send it as binary data."""
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Budget:
    """What one request may cost, checked from shapes and image headers before decoding.

    Every output is built from full-size masks, so the pixels of a request's images bound its
    memory; the `mask` tensor costs more (stacked, then serialised) and as JSON every pixel
    becomes a list entry (~10 bytes while it is built), hence the smaller limits.
    """

    image_pixels: int
    """Largest width x height of one image."""
    request_pixels: int
    """Sum over a request's images."""
    mask_pixels: int
    """Sum over the masks of a `mask` (UINT8) output."""
    json_mask_pixels: int
    """Sum over the masks of a `mask` output sent as JSON rather than binary data."""


def check_budget(sizes: Sequence[tuple[int, int]], outputs: dict[str, bool],
                 budget: Budget) -> int:
    """The request's total pixels, or 413 `too_many_pixels` naming the limit it breaks."""
    total = sum(w * h for w, h in sizes)
    if total > budget.request_pixels:
        raise TooManyPixels(f"the request's images have {total} pixels in all; at most "
                            f"{budget.request_pixels} are accepted per request")
    if MASK in outputs:
        if total > budget.mask_pixels:
            raise TooManyPixels(f"a `{MASK}` output of {total} pixels is more than the "
                                f"{budget.mask_pixels} allowed; request `{MASK_PNG}` instead")
        if not outputs[MASK] and total > budget.json_mask_pixels:
            raise TooManyPixels(
                f"a JSON `{MASK}` output of {total} pixels is more than the "
                f"{budget.json_mask_pixels} allowed; ask for binary data "
                f"(parameters.binary_data) or the `{MASK_PNG}` output")
    return total


def parse_request(body: bytes, header_length: str | None, *, max_images: int,
                  budget: Budget) -> InferInput:
    """Body bytes (JSON, or JSON + binary tensors) -> validated input; 400/413 otherwise."""
    head, binary = _split(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        raise _invalid(exc) from None
    tensor = request.inputs[0]
    return to_input(tensor, _binary_slice(tensor, binary), request_id=request.id,
                    parameters=request.parameters, outputs=_outputs(request),
                    max_images=max_images, budget=budget)


def tensor_input(name: str, shape: list[int], datatype: str) -> TensorInput:
    """A tensor another transport (gRPC) received, held to the schema REST's JSON meets."""
    try:
        return TensorInput(name=name, shape=shape, datatype=datatype)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _invalid(exc, "inputs.0") from None


def _invalid(exc: ValidationError, where: str = "") -> InvalidInferenceRequest:
    problems = "; ".join(
        f"{'.'.join([where] * bool(where) + list(map(str, e['loc']))) or 'body'}: {e['msg']}"
        for e in exc.errors()[:5])
    return InvalidInferenceRequest(f"not a valid inference request: {problems}")


def to_input(tensor: TensorInput, raw: bytes | None, *, request_id: str | None,
             parameters: dict[str, Any], outputs: dict[str, bool], max_images: int,
             budget: Budget) -> InferInput:
    """One input tensor, as any transport received it, checked against the tensor rules.

    `raw` is the tensor's flattened row-major bytes (Triton's layout: BYTES elements carry a
    little-endian uint32 length prefix); without it the values are read from `tensor.data`
    (JSON lists; BYTES as base64 strings). REST and gRPC both end here, so both refuse the same
    shapes, counts and budgets with the same errors.
    """
    count = tensor.shape[0] if tensor.shape else 0
    if not 1 <= count <= max_images:
        limit = f"between 1 and {max_images}"
        error = PayloadTooLarge if count > max_images else InvalidInferenceRequest
        raise error(f"a request carries {limit} images; shape {tensor.shape} has {count}")
    if tensor.datatype == UINT8:
        pixels, encoded = _pixels(tensor, raw, outputs, budget), None
    elif tensor.datatype == BYTES:
        pixels, encoded = None, _encoded(tensor, raw)
    else:
        raise InvalidInferenceRequest(
            f"input datatype {tensor.datatype!r} is not accepted: send UINT8 [N,H,W,3] pixels "
            f"or BYTES [N] encoded images")
    return InferInput(request_id, pixels, encoded, outputs, parameters)


def choose_outputs(names: Sequence[tuple[str, bool]], default_binary: bool) -> dict[str, bool]:
    """Requested `(name, binary)` pairs -> the outputs to build; `mask` when none is named."""
    if not names:
        return {MASK: default_binary}
    chosen: dict[str, bool] = {}
    for name, binary in names:
        if name not in OUTPUTS:
            raise InvalidInferenceRequest(
                f"unknown output {name!r}; available: {', '.join(OUTPUTS)}")
        chosen[name] = binary
    return chosen


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not _ascii_digits(header_length) or not 0 < int(header_length) <= len(body):
        raise InvalidInferenceRequest(
            f"{HEADER_LENGTH} must be a length within the body ({len(body)} bytes)")
    n = int(header_length)
    return body[:n], body[n:]


def _ascii_digits(text: str) -> bool:
    """`str.isdigit` also accepts superscripts and other scripts' digits, which `int` refuses."""
    return text.isascii() and text.isdigit()


def _binary_slice(tensor: TensorInput, binary: bytes) -> bytes | None:
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise InvalidInferenceRequest("binary data follows the JSON header but no input "
                                          "declares parameters.binary_data_size")
        return None
    if not isinstance(size, int) or size != len(binary):
        raise InvalidInferenceRequest(
            f"binary_data_size {size!r} does not match the {len(binary)} bytes after the header")
    return binary


def _pixels(tensor: TensorInput, raw: bytes | None, outputs: dict[str, bool],
            budget: Budget) -> npt.NDArray[np.uint8]:
    shape = tensor.shape
    if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise InvalidInferenceRequest(f"UINT8 input must have shape [N, H, W, 3]; got {shape}")
    if shape[1] * shape[2] > budget.image_pixels:
        raise TooManyPixels(f"{shape[2]}x{shape[1]} is more than the {budget.image_pixels} "
                            "pixels allowed per image")
    check_budget([(shape[2], shape[1])] * shape[0], outputs, budget)
    expected = int(np.prod(shape))
    if raw is not None:
        flat = np.frombuffer(raw, dtype=np.uint8)
    elif tensor.data is not None:
        flat = _uint8_from_json(tensor.data)
    else:
        raise InvalidInferenceRequest("the input has neither `data` nor binary data")
    if flat.size != expected:
        raise InvalidInferenceRequest(f"shape {shape} needs {expected} values; got {flat.size}")
    return flat.reshape(shape)


def _uint8_from_json(data: list[Any]) -> npt.NDArray[np.uint8]:
    try:
        values = np.asarray(data)
    except ValueError:
        raise InvalidInferenceRequest("`data` is a ragged nested list") from None
    if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
        raise InvalidInferenceRequest("UINT8 `data` must hold integers from 0 to 255")
    return values.astype(np.uint8).ravel()


def _encoded(tensor: TensorInput, raw: bytes | None) -> list[bytes]:
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInferenceRequest(f"BYTES input must have shape [N] or [N, 1]; got {shape}")
    if raw is not None:
        items = _deserialize_bytes(raw)
    elif tensor.data is not None:
        items = [_b64(item) for item in _flatten(tensor.data)]
    else:
        raise InvalidInferenceRequest("the input has neither `data` nor binary data")
    if len(items) != shape[0]:
        raise InvalidInferenceRequest(f"shape {shape} needs {shape[0]} images; got {len(items)}")
    return items


def _flatten(data: list[Any]) -> list[Any]:
    return [x for item in data for x in (_flatten(item) if isinstance(item, list) else [item])]


def _b64(item: object) -> bytes:
    if not isinstance(item, str):
        raise InvalidInferenceRequest("BYTES elements in JSON must be base64 strings")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInferenceRequest("a BYTES element is not valid base64") from None


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES layout: each element is a little-endian uint32 length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInferenceRequest("truncated BYTES tensor (length prefix)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInferenceRequest("truncated BYTES tensor (element)")
        items.append(raw[offset:offset + length])
        offset += length
    return items


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _outputs(request: InferenceRequest) -> dict[str, bool]:
    default_binary = request.parameters.get("binary_data_output") is True
    return choose_outputs(
        [(o.name, o.parameters.get("binary_data", default_binary) is True)
         for o in request.outputs or ()], default_binary)


@dataclass(frozen=True)
class OutputTensor:
    """One output, wire-free: `raw` is its flattened bytes in Triton's layout (what gRPC sends
    as `raw_output_contents` and REST as binary data); `items` the PNGs of `mask_png`."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes
    array: npt.NDArray[np.uint8] | None = None
    items: list[bytes] | None = None

    def json_data(self) -> list[Any]:
        """The values as the JSON `data` list (BYTES as base64 strings)."""
        if self.items is not None:
            return [base64.b64encode(p).decode() for p in self.items]
        assert self.array is not None
        values: list[Any] = self.array.ravel().tolist()
        return values


def output_tensors(masks: Sequence[Mask], names: Sequence[str]) -> list[OutputTensor]:
    """The requested outputs built from the masks (PNG encoding included: the costly part)."""
    tensors: list[OutputTensor] = []
    for name in names:
        if name == MASK:
            if len({m.shape for m in masks}) > 1:
                raise InvalidInferenceRequest(
                    "the images differ in size, so their masks do not fit one UINT8 tensor: "
                    f"request the `{MASK_PNG}` output instead")
            stacked = np.stack(masks)
            tensors.append(OutputTensor(MASK, UINT8, list(stacked.shape), stacked.tobytes(),
                                        array=stacked))
        else:
            pngs = [encode_png(m) for m in masks]
            tensors.append(OutputTensor(MASK_PNG, BYTES, [len(pngs)], serialize_bytes(pngs),
                                        items=pngs))
    return tensors


def build_response(*, model: str, version: int, request_id: str, masks: Sequence[Mask],
                   outputs: dict[str, bool]) -> tuple[bytes, dict[str, str]]:
    """The REST answer body and extra headers (the header length when binary outputs
    follow)."""
    return render_json(model=model, version=version, request_id=request_id,
                       tensors=output_tensors(masks, list(outputs)), binary=outputs)


def render_json(*, model: str, version: int, request_id: str, tensors: Sequence[OutputTensor],
                binary: dict[str, bool]) -> tuple[bytes, dict[str, str]]:
    """Output tensors as the REST body: JSON, with Triton's binary extension where asked."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": tensor.shape}
        if binary.get(tensor.name, False):
            entry["parameters"] = {"binary_data_size": len(tensor.raw)}
            chunks.append(tensor.raw)
        else:
            entry["data"] = tensor.json_data()
        described.append(entry)
    head = json.dumps({"model_name": model, "model_version": str(version), "id": request_id,
                       "outputs": described}, separators=(",", ":")).encode()
    if not chunks:
        return head, {}
    return head + b"".join(chunks), {HEADER_LENGTH: str(len(head))}

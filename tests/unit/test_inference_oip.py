"""Open Inference Protocol v2 tensors: the JSON shapes of the KServe spec and Triton's binary
extension, checked against the request builder and response parser of tritonclient itself."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from services.inference.oip import Budget, build_response, check_budget, parse_request
from shared.errors import InvalidInferenceRequest, MaskfleetError, PayloadTooLarge, TooManyPixels


def parse(body: dict | bytes, header_length: str | None = None, **limits: int):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    budget = Budget(image_pixels=limits.get("max_pixels", 10_000),
                    request_pixels=limits.get("request_pixels", 40_000),
                    mask_pixels=limits.get("mask_pixels", 20_000),
                    json_mask_pixels=limits.get("json_mask_pixels", 10_000))
    return parse_request(raw, header_length, max_images=limits.get("max_images", 8),
                         budget=budget)


def png(width: int = 5, height: int = 4) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


def triton_body(tensor: InferInput, outputs=None) -> tuple[bytes, str | None]:
    body, json_size = _get_inference_request(
        inputs=[tensor], request_id="r-1", outputs=outputs, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=None)
    return body, None if json_size is None else str(json_size)


def test_uint8_pixels_as_flat_json_list_follow_the_declared_shape():
    pixels = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    parsed = parse({"id": "42", "inputs": [{"name": "images", "shape": [2, 2, 3, 3],
                                            "datatype": "UINT8",
                                            "data": pixels.ravel().tolist()}]})
    assert parsed.id == "42"
    assert parsed.encoded is None
    np.testing.assert_array_equal(parsed.pixels, pixels)
    assert parsed.outputs == {"mask": False}


def test_uint8_pixels_as_nested_json_lists_are_accepted():
    pixels = np.full((1, 2, 2, 3), 7, dtype=np.uint8)
    parsed = parse({"inputs": [{"name": "x", "shape": [1, 2, 2, 3], "datatype": "UINT8",
                                "data": pixels.tolist()}]})
    np.testing.assert_array_equal(parsed.pixels, pixels)


def test_bytes_input_in_json_is_base64():
    images = [png(), png(7, 3)]
    parsed = parse({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                                "data": [base64.b64encode(i).decode() for i in images]}],
                    "outputs": [{"name": "mask_png"}]})
    assert parsed.encoded == images
    assert parsed.outputs == {"mask_png": False}


def test_tritonclient_binary_requests_parse_to_the_same_tensors():
    pixels = np.random.default_rng(0).integers(0, 256, (1, 4, 5, 3), dtype=np.uint8)
    tensor = InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    body, header_length = triton_body(tensor)
    parsed = parse(body, header_length)
    np.testing.assert_array_equal(parsed.pixels, pixels)
    assert parsed.outputs == {"mask": True}  # tritonclient asks for binary outputs by default

    images = np.array([png(), png(2, 9)], dtype=np.object_)
    tensor = InferInput("image_bytes", [2], "BYTES")
    tensor.set_data_from_numpy(images)
    body, header_length = triton_body(tensor, [InferRequestedOutput("mask", binary_data=False)])
    parsed = parse(body, header_length)
    assert parsed.encoded == list(images)
    assert parsed.outputs == {"mask": False}


def test_responses_read_back_with_tritonclient_in_json_and_binary():
    masks = [np.array([[1, 2], [3, 1]], np.uint8), np.array([[2, 2], [2, 3]], np.uint8)]
    for binary in (False, True):
        body, headers = build_response(model="unet", version=3, request_id="abc", masks=masks,
                                       outputs={"mask": binary, "mask_png": binary})
        result = InferResult.from_response_body(
            body, header_length=headers.get("Inference-Header-Content-Length"))
        answer = result.get_response()
        assert (answer["model_name"], answer["model_version"], answer["id"]) == \
            ("unet", "3", "abc")
        np.testing.assert_array_equal(result.as_numpy("mask"), np.stack(masks))
        pngs = result.as_numpy("mask_png")
        decoded = [base64.b64decode(p) if not binary else p for p in pngs]
        for mask, data in zip(masks, decoded, strict=True):
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), mask)


def test_masks_of_different_sizes_need_the_png_output():
    masks = [np.ones((2, 2), np.uint8), np.ones((3, 2), np.uint8)]
    with pytest.raises(InvalidInferenceRequest, match="mask_png"):
        build_response(model="unet", version=1, request_id="x", masks=masks,
                       outputs={"mask": False})


def uint8(shape: list[int], data: list | None = None, **extra) -> dict:
    tensor = {"name": "images", "shape": shape, "datatype": "UINT8", **extra}
    if data is not None:
        tensor["data"] = data
    return {"inputs": [tensor]}


@pytest.mark.parametrize(("body", "header_length", "error", "fragment"), [
    (b"{not json", None, InvalidInferenceRequest, "not a valid inference request"),
    ({"inputs": []}, None, InvalidInferenceRequest, "inputs"),
    ({"inputs": [{"name": "a"}]}, None, InvalidInferenceRequest, "shape"),
    ({"inputs": [uint8([1, 1, 1, 3], [0, 0, 0])["inputs"][0]] * 2}, None,
     InvalidInferenceRequest, "inputs"),
    (uint8([1, 1, 1, 3], [0, 0, 0]) | {"outputs": [{"name": "logits"}]}, None,
     InvalidInferenceRequest, "outputs.0.name: Input should be 'mask' or 'mask_png'"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, None,
     InvalidInferenceRequest, "datatype"),
    (uint8([1, 2, 2], [0, 0, 0, 0]), None, InvalidInferenceRequest, "[N, H, W, 3]"),
    (uint8([1, 1, 2, 3], [0, 0, 0]), None, InvalidInferenceRequest, "needs 6 values"),
    (uint8([1, 1, 1, 3], [0, 0, 256]), None, InvalidInferenceRequest, "0 to 255"),
    (uint8([1, 1, 1, 3], [0, 0.5, 1]), None, InvalidInferenceRequest, "0 to 255"),
    (uint8([1, 1, 1, 3], [[0, 0], [0]]), None, InvalidInferenceRequest, "ragged"),
    (uint8([1, 1, 1, 3]), None, InvalidInferenceRequest, "neither"),
    (uint8([0, 1, 1, 3], []), None, InvalidInferenceRequest, "greater than or equal to 1"),
    (uint8([9, 1, 1, 3], [0] * 27), None, PayloadTooLarge, "between 1 and 8"),
    (uint8([1, 200, 200, 3], [0]), None, TooManyPixels, "pixels"),
    ({"inputs": [{"name": "b", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, None,
     InvalidInferenceRequest, "base64"),
    ({"inputs": [{"name": "b", "shape": [1], "datatype": "BYTES", "data": [5]}]}, None,
     InvalidInferenceRequest, "base64 strings"),
    ({"inputs": [{"name": "b", "shape": [2], "datatype": "BYTES", "data": ["AA=="]}]}, None,
     InvalidInferenceRequest, "needs 2 images"),
    (b'{"inputs": []}', "500", InvalidInferenceRequest, "Inference-Header-Content-Length"),
    (b'{"inputs": []}', "ten", InvalidInferenceRequest, "Inference-Header-Content-Length"),
    # digits to str.isdigit, not to int (was a 500)
    (b'{"inputs": []}', "\u00b2", InvalidInferenceRequest, "Inference-Header-Content-Length"),
    (b'{"inputs": []}', "\u0661\u0662", InvalidInferenceRequest, "Inference-Header-Content-Length"),
])
def test_malformed_requests_are_refused_with_a_reason(body, header_length, error, fragment):
    with pytest.raises(MaskfleetError) as caught:
        parse(body, header_length)
    assert type(caught.value) is error
    assert fragment in caught.value.detail
    assert 400 <= caught.value.status < 500


def test_binary_data_must_match_the_declared_size():
    head = json.dumps(uint8([1, 1, 1, 3])).encode()
    with pytest.raises(InvalidInferenceRequest, match="no input declares"):
        parse(head + b"\x00\x00\x00", str(len(head)))
    head = json.dumps({"inputs": [{"name": "images", "shape": [1, 1, 1, 3],
                                   "datatype": "UINT8",
                                   "parameters": {"binary_data_size": 4}}]}).encode()
    with pytest.raises(InvalidInferenceRequest, match="does not match"):
        parse(head + b"\x00\x00\x00", str(len(head)))


def test_truncated_binary_bytes_tensors_are_refused():
    raw = struct.pack("<I", 10) + b"abc"
    head = json.dumps({"inputs": [{"name": "b", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    with pytest.raises(InvalidInferenceRequest, match="truncated"):
        parse(head + raw, str(len(head)))


@pytest.mark.parametrize(("sizes", "outputs", "limit"), [
    ([(100, 100)] * 5, {"mask_png": False}, "per request"),
    ([(100, 150)] * 2, {"mask": True}, "request `mask_png` instead"),
    ([(100, 60)] * 2, {"mask": False}, "binary data"),
])
def test_request_budgets_refuse_before_decoding(sizes, outputs, limit):
    budget = Budget(image_pixels=10_000, request_pixels=40_000, mask_pixels=20_000,
                    json_mask_pixels=10_000)
    with pytest.raises(TooManyPixels, match=limit):
        check_budget(sizes, outputs, budget)
    assert check_budget(sizes[:1], {"mask_png": False}, budget) == sizes[0][0] * sizes[0][1]


def test_a_json_mask_of_declared_pixels_is_refused_before_the_data_is_read():
    request = {"inputs": [{"name": "images", "shape": [4, 60, 60, 3], "datatype": "UINT8",
                           "data": [0]}]}
    with pytest.raises(TooManyPixels, match="binary data"):
        parse(request)

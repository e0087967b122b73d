"""The gRPC load generator's wire format and log parsing (h2load itself runs in `make bench`)."""

from __future__ import annotations

import struct

import numpy as np

from loadtest.grpc_load import bytes_request, frame, parse_log, pixels_request
from loadtest.transport_cpu import parse_dump, per_call
from services.inference.grpc_v2 import grpc_predict_v2_pb2 as pb


def test_frames_are_grpc_length_prefixed_messages():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    body = frame(pixels_request(pixels))
    compressed, length = struct.unpack(">BI", body[:5])
    assert (compressed, length) == (0, len(body) - 5)
    request = pb.ModelInferRequest.FromString(body[5:])
    assert list(request.inputs[0].shape) == [1, 2, 3, 3]
    assert request.raw_input_contents[0] == pixels.tobytes()
    encoded = pb.ModelInferRequest.FromString(frame(bytes_request(b"jpeg"))[5:])
    assert encoded.raw_input_contents[0] == struct.pack("<I", 4) + b"jpeg"
    assert [o.name for o in encoded.outputs] == ["mask_png"]


def test_the_log_gives_throughput_and_percentiles_without_abandoned_streams():
    start = 1_000_000_000
    rows = [f"{start + i * 100_000}\t200\t{(i + 1) * 1000}" for i in range(100)]
    rows += [f"{start + 9_000_000}\t-1\t5000000", f"{start + 9_500_000}\t0\t1"]
    result = parse_log("\n".join(rows) + "\n", 8)
    assert result.requests == 100
    assert result.errors == 0  # gRPC failures are HTTP 200: the API counts them
    assert result.p50_ms == np.percentile(range(1, 101), 50)
    assert result.max_ms == 100.0
    assert result.seconds == 10.0  # first start to last end


DUMP = '''Process 25495: /work/main/.venv/bin/python -m services.inference
Python v3.11.7 (/root/.pyenv/versions/3.11.7/bin/python3.11)

Thread 25495 (idle): "MainThread"
    Runner.run (asyncio/runners.py:118)
Thread 25517 (active): "model"
    Batcher._collect (services/inference/batcher.py:180)
Thread 25519 (idle): "Thread-1 (_poll_wrapper)"
    Thread.run (threading.py:982)
Thread 25829 (idle): "codec_0"
'''


def test_thread_cpu_is_grouped_by_role_per_answered_call():
    names = parse_dump(DUMP)
    assert names == {"25495": "MainThread", "25517": "model",
                     "25519": "Thread-1 (_poll_wrapper)", "25829": "codec_0"}
    before = {"25495:python": 1.0, "25517:python": 2.0, "25829:python": 0.5,
              "25600:python": 10.0, "25601:tf_Compute": 1.0}
    after = {"25495:python": 1.2, "25517:python": 2.1, "25829:python": 0.9,
             "25830:python": 0.1,  # started during the run
             "25600:python": 11.5, "25601:tf_Compute": 1.4, "25519:python": 0.02,
             "25700:event_engine": 0.03}
    figures = per_call(before, after, {**names, "25830": "codec_1"}, calls=100)
    assert figures == {"total": 27.5, "model": 20.0, "codec": 5.0, "MainThread": 2.0,
                       "grpc_event_engine": 0.3, "grpc_poller": 0.2}

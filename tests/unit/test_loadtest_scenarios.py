"""The load-test tooling: Locust scenarios as a user would run them, wrk's summary parsing."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from loadtest.http_load import parse
from tests.servers import REPO

_DESCRIBE = """
import json
from locust import User
import loadtest.locustfile as scenarios
users = {name: {"weight": cls.weight, "tasks": sorted(t.__name__ for t in cls.tasks)}
         for name, cls in vars(scenarios).items()
         if isinstance(cls, type) and issubclass(cls, User)
         and cls.__module__ == scenarios.__name__}
image = scenarios.generated_images()[0]
fresh = scenarios.unique_bytes(image)
print(json.dumps({"users": users, "same": image.data == fresh, "sizes": len({
    i.name.split("-")[-1] for i in scenarios.generated_images()})}))
print(fresh.hex())
print(image.data.hex())
"""


def test_the_locustfile_offers_live_cached_and_batch_scenarios():
    # a subprocess: importing locust monkey-patches the whole interpreter with gevent
    out = subprocess.run([sys.executable, "-c", _DESCRIBE], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=120).stdout.splitlines()
    found = json.loads(out[0])
    assert found["users"] == {
        "LiveSegmentUser": {"weight": 6, "tasks": ["segment_fresh"]},
        "RepeatSegmentUser": {"weight": 3, "tasks": ["segment_repeat"]},
        "BatchJobUser": {"weight": 1, "tasks": ["run_job"]},
    }
    assert found["sizes"] > 3  # a mix of sizes and formats
    fresh, original = bytes.fromhex(out[1]), bytes.fromhex(out[2])
    assert fresh != original  # a new cache key...
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fresh))),  # ...for the same pixels
                          np.asarray(Image.open(io.BytesIO(original))))


def test_wrk_summary_is_read_from_our_lua_line_only():
    stdout = ("Running 8s test @ http://127.0.0.1:1/v1/segment\n  1 threads and 8 connections\n"
              'MASKFLEET-WRK {"requests":800,"duration_us":8000000,"socket_errors":0,'
              '"http_errors":0,"p50_us":9000,"p95_us":12000,"p99_us":20000,'
              '"mean_us":9500.5,"max_us":31000}\n')
    result = parse(stdout, 8)
    assert (result.per_second, result.p95_ms, result.p99_ms) == (100.0, 12.0, 20.0)

"""The request path's own helpers: what they compute must not change with how they do it."""

from __future__ import annotations

import hashlib
import os

import pytest

from services.inference.pipeline import GIL_KEPT_CHUNK, _sha256_holding_gil


@pytest.mark.parametrize("size", [0, 1, GIL_KEPT_CHUNK, GIL_KEPT_CHUNK + 1, 38_306, 256 * 1024])
def test_the_chunked_digest_is_the_sha256_of_the_whole_image(size: int) -> None:
    data = os.urandom(size)
    assert _sha256_holding_gil(memoryview(data)) == hashlib.sha256(data).hexdigest()

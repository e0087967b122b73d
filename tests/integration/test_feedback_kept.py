"""Answers kept durably for a late correction: in the bucket, bounded, and still there for a
fresh API instance after the Redis log has forgotten them.

"Hours later" is made of what actually forgets an answer, not of waiting: the Redis log keeps
answers for 1 s here, the test waits until Redis no longer has them, and the correction goes
to a new API process. Expiry and the count/byte bounds of the durable store are checked
in-process with a clock the test moves. Real Redis, the GCS API (emulator), real uvicorn.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio as aredis
from google.cloud import storage as gcs
from PIL import Image

from services.inference.feedback import KeptAnswers, ServedMask
from services.inference.feedback.kept import BYTES_KEY, INDEX_KEY, entry_name
from shared.storage import join, storage_for
from tests.integration.test_inference_support import photo, start_api, url
from tests.servers import Server, running, wait_until

pytestmark = pytest.mark.integration

REDIS_DB = 13


def bucket(name: str) -> str:
    client = gcs.Client()
    if not client.bucket(name).exists():
        client.create_bucket(name)
    return f"gs://{name}"


def png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask, mode="L").save(out, format="PNG")
    return out.getvalue()


# ---- the store itself: in-process, real Redis and bucket, a clock the test moves ----

class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def answer(token: str, size: int = 100, caller: str = "alice") -> ServedMask:
    return ServedMask(token, caller, f"req-{token}", "unet", 3, b"\xff\xd8" + b"i" * size,
                      "cd" * 32, b"\x89PNG" + b"m" * 20, False)


@pytest.fixture
def kept_env(gcs_emulator: Server, redis_server: Server) -> Iterator[tuple[str, Clock, str]]:
    url_ = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(url_).flushdb()
    uri = join(bucket("kept-store"), "pets", "feedback")
    yield uri, Clock(), url_
    redis.Redis.from_url(url_).flushdb()
    for leftover in storage_for(uri).list(uri + "/"):
        storage_for(leftover).delete(leftover)


def run_store(kept_env: tuple[str, Clock, str], steps, **bounds: int) -> object:
    uri, clock, redis_url = kept_env

    async def main() -> object:
        client = aredis.Redis.from_url(redis_url)
        store = KeptAnswers(uri, client, ttl_seconds=bounds.get("ttl", 3600),
                            max_entries=bounds.get("max_entries", 100),
                            max_bytes=bounds.get("max_bytes", 10**6), sample_rate=0.0,
                            max_entry_bytes=10_000, clock=clock)
        try:
            return await steps(store, clock)
        finally:
            await store.close()
            await client.aclose()

    return asyncio.run(main())


def objects(uri: str) -> list[str]:
    return storage_for(uri).list(join(uri, "kept") + "/")


def test_a_kept_answer_is_found_by_its_token_and_caller_only(kept_env) -> None:
    uri = kept_env[0]

    async def steps(store: KeptAnswers, clock: Clock) -> object:
        assert store.keep(answer("tok-a"), asked=True)
        assert not store.keep(answer("tok-b"), asked=False), "not asked, not sampled"
        assert not store.keep(answer("tok-c", size=20_000), asked=True), "above the entry bound"
        found = await store.find("tok-a", "alice")
        return found, await store.find("tok-a", "mallory"), await store.find("tok-b", "alice")

    found, other_caller, never_kept = run_store(kept_env, steps)
    assert found == answer("tok-a")
    assert other_caller is None
    assert never_kept is None
    name = entry_name("tok-a")
    assert sorted(o.rsplit("/kept/", 1)[1] for o in objects(uri)) == [
        f"{name}/image.jpg", f"{name}/served.png", f"index/{name}.json"]
    assert "tok-a" not in " ".join(objects(uri)), "the token itself is never in a listing"


def test_an_expired_answer_is_refused_and_deleted(kept_env) -> None:
    uri = kept_env[0]

    async def steps(store: KeptAnswers, clock: Clock) -> object:
        store.keep(answer("tok-old"), asked=True)
        assert await store.find("tok-old", "alice") is not None
        clock.now += 3600
        return await store.find("tok-old", "alice")

    assert run_store(kept_env, steps, ttl=3600) is None
    assert objects(uri) == []


def test_the_oldest_answers_go_first_beyond_the_count_and_byte_bounds(kept_env) -> None:
    uri, _, redis_url = kept_env
    size = len(answer("x").image) + len(answer("x").mask_png)

    async def steps(store: KeptAnswers, clock: Clock) -> object:
        for i in range(5):
            clock.now += 1
            store.keep(answer(f"tok-{i}"), asked=True)
            await store.find(f"tok-{i}", "alice")  # waits for this one's write
        return [await store.find(f"tok-{i}", "alice") is not None for i in range(5)]

    assert run_store(kept_env, steps, max_entries=3) == [False, False, True, True, True]
    db = redis.Redis.from_url(redis_url)
    assert db.zcard(INDEX_KEY) == 3
    assert int(db.get(BYTES_KEY) or 0) == 3 * size
    assert len([o for o in objects(uri) if "/index/" in o]) == 3

    db.flushdb()
    for o in objects(uri):
        storage_for(o).delete(o)
    kept_by_bytes = run_store(kept_env, steps, max_bytes=2 * size + 1)
    assert kept_by_bytes == [False, False, False, True, True]
    assert int(db.get(BYTES_KEY) or 0) == 2 * size


# ---- end to end: keep, forget in Redis, correct through a fresh API process ----

@pytest.fixture
def api_settings(gcs_emulator: Server, redis_server: Server) -> Iterator[dict[str, object]]:
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    yield {"redis_url": redis_url,
           "feedback_uri": join(bucket("kept-e2e"), "pets", "feedback"),
           "feedback_sample_rate": 1.0, "feedback_ttl_seconds": 1,
           "stage_poll_seconds": 0, "cache_enabled": "false"}
    redis.Redis.from_url(redis_url).flushdb()


def start(repo: Path, workdir: Path, settings: dict[str, object]) -> Server:
    extra = {k: v for k, v in settings.items() if k != "redis_url"}
    workdir.mkdir(parents=True, exist_ok=True)
    return start_api(repo, workdir, str(settings["redis_url"]), **extra)


def test_a_kept_answer_takes_its_correction_after_redis_forgot_it_in_a_new_instance(
        api_settings: dict[str, object], tiny_model_repo: Path, tmp_path: Path) -> None:
    db = redis.Redis.from_url(str(api_settings["redis_url"]))
    image = photo(31, (80, 60))
    with running(start(tiny_model_repo, tmp_path / "a", api_settings)) as first:
        kept = httpx.post(url(first, "/v1/segment"), params={"keep": "true"}, content=image,
                          headers={"Content-Type": "image/jpeg"}, timeout=60)
        brief = httpx.post(url(first, "/v1/segment"), content=photo(32, (80, 60)),
                           headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert kept.status_code == brief.status_code == 200
    assert kept.headers["x-feedback-kept"] == "durable"
    assert brief.headers["x-feedback-kept"] == "short"
    token, other = kept.headers["x-feedback-token"], brief.headers["x-feedback-token"]
    wait_until(lambda: not db.keys("maskfleet:feedback:served:*"), 30,
               "the Redis log to forget both answers")

    served = np.asarray(Image.open(io.BytesIO(kept.content)))
    fixed = served.copy()
    fixed[:30, :40] = served[:30, :40] % 3 + 1
    with running(start(tiny_model_repo, tmp_path / "b", api_settings)) as second:
        late = httpx.post(url(second, "/v1/feedback"), params={"feedback_token": token},
                          content=png(fixed), headers={"Content-Type": "image/png"}, timeout=30)
        again = httpx.post(url(second, "/v1/feedback"), params={"feedback_token": token},
                           content=png(fixed), headers={"Content-Type": "image/png"}, timeout=30)
        lost = httpx.post(url(second, "/v1/feedback"), params={"feedback_token": other},
                          content=png(served), headers={"Content-Type": "image/png"}, timeout=30)

    assert late.status_code == 200, late.text
    receipt = late.json()
    assert receipt["feedback_token"] == token
    assert 0 < receipt["iou"] < 1
    assert again.status_code == 409, again.text
    assert lost.status_code == 404, lost.text
    trimaps = storage_for(str(api_settings["feedback_uri"])).list(
        join(str(api_settings["feedback_uri"]), "annotations", "trimaps") + "/")
    assert len(trimaps) == 1
    stored = np.asarray(Image.open(io.BytesIO(storage_for(trimaps[0]).read(trimaps[0]))))
    np.testing.assert_array_equal(stored, fixed)

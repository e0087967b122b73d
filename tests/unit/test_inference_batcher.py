"""Micro-batching and hot swaps with a fake model whose calls the test can hold and release."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from services.inference.admission import Deadline
from services.inference.batcher import Batcher, StaleInput
from services.inference.metrics import ApiMetrics
from services.inference.model_holder import ModelHolder
from services.inference.settings import InferenceSettings
from shared.errors import DeadlineExceeded, ModelNotReady, Overloaded
from shared.repository import VersionMetadata

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeModel:
    """Answers class id = version for every pixel; `gate` holds calls until the test opens it."""

    name = "unet"
    variant = "savedmodel"
    load_seconds = 0.0

    def __init__(self, version: int, input_size: int = 4) -> None:
        self.version = version
        self.input_size = input_size
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False

    def class_ids(self, images: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append(len(images))
        if self.fail:
            raise RuntimeError("model exploded")
        return np.full(images.shape[:3], self.version, np.int32)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        pass


class FakeRepository:
    def __init__(self, version: int) -> None:
        self.version = version

    def resolve(self, model: str, *, version: int | None = None, stage: str = "") -> int:
        return version or self.version

    def metadata(self, model: str, version: int) -> VersionMetadata:
        return VersionMetadata(model=model, version=version, metrics={"mean_iou": version / 10})


def pixels(n: int = 1, size: int = 4) -> np.ndarray:
    return np.zeros((n, size, size, 3), np.float32)


async def loaded_holder(models: dict[int, FakeModel], metrics: ApiMetrics,
                        **settings) -> tuple[ModelHolder, FakeRepository]:
    repo = FakeRepository(1)
    holder = ModelHolder(InferenceSettings(**settings), repo, metrics,  # type: ignore[arg-type]
                         loader=models.__getitem__)
    await holder.refresh()
    return holder, repo


async def wait_for(check, what: str) -> None:
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.001)


@pytest.fixture
def metrics() -> ApiMetrics:
    return ApiMetrics()


async def test_concurrent_requests_share_model_calls_within_the_size_limit(metrics):
    model = FakeModel(1)
    holder, _ = await loaded_holder({1: model}, metrics)
    batcher = Batcher(holder, metrics, max_size=4, max_wait_ms=20)
    await batcher.start()
    model.gate.clear()
    first = asyncio.create_task(batcher.run(pixels()))
    await asyncio.to_thread(model.entered.wait, 10)  # the first call now holds the model
    rest = [asyncio.create_task(batcher.run(pixels(n))) for n in (1, 2, 1, 3, 1)]
    await wait_for(lambda: batcher.queued == 5, "requests queued behind the call")
    model.gate.set()
    results = await asyncio.gather(first, *rest)
    await batcher.stop()
    # queued while the model was busy, they left in full batches; the 3-image request was
    # not split even though it did not fit in the first one
    assert model.batches == [1, 4, 4]
    assert [len(r.class_ids) for r in results] == [1, 1, 2, 1, 3, 1]
    assert {(r.model, r.version) for r in results} == {("unet", 1)}
    assert metrics.registry.get_sample_value("maskfleet_batch_size_count",
                                             {"version": "1", "variant": "savedmodel"}) == 3


async def test_a_lone_request_runs_at_once_when_nothing_else_is_being_decoded(metrics):
    model = FakeModel(1)
    holder, _ = await loaded_holder({1: model}, metrics)
    batcher = Batcher(holder, metrics, max_size=16, max_wait_ms=60_000)
    await batcher.start()
    async with asyncio.timeout(10):  # no company is coming: the 60 s wait does not apply
        result = await batcher.run(pixels())
    await batcher.stop()
    assert model.batches == [1]
    assert result.class_ids.shape == (1, 4, 4)


async def test_a_forming_batch_waits_for_images_still_being_decoded(metrics):
    model = FakeModel(1)
    holder, _ = await loaded_holder({1: model}, metrics)
    batcher = Batcher(holder, metrics, max_size=16, max_wait_ms=60_000)
    await batcher.start()
    with batcher.preparing(2):  # a 2-image request is being decoded
        first = asyncio.create_task(batcher.run(pixels()))
        await wait_for(lambda: batcher.queued == 0, "the model thread to take the first")
    async with asyncio.timeout(10):
        second = await batcher.run(pixels(2))
        assert len((await first).class_ids) == 1
    await batcher.stop()
    assert model.batches == [3], "the first waited for the images being decoded"
    assert len(second.class_ids) == 2


async def test_waiting_always_holds_a_lone_request_for_company_that_has_not_arrived(metrics):
    model = FakeModel(1)
    holder, _ = await loaded_holder({1: model}, metrics)
    batcher = Batcher(holder, metrics, max_size=2, max_wait_ms=60_000, wait_always=True)
    await batcher.start()
    first = asyncio.create_task(batcher.run(pixels()))
    await wait_for(lambda: batcher.queued == 0, "the model thread to take the first")
    async with asyncio.timeout(10):  # the second fills the batch: it runs without the wait
        await batcher.run(pixels())
        await first
    await batcher.stop()
    assert model.batches == [2], "the first waited for a request nobody was decoding yet"


async def test_stop_runs_what_is_queued_then_refuses_new_work(metrics):
    model = FakeModel(1)
    holder, _ = await loaded_holder({1: model}, metrics)
    batcher = Batcher(holder, metrics, max_size=8, max_wait_ms=60_000)
    await batcher.start()
    with batcher.preparing(1):  # company the batch would wait 60 s for
        queued = [asyncio.create_task(batcher.run(pixels())) for _ in range(3)]
        await asyncio.sleep(0)  # let the three requests enqueue
        await wait_for(lambda: batcher.queued == 0, "the collector to hold all three")
        assert not model.batches
        await batcher.stop()  # stop flushes the waiting batch now
    assert [len(r.class_ids) for r in await asyncio.gather(*queued)] == [1, 1, 1]
    with pytest.raises(ModelNotReady, match="shutting down"):
        await batcher.run(pixels())


async def test_a_failing_model_call_fails_its_requests_but_not_the_batcher(metrics):
    model = FakeModel(1)
    holder, _ = await loaded_holder({1: model}, metrics)
    batcher = Batcher(holder, metrics, max_size=8, max_wait_ms=1)
    await batcher.start()
    model.fail = True
    with pytest.raises(RuntimeError, match="exploded"):
        await batcher.run(pixels())
    model.fail = False
    assert (await batcher.run(pixels())).version == 1
    await batcher.stop()


async def test_requests_before_the_model_is_loaded_get_503(metrics):
    holder = ModelHolder(InferenceSettings(), FakeRepository(1), metrics,  # type: ignore[arg-type]
                         loader=FakeModel)
    batcher = Batcher(holder, metrics, max_size=8, max_wait_ms=1)
    await batcher.start()
    with pytest.raises(ModelNotReady):
        await batcher.run(pixels())
    await batcher.stop()


async def test_a_stage_change_swaps_versions_between_batches(metrics):
    models = {1: FakeModel(1), 2: FakeModel(2, input_size=8)}
    holder, repo = await loaded_holder(models, metrics, role="canary")
    batcher = Batcher(holder, metrics, max_size=8, max_wait_ms=1)
    await batcher.start()
    assert (await batcher.run(pixels())).version == 1

    models[1].gate.clear()
    models[1].entered.clear()
    running = asyncio.create_task(batcher.run(pixels()))
    await asyncio.to_thread(models[1].entered.wait, 10)
    repo.version = 2
    assert await holder.refresh()  # swaps while a version-1 batch is still running
    models[1].gate.set()
    assert (await running).version == 1  # the batch finishes on the version it started with
    with pytest.raises(StaleInput):  # pixels prepared for version 1's input size
        await batcher.run(pixels(size=4))
    after = await batcher.run(pixels(size=8))
    await batcher.stop()
    assert (after.version, after.input_size) == (2, 8)

    sample = metrics.registry.get_sample_value
    assert sample("maskfleet_model_swaps_total", {"model": "unet"}) == 1
    assert sample("maskfleet_model_info", {"model": "unet", "version": "2", "variant": "savedmodel",
                                           "stage": "production", "role": "canary"}) == 1
    assert sample("maskfleet_model_info", {"model": "unet", "version": "1", "variant": "savedmodel",
                                           "stage": "production", "role": "canary"}) is None
    assert sample("maskfleet_model_eval_metric", {"model": "unet", "version": "2",
                                                  "variant": "savedmodel",
                                                  "metric": "mean_iou"}) == 0.2
    assert not await holder.refresh()  # same version: nothing to do


async def test_a_pinned_version_is_served_and_labelled_pinned(metrics):
    models = {1: FakeModel(1), 3: FakeModel(3)}
    holder, _ = await loaded_holder(models, metrics, model_version=3)
    assert holder.require().version == 3
    assert holder.require().stage == "pinned"
    assert metrics.registry.get_sample_value("maskfleet_model_info", {
        "model": "unet", "version": "3", "variant": "savedmodel", "stage": "pinned",
        "role": "stable"}) == 1


async def test_a_full_queue_sheds_at_once_and_stale_or_abandoned_work_never_reaches_the_model(
        metrics):
    model = FakeModel(1)
    holder, _ = await loaded_holder({1: model}, metrics)
    batcher = Batcher(holder, metrics, max_size=2, max_wait_ms=1, max_queue_images=3)
    await batcher.start()
    model.gate.clear()
    busy = asyncio.create_task(batcher.run(pixels()))
    await asyncio.to_thread(model.entered.wait, 10)  # the model thread is now busy
    expiring = asyncio.create_task(batcher.run(pixels(), Deadline.within(0.05)))
    abandoned = asyncio.create_task(batcher.run(pixels()))
    kept = asyncio.create_task(batcher.run(pixels()))
    await wait_for(lambda: batcher.queued == 3, "three requests queued behind the call")
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.run(pixels())  # 3 images queued already: refused without waiting
    assert metrics.registry.get_sample_value(
        "maskfleet_queue_depth", {"queue": "batch"}) == 3
    abandoned.cancel()  # the client went away (the middleware cancels its task)
    await asyncio.sleep(0.1)  # past the expiring request's deadline
    model.gate.set()
    assert len((await busy).class_ids) == 1
    with pytest.raises(DeadlineExceeded):
        await expiring
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert len((await kept).class_ids) == 1
    await batcher.stop()
    assert model.batches == [1, 1], "only the first and the kept request were computed"
    sample = metrics.registry.get_sample_value
    assert sample("maskfleet_work_dropped_total", {"stage": "model", "reason": "deadline"}) == 1
    assert sample("maskfleet_work_dropped_total",
                  {"stage": "model", "reason": "disconnected"}) == 1
    assert sample("maskfleet_requests_shed_total", {"reason": "batch_queue"}) == 1
    assert sample("maskfleet_queue_depth", {"queue": "batch"}) == 0

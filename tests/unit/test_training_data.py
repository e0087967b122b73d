"""Synthetic data, the loader, the metrics and the gate, on local disk and without servers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import ConfigError
from shared.imaging import decode_mask
from shared.masks import encode_png
from shared.storage import join, storage_for
from training.config import DataConfig, GateConfig
from training.data import load_dataset, split_names, training_batches
from training.evaluate import confusion, metrics_from_confusion
from training.publish import decide
from training.synthetic import generate, render


def put_pair(root: str, name: str, left_is_pet: bool, size: tuple[int, int] = (96, 64)) -> None:
    """An image whose bright half is exactly where the mask says pet."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    trimap = np.full((height, width), 2, np.uint8)
    half = slice(0, width // 2) if left_is_pet else slice(width // 2, width)
    pixels[:, half] = 255
    trimap[:, half] = 1
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    storage = storage_for(root)
    storage.write(join(root, "images", f"{name}.png"), out.getvalue())
    storage.write(join(root, "annotations", "trimaps", f"{name}.png"), encode_png(trimap))


def put_split(root: str, split: str, names: list[str]) -> None:
    text = "# comment line\n" + "".join(f"{n} 1 1 1\n" for n in names)
    storage_for(root).write(join(root, "annotations", f"{split}.txt"), text.encode())


def test_synthetic_dataset_has_the_oxford_layout(tmp_path: Path) -> None:
    root = str(tmp_path / "pets")
    made = generate(root, count=12, seed=5)
    assert len(made.train) + len(made.test) == 12
    assert made.test
    assert split_names(root, "trainval") == made.train
    assert split_names(root, "test") == made.test
    sizes = set()
    for name in made.train + made.test:
        image = Image.open(tmp_path / "pets" / "images" / f"{name}.jpg")
        trimap = decode_mask((tmp_path / "pets/annotations/trimaps" / f"{name}.png").read_bytes(),
                             image.size)
        assert image.format == "JPEG"
        assert set(np.unique(trimap).tolist()) == {1, 2, 3}, "pet, background and a border"
        pet, border = np.argwhere(trimap == 1), trimap == 3
        assert border[tuple(pet.mean(axis=0).astype(int))] == 0, "the band is not the middle"
        sizes.add(image.size)
    assert len(sizes) > 6, "image sizes vary"
    assert all(200 <= w <= 600 and 200 <= h <= 600 for w, h in sizes)


def test_synthetic_data_is_deterministic_per_seed_and_index() -> None:
    assert render(1, 4) == render(1, 4)
    assert render(1, 4).jpeg != render(2, 4).jpeg
    assert render(1, 4).jpeg != render(1, 5).jpeg


def test_loader_reads_splits_feedback_and_fingerprints(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    for i in range(6):
        put_pair(root, f"pet_{i}", left_is_pet=i % 2 == 0)
    put_split(root, "trainval", ["pet_0", "pet_1", "pet_2", "pet_3", "missing_9"])
    put_split(root, "test", ["pet_4", "pet_5"])
    put_pair(join(root, "feedback"), "req-1", left_is_pet=True)
    config = DataConfig(uri=root, feedback_fraction=0.5)
    dataset = load_dataset(config, tmp_path / "work")
    assert [p.name for p in dataset.train] == ["pet_0", "pet_1", "pet_2", "pet_3"]
    assert [p.name for p in dataset.validation] == ["pet_4", "pet_5"]
    assert [p.name for p in dataset.feedback] == ["req-1"]
    assert dataset.fingerprint == load_dataset(config, tmp_path / "w2").fingerprint

    put_pair(root, "pet_3", left_is_pet=True)
    assert load_dataset(config, tmp_path / "w3").fingerprint != dataset.fingerprint, \
        "changing one image changes the fingerprint"
    without = load_dataset(DataConfig(uri=root), tmp_path / "w4")
    assert without.feedback == [], "feedback_fraction 0 ignores feedback"


def test_loader_without_held_out_split_is_a_config_error(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    put_pair(root, "a", True)
    put_split(root, "trainval", ["a"])
    with pytest.raises(ConfigError, match="validation_split"):
        load_dataset(DataConfig(uri=root), tmp_path / "work")


def test_a_name_listed_in_both_splits_is_only_held_out(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    for name in ("a", "b"):
        put_pair(root, name, True)
    put_split(root, "trainval", ["a", "b"])
    put_split(root, "test", ["b"])
    dataset = load_dataset(DataConfig(uri=root), tmp_path / "work")
    assert [p.name for p in dataset.train] == ["a"]
    assert [p.name for p in dataset.validation] == ["b"]


def test_flip_keeps_pixels_and_labels_aligned(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    put_pair(root, "left", left_is_pet=True)
    put_pair(root, "held", left_is_pet=True)
    put_split(root, "trainval", ["left"])
    put_split(root, "test", ["held"])
    dataset = load_dataset(DataConfig(uri=root), tmp_path / "work")
    config = DataConfig(uri=root, batch_size=16)
    images, ids = next(iter(training_batches(dataset, config, 32, seed=1)))
    images, ids = images.numpy(), ids.numpy()
    assert images.shape == (16, 32, 32, 3)
    assert ids.shape == (16, 32, 32)
    bright_left = images[:, :, :16].mean(axis=(1, 2, 3)) > images[:, :, 16:].mean(axis=(1, 2, 3))
    pet_left = (ids[:, :, :16] == 0).mean(axis=(1, 2)) > (ids[:, :, 16:] == 0).mean(axis=(1, 2))
    np.testing.assert_array_equal(bright_left, pet_left)
    assert 0 < bright_left.sum() < 16, "some examples are flipped, some are not"


def test_feedback_fraction_mixes_corrections_in(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    put_pair(root, "left", left_is_pet=True)
    put_pair(root, "held", left_is_pet=True)
    put_split(root, "trainval", ["left"])
    put_split(root, "test", ["held"])
    put_pair(join(root, "feedback"), "right", left_is_pet=False, size=(96, 64))
    config = DataConfig(uri=root, batch_size=64, feedback_fraction=0.5, flip=False)
    dataset = load_dataset(config, tmp_path / "work")
    _, ids = next(iter(training_batches(dataset, config, 32, seed=3)))
    from_feedback = (ids.numpy()[:, :, 16:] == 0).mean(axis=(1, 2)) > 0.5
    assert 16 <= from_feedback.sum() <= 48, "about half of the batch is feedback"


def test_metrics_from_confusion() -> None:
    truth = np.array([[1, 1, 2, 2], [3, 3, 2, 2]], np.uint8)
    predicted = np.array([[1, 2, 2, 2], [3, 1, 2, 2]], np.uint8)
    metrics = metrics_from_confusion(confusion(truth, predicted))
    assert metrics["pixel_accuracy"] == pytest.approx(6 / 8)
    assert metrics["iou_pet"] == pytest.approx(1 / 3)
    assert metrics["iou_background"] == pytest.approx(4 / 5)
    assert metrics["iou_border"] == pytest.approx(1 / 2)
    assert metrics["mean_iou"] == pytest.approx((1 / 3 + 4 / 5 + 1 / 2) / 3, abs=1e-6)


def test_a_class_absent_everywhere_stays_out_of_the_mean() -> None:
    mask = np.array([[1, 2], [2, 2]], np.uint8)
    metrics = metrics_from_confusion(confusion(mask, mask))
    assert metrics["mean_iou"] == 1.0
    assert "iou_border" not in metrics


def test_gate() -> None:
    gate = GateConfig(min_mean_iou=0.7, max_regression=0.02)
    assert decide(0.8, gate, None).passed
    assert decide(0.79, gate, 0.80).passed, "within the tolerance"
    low = decide(0.65, gate, None)
    assert not low.passed
    assert "below gate.min_mean_iou" in low.reason
    worse = decide(0.75, gate, 0.80)
    assert not worse.passed
    assert "worse than production" in worse.reason
    assert not decide(1.0, GateConfig(min_mean_iou=1.01), None).passed

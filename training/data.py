"""The dataset, from any URI into tf.data, decoded exactly as serving decodes.

Layout (Oxford-IIIT Pet): `images/<name>.jpg|png`, `annotations/trimaps/<name>.png`, split lists
`annotations/<split>.txt` (first token of each line is a name), and user feedback under
`feedback/` in the same shape (no split lists needed there: all of it is training data).

gs:// datasets are pulled into the run's local work directory first (in parallel threads), so
tf.data reads local files with `tf.io.read_file` and GCS is read once per run. Decoding and
resizing go through `shared.imaging` inside `tf.numpy_function`: the pixels the model is trained
on are the pixels the API feeds it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from shared.errors import ConfigError, MaskfleetError, ObjectNotFound
from shared.imaging import decode_mask, mask_to_class_ids, preprocess
from shared.storage import basename, folder, join, storage_for
from training.config import DataConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FEEDBACK = "feedback"
AUTOTUNE = tf.data.AUTOTUNE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One image and its trimap, as URIs in the dataset."""

    name: str
    image: str
    trimap: str


@dataclass(frozen=True)
class LocalPair:
    """A pair readable from local disk (pulled from gs:// or already local)."""

    name: str
    image: Path
    trimap: Path
    digest: str
    """sha256 of the image bytes and the trimap bytes, for the dataset fingerprint."""


@dataclass(frozen=True)
class Dataset:
    train: list[LocalPair]
    validation: list[LocalPair]
    feedback: list[LocalPair]
    fingerprint: str


def _stem(uri: str) -> str:
    return basename(uri).rsplit(".", 1)[0]


def split_names(root: str, split: str) -> list[str] | None:
    """Names listed in `annotations/<split>.txt`, or None when there is no such list."""
    uri = join(root, "annotations", f"{split}.txt")
    try:
        text = storage_for(uri).read(uri).decode("utf-8")
    except ObjectNotFound:
        return None
    names = (line.split()[0] for line in text.splitlines() if line.strip())
    return [n for n in names if not n.startswith("#")]


def list_pairs(root: str, names: Iterable[str] | None = None) -> list[Pair]:
    """Pairs under `root`, all of them or the named ones; names without both files are skipped."""
    storage = storage_for(root)
    images = {
        _stem(uri): uri for uri in storage.list(folder(join(root, "images")))
        if uri.lower().endswith(IMAGE_SUFFIXES)
    }
    trimaps = {
        _stem(uri): uri for uri in storage.list(folder(join(root, "annotations", "trimaps")))
        if uri.lower().endswith(".png")
    }
    wanted = sorted(images.keys() & trimaps.keys()) if names is None else list(names)
    pairs = [Pair(n, images[n], trimaps[n]) for n in wanted if n in images and n in trimaps]
    if len(pairs) < len(wanted):
        log.warning("skipping listed names without image or trimap",
                    extra={"root": root, "skipped": len(wanted) - len(pairs)})
    return pairs


def has_dataset(root: str, split: str) -> bool:
    uri = join(root, "annotations", f"{split}.txt")
    return storage_for(uri).exists(uri)


def _is_local(uri: str) -> bool:
    return not uri.startswith("gs://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def pull(pairs: Sequence[Pair], root: str, dest: Path, *, workers: int = 16) -> list[LocalPair]:
    """Make pairs readable locally and hash their contents; gs:// objects are downloaded."""

    def fetch(uri: str) -> tuple[Path, str]:
        data = storage_for(uri).read(uri)
        if _is_local(uri):
            path = _local_path(uri)
        else:
            path = dest / uri.removeprefix(folder(root))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return path, hashlib.sha256(data).hexdigest()

    def one(pair: Pair) -> LocalPair:
        image, image_digest = fetch(pair.image)
        trimap, trimap_digest = fetch(pair.trimap)
        return LocalPair(pair.name, image, trimap, f"{image_digest}:{trimap_digest}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, pairs))


def fingerprint(groups: Mapping[str, Sequence[LocalPair]]) -> str:
    """sha256 over (role, name, content digests): same bytes in the same splits, same print."""
    digest = hashlib.sha256()
    for role in sorted(groups):
        for pair in sorted(groups[role], key=lambda p: p.name):
            digest.update(f"{role}/{pair.name} {pair.digest}\n".encode())
    return "sha256:" + digest.hexdigest()


def load_dataset(config: DataConfig, work_dir: Path) -> Dataset:
    """List, pull and fingerprint the train split, the held-out split and the feedback."""
    root = config.uri.rstrip("/")
    train_names = split_names(root, config.train_split)
    test_names = split_names(root, config.validation_split)
    if test_names is None:
        raise ConfigError(f"data.validation_split: no list annotations/"
                          f"{config.validation_split}.txt under {root}")
    held_out = set(test_names)
    train = list_pairs(root, train_names)
    train = [p for p in train if p.name not in held_out]
    validation = list_pairs(root, test_names)
    feedback_root = join(root, FEEDBACK)
    feedback = list_pairs(feedback_root) if config.feedback_fraction > 0 else []
    if not train:
        raise ConfigError(f"data.uri: no training pairs under {root}")
    if not validation:
        raise ConfigError(f"data.validation_split: no held-out pairs under {root}")
    local = work_dir / "data"
    groups = {
        "train": pull(train, root, local),
        "validation": pull(validation, root, local),
        "feedback": pull(feedback, root, local),
    }
    log.info("dataset ready", extra={
        "uri": root, **{role: len(pairs) for role, pairs in groups.items()},
    })
    return Dataset(groups["train"], groups["validation"], groups["feedback"], fingerprint(groups))


def _scalar_bytes(value: object) -> bytes:
    """tf.numpy_function hands scalar strings over as bytes or as 0-d object arrays."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


def decode_pair(
    image: bytes, trimap: bytes, size: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], bool]:
    """Model input, class ids and whether the pair was usable (bad feedback is skipped)."""
    try:
        pixels, _ = preprocess(image, size)
        ids = mask_to_class_ids(decode_mask(trimap), size)
    except MaskfleetError as exc:
        log.warning("skipping an unreadable example", extra={"error": exc.detail})
        return np.zeros((size, size, 3), np.float32), np.zeros((size, size), np.int32), False
    return pixels, ids, True


def _decoded(pairs: Sequence[LocalPair], size: int, cache: str) -> tf.data.Dataset:
    images = [str(p.image) for p in pairs]
    trimaps = [str(p.trimap) for p in pairs]

    def load(image_path: tf.Tensor, trimap_path: tf.Tensor) -> tuple[tf.Tensor, ...]:
        def run(image: object, trimap: object) -> tuple[object, ...]:
            return decode_pair(_scalar_bytes(image), _scalar_bytes(trimap), size)

        pixels, ids, ok = tf.numpy_function(
            run, [tf.io.read_file(image_path), tf.io.read_file(trimap_path)],
            (tf.float32, tf.int32, tf.bool), stateful=False,
        )
        pixels.set_shape((size, size, 3))
        ids.set_shape((size, size))
        ok.set_shape(())
        return pixels, ids, ok

    def usable(pixels: tf.Tensor, ids: tf.Tensor, ok: tf.Tensor) -> tf.Tensor:
        return ok

    def without_flag(pixels: tf.Tensor, ids: tf.Tensor, ok: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return pixels, ids

    ds = tf.data.Dataset.from_tensor_slices((images, trimaps))
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.filter(usable).map(without_flag)
    if cache == "memory":
        ds = ds.cache()
    elif cache != "none":
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        ds = ds.cache(cache)
    return ds


def _flip(pixels: tf.Tensor, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror image and mask together: a left-facing pet is still a pet."""
    mirror = tf.random.uniform(()) < 0.5
    return (
        tf.where(mirror, tf.reverse(pixels, axis=[1]), pixels),
        tf.where(mirror, tf.reverse(ids, axis=[1]), ids),
    )


def training_batches(
    dataset: Dataset, config: DataConfig, size: int, *, seed: int
) -> tf.data.Dataset:
    """An endless stream of shuffled, augmented batches, feedback mixed in per config."""
    shuffle = min(config.shuffle_buffer, len(dataset.train))
    stream = (_decoded(dataset.train, size, config.cache)
              .shuffle(shuffle, seed=seed, reshuffle_each_iteration=True).repeat())
    fraction = config.feedback_fraction
    if dataset.feedback and fraction > 0:
        feedback_cache = config.cache if config.cache in ("memory", "none") else \
            f"{config.cache}.feedback"
        corrections = (_decoded(dataset.feedback, size, feedback_cache)
                       .shuffle(min(config.shuffle_buffer, len(dataset.feedback)), seed=seed,
                                reshuffle_each_iteration=True).repeat())
        stream = tf.data.Dataset.sample_from_datasets(
            [stream, corrections], weights=[1.0 - fraction, fraction], seed=seed
        )
    if config.flip:
        stream = stream.map(_flip, num_parallel_calls=AUTOTUNE)
    return stream.batch(config.batch_size, drop_remainder=True).prefetch(AUTOTUNE)

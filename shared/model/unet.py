"""The U-Net of PRODUCT.md: a MobileNetV2 encoder and a Conv2DTranspose decoder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from shared.model.config import ENCODER_TAPS, UNetConfig
from shared.storage import storage_for


def _upsample(filters: int, name: str) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.layers.Conv2DTranspose(
                filters, 3, strides=2, padding="same", use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
            ),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
        ],
        name=name,
    )


def _encoder(config: UNetConfig) -> keras.Model:
    size = config.input_size
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None, alpha=config.alpha
    )
    if config.encoder_weights:
        _load_weights(base, config.encoder_weights)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
    taps = [base.get_layer(name).output for name in ENCODER_TAPS]
    return keras.Model(inputs=base.input, outputs=taps, name="encoder")


def _load_weights(model: keras.Model, uri: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.weights.h5"
        path.write_bytes(storage_for(uri).read(uri))
        model.load_weights(str(path))


def build_unet(config: UNetConfig) -> keras.Model:
    """Build an untrained U-Net; logits out, one channel per trimap class."""
    size = config.input_size
    inputs = keras.Input(shape=(size, size, 3), name="images")
    skips = _encoder(config)(inputs)
    x = skips[-1]
    for i, (filters, skip) in enumerate(
        zip(config.decoder_filters, reversed(skips[:-1]), strict=True)
    ):
        block = _upsample(filters, name=f"up_{i}")
        for layer in block.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
        x = keras.layers.Concatenate(name=f"skip_{i}")([block(x), skip])
    logits = keras.layers.Conv2DTranspose(
        config.num_classes, 3, strides=2, padding="same", name="logits"
    )(x)
    return keras.Model(inputs=inputs, outputs=logits, name="unet")


def predict_class_ids(model: keras.Model, images: tf.Tensor) -> tf.Tensor:
    """Argmax over the class axis; the same op the serving signature uses."""
    return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)

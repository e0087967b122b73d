"""Typed configuration of the U-Net, saved into every version's metadata."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENCODER_TAPS: tuple[str, ...] = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
    "block_16_project",
)


class UNetConfig(BaseModel):
    """The knobs that make the same architecture a CI-sized toy or the production model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(default=128, ge=32, le=1024)
    """Square input side in pixels; MobileNetV2 needs a multiple of 32."""

    alpha: float = Field(default=1.0, gt=0.0, le=1.4)
    """MobileNetV2 width multiplier."""

    decoder_filters: tuple[int, int, int, int] = (512, 256, 128, 64)
    """Filters of the four upsample blocks."""

    num_classes: int = Field(default=3, ge=2)
    """Output classes (the trimap: pet, background, border)."""

    bn_momentum: float = Field(default=0.9, gt=0.0, lt=1.0)
    """BatchNorm momentum; Keras' 0.999 leaves moving statistics wrong after short runs."""

    encoder_weights: str | None = None
    """Optional URI of encoder weights (`.weights.h5`); none can be downloaded here."""

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError("must be a multiple of 32")
        return value

    @field_validator("decoder_filters")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(f < 1 for f in value):
            raise ValueError("every decoder width must be positive")
        return value

"""lungnet's own convolutional encoder: the U-Net's contracting path, as a feature pyramid.

::

    level l = 0..depth-1:  block(filters * 2**l) -> P{l}  -> 2x2 max-pool
    bottleneck:            block(filters * 2**depth)       -> P{depth}

``block: plain`` is two 3x3 conv (+ BN if ``batch_norm``) + ReLU; ``block: residual`` the residual block
(always with batch norm); ``block: separable`` two depthwise-separable 3x3 convs (LightUNet's). Layers ``enc{l+1}_*``, ``enc{l+1}_pool``, ``bottleneck_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from keras import layers

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models.contract import Pyramid, check_input_shape, level_key
from lungnet.models.layers.conv import BLOCKS, unet_block
from lungnet.models.registry import ENCODERS, EncoderConfig


@dataclass(frozen=True)
class ConvEncoderConfig(EncoderConfig):
    """``depth`` 2x down-samplings; ``filters`` at the top level, doubled per level down."""

    name: str = "conv"
    depth: int = 4
    filters: int = 32
    block: Literal["plain", "residual", "separable"] = "plain"
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if not is_int(self.depth) or self.depth < 1:
            raise ConfigError(f"model.depth: {self.depth!r} must be an integer >= 1")
        if not is_int(self.filters) or self.filters < 1:
            raise ConfigError(f"model.filters: {self.filters!r} must be an integer >= 1")
        if self.block not in BLOCKS:
            raise ConfigError(f"model.block: {self.block!r} is not one of {list(BLOCKS)}")
        if not isinstance(self.batch_norm, bool):
            raise ConfigError(f"model.batch_norm: {self.batch_norm!r} must be true or false")


@ENCODERS.register(
    "conv",
    ConvEncoderConfig,
    family="conv",
    description="the U-Net contracting path: plain (2x conv3x3 + ReLU) or residual blocks, max-pooling",
    explanation_layer=lambda c: "bottleneck_relu" if c.block == "residual" else "bottleneck_2_relu",
    # (plain and separable blocks both end in a layer named {name}_2_relu)
    input_scaling="any scaling (trained from scratch); H and W divisible by 2**depth",
    pyramid_keys=lambda c: tuple(level_key(k) for k in range(c.depth + 1)),
)
def build_conv_encoder(config: ConvEncoderConfig, x) -> Pyramid:
    height, width, _ = check_input_shape(tuple(x.shape[1:]))
    factor = 2**config.depth
    if height % factor or width % factor:
        raise ConfigError(
            f"input_shape: {height}x{width} is not divisible by 2**{config.depth} = {factor} "
            f"(model.depth {config.depth})"
        )
    pyramid: Pyramid = {}
    for level in range(config.depth):
        x = unet_block(config.block, x, config.filters * 2**level, f"enc{level + 1}", config.batch_norm)
        pyramid[level_key(level)] = x
        x = layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    pyramid[level_key(config.depth)] = unet_block(
        config.block, x, config.filters * 2**config.depth, "bottleneck", config.batch_norm
    )
    return pyramid

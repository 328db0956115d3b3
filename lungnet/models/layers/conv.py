"""Convolution blocks shared by the families, built from Keras layers (flat graphs, predictable names)."""

from __future__ import annotations

from keras import layers

from lungnet.config import is_int
from lungnet.errors import ConfigError

# Batch-norm momentum 0.9, not Keras' 0.99: the inference-time moving statistics must settle within a few
# hundred steps (CPU profiles); at 0.99 they still carried ~13 % of their initial values after 200 steps and
# pushed every validation probability below 0.5 (measured on the phantom).
BN_MOMENTUM = 0.9


def positive_int(value, what: str) -> int:
    if not is_int(value) or value < 1:
        raise ConfigError(f"{what} {value!r} must be an integer >= 1")
    return value


def static_channels(x, block: str, name: str) -> int:
    """The static channel count of a ``[B, H, W, C]`` tensor (blocks size their weights by it)."""
    if len(x.shape) != 4 or x.shape[-1] is None:
        raise ConfigError(
            f"{block} {name!r}: input shape {tuple(x.shape)} must be [B, H, W, C] with a known channel count"
        )
    return int(x.shape[-1])


def batch_norm(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def conv_bn_act(
    x,
    filters: int,
    name: str,
    *,
    kernel_size: int = 3,
    use_batch_norm: bool = True,
    activation: str = "relu",
    act_suffix: str = "act",
):
    """Conv2D (same padding; no bias before a batch norm, whose offset replaces it) -> BN -> activation.

    Layers ``{name}_conv``, ``{name}_bn`` (if any) and ``{name}_{act_suffix}``.
    """
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=not use_batch_norm, name=f"{name}_conv")(
        x
    )
    if use_batch_norm:
        x = batch_norm(f"{name}_bn")(x)
    return layers.Activation(activation, name=f"{name}_{act_suffix}")(x)


def double_conv_block(x, filters: int, name: str, use_batch_norm: bool):
    """The U-Net block: two 3x3 conv (+ BN) + ReLU; layers ``{name}_1_conv``, ``{name}_1_relu``, ..."""
    x = conv_bn_act(x, filters, f"{name}_1", use_batch_norm=use_batch_norm, act_suffix="relu")
    return conv_bn_act(x, filters, f"{name}_2", use_batch_norm=use_batch_norm, act_suffix="relu")


def residual_block(x, filters: int, name: str):
    """conv3x3-BN-ReLU-conv3x3-BN plus a 1x1 conv-BN projected shortcut, added, then ReLU."""
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_shortcut_conv")(x)
    shortcut = batch_norm(f"{name}_shortcut_bn")(shortcut)
    y = conv_bn_act(x, filters, f"{name}_1", act_suffix="relu")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = batch_norm(f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_relu")(y)


def separable_block(x, filters: int, name: str, use_batch_norm: bool):
    """Two depthwise-separable 3x3 convs (+ BN) + ReLU, MobileNet style: about 1/8 of a plain block's weights
    at 64 channels. Layers ``{name}_1_sepconv``, ``{name}_1_relu``, ..."""
    for k in (1, 2):
        x = layers.SeparableConv2D(
            filters, 3, padding="same", use_bias=not use_batch_norm, name=f"{name}_{k}_sepconv"
        )(x)
        if use_batch_norm:
            x = batch_norm(f"{name}_{k}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_{k}_relu")(x)
    return x


BLOCKS = ("plain", "residual", "separable")


def unet_block(kind: str, x, filters: int, name: str, use_batch_norm: bool):
    """``"plain"``: `double_conv_block`; ``"residual"``: `residual_block` (always with batch norm);
    ``"separable"``: `separable_block`."""
    if kind == "residual":
        return residual_block(x, filters, name)
    if kind == "separable":
        return separable_block(x, filters, name, use_batch_norm)
    return double_conv_block(x, filters, name, use_batch_norm)

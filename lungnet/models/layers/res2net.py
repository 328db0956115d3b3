"""The Res2Net bottleneck (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2019).

A ResNet bottleneck whose 3x3 conv is replaced by a hierarchy of small ones: the 1x1 conv's output is split
into ``scale`` groups of ``width`` channels; groups ``1..scale-1`` each pass a 3x3 conv-BN-ReLU, group
``i > 1`` first adding the output of group ``i-1`` (receptive fields grow within the block); the last group passes
unchanged. A block that starts a stage (``first``) has no such additions, and its last group goes through
a 3x3 average pool with the block's stride instead. The groups are concatenated, a 1x1 conv-BN restores
``planes * expansion`` channels, the shortcut (ResNet-D, `resnet_d_shortcut`) is added, then ReLU.

Padding follows the reference (PyTorch ``padding=1``): a strided 3x3 op pads one pixel on every side, where
Keras' ``"same"`` pads only the bottom and right of an even side, which shifts every sampled position; and
the stage block's pool counts the padded zeros (PyTorch's ``count_include_pad=True``). Weights converted
from the reference code therefore compute the same features (up to the batch norms' epsilon: Keras' 1e-3,
PyTorch's 1e-5). Shapes are those of ``"same"``: ``ceil(H / stride)``.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from lungnet.errors import ConfigError
from lungnet.models.layers.conv import batch_norm, positive_int, static_channels
from lungnet.models.layers.resnet import resnet_d_shortcut

__all__ = ["ChannelSplit", "res2net_bottleneck_block", "res2net_width", "symmetric_conv"]


@keras.saving.register_keras_serializable(package="lungnet")
class ChannelSplit(keras.layers.Layer):
    """``[B, H, W, groups * C]`` -> a list of `groups` tensors ``[B, H, W, C]`` (no weights)."""

    def __init__(self, groups: int, **kwargs):
        super().__init__(**kwargs)
        self.groups = positive_int(groups, "ChannelSplit: groups")

    def call(self, inputs):
        return ops.split(inputs, self.groups, axis=-1)

    def compute_output_shape(self, input_shape):
        return [(*input_shape[:-1], input_shape[-1] // self.groups)] * self.groups

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


def res2net_width(planes: int, base_width: int) -> int:
    """Channels of one group: ``floor(planes * base_width / 64)`` (26, 52, 104, 208 for 26w in Res2Net-50)."""
    return planes * base_width // 64


def symmetric_conv(x, filters: int, kernel_size: int, stride: int, name: str):
    """Conv2D (no bias) padded by ``kernel_size // 2`` on every side; layer ``name`` (and ``{name}_pad``)."""
    if stride > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:  # stride 1: "same" is the symmetric padding
        padding = "same"
    return layers.Conv2D(filters, kernel_size, strides=stride, padding=padding, use_bias=False, name=name)(x)


def _conv_bn_relu(x, filters: int, kernel_size: int, stride: int, name: str, relu: bool = True):
    x = symmetric_conv(x, filters, kernel_size, stride, f"{name}_conv")
    x = batch_norm(f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def res2net_bottleneck_block(
    x,
    planes: int,
    stride: int,
    name: str,
    *,
    first: bool,
    base_width: int = 26,
    scale: int = 4,
    expansion: int = 4,
):
    """One Res2Net bottleneck: output ``[B, ceil(H / stride), ceil(W / stride), planes * expansion]``.

    `stride` 2 only in a `first` block (the stride sits in the 3x3 convs and the pass-through pool).
    Layers: ``{name}_reduce_conv/bn/relu`` (1x1 to ``width * scale``), ``{name}_split``, per group ``g``
    ``{name}_group{g}_conv/bn/relu`` (after ``{name}_group{g}_add`` in later blocks), ``{name}_pass_pad`` /
    ``_pass_pool`` (first blocks), ``{name}_concat``, ``{name}_expand_conv/bn``, the shortcut's layers,
    ``{name}_add`` and ``{name}_out``.
    """
    static_channels(x, "res2net_bottleneck_block", name)
    planes = positive_int(planes, "res2net_bottleneck_block: planes")
    base_width = positive_int(base_width, "res2net_bottleneck_block: base_width")
    expansion = positive_int(expansion, "res2net_bottleneck_block: expansion")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise ConfigError(f"res2net_bottleneck_block: scale {scale!r} must be an integer >= 2")
    if isinstance(stride, bool) or stride not in (1, 2) or (stride == 2 and not first):
        raise ConfigError(
            f"res2net_bottleneck_block {name!r}: stride {stride!r} must be 1, or 2 in a stage's first block"
        )
    width = res2net_width(planes, base_width)
    if width < 1:
        raise ConfigError(f"res2net_bottleneck_block: planes {planes} * base_width {base_width} / 64 is < 1")

    y = _conv_bn_relu(x, width * scale, 1, 1, f"{name}_reduce")
    groups = ChannelSplit(scale, name=f"{name}_split")(y)
    outputs = []
    for g, group in enumerate(groups[:-1], start=1):
        if outputs and not first:  # the hierarchy: each group also sees the previous group's output
            group = layers.Add(name=f"{name}_group{g}_add")([outputs[-1], group])
        outputs.append(_conv_bn_relu(group, width, 3, stride, f"{name}_group{g}"))
    last = groups[-1]
    if first:  # the last group is pooled to the new size instead of convolved; the padded zeros count
        last = layers.ZeroPadding2D(1, name=f"{name}_pass_pad")(last)
        last = layers.AveragePooling2D(3, strides=stride, name=f"{name}_pass_pool")(last)
    outputs.append(last)
    y = layers.Concatenate(name=f"{name}_concat")(outputs)
    y = _conv_bn_relu(y, planes * expansion, 1, 1, f"{name}_expand", relu=False)
    y = layers.Add(name=f"{name}_add")([y, resnet_d_shortcut(x, planes * expansion, stride, name)])
    return layers.Activation("relu", name=f"{name}_out")(y)

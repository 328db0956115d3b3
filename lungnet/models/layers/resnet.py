"""ResNet-D blocks built from Keras layers.

He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019:

- ResNet-B: a bottleneck block strides in its 3x3 conv, not its first 1x1 (a strided 1x1 drops 3/4 of the
  input);
- ResNet-C: the 7x7 stem conv becomes three 3x3 convs (32, 32, 64 channels, the first with stride 2), then
  a 3x3 stride-2 max-pool;
- ResNet-D: a downsampling shortcut is a 2x2 stride-2 average pool then a 1x1 conv (+ BN), instead of a
  strided 1x1 conv, for the same reason.

Each block computes ``relu(F(x) + shortcut(x))``, with ``shortcut(x) = x`` when the shapes match. Convs have
no bias (the following batch norm's offset replaces it); batch norms use momentum 0.9. Layers are named
``{name}_...``, so models built from these blocks are flat functional graphs.
"""

from __future__ import annotations

from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.layers.conv import batch_norm, positive_int, static_channels

__all__ = ["resnet_d_basic_block", "resnet_d_bottleneck_block", "resnet_d_shortcut", "resnet_d_stem"]


def _check_stride(stride, block: str) -> int:
    if isinstance(stride, bool) or stride not in (1, 2):
        raise ConfigError(f"{block}: stride {stride!r} must be 1 or 2")
    return stride


def _conv_bn(x, filters: int, kernel_size: int, stride: int, name: str, suffix: str, relu: bool):
    """Conv2D (same padding, no bias) -> BN, then ReLU if `relu`: ``{name}_conv{suffix}``, ``_bn``, ``_relu``."""
    x = layers.Conv2D(
        filters, kernel_size, strides=stride, padding="same", use_bias=False, name=f"{name}_conv{suffix}"
    )(x)
    x = batch_norm(f"{name}_bn{suffix}")(x)
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu{suffix}")(x)
    return x


def resnet_d_shortcut(x, filters: int, stride: int, name: str):
    """Identity if the block keeps the shape, else (2x2 average pool if strided) -> 1x1 conv -> BN.

    The pool averages only pixels inside the image, on every backend: an odd side gives ``ceil(H / 2)``
    outputs, the last window half outside. Layers ``{name}_shortcut_pool``, ``_shortcut_conv``, ``_shortcut_bn``.
    """
    stride = _check_stride(stride, "resnet_d_shortcut")
    if stride == 1 and int(x.shape[-1]) == filters:
        return x
    if stride == 2:
        # same padding: an odd side gives ceil(H / 2), as the residual branch's strided 3x3 conv does
        x = layers.AveragePooling2D(2, strides=2, padding="same", name=f"{name}_shortcut_pool")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_shortcut_conv")(x)
    return batch_norm(f"{name}_shortcut_bn")(x)


def _merge(residual, shortcut, name: str):
    x = layers.Add(name=f"{name}_add")([residual, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(x)


def resnet_d_basic_block(x, filters: int, stride: int, name: str):
    """Basic block: 3x3 conv (`stride`) -> BN -> ReLU -> 3x3 conv -> BN, plus the shortcut, then ReLU.

    Output ``[B, ceil(H / stride), ceil(W / stride), filters]``. Layers: ``{name}_conv1``, ``_bn1``,
    ``_relu1``, ``_conv2``, ``_bn2``, then ``{name}_shortcut_pool`` (stride 2 only), ``_shortcut_conv`` and
    ``_shortcut_bn`` when the shape changes, and ``{name}_add``, ``{name}_out`` (the final ReLU).
    With an identity shortcut it has ``2 * 9 * C * C`` conv weights and ``2 * 2 * C`` trainable BN weights
    (plus ``2 * 2 * C`` moving statistics).
    """
    static_channels(x, "resnet_d_basic_block", name)
    filters = positive_int(filters, "resnet_d_basic_block: filters")
    stride = _check_stride(stride, "resnet_d_basic_block")
    y = _conv_bn(x, filters, 3, stride, name, "1", relu=True)
    y = _conv_bn(y, filters, 3, 1, name, "2", relu=False)
    return _merge(y, resnet_d_shortcut(x, filters, stride, name), name)


def resnet_d_bottleneck_block(x, filters: int, stride: int, name: str, expansion: int = 4):
    """Bottleneck block: 1x1 conv -> 3x3 conv (`stride`) -> 1x1 conv to ``filters * expansion``, each with BN
    (ReLU after the first two), plus the shortcut, then ReLU.

    Output ``[B, ceil(H / stride), ceil(W / stride), filters * expansion]``. Layers: ``{name}_conv1/bn1/relu1``
    (1x1), ``_conv2/bn2/relu2`` (3x3, strided: ResNet-B), ``_conv3/bn3`` (1x1), the shortcut layers as in
    `resnet_d_basic_block`, ``{name}_add`` and ``{name}_out``.
    """
    static_channels(x, "resnet_d_bottleneck_block", name)
    filters = positive_int(filters, "resnet_d_bottleneck_block: filters")
    stride = _check_stride(stride, "resnet_d_bottleneck_block")
    expansion = positive_int(expansion, "resnet_d_bottleneck_block: expansion")
    y = _conv_bn(x, filters, 1, 1, name, "1", relu=True)
    y = _conv_bn(y, filters, 3, stride, name, "2", relu=True)
    y = _conv_bn(y, filters * expansion, 1, 1, name, "3", relu=False)
    return _merge(y, resnet_d_shortcut(x, filters * expansion, stride, name), name)


def resnet_d_stem(x, name: str, filters: tuple[int, int, int] = (32, 32, 64)):
    """ResNet-C/D stem: three 3x3 conv-BN-ReLU (the first with stride 2), then a 3x3 stride-2 max-pool.

    Divides the side by 4 (``ceil`` twice): 32 px -> 8 px, with ``filters[2]`` channels. Layers:
    ``{name}_conv1/bn1/relu1`` .. ``{name}_conv3/bn3/relu3`` and ``{name}_pool``.
    """
    static_channels(x, "resnet_d_stem", name)
    filters = tuple(filters)
    if len(filters) != 3 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in filters):
        raise ConfigError(f"resnet_d_stem: filters {filters!r} must be three integers >= 1")
    for i, f in enumerate(filters, start=1):
        x = _conv_bn(x, f, 3, 2 if i == 1 else 1, name, str(i), relu=True)
    return layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)

"""Layers and blocks shared by the model families (a block used by two families lives here).

Blocks are functions composing built-in Keras layers, named ``{name}_*`` (flat graphs); lungnet's own layer
classes are serialisable under the package name ``lungnet``.
"""

from lungnet.models.layers.attention import attention_gate
from lungnet.models.layers.channel_attention import (
    eca_kernel_size,
    efficient_channel_attention,
    squeeze_excitation,
)
from lungnet.models.layers.conv import (
    BN_MOMENTUM,
    batch_norm,
    conv_bn_act,
    double_conv_block,
    residual_block,
    unet_block,
)
from lungnet.models.layers.pooling import GeneralizedMeanPooling2D
from lungnet.models.layers.resnet import resnet_d_basic_block, resnet_d_bottleneck_block, resnet_d_stem

__all__ = [
    "BN_MOMENTUM",
    "GeneralizedMeanPooling2D",
    "attention_gate",
    "batch_norm",
    "conv_bn_act",
    "double_conv_block",
    "eca_kernel_size",
    "efficient_channel_attention",
    "residual_block",
    "resnet_d_basic_block",
    "resnet_d_bottleneck_block",
    "resnet_d_stem",
    "squeeze_excitation",
    "unet_block",
]

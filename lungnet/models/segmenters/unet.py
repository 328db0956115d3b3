"""The segmentation study's models: a plain U-Net and an attention residual U-Net, on any encoder.

::

    encoder pyramid P0..Pd (the conv encoder: level l = block(filters * 2**l) at H / 2**l; bottleneck Pd)
    deepest level -> spatial dropout (if > 0)
    decoder, level l = d..1 (from P_{l-1}'s skip, F = its channels):
        2x2 transposed conv, stride 2, F filters -> concat with the skip (gated, attention U-Net) -> block
    (an encoder without P0 goes on up-sampling: transposed conv + block, halving the width)
    logits: 1x1 conv, 1 channel -> probabilities: sigmoid in float32  [H, W, 1]

Blocks: ``unet`` uses two 3x3 conv + ReLU (``batch_norm: true`` adds a batch norm after each conv: the
study's plain U-Net has none by default). ``attention_res_unet`` uses residual blocks, always with batch
norm, and an additive attention gate (`lungnet.models.layers.attention`) on each skip, whose gating signal
is the decoder output one level coarser; the coefficient map of level l is layer ``attention_gate_{l}``
(``[B, H / 2**l, W / 2**l, 1]``, float32). Both up-sample with the same transposed convolution, so the
comparison isolates the residual blocks and the attention gates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
from keras import layers

from lungnet.models.contract import INPUT_NAME, Pyramid, check_input_shape
from lungnet.models.layers.attention import attention_gate
from lungnet.models.layers.conv import unet_block
from lungnet.models.registry import SEGMENTERS
from lungnet.models.segmenters.common import EncoderDecoderConfig, build_pyramid, sigmoid_head

ATTENTION_PREFIX = "attention_gate_"
_ATTENTION_NAME = re.compile(rf"{ATTENTION_PREFIX}(\d+)")


@dataclass(frozen=True)
class UNetConfig(EncoderDecoderConfig):
    name: str = "unet"
    batch_norm: bool = False


@dataclass(frozen=True)
class AttentionResUNetConfig(EncoderDecoderConfig):
    """The residual blocks always have batch norm."""

    name: str = "attention_res_unet"


def unet_decoder(pyramid: Pyramid, block: str, batch_norm: bool, attention: bool):
    """The U-Net expanding path over a pyramid (keys only), back to full resolution."""
    keys = list(pyramid)
    x = pyramid[keys[-1]]
    for key in reversed(keys[:-1]):
        level = int(key[1:]) + 1  # P0 is level 1: the names of the U-Net before encoders were separate
        skip = pyramid[key]
        filters = int(skip.shape[-1])
        if attention:
            skip = attention_gate(skip, x, f"{ATTENTION_PREFIX}{level}")  # x: the coarser level, the gate
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = unet_block(block, x, filters, f"dec{level}", batch_norm)
    for level in range(int(keys[0][1:]), 0, -1):  # an encoder whose shallowest level is below full size
        filters = max(int(x.shape[-1]) // 2, 8)
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = unet_block(block, x, filters, f"dec{level}", batch_norm)
    return x


def _build(config: EncoderDecoderConfig, input_shape, block: str, batch_norm: bool, attention: bool):
    inputs = keras.Input(shape=check_input_shape(input_shape), name=INPUT_NAME)
    pyramid = build_pyramid(config, inputs, block, batch_norm)
    x = unet_decoder(pyramid, block, batch_norm, attention)
    return keras.Model(inputs, sigmoid_head(x), name=config.name)


@SEGMENTERS.register(
    "unet",
    UNetConfig,
    family="unet",
    description="U-Net (Ronneberger et al. 2015): 2x conv3x3 + ReLU blocks, transposed-conv up-sampling",
    input_scaling="standardised intensities (the segmentation study's z-score), any channels",
)
def build_unet(config: UNetConfig, input_shape=(256, 256, 1)) -> keras.Model:
    return _build(config, input_shape, "plain", config.batch_norm, attention=False)


@SEGMENTERS.register(
    "attention_res_unet",
    AttentionResUNetConfig,
    family="unet",
    description="attention residual U-Net: residual blocks, additive attention gates (Oktay et al. 2018)",
    explanation_layer=lambda config: f"{ATTENTION_PREFIX}1",
    input_scaling="standardised intensities (the segmentation study's z-score), any channels",
)
def build_attention_res_unet(config: AttentionResUNetConfig, input_shape=(256, 256, 1)) -> keras.Model:
    return _build(config, input_shape, "residual", True, attention=True)


@dataclass(frozen=True)
class LightUNetConfig(EncoderDecoderConfig):
    """LightUNet as lungnet builds it: the U-Net with depthwise-separable blocks (two 3x3 separable convs
    + BN + ReLU each) in encoder and decoder, 16 filters at the top: about 1/25 of the study's U-Net."""

    name: str = "light_unet"
    filters: int = 16
    batch_norm: bool = True


@dataclass(frozen=True)
class Res34UNetV2Config(EncoderDecoderConfig):
    """Res34UNetV2: the U-Net decoder (with batch norm) on a ResNet34 encoder (keras-hub, basic blocks
    [3, 4, 6, 3], 7x7 stem); the decoder goes on up-sampling from P2 to full size."""

    name: str = "res34_unet_v2"
    encoder: str = "resnet34"
    batch_norm: bool = True


@SEGMENTERS.register(
    "light_unet",
    LightUNetConfig,
    family="unet",
    description="LightUNet: the U-Net with depthwise-separable conv blocks, 16 filters at the top",
    input_scaling="standardised intensities (the segmentation study's z-score), any channels",
)
def build_light_unet(config: LightUNetConfig, input_shape=(256, 256, 1)) -> keras.Model:
    return _build(config, input_shape, "separable", config.batch_norm, attention=False)


@SEGMENTERS.register(
    "res34_unet_v2",
    Res34UNetV2Config,
    family="unet",
    description="Res34UNetV2: U-Net decoder with batch norm on a ResNet34 encoder (keras-hub)",
    input_scaling="[0, 1] (ImageNet mean/std inside the encoder), any channels",
)
def build_res34_unet_v2(config: Res34UNetV2Config, input_shape=(256, 256, 1)) -> keras.Model:
    return _build(config, input_shape, "plain", config.batch_norm, attention=False)


def attention_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers whose outputs are the attention coefficients, top level (level 1) first.

    Level l's map is ``[B, H / 2**l, W / 2**l, 1]``, float32 in (0, 1); empty for the plain U-Net. Read
    them with ``keras.Model(model.input, [model.get_layer(n).output for n in attention_layer_names(model)])``.
    """
    levels = []
    for layer in model.layers:
        match = _ATTENTION_NAME.fullmatch(layer.name)
        if match:
            levels.append((int(match.group(1)), layer.name))
    return [name for _, name in sorted(levels)]

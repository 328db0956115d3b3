"""UNet++ (Zhou et al., DLMIA 2018 / TMI 2020): nested, densely skip-connected decoders, deep supervision.

Nodes ``X[i][j]``: ``i`` indexes the encoder's pyramid levels (shallowest 0), ``j`` the column::

    X[i][0] = the encoder's level i
    X[i][j] = block(concat(X[i][0], ..., X[i][j-1], up(X[i+1][j-1])))   F_i filters (X[i][0]'s channels)

``up`` is a 2x2 transposed conv, stride 2, as in this package's U-Net. With ``attention_gates: true`` the
skips ``X[i][0..j-1]`` of each node pass, concatenated, through one additive attention gate
(`lungnet.models.layers.attention`) whose gating signal is ``X[i+1][j-1]``, the node below (layer
``x{i}_{j}_gate``).

**UNAR** (``unar``) is UNet++ with attention gates on the ResNet34-D encoder (keras-hub: deep 3x3 stem
32-32-64, stride on the 3x3 of each down-sampling block, 2x2 average pool + 1x1 conv shortcuts), the
multi-dataset study's best model. Its pyramid starts at P2 (stride 4), so the head up-samples 4x. Heads: ``probabilities`` is the 1x1
conv + sigmoid on ``X[0][n]`` (the deepest column, the paper's "accurate" mode); with
``deep_supervision: true`` the heads on ``X[0][1..n-1]`` are side outputs ``aux_1..aux_{n-1}`` that the
loss adds (equal weights), and the model's outputs become a dict. Evaluation and serving use
`lungnet.models.contract.inference_model` (``probabilities`` only). Layers ``x{i}_{j}_*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.contract import AUX_PREFIX, INPUT_NAME, OUTPUT_NAME, check_input_shape
from lungnet.models.layers.attention import attention_gate
from lungnet.models.layers.conv import unet_block
from lungnet.models.registry import ENCODERS, SEGMENTERS
from lungnet.models.segmenters.common import EncoderDecoderConfig, build_pyramid, sigmoid_head


@dataclass(frozen=True)
class UNetPlusPlusConfig(EncoderDecoderConfig):
    name: str = "unet_plus_plus"
    batch_norm: bool = True
    deep_supervision: bool = False
    attention_gates: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("deep_supervision", "attention_gates"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key}: {getattr(self, key)!r} must be true or false")


@dataclass(frozen=True)
class UNARConfig(UNetPlusPlusConfig):
    name: str = "unar"
    encoder: str = "resnet34_d"
    attention_gates: bool = True


def _side_outputs(config: UNetPlusPlusConfig) -> tuple[str, ...]:
    if not config.deep_supervision:
        return ()
    encoder = config.encoder_config("plain", config.batch_norm)
    columns = len(ENCODERS.get(encoder.name).pyramid_keys(encoder)) - 1
    return tuple(f"{AUX_PREFIX}{j}" for j in range(1, columns))


@SEGMENTERS.register(
    "unet_plus_plus",
    UNetPlusPlusConfig,
    family="unet_plus_plus",
    description="UNet++: nested dense skip pathways; deep supervision as aux_* side outputs (a switch)",
    side_outputs=_side_outputs,
    input_scaling="standardised intensities (the segmentation study's z-score), any channels",
)
def build_unet_plus_plus(config: UNetPlusPlusConfig, input_shape=(256, 256, 1)) -> keras.Model:
    return _build(config, input_shape)


@SEGMENTERS.register(
    "unar",
    UNARConfig,
    family="unet_plus_plus",
    description="UNAR: UNet++ nested skips + attention gates on a ResNet34-D encoder (keras-hub)",
    side_outputs=_side_outputs,
    input_scaling="[0, 1] (ImageNet mean/std inside the encoder), any channels",
)
def build_unar(config: UNARConfig, input_shape=(256, 256, 1)) -> keras.Model:
    return _build(config, input_shape)


def _build(config: UNetPlusPlusConfig, input_shape) -> keras.Model:
    inputs = keras.Input(shape=check_input_shape(input_shape), name=INPUT_NAME)
    pyramid = build_pyramid(config, inputs, "plain", config.batch_norm)
    levels = list(pyramid.values())
    n = len(levels) - 1
    nodes = [[level] for level in levels]  # nodes[i][j] = X[i][j]
    for j in range(1, n + 1):
        for i in range(n - j + 1):
            filters = int(levels[i].shape[-1])
            up = layers.Conv2DTranspose(filters, 2, strides=2, name=f"x{i}_{j}_up")(nodes[i + 1][j - 1])
            skips = nodes[i][:j]
            if config.attention_gates:
                skip = skips[0] if j == 1 else layers.Concatenate(name=f"x{i}_{j}_skips")(skips)
                skips = [attention_gate(skip, nodes[i + 1][j - 1], f"x{i}_{j}_gate")]
            x = layers.Concatenate(name=f"x{i}_{j}_concat")([*skips, up])
            nodes[i].append(unet_block("plain", x, filters, f"x{i}_{j}", config.batch_norm))
    upsample = 2 ** int(next(iter(pyramid))[1:])  # encoders whose shallowest level is below full size
    output = sigmoid_head(nodes[0][n], OUTPUT_NAME, upsample)
    if not config.deep_supervision:
        return keras.Model(inputs, output, name=config.name)
    outputs = {OUTPUT_NAME: output}
    for j in range(1, n):
        outputs[f"{AUX_PREFIX}{j}"] = sigmoid_head(nodes[0][j], f"{AUX_PREFIX}{j}", upsample)
    return keras.Model(inputs, outputs, name=config.name)
